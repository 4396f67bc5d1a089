"""ROME's evaluation (CounterFact metrics, step 6 of ``rome/__init__.py``): per-token-averaged NLL of the
new and true objects after each prompt, ES/PS/NS/S, EM/PM/NM, generation entropy, and ROME's
``summarize`` over cases."""

from __future__ import annotations

import copy
import json
import math
import weakref
from collections import Counter, OrderedDict
from typing import List, Optional, Tuple

import torch

from .._common import embed, run_layers
from .forward import idx, log_probs_at, pad, sample, weights_id
from .params import Case

#: Pre-edit evaluations kept per model (``evaluate_unedited``), least recently used dropped first.
PRE_CACHE_CASES = 256
_PRE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

def target_nlls(model, prompts: List[List[int]], targets: List[List[int]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token-averaged NLL (len(prompts), len(targets)) of each target after each prompt, and the
    argmax next token after each prompt (len(prompts),)."""
    device = next(model.parameters()).device
    seqs = [p + t[:-1] for p in prompts for t in targets]
    T = len(targets)
    b, pos, tok, owner = [], [], [], []
    for i, p in enumerate(prompts):
        for j, t in enumerate(targets):
            for m, x in enumerate(t):
                b.append(i * T + j)
                pos.append(len(p) - 1 + m)
                tok.append(x)
                owner.append(i * T + j)
    with torch.no_grad():
        h = run_layers(model, embed(model, pad(seqs, device)), 0)
        lp = log_probs_at(model, h, idx(b, device), idx(pos, device))
        tok_lp = lp.gather(1, idx(tok, device)[:, None]).squeeze(1)
        own = idx(owner, device)
        sums = torch.zeros(len(seqs), device=device).index_add_(0, own, -tok_lp)
        counts = torch.zeros(len(seqs), device=device).index_add_(0, own, torch.ones_like(tok_lp))
        first = idx([i * T for i in range(len(prompts))], device)
        top1 = log_probs_at(model, h, first, idx([len(p) - 1 for p in prompts], device)).argmax(-1)
    return (sums / counts).view(len(prompts), T).cpu(), top1.cpu()


def ngram_entropy(ids: List[int], ns=(2, 3), weights=(2 / 3, 4 / 3)) -> float:
    """ROME's n-gram entropy (bits) of one sequence: the weighted mean of the n-gram entropies."""
    ents = []
    for n in ns:
        grams = Counter(tuple(ids[i : i + n]) for i in range(len(ids) - n + 1))
        total = sum(grams.values())
        ents.append(-sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0)
    return sum(e * w for e, w in zip(ents, weights)) / len(ents)


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def hmean(xs) -> Optional[float]:
    """Harmonic mean of the non-null values (0 if any is 0), as scipy's hmean for ROME's S."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    if any(x <= 0 for x in xs):
        return 0.0
    return len(xs) / sum(1 / x for x in xs)


def evaluate(model, case: Case) -> dict:
    """ES/PS/NS/S, EM/PM/NM and generation entropy of the model as it is now."""
    prompts = [case.rewrite.ids] + case.paraphrases + case.neighbourhood
    nll, top1 = target_nlls(model, prompts, [case.target_new, case.target_true])
    rows = [{"nll_new": float(a), "nll_true": float(b)} for a, b in nll.tolist()]
    rw, para = rows[0], rows[1 : 1 + len(case.paraphrases)]
    neigh = rows[1 + len(case.paraphrases):]
    p = lambda r: (math.exp(-r["nll_new"]), math.exp(-r["nll_true"]))  # noqa: E731
    top = int(top1[0])
    out = {
        "rewrite": dict(rw, p_new=p(rw)[0], p_true=p(rw)[1], top1=top, top1_is_new=top == case.target_new[0],
                        top1_is_true=top == case.target_true[0]),
        "paraphrases": para,
        "neighbourhood": neigh,
        "ES": float(rw["nll_true"] > rw["nll_new"]),
        "PS": _mean([float(r["nll_true"] > r["nll_new"]) for r in para]),
        "NS": _mean([float(r["nll_true"] < r["nll_new"]) for r in neigh]),
        "EM": p(rw)[0] - p(rw)[1],
        "PM": _mean([p(r)[0] - p(r)[1] for r in para]),
        "NM": _mean([p(r)[1] - p(r)[0] for r in neigh]),
    }
    out["S"] = hmean([out["ES"], out["PS"], out["NS"]])
    out["generation"] = None
    g = case.generation
    if g is not None and g["prompts"]:
        gen = torch.Generator().manual_seed(g["seed"])
        texts = sample(model, g["prompts"], g["max_new_tokens"], g["top_k"], gen)
        out["generation"] = {"entropy": _mean([ngram_entropy(t) for t in texts])}
        if g["return_ids"]:
            out["generation"]["ids"] = texts
    return out


def evaluate_unedited(model, case: Case) -> Tuple[dict, bool]:
    """(``evaluate`` of the unedited model, whether it came from the cache). It depends on the case's
    prompts, objects and generation settings and on the weights alone, and an edit restores those bit
    for bit: a sweep's further edits of one case (other layers, other matrices) reuse the first one's.
    Cached per model, under where its weights live; ``forget_unedited`` empties a model's entries."""
    key = (weights_id(model), json.dumps([case.rewrite.ids, case.paraphrases, case.neighbourhood, case.target_new,
                                          case.target_true, case.generation], sort_keys=True))
    cache = _PRE.setdefault(model, OrderedDict())
    if key in cache:
        cache.move_to_end(key)
        return copy.deepcopy(cache[key]), True
    out = evaluate(model, case)
    cache[key] = copy.deepcopy(out)
    while len(cache) > PRE_CACHE_CASES:
        cache.popitem(last=False)
    return out, False


def forget_unedited(model) -> None:
    """Drop the model's cached pre-edit evaluations (its weights are no longer the unedited ones)."""
    _PRE.pop(model, None)


def summarize(results: List[dict], which: str = "post") -> dict:
    """ROME's ``summarize`` over cases: means of ES/PS/NS/EM/PM/NM and S = hmean(ES, PS, NS) of the means."""
    out = {"cases": len(results)}
    for k in ("ES", "PS", "NS", "EM", "PM", "NM"):
        out[k] = _mean([r[which][k] for r in results if r[which][k] is not None])
    out["S"] = hmean([out["ES"], out["PS"], out["NS"]])
    ents = [r[which]["generation"]["entropy"] for r in results if r[which].get("generation")]
    out["GE"] = _mean(ents)
    return out
