"""Information-flow knockout (paper §5, §9.7): how much p(answer) drops when the flow from a set of
token positions to the last token is cut over a window of layers.

Works on a prepared prompt's clean run (``prompt_key``; its corruption is not used). The answer is
the prompt's answer (``answer_id`` given at PreparePrompt, else the clean top-1), ``p`` its clean
probability.

* **Mamba** (romba's "strong attention knockout", ``retention_knockout.py``): in every layer of the
  window, the SSM-branch input a (site ``in_ssm``, = W_a·norm(h), before the convolution) at the
  set's positions is replaced by that layer's mean a over a corpus, and a at every other position
  except the last token is restored to its clean value, so only the last token sees the change.
  Mamba-2: the same on its ``in_ssm``, [xBC, dt] (x, B and C before the conv, and Δ's
  projection, which in Mamba-2 comes from in_proj directly: left out, the set's Δ would still
  reach the last token through the decays).
  The per-layer mean is over all tokens of all ``corpus`` sequences (each run alone, from its first
  token); it is computed once per (loaded model, corpus) and kept in this process, keyed by a hash
  of the corpus.
* **GPT-NeoX** (Geva et al. 2023, attention knockout): in every layer of the window, the attention
  logits of the last token (query) to the set's positions (keys) are set to −inf before the softmax;
  nothing else changes. A query whose every key is blocked reads nothing (zero attention mix).

Token sets (``subject`` is the prepared span [start, end), T the prompt's length):
``subject`` = start..end−1; ``subject_last`` = end−1; ``non_subject`` = every position neither in
the subject nor the last (BOS included); ``last`` = T−1. A set may also be given explicitly as
``{"name": str, "positions": [int]}``. An empty set changes nothing (p_knocked = p).

Params (JSON object)::

    layer:      int, window centre 0..L−1       } exactly one of the two;
    layers:     [int], several window centres   } every (centre, set) pair is one row, run batched
    window:     int ≥ 1, default 10 (ROME's window: layers max(0, l − w//2) .. min(L, l − (−w//2)) − 1)
    token_sets: [str | {name, positions}], default ["subject", "subject_last", "non_subject", "last"]
    corpus:     [[int]] token-id sequences for the mean of a (Mamba: required; GPT-NeoX: ignored)

Result (JSON object)::

    model_type:  "mamba" | "gpt_neox"
    method:      "mean_ablation_in_ssm" | "attention_knockout"
    answer_id:   int
    p:           float, clean p(answer)
    window:      int
    corpus_hash: str (sha256 of the corpus JSON; Mamba only, else null)
    corpus_tokens: int (tokens the means were taken over; Mamba only, else 0)
    rows: [{ layer: int (centre), layers: [int] (the window), token_set: str, positions: [int],
             p_knocked: float, relative_change: float  # (p_knocked − p) / p }]
           in the order centres × token_sets
"""

from __future__ import annotations

import hashlib
import json
import math
import weakref
from collections import OrderedDict

import numpy as np
import torch

from ..errors import NumericError
from ..trace import window_layers
from . import register
from ._common import answer_probs, as_ids, as_int, as_list, bad, check_keys, input_of_layer, run_layers

NAMED_SETS = ("subject", "subject_last", "non_subject", "last")
PARAMS = ("layer", "layers", "window", "token_sets", "corpus")
DEFAULT_WINDOW = 10
#: corpus means kept per process: (id(engine), model_id, corpus hash) → (weakref to the model, (L, d_in) means, tokens)
_MEANS: "OrderedDict[tuple, tuple]" = OrderedDict()
_MEANS_KEPT = 8


def token_set_positions(name: str, subject: tuple, num_tokens: int) -> list:
    """Positions of a named token set for a prompt of ``num_tokens`` with subject span [b, e)."""
    b, e = subject
    last = num_tokens - 1
    if name == "subject":
        return list(range(b, e))
    if name == "subject_last":
        return [e - 1]
    if name == "non_subject":
        return [t for t in range(num_tokens) if not b <= t < e and t != last]
    if name == "last":
        return [last]
    raise ValueError(name)


