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
from .forward import decode_order, decodes_from_states, idx, log_probs_at, pad, sample, states_at, weights_id
from .params import Case

#: Pre-edit evaluations kept per model (``evaluate_unedited``), least recently used dropped first.
PRE_CACHE_CASES = 256
_PRE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

def target_nlls(model, prompts: List[List[int]], targets: List[List[int]], starts: Optional[List[List[int]]] = None):
    """Token-averaged NLL (len(prompts), len(targets)) of each target after each prompt, and the
    argmax next token after each prompt (len(prompts),). With ``starts`` (fixed-state models): also
    ``sample``'s start for those prompts (``sample(start=...)``), from the same pass: a start prompt
    that is one of ``prompts`` is read from its row (prompt + target[0][:-1] begins with it), any other
    one rides along as an extra row; the pass keeps each layer's states only at those rows' ends."""
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
    s_rows, s_lens = [], []
    if starts is not None:
        row_of = {tuple(p): i * T for i, p in reversed(list(enumerate(prompts)))}
        for i in decode_order(starts):
            key = tuple(starts[i])
            if key not in row_of:
                row_of[key] = len(seqs)
                seqs.append(list(starts[i]))
            s_rows.append(row_of[key])
            s_lens.append(len(starts[i]))
    with torch.no_grad():
        h = embed(model, pad(seqs, device))
        if starts is None:
            h = run_layers(model, h, 0)
        else:
            state = []
            for layer in model.layers:
                h, kept = layer(h, keep=True)
                state.append(states_at(layer, kept, s_rows, s_lens, device))  # entering each start's next token
                del kept
            start = (h[idx(s_rows, device), idx([n - 1 for n in s_lens], device)], state)
        lp = log_probs_at(model, h, idx(b, device), idx(pos, device))
        tok_lp = lp.gather(1, idx(tok, device)[:, None]).squeeze(1)
        own = idx(owner, device)
        n_scored = len(prompts) * T
        sums = torch.zeros(n_scored, device=device).index_add_(0, own, -tok_lp)
        counts = torch.zeros(n_scored, device=device).index_add_(0, own, torch.ones_like(tok_lp))
        first = idx([i * T for i in range(len(prompts))], device)
        top1 = log_probs_at(model, h, first, idx([len(p) - 1 for p in prompts], device)).argmax(-1)
    out = ((sums / counts).view(len(prompts), T).cpu(), top1.cpu())
    return out if starts is None else out + (start,)


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


def evaluate(model, case: Case, one_pass: bool = True) -> dict:
    """ES/PS/NS/S, EM/PM/NM and generation entropy of the model as it is now. ``one_pass`` (fixed-state
    models): the generation starts from the NLL pass's states (``target_nlls(starts=...)``) instead of
    prompt passes of its own, one model pass fewer per prompt length (the same numbers up to rounding;
    ``False`` is the reference the tests compare against)."""
    prompts = [case.rewrite.ids] + case.paraphrases + case.neighbourhood
    g = case.generation
    gen_prompts = g["prompts"] if g is not None and g["prompts"] else None
    start = None
    if one_pass and gen_prompts and g["max_new_tokens"] > 0 and decodes_from_states(model):
        nll, top1, start = target_nlls(model, prompts, [case.target_new, case.target_true], starts=gen_prompts)
    else:
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
    if gen_prompts:
        gen = torch.Generator().manual_seed(g["seed"])
        texts = sample(model, gen_prompts, g["max_new_tokens"], g["top_k"], gen, start=start)
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