def _parse(params: dict, L: int, subject: tuple, T: int, needs_corpus: bool, vocab: int):
    check_keys(params, PARAMS)
    if ("layer" in params) == ("layers" in params):
        raise bad("layer", "exactly one of params.layer (int) or params.layers ([int])",
                  {k: params.get(k) for k in ("layer", "layers") if k in params})
    if "layer" in params:
        centres = [as_int(params["layer"], "layer", 0, L - 1)]
    else:
        centres = [as_int(v, f"layers[{i}]", 0, L - 1) for i, v in enumerate(as_list(params["layers"], "layers"))]
    window = as_int(params.get("window", DEFAULT_WINDOW), "window", 1)
    sets = []
    for i, s in enumerate(as_list(params.get("token_sets", list(NAMED_SETS)), "token_sets")):
        if isinstance(s, str):
            if s not in NAMED_SETS:
                raise bad(f"token_sets[{i}]", f"one of {list(NAMED_SETS)} or {{name, positions}}", s)
            sets.append((s, token_set_positions(s, subject, T)))
        elif isinstance(s, dict):
            check_keys(s, ("name", "positions"), f"token_sets[{i}]")
            name = s.get("name")
            if not isinstance(name, str) or not name:
                raise bad(f"token_sets[{i}].name", "a non-empty string", name)
            pos = as_list(s.get("positions"), f"token_sets[{i}].positions", nonempty=False)
            pos = sorted({as_int(p, f"token_sets[{i}].positions[{k}]", 0, T - 1) for k, p in enumerate(pos)})
            sets.append((name, pos))
        else:
            raise bad(f"token_sets[{i}]", f"one of {list(NAMED_SETS)} or {{name, positions}}", s)
    corpus = None
    if needs_corpus:
        if "corpus" not in params:
            raise bad("corpus", "token-id sequences ([[int]]) to take the mean of a over (Mamba knockout "
                      "replaces a by its mean)", None, "send e.g. 128 tokenized texts of ≤128 tokens")
        corpus = [as_ids(seq, f"corpus[{i}]", vocab) for i, seq in enumerate(as_list(params["corpus"], "corpus"))]
    return centres, window, sets, corpus


def corpus_hash(corpus: list) -> str:
    return hashlib.sha256(json.dumps(corpus, separators=(",", ":")).encode()).hexdigest()


def corpus_means(engine, model_id: str, model, corpus: list):
    """Per-layer mean of a (``in_ssm``) over every token of the corpus: ((L, d_in), tokens, hash),
    cached per (engine, model object, corpus)."""
    h = corpus_hash(corpus)
    key = (id(engine), model_id, h)
    hit = _MEANS.get(key)
    if hit is not None and hit[0]() is model:
        _MEANS.move_to_end(key)
        return hit[1], hit[2], h
    device = next(model.parameters()).device
    L = len(model.layers)
    width = getattr(model.config, model.SITES["in_ssm"].width)  # Mamba: d_inner; Mamba-2: xBC, d_inner + 2·g·n
    sums = torch.zeros(L, width, dtype=torch.float64, device=device)
    by_len: dict = {}
    for seq in corpus:
        by_len.setdefault(len(seq), []).append(seq)

    def hook(site, layer, value):
        if site == "in_ssm":
            sums[layer] += value.double().sum(dim=(0, 1))
        return value

    with torch.no_grad():
        for n, seqs in by_len.items():
            for k in range(0, len(seqs), 64):  # equal lengths batch without padding (Mamba has no mask)
                model(torch.tensor(seqs[k:k + 64], dtype=torch.long, device=device), hook=hook)
    tokens = sum(len(s) for s in corpus)
    means = (sums / tokens).to(next(model.parameters()).dtype)  # (L, d_in)
    if not bool(torch.isfinite(means).all()):
        raise NumericError("NaN or inf in the corpus mean of a; the model overflows the run dtype", field="params.corpus")
    _MEANS[key] = (weakref.ref(model), means, tokens)
    while len(_MEANS) > _MEANS_KEPT:
        _MEANS.popitem(last=False)
    return means, tokens, h


@register("knockout")
def knockout(engine, model_id: str, prompt_key: str, params: dict) -> dict:
    """Runs the knockout rows (window centres × token sets) of one prepared prompt; see the module doc."""
    prompt = engine.prepared(model_id, prompt_key)
    ck, spec, runs = prompt.checkpoint, prompt.spec, prompt.runs
    model = ck.model
    L, T = model.config.num_layers, runs.num_tokens
    method = ck.architecture.knockout
    run, needs_corpus = METHODS[method]
    centres, window, sets, corpus = _parse(params, L, spec.subject, T, needs_corpus, model.config.vocab_size)
    rows = [(c, window_layers(c, window, L), name, pos) for c in centres for name, pos in sets]
    means, tokens, chash = corpus_means(engine, model_id, model, corpus) if needs_corpus else (None, 0, None)

    per_chunk = max(1, engine.max_batch_rows)
    p_knocked = []
    with torch.no_grad():
        for k in range(0, len(rows), per_chunk):
            chunk = rows[k:k + per_chunk]
            p_knocked += run(model, runs, chunk, T, means).cpu().tolist()
    bad_rows = [i for i, v in enumerate(p_knocked) if not math.isfinite(v)]
    if bad_rows:
        raise NumericError(f"NaN or inf in p_knocked of rows[{bad_rows[0]}]; the model overflows the run dtype",
                           field="rows")
    p = runs.p_clean
    return {
        "model_type": ck.model_type,
        "method": method,
        "answer_id": runs.answer_id,
        "p": p,
        "window": window,
        "corpus_hash": chash,
        "corpus_tokens": tokens,
        "rows": [
            {"layer": c, "layers": list(w), "token_set": name, "positions": pos, "p_knocked": pk,
             "relative_change": (pk - p) / p if p > 0 else 0.0}
            for (c, w, name, pos), pk in zip(rows, p_knocked)
        ],
    }


def _masks(rows: list, T: int, L: int, device, others: bool):
    """(L, R, T) bool device masks: the set's positions in window layers; with ``others``, also the
    positions to restore (not in the set, not the last) in window layers. One host→device transfer."""
    R = len(rows)
    knock = np.zeros((L, R, T), dtype=bool)
    keep = np.zeros((L, R, T), dtype=bool)
    for r, (_, layers, _, pos) in enumerate(rows):
        rest = np.ones(T, dtype=bool)
        rest[pos] = False
        rest[T - 1] = False
        for j in layers:
            knock[j, r, pos] = True
            if others:
                keep[j, r] = rest
    both = torch.from_numpy(np.stack([knock, keep])).to(device)
    return both[0], both[1]


def _run_mamba(model, runs, rows: list, T: int, means: torch.Tensor) -> torch.Tensor:
    """p(answer) per row: mean-ablate a at the set, restore clean a elsewhere (not the last), in the window."""
    L = model.config.num_layers
    device = runs.stream.device
    knock, keep = _masks(rows, T, L, device, others=True)
    active = {j for _, layers, _, _ in rows for j in layers}
    clean_a = runs.clean["in_ssm"]  # (L, T, d_in)

    def hook(site, j, value):
        if site != "in_ssm" or j not in active:
            return value
        mean = means[j].to(value.dtype)  # (d_in,)
        restored = torch.where(keep[j][..., None], clean_a[j][None].to(value.dtype), value)
        return torch.where(knock[j][..., None], mean, restored)  # (R, T, d_in)

    start = min(layers[0] for _, layers, _, _ in rows)
    x = input_of_layer(model, runs.clean, start).expand(len(rows), -1, -1)
    return answer_probs(model, run_layers(model, x, start, hook), runs.answer_id)


def _run_neox(model, runs, rows: list, T: int, _means) -> torch.Tensor:
    """p(answer) per row: block the last token's attention to the set in the window's layers."""
    L = model.config.num_layers
    device = runs.stream.device
    blocked, _ = _masks(rows, T, L, device, others=False)  # (L, R, T)
    active = {j for _, layers, _, pos in rows if pos for j in layers}

    def layer_fn(j, layer, x, block_hook):
        if j not in active:
            return None
        knocked = blocked[j].any(dim=-1)  # (R,) rows with something blocked here
        last = layer.attention.forward_last_query(layer.input_layernorm(x), blocked[j])  # (R, d)

        def hook(site, value):
            if site == "attn":
                v_last = torch.where(knocked[:, None], last.to(value.dtype), value[:, -1])
                value = torch.cat([value[:, :-1], v_last[:, None]], dim=1)
            return value

        return layer(x, hook)[0]

    start = min(layers[0] for _, layers, _, _ in rows)
    x = input_of_layer(model, runs.clean, start).expand(len(rows), -1, -1)
    return answer_probs(model, run_layers(model, x, start, layer_fn=layer_fn), runs.answer_id)


#: knockout method (``Architecture.knockout``) → (runner, whether it needs the corpus mean of a).
METHODS = {"mean_ablation_in_ssm": (_run_mamba, True), "attention_knockout": (_run_neox, False)}
