"""ROME (rank-one model editing) of one projection, with CounterFact-style evaluation: sweep kind ``edit``.

Paper §3 (``shared/reference/paper-methods.md``); the algorithm is ROME's (Meng et al. 2022,
``kmeng01/rome``: ``compute_u``, ``compute_v``, ``rome_main``) as romba adapted it to Mamba.
One request edits one fact (a *case*) at one (layer, matrix), evaluates before and after, and
restores the weights bit-identically (only the touched rows are kept aside).

Edit targets (``params.matrix``):

============== ============================ ======================== ==============================
model          matrix                       key k (the module input) value (the module output)
============== ============================ ======================== ==============================
mamba          ``W_o`` = mixer.out_proj      s ⊗ g (d_inner)          o (d_model)
mamba          ``W_a`` = in_proj rows        norm(h) (d_model)        a = in_proj(·)[:d_inner]
               0..d_inner
mamba          ``W_g`` = in_proj rows        norm(h) (d_model)        z = in_proj(·)[d_inner:]
               d_inner..2·d_inner                                     (before SiLU)
gpt_neox       ``dense_4h_to_h`` (mlp)       GELU(dense_h_to_4h(LN2 h)) mlp output (incl. bias)
============== ============================ ======================== ==============================

Algorithm (defaults are the paper's Mamba hparams, ``mamba-3b.json``):

1. **C** = E[k kᵀ] (uncentred, float32) of the key over every token of ``corpus``; cached in the
   engine process per (model, module, corpus hash, mom2_max_len): W_a and W_g share one C.
2. **Context prefixes**: for each ``[length, count]`` of ``context_template_length_params``,
   ``count`` samples of ``length - 1`` tokens drawn top-k from the model after ``bos_id`` (the start
   token and any ``bos_id`` in the sample dropped, as ROME's decode with skip_special_tokens does);
   seeded by ``context_seed``, cached per model. Prompts in context are ``prefix + in_context.ids``.
3. **k̄** = mean key at the subject's last token over the rewrite prompt and its in-context forms;
   **u** = C⁻¹k̄ / ‖C⁻¹k̄‖ (k̄/‖k̄‖ when ``mom2_adjustment`` is false).
4. **v\\*** = v_init + δ: Adam on δ (δ₀ = 0) added to the module output at the subject's last token of
   the rewriting prompts ``[rewrite] + [prefix + in_context]`` each followed by ``target_new[:-1]``
   and of the ``kl_prompts``; loss = mean over rewriting prompts of the token-averaged
   −log p(target_new) + ``kl_factor``·KL(p ‖ p_init) at the KL prompts' subject-last position +
   ``v_weight_decay``·‖δ‖/‖v_init‖². Stops when loss < ``v_loss_stop``, at the last step, or (romba)
   when step > ``v_prob_stop_after`` and the mean target probability > ``v_prob_stop``; after each
   step ‖δ‖ ≤ ``clamp_norm_factor``·‖v_init‖. v_init is the first rewriting prompt's value.
5. **Update**: with k, W k (+ bias) the key and value on the bare rewrite prompt,
   right = (v\\* − W k) / (k·u);  W[rows] ← W[rows] + right ⊗ u  (rank one, float32 then the run dtype).
6. **Evaluate** before and after: per-token-averaged NLL of ``target_new_ids`` and
   ``target_true_ids`` after each prompt (P = exp(−NLL)); ES = [P(new) > P(true)] on the rewrite
   prompt, PS the mean of that over paraphrases, NS the mean of [P(true) > P(new)] over
   neighbourhood prompts; EM/PM = mean P(new) − P(true), NM = mean P(true) − P(new);
   generation entropy = mean over sampled continuations of the (2/3, 4/3)-weighted mean of the 2-
   and 3-gram entropies (bits), counted over token ids (ROME counts NLTK words: the engine has no
   tokenizer). A sweep's S is the harmonic mean of the mean ES, PS, NS over cases (ROME's
   ``summarize``): use :func:`summarize`; the per-case ``S`` is only the harmonic mean of that
   case's own three numbers.

Params (JSON object; token ids are pre-tokenized by the coordinator, spans are half-open
``[start, end)`` token indices, the last subject token is ``end - 1``)::

    {
      "matrix": "W_o" | "W_a" | "W_g" | "dense_4h_to_h",
      "layer": 3,                               # 0 <= layer < num_layers
      "subject_ids": [425, 897],                # optional: the subject's tokens as in the rewrite
                                                # prompt; checked against spans, or used to find them
      "rewrite": {"ids": [...], "subject": [0, 2],          # subject optional with subject_ids
                  "in_context": {"ids": [...], "subject": [1, 3]}},  # optional: the tokens of
                                                # ". " + prompt (ROME's "{prefix}. {prompt}"); default
                                                # the bare ids
      "target_new_ids": [941], "target_true_ids": [878],     # tokens of " " + object, non-empty
      "paraphrases": [[...], ...],              # optional, prompts ending before the object
      "neighbourhood": [[...], ...],            # optional, other subjects with the same true object
      "kl_prompts": [{"ids": [...], "subject": [0, 2]}],     # "{subject} is a"; needed when kl_factor > 0
      "corpus": [[...], ...] | "corpus_path": "/file.json",  # token-id lists (a JSON list, or
                                                # {"corpus": list}); needed when mom2_adjustment
      "bos_id": 0,                              # start token of the context prefixes (default 0)
      "hparams": {...},                         # any of HPARAMS below
      "generation": {"prompts": [[...]], "max_new_tokens": 32, "top_k": 5, "seed": 0,
                     "return_ids": false} | null,   # default prompts: rewrite + paraphrases; null: skip
      "evaluate": true,                         # false: edit only (no pre/post evaluation)
      "cov_only": false,                        # true: compute/cache C and return its summary only
      "return_moment": false                    # with cov_only: also the float32 sum of k kᵀ, base64
    }

Result (JSON object)::

    {
      "kind": "edit", "prompt_key", "model_type", "matrix", "layer",
      "module": "backbone.layers.3.mixer.out_proj", "rows": [0, 128],
      "covariance": {"tokens", "sequences", "dim", "corpus_hash", "trace", "cached", "seconds"}
                    | null,                      # null when mom2_adjustment is false
      "key": {"contexts": 21, "k_norm", "kbar_norm", "u_dot_k", "cosine_k_kbar"},
      "v_star": {"steps", "loss", "nll", "kl", "weight_decay", "avg_prob", "v_init_norm",
                 "delta_norm", "clamped", "stopped": "loss"|"prob"|"steps"},
      "update": {"norm", "right_norm", "value_error"},   # value_error: ‖W'k − v*‖/‖v*‖ after the update
      "pre": EVAL, "post": EVAL,                # absent when evaluate is false
      "restored": true,                          # the touched rows equal the saved copy bit for bit
      "seconds": {"covariance", "key", "v_star", "update", "eval", "total"}
    }
    EVAL = {"rewrite": {"nll_new", "nll_true", "p_new", "p_true", "top1", "top1_is_new",
                        "top1_is_true"},
            "paraphrases": [{"nll_new", "nll_true"}], "neighbourhood": [{"nll_new", "nll_true"}],
            "ES", "PS", "NS", "S", "EM", "PM", "NM",            # PS/PM, NS/NM null with no prompts
            "generation": {"entropy", "ids"?} | null}

With ``cov_only`` the result is ``{"kind", "cov_only": true, "matrix", "layer", "module",
"covariance": {...}, "moment_b64"?, "seconds"}``. Bad params raise ``InvalidArgument`` naming
``params.<field>`` (what was expected, what came); a singular C or a non-finite v* raises
``NumericError``; all are raised before the weights change, and an error while they are changed
restores them first.

The weights are edited in place for the duration of one request (the worker runs one request at a
time); cached causal-tracing runs stay valid because the restore is exact.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
import weakref
from collections import Counter, OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..errors import InvalidArgument, NotFound, NumericError
from . import register

#: matrices by model type.
MATRICES = {"mamba": ("W_o", "W_a", "W_g"), "gpt_neox": ("dense_4h_to_h",)}

#: Defaults: romba's ``hparams/ROME/mamba-3b.json`` (paper §3); ``cov_ridge`` is ours (0 = ROME).
HPARAMS = {
    "v_num_grad_steps": 20,
    "v_lr": 0.5,
    "v_weight_decay": 0.5,
    "clamp_norm_factor": 3.0,
    "kl_factor": 0.0625,
    "v_loss_stop": 0.05,
    "v_prob_stop": 0.9,  # romba: stop when step > v_prob_stop_after and mean p(target) > this; null: off
    "v_prob_stop_after": 12,
    "context_template_length_params": [[5, 10], [10, 10]],
    "context_seed": 0,
    "context_top_k": 5,
    "mom2_adjustment": True,
    "mom2_max_len": 2048,  # ROME's npos: corpus sequences are truncated to this
    "mom2_batch_tokens": 6144,
    "cov_ridge": 0.0,  # C + ridge·mean(diag C)·I before solving; for corpora too small for the key's width
}

GENERATION = {"max_new_tokens": 32, "top_k": 5, "seed": 0, "return_ids": False}

#: Bytes of covariances kept per process (LRU); one mamba-2.8b W_o C is 105 MB.
COV_CACHE_BYTES = 4 << 30

# Per model (weakly: a model loaded again under the same id gets fresh entries): covariances and
# context prefixes.
_COV: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_CTX: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


# ----------------------------------------------------------------------------------------------
# Targets and forward passes
# ----------------------------------------------------------------------------------------------

@dataclass
class Target:
    """The edited Linear and which of its output rows the edit owns."""

    matrix: str
    layer: int
    module: torch.nn.Linear
    name: str
    rows: Tuple[int, int]  # [start, end) rows of weight (= output features) that change

    @property
    def value_slice(self) -> slice:
        return slice(*self.rows)


def target_of(model_type: str, model, matrix: str, layer: int) -> Target:
    """The Target of ``matrix`` at ``layer`` (params already validated)."""
    if model_type == "mamba":
        mixer = model.layers[layer].mixer
        d_in = model.config.d_inner
        if matrix == "W_o":
            return Target(matrix, layer, mixer.out_proj, f"backbone.layers.{layer}.mixer.out_proj", (0, model.config.d_model))
        rows = (0, d_in) if matrix == "W_a" else (d_in, 2 * d_in)
        return Target(matrix, layer, mixer.in_proj, f"backbone.layers.{layer}.mixer.in_proj", rows)
    mlp = model.layers[layer].mlp
    return Target(matrix, layer, mlp.dense_4h_to_h, f"gpt_neox.layers.{layer}.mlp.dense_4h_to_h", (0, model.config.hidden_size))


class Tap:
    """Forward hook on the target Linear: reads its input (key) and output rows (value) at chosen
    (row, position) pairs, and adds a delta to the output rows there (differentiably)."""

    def __init__(self, target: Target):
        self.target = target
        self.at: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # where to read
        self.add: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None  # where and what to add
        self.keys: Optional[torch.Tensor] = None
        self.values: Optional[torch.Tensor] = None

    def __call__(self, module, inputs, output):
        if self.at is not None:
            b, p = self.at
            self.keys = inputs[0][b, p].float()
            self.values = output[b, p][..., self.target.value_slice].float()
        if self.add is not None:
            b, p, delta = self.add
            lo, hi = self.target.rows
            full = F.pad(delta, (lo, output.shape[-1] - hi)).to(output.dtype)  # (out,)
            output = output.index_put((b, p), full.expand(b.shape[0], -1), accumulate=True)
        return output

    @contextmanager
    def attached(self):
        handle = self.target.module.register_forward_hook(self)
        try:
            yield self
        finally:
            handle.remove()


def pad(seqs: Sequence[Sequence[int]], device, pad_id: int = 0) -> torch.Tensor:
    """Right-padded (b, T) ids; causal models never look right, so padding needs no mask."""
    T = max(len(s) for s in seqs)
    out = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
    return out.to(device)


def embed(model, ids: torch.Tensor) -> torch.Tensor:
    """The residual stream entering layer 0 (what ``LM.forward`` starts from)."""
    return model.embed(ids).to(model.residual_dtype())


def run_layers(model, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Blocks start..stop-1 on the residual stream h (b, l, d); what ``LM.forward`` loops over,
    split so that the layers below an edit run once, not once per optimisation step."""
    for i in range(start, stop):
        h = model.layers[i](h)[0]
    return h


def log_probs_at(model, h: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """log-softmax of the next-token logits at (b, p) pairs of the final residual h: (n, V)."""
    return torch.log_softmax(model.head(h[b, p]), dim=-1)


def _idx(values, device) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.long, device=device)


@contextmanager
def frozen(model):
    """No parameter needs a gradient while δ is optimised (saves a model's worth of gradients);
    the flags are restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


# ----------------------------------------------------------------------------------------------
# Params
# ----------------------------------------------------------------------------------------------

@dataclass
class Prompt:
    ids: List[int]
    last: int  # index of the subject's last token


@dataclass
class Case:
    matrix: str
    layer: int
    rewrite: Prompt
    in_context: Prompt
    target_new: List[int]
    target_true: List[int]
    paraphrases: List[List[int]]
    neighbourhood: List[List[int]]
    kl_prompts: List[Prompt]
    corpus: Optional[List[List[int]]]
    corpus_hash: str
    bos_id: int
    hp: dict
    generation: Optional[dict]
    evaluate: bool
    cov_only: bool
    return_moment: bool


def _ids(value, field: str, vocab: int, max_pos: int, allow_empty: bool = False) -> List[int]:
    if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise InvalidArgument(f"{field}: expected a list of integer token ids, got {_show(value)}", field=field)
    if not value and not allow_empty:
        raise InvalidArgument(f"{field}: expected at least one token id, got an empty list", field=field)
    bad = [(i, v) for i, v in enumerate(value) if not 0 <= v < vocab]
    if bad:
        i, v = bad[0]
        raise InvalidArgument(f"{field}[{i}] = {v} is outside the model's vocabulary [0, {vocab}); was it "
                              "tokenized with this model's tokenizer?", field=field)
    if max_pos and len(value) > max_pos:
        raise InvalidArgument(f"{field}: {len(value)} tokens, but the model allows at most {max_pos}", field=field)
    return list(value)


def _show(value, n: int = 80) -> str:
    s = json.dumps(value) if not isinstance(value, str) else repr(value)
    return s if len(s) <= n else s[: n - 3] + "..."


def _find(hay: List[int], needle: List[int]) -> int:
    for i in range(len(hay) - len(needle) + 1):
        if hay[i : i + len(needle)] == needle:
            return i
    return -1


def _prompt(obj, field: str, vocab: int, max_pos: int, subject_ids: Optional[List[int]], check_tokens: bool) -> Prompt:
    """A {ids, subject} object: ids validated, the subject span inside the prompt, and (check_tokens)
    the tokens there equal to subject_ids; without a span, subject_ids is looked for in ids."""
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{field}: expected an object {{\"ids\": [...], \"subject\": [start, end]}}, got {_show(obj)}", field=field)
    ids = _ids(obj.get("ids"), f"{field}.ids", vocab, max_pos)
    span = obj.get("subject")
    if span is None:
        if not subject_ids:
            raise InvalidArgument(f"{field}.subject: expected the subject's token span [start, end) (or "
                                  "params.subject_ids to look it up), got none", field=f"{field}.subject")
        at = _find(ids, subject_ids)
        if at < 0:
            raise InvalidArgument(
                f"{field}: the subject is absent: params.subject_ids {subject_ids} do not occur in {field}.ids "
                f"{_show(ids)}; tokenize the subject as it appears in the prompt (with its leading space when "
                "it is not the first word) or give the span", field=f"{field}.subject")
        return Prompt(ids, at + len(subject_ids) - 1)
    if (not isinstance(span, (list, tuple)) or len(span) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) for v in span)):
        raise InvalidArgument(f"{field}.subject: expected [start, end] token indices, got {_show(span)}", field=f"{field}.subject")
    s, e = span
    if not 0 <= s < e <= len(ids):
        raise InvalidArgument(
            f"{field}.subject: span [{s}, {e}) is empty or outside the prompt of {len(ids)} tokens; expected "
            f"0 <= start < end <= {len(ids)}", field=f"{field}.subject")
    if check_tokens and subject_ids is not None and ids[s:e] != subject_ids:
        raise InvalidArgument(
            f"{field}.subject: the tokens at [{s}, {e}) are {ids[s:e]}, not params.subject_ids {subject_ids}: "
            "the subject is absent there; fix the span or the subject's tokenization", field=f"{field}.subject")
    return Prompt(ids, e - 1)


def _hparams(raw) -> dict:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidArgument(f"params.hparams: expected an object, got {_show(raw)}", field="params.hparams")
    unknown = sorted(set(raw) - set(HPARAMS))
    if unknown:
        raise InvalidArgument(f"params.hparams.{unknown[0]}: unknown hyper-parameter; known: {', '.join(sorted(HPARAMS))}",
                              field=f"params.hparams.{unknown[0]}")
    hp = dict(HPARAMS, **raw)
    for k in ("v_num_grad_steps", "v_prob_stop_after", "context_seed", "context_top_k", "mom2_max_len", "mom2_batch_tokens"):
        v = hp[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k in ("context_seed", "v_prob_stop_after") else 1):
            raise InvalidArgument(f"params.hparams.{k}: expected a positive integer, got {_show(v)}", field=f"params.hparams.{k}")
    for k in ("v_lr", "v_weight_decay", "clamp_norm_factor", "kl_factor", "v_loss_stop", "cov_ridge"):
        v = hp[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise InvalidArgument(f"params.hparams.{k}: expected a non-negative number, got {_show(v)}", field=f"params.hparams.{k}")
    if hp["v_prob_stop"] is not None and (isinstance(hp["v_prob_stop"], bool) or not isinstance(hp["v_prob_stop"], (int, float))):
        raise InvalidArgument(f"params.hparams.v_prob_stop: expected a probability or null, got {_show(hp['v_prob_stop'])}",
                              field="params.hparams.v_prob_stop")
    ctx = hp["context_template_length_params"]
    if (not isinstance(ctx, list) or any(not isinstance(x, (list, tuple)) or len(x) != 2
                                         or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in x) for x in ctx)):
        raise InvalidArgument("params.hparams.context_template_length_params: expected [[length, count], ...] of "
                              f"non-negative integers (ROME: [[5, 10], [10, 10]]), got {_show(ctx)}",
                              field="params.hparams.context_template_length_params")
    if not isinstance(hp["mom2_adjustment"], bool):
        raise InvalidArgument(f"params.hparams.mom2_adjustment: expected true or false, got {_show(hp['mom2_adjustment'])}",
                              field="params.hparams.mom2_adjustment")
    return hp


def _corpus(params: dict, vocab: int) -> Tuple[Optional[List[List[int]]], str]:
    raw, path = params.get("corpus"), params.get("corpus_path")
    if raw is not None and path is not None:
        raise InvalidArgument("params.corpus: give either corpus or corpus_path, not both", field="params.corpus")
    if path is not None:
        if not isinstance(path, str) or not path:
            raise InvalidArgument(f"params.corpus_path: expected a file path, got {_show(path)}", field="params.corpus_path")
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except OSError as e:
            raise NotFound(f"params.corpus_path: cannot read {path!r} ({e.strerror})", field="params.corpus_path") from e
        try:
            raw = json.loads(blob)
        except ValueError as e:
            raise InvalidArgument(f"params.corpus_path: {path!r} is not JSON ({e})", field="params.corpus_path") from e
        if isinstance(raw, dict):
            raw = raw.get("corpus")
        where = "params.corpus_path"
    else:
        where = "params.corpus"
    if raw is None:
        return None, ""
    if not isinstance(raw, list) or not raw:
        raise InvalidArgument(f"{where}: expected a non-empty list of token-id lists, got {_show(raw)}", field=where)
    seqs = [_ids(s, f"{where}[{i}]", vocab, 0) for i, s in enumerate(raw)]
    digest = hashlib.sha256(json.dumps(seqs, separators=(",", ":")).encode()).hexdigest()[:16]
    return seqs, digest


def parse_params(model_type: str, config, params: dict) -> Case:
    """Validate the request; every error names ``params.<field>``, what was expected and what came."""
    vocab, max_pos = config.vocab_size, config.max_positions
    valid = MATRICES.get(model_type, ())
    matrix = params.get("matrix")
    if matrix not in valid:
        raise InvalidArgument(f"params.matrix: expected one of {', '.join(valid)} for a {model_type} model, got {_show(matrix)}",
                              field="params.matrix")
    layer = params.get("layer")
    L = config.num_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < L:
        raise InvalidArgument(f"params.layer: expected an integer in [0, {L - 1}] (the model has {L} layers), got {_show(layer)}",
                              field="params.layer")
    hp = _hparams(params.get("hparams"))
    corpus, digest = _corpus(params, vocab)
    cov_only = bool(params.get("cov_only", False))
    if (hp["mom2_adjustment"] or cov_only) and corpus is None:
        raise InvalidArgument("params.corpus: expected token-id lists (or params.corpus_path) for the key covariance C; "
                              "or set hparams.mom2_adjustment to false", field="params.corpus")
    bos = params.get("bos_id", 0)
    if isinstance(bos, bool) or not isinstance(bos, int) or not 0 <= bos < vocab:
        raise InvalidArgument(f"params.bos_id: expected a token id in [0, {vocab}), got {_show(bos)}", field="params.bos_id")
    if cov_only:
        return Case(matrix, layer, None, None, [], [], [], [], [], corpus, digest, bos, hp, None, False, True,
                    bool(params.get("return_moment", False)))

    subject_ids = params.get("subject_ids")
    if subject_ids is not None:
        subject_ids = _ids(subject_ids, "params.subject_ids", vocab, 0)
    tnew = _ids(params.get("target_new_ids"), "params.target_new_ids", vocab, 0)
    ttrue = _ids(params.get("target_true_ids"), "params.target_true_ids", vocab, 0)
    if tnew == ttrue:
        raise InvalidArgument(f"params.target_new_ids: equal to target_true_ids {ttrue}; an edit needs a different object",
                              field="params.target_new_ids")
    rw = params.get("rewrite")
    rewrite = _prompt(rw, "params.rewrite", vocab, max_pos, subject_ids, True)
    ic = rw.get("in_context") if isinstance(rw, dict) else None
    in_context = rewrite if ic is None else _prompt(ic, "params.rewrite.in_context", vocab, max_pos, None, False)

    def prompt_list(name):
        raw = params.get(name) or []
        if not isinstance(raw, list):
            raise InvalidArgument(f"params.{name}: expected a list of token-id lists, got {_show(raw)}", field=f"params.{name}")
        return [_ids(x, f"params.{name}[{i}]", vocab, max_pos) for i, x in enumerate(raw)]

    paraphrases, neighbourhood = prompt_list("paraphrases"), prompt_list("neighbourhood")
    kl_raw = params.get("kl_prompts") or []
    if not isinstance(kl_raw, list):
        raise InvalidArgument(f"params.kl_prompts: expected a list of {{ids, subject}} objects, got {_show(kl_raw)}", field="params.kl_prompts")
    # the span is authoritative here: BPE may split the subject otherwise in another sentence
    kl_prompts = [_prompt(x, f"params.kl_prompts[{i}]", vocab, max_pos, subject_ids, False) for i, x in enumerate(kl_raw)]
    if hp["kl_factor"] > 0 and not kl_prompts:
        raise InvalidArgument("params.kl_prompts: expected at least one prompt (ROME: \"{subject} is a\") while "
                              f"hparams.kl_factor is {hp['kl_factor']}; or set kl_factor to 0", field="params.kl_prompts")
    gen = params.get("generation", {})
    if gen is not None:
        if not isinstance(gen, dict):
            raise InvalidArgument(f"params.generation: expected an object or null, got {_show(gen)}", field="params.generation")
        unknown = sorted(set(gen) - set(GENERATION) - {"prompts"})
        if unknown:
            raise InvalidArgument(f"params.generation.{unknown[0]}: unknown; known: prompts, {', '.join(GENERATION)}",
                                  field=f"params.generation.{unknown[0]}")
        g = dict(GENERATION, **{k: v for k, v in gen.items() if k != "prompts"})
        for k in ("max_new_tokens", "top_k", "seed"):
            if isinstance(g[k], bool) or not isinstance(g[k], int) or g[k] < (0 if k == "seed" else 1):
                raise InvalidArgument(f"params.generation.{k}: expected a positive integer, got {_show(g[k])}", field=f"params.generation.{k}")
        if "prompts" in gen:
            g["prompts"] = [_ids(x, f"params.generation.prompts[{i}]", vocab, max_pos) for i, x in enumerate(gen["prompts"] or [])]
        else:
            g["prompts"] = [rewrite.ids] + paraphrases
        if max_pos:
            too_long = [i for i, x in enumerate(g["prompts"]) if len(x) + g["max_new_tokens"] > max_pos]
            if too_long:
                raise InvalidArgument(f"params.generation.max_new_tokens: prompt {too_long[0]} plus {g['max_new_tokens']} "
                                      f"new tokens exceeds the model's {max_pos} positions", field="params.generation.max_new_tokens")
        gen = g
    if max_pos:
        longest = max(l for l, _ in hp["context_template_length_params"]) if hp["context_template_length_params"] else 0
        need = longest + len(in_context.ids) + len(tnew)
        if need > max_pos:
            raise InvalidArgument(f"params.rewrite.in_context.ids: a context prefix, the prompt and the target take {need} "
                                  f"tokens, more than the model's {max_pos} positions", field="params.rewrite.in_context.ids")
    return Case(matrix, layer, rewrite, in_context, tnew, ttrue, paraphrases, neighbourhood, kl_prompts, corpus, digest,
                bos, hp, gen, bool(params.get("evaluate", True)), False, False)


# ----------------------------------------------------------------------------------------------
# The four steps
# ----------------------------------------------------------------------------------------------

def covariance(model, target: Target, corpus: List[List[int]], corpus_hash: str, max_len: int, batch_tokens: int):
    """(C = E[k kᵀ] float32 (dim, dim), summary dict) of the target's input over every corpus token,
    from the per-model cache when present."""
    device = target.module.weight.device
    cache = _COV.setdefault(model, OrderedDict())
    key = (target.name, corpus_hash, max_len)  # W_a and W_g share in_proj's input, hence one C
    if key in cache:
        cache.move_to_end(key)
        C, summary = cache[key]
        return C, dict(summary, cached=True)
    started = time.perf_counter()
    dim = target.module.in_features
    total = torch.zeros(dim, dim, dtype=torch.float32, device=device)
    n = 0
    seqs = sorted((s[:max_len] for s in corpus), key=len)  # similar lengths per batch: little padding
    tap = Tap(target)
    with torch.no_grad(), tap.attached():
        i = 0
        while i < len(seqs):
            j = i + 1
            while j < len(seqs) and (j + 1 - i) * len(seqs[j]) <= batch_tokens:
                j += 1
            batch = seqs[i:j]
            b = _idx([r for r, s in enumerate(batch) for _ in s], device)
            p = _idx([t for s in batch for t in range(len(s))], device)
            tap.at = (b, p)
            run_layers(model, embed(model, pad(batch, device)), 0, target.layer + 1)
            k = tap.keys  # (tokens, dim)
            total.addmm_(k.t(), k)
            n += k.shape[0]
            i = j
    C = total / n
    summary = {"tokens": n, "sequences": len(seqs), "dim": dim, "corpus_hash": corpus_hash,
               "trace": float(torch.trace(C)), "seconds": time.perf_counter() - started}
    cache[key] = (C, summary)
    cache.move_to_end(key)
    _trim_cov_cache()
    return C, dict(summary, cached=False, moment_sum=total)


def _trim_cov_cache() -> None:
    """Drop least recently used covariances (keeping each model's newest) above COV_CACHE_BYTES."""
    total = sum(C.numel() * C.element_size() for od in _COV.values() for C, _ in od.values())
    for od in list(_COV.values()):
        while total > COV_CACHE_BYTES and len(od) > 1:
            _, (C, _) = od.popitem(last=False)
            total -= C.numel() * C.element_size()


def sample(model, prompts: List[List[int]], new_tokens: int, top_k: int, gen: torch.Generator) -> List[List[int]]:
    """Top-k sampling (ROME's generate_fast: softmax, keep the k best, renormalise, draw) of
    ``new_tokens`` tokens after each prompt; returns prompt + sampled ids. Prompts of one length
    decode together, one token per step from the layers' kept states (Mamba: conv window and SSM
    state; NeoX: keys and values). Draws on the host with ``gen``, so a seed gives the same samples
    on every device."""
    device = next(model.parameters()).device
    out = [list(p) for p in prompts]
    groups: dict = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    with torch.no_grad():
        for T, members in sorted(groups.items()):
            rows = _idx(range(len(members)), device)
            h = embed(model, pad([prompts[i] for i in members], device))
            kept = []
            for layer in model.layers:
                h, k = layer(h, keep=True)
                kept.append(k)
            for step in range(new_tokens):
                top = torch.topk(torch.softmax(model.head(h[:, -1]), dim=-1), top_k, dim=-1)
                probs = (top.values / top.values.sum(-1, keepdim=True)).double().cpu()
                pick = torch.multinomial(probs, 1, generator=gen).squeeze(1)
                new = top.indices.cpu().gather(1, pick[:, None]).squeeze(1)
                for i, x in zip(members, new.tolist()):
                    out[i].append(x)
                if step == new_tokens - 1:
                    break
                t = T + step  # position of the token just drawn
                h = embed(model, new[:, None].to(device))
                for li, layer in enumerate(model.layers):
                    h, k = layer(h, state=layer.resume_state(kept[li], t, rows), pos0=t, keep=True)
                    kept[li] = tuple(torch.cat([a, b], dim=1) for a, b in zip(kept[li], k))
    return out


def context_prefixes(model, bos: int, lengths: List[List[int]], seed: int, top_k: int) -> List[List[int]]:
    """ROME's context templates as token ids: for each [length, count], count samples of length - 1
    tokens after bos, with bos dropped wherever it appears. Cached per model and settings."""
    cache = _CTX.setdefault(model, {})
    key = (bos, json.dumps(lengths), seed, top_k)
    if key not in cache:
        gen = torch.Generator().manual_seed(seed)
        out: List[List[int]] = []
        for length, count in lengths:
            if count and length > 1:
                for s in sample(model, [[bos]] * count, length - 1, top_k, gen):
                    out.append([t for t in s[1:] if t != bos])
            else:
                out.extend([[]] * count)
        cache[key] = out
    return cache[key]


def read_key_value(model, target: Target, prompts: List[Prompt]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Keys (n, in) and values (n, rows) at each prompt's subject-last token (layers above the target
    are not run)."""
    device = target.module.weight.device
    tap = Tap(target)
    tap.at = (_idx(range(len(prompts)), device), _idx([p.last for p in prompts], device))
    with torch.no_grad(), tap.attached():
        run_layers(model, embed(model, pad([p.ids for p in prompts], device)), 0, target.layer + 1)
    return tap.keys, tap.values


def compute_v(model, target: Target, case: Case, prefixes: List[List[int]]):
    """v* by optimising δ on the target's output at the subject's last token; returns (v*, stats)."""
    hp = case.hp
    device = target.module.weight.device
    tnew = case.target_new
    rewriting = [Prompt(case.rewrite.ids + tnew[:-1], case.rewrite.last)] + [
        Prompt(pre + case.in_context.ids + tnew[:-1], len(pre) + case.in_context.last) for pre in prefixes]
    prompts = rewriting + case.kl_prompts
    R, K = len(rewriting), len(case.kl_prompts)
    ids = pad([p.ids for p in prompts], device)
    rows = _idx(range(len(prompts)), device)
    lookup = _idx([p.last for p in prompts], device)
    # positions whose next-token logits score the target: the last prompt token, then target[:-1]
    tb = _idx([r for r in range(R) for _ in tnew], device)
    tp = _idx([len(rewriting[r].ids) - len(tnew) + j for r in range(R) for j in range(len(tnew))], device)
    tt = _idx(tnew * R, device)
    kb = _idx(range(R, R + K), device)
    kp = lookup[R:]

    with torch.no_grad():
        h0 = run_layers(model, embed(model, ids), 0, target.layer)  # the layers below the edit, once
    tap = Tap(target)
    tap.at = (rows[:1], lookup[:1])
    with torch.no_grad(), tap.attached():
        run_layers(model, h0, target.layer, target.layer + 1)
    v_init = tap.values[0].clone()  # first rewriting prompt, before any δ
    tap.at = None
    delta = torch.zeros_like(v_init, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp["v_lr"])
    max_norm = hp["clamp_norm_factor"] * v_init.norm()
    kl_init = None
    stats = {"clamped": False, "stopped": "steps"}
    step = 0
    with tap.attached():
        for step in range(hp["v_num_grad_steps"]):
            opt.zero_grad()
            tap.add = (rows, lookup, delta)
            h = run_layers(model, h0, target.layer, len(model.layers))
            lp = log_probs_at(model, h, torch.cat([tb, kb]), torch.cat([tp, kp]))
            tok_lp = lp[: tb.shape[0]].gather(1, tt[:, None]).squeeze(1).view(R, len(tnew))
            nll_each = -tok_lp.mean(1)  # (R,) token-averaged NLL of target_new
            nll = nll_each.mean()
            kl = torch.zeros((), device=device)
            if K:
                kl_lp = lp[tb.shape[0]:]
                if kl_init is None:
                    kl_init = kl_lp.detach().clone()
                kl = hp["kl_factor"] * F.kl_div(kl_init, kl_lp, log_target=True, reduction="batchmean")
            wd = hp["v_weight_decay"] * (delta.norm() / v_init.norm() ** 2)
            loss = nll + kl + wd
            avg_prob = float(torch.exp(-nll_each).mean())
            stats.update(loss=float(loss), nll=float(nll), kl=float(kl), weight_decay=float(wd), avg_prob=avg_prob)
            if not math.isfinite(stats["loss"]):
                raise NumericError(f"v* optimisation: loss became {stats['loss']} at step {step}", field="params.hparams.v_lr")
            if loss.item() < hp["v_loss_stop"]:
                stats["stopped"] = "loss"
                break
            if hp["v_prob_stop"] is not None and step > hp["v_prob_stop_after"] and avg_prob > hp["v_prob_stop"]:
                stats["stopped"] = "prob"
                break
            if step == hp["v_num_grad_steps"] - 1:
                break
            loss.backward()
            opt.step()
            with torch.no_grad():
                if delta.norm() > max_norm:
                    delta.mul_(max_norm / delta.norm())
                    stats["clamped"] = True
    tap.add = None
    stats.update(steps=step + 1, v_init_norm=float(v_init.norm()), delta_norm=float(delta.norm()))
    return (v_init + delta).detach(), stats


@dataclass
class Edit:
    """A computed rank-one update of rows [lo, hi) of the target's weight: ΔW = right ⊗ u."""

    target: Target
    u: torch.Tensor  # (in,)
    right: torch.Tensor  # (hi - lo,)

    def delta(self) -> torch.Tensor:
        return torch.outer(self.right, self.u)


@contextmanager
def applied(edit: Edit):
    """The edit in place for the duration of the block; the touched rows are restored bit for bit
    afterwards (also on errors). Yields the saved original rows."""
    w = edit.target.module.weight
    lo, hi = edit.target.rows
    saved = w.data[lo:hi].clone()
    try:
        with torch.no_grad():
            w.data[lo:hi] = (saved.float() + edit.delta()).to(w.dtype)
        yield saved
    finally:
        with torch.no_grad():
            w.data[lo:hi] = saved


def compute_edit(model, target: Target, case: Case, C: Optional[torch.Tensor], times: dict) -> Tuple[Edit, dict]:
    """u from k̄ and C, v* by optimisation, right = (v* − W k)/(k·u): the Edit and its stats."""
    hp = case.hp
    t = time.perf_counter()
    prefixes = context_prefixes(model, case.bos_id, hp["context_template_length_params"], hp["context_seed"], hp["context_top_k"])
    in_ctx = [Prompt(pre + case.in_context.ids, len(pre) + case.in_context.last) for pre in prefixes]
    keys, _ = read_key_value(model, target, [case.rewrite] + in_ctx)
    k_bar = keys.mean(0)
    if hp["mom2_adjustment"]:
        Cd = C.double()
        if hp["cov_ridge"]:
            Cd = Cd + hp["cov_ridge"] * Cd.diagonal().mean() * torch.eye(Cd.shape[0], dtype=Cd.dtype, device=Cd.device)
        try:
            u = torch.linalg.solve(Cd, k_bar.double()).float()
        except RuntimeError as e:
            raise NumericError(f"the key covariance C ({C.shape[0]}x{C.shape[0]}) is singular ({e}); give a larger corpus or "
                               "set hparams.cov_ridge (e.g. 1e-3)", field="params.corpus") from e
    else:
        u = k_bar.clone()
    if not bool(torch.isfinite(u).all()) or float(u.norm()) == 0.0:
        raise NumericError("u = C⁻¹k̄ is not finite; the key covariance is singular: give a larger corpus or set "
                           "hparams.cov_ridge", field="params.corpus")
    u = u / u.norm()
    times["key"] = time.perf_counter() - t

    t = time.perf_counter()
    with frozen(model):
        v_star, vstats = compute_v(model, target, case, prefixes)
    if not bool(torch.isfinite(v_star).all()):
        raise NumericError("v* is not finite after the optimisation; lower hparams.v_lr", field="params.hparams.v_lr")
    times["v_star"] = time.perf_counter() - t

    t = time.perf_counter()
    k, cur = read_key_value(model, target, [case.rewrite])
    k, cur = k[0], cur[0]
    right = (v_star - cur) / torch.dot(k, u)
    edit = Edit(target, u, right)
    key_stats = {"contexts": len(in_ctx) + 1, "k_norm": float(k.norm()), "kbar_norm": float(k_bar.norm()),
                 "u_dot_k": float(torch.dot(k, u)), "cosine_k_kbar": float(F.cosine_similarity(k, k_bar, dim=0))}
    times["update"] = time.perf_counter() - t
    return edit, {"key": key_stats, "v_star": vstats, "v_star_vector": v_star}


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------

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
        h = run_layers(model, embed(model, pad(seqs, device)), 0, len(model.layers))
        lp = log_probs_at(model, h, _idx(b, device), _idx(pos, device))
        tok_lp = lp.gather(1, _idx(tok, device)[:, None]).squeeze(1)
        own = _idx(owner, device)
        sums = torch.zeros(len(seqs), device=device).index_add_(0, own, -tok_lp)
        counts = torch.zeros(len(seqs), device=device).index_add_(0, own, torch.ones_like(tok_lp))
        first = _idx([i * T for i in range(len(prompts))], device)
        top1 = log_probs_at(model, h, first, _idx([len(p) - 1 for p in prompts], device)).argmax(-1)
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


def summarize(results: List[dict], which: str = "post") -> dict:
    """ROME's ``summarize`` over cases: means of ES/PS/NS/EM/PM/NM and S = hmean(ES, PS, NS) of the means."""
    out = {"cases": len(results)}
    for k in ("ES", "PS", "NS", "EM", "PM", "NM"):
        out[k] = _mean([r[which][k] for r in results if r[which][k] is not None])
    out["S"] = hmean([out["ES"], out["PS"], out["NS"]])
    ents = [r[which]["generation"]["entropy"] for r in results if r[which].get("generation")]
    out["GE"] = _mean(ents)
    return out


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------

@register("edit")
def run_edit(engine, model_id: str, prompt_key: str, params: dict) -> dict:
    """One ROME edit (or, with ``cov_only``, one covariance); see the module docstring."""
    started = time.perf_counter()
    ck = engine._model(model_id)
    model = ck.model
    case = parse_params(ck.model_type, ck.config, params)
    target = target_of(ck.model_type, model, case.matrix, case.layer)
    times = {}
    base = {"kind": "edit", "prompt_key": prompt_key, "model_type": ck.model_type, "matrix": case.matrix,
            "layer": case.layer, "module": target.name, "rows": list(target.rows)}

    C, cov = None, None
    if case.corpus is not None and (case.hp["mom2_adjustment"] or case.cov_only):
        t = time.perf_counter()
        C, cov = covariance(model, target, case.corpus, case.corpus_hash, case.hp["mom2_max_len"], case.hp["mom2_batch_tokens"])
        times["covariance"] = time.perf_counter() - t
        moment = cov.pop("moment_sum", None)
        if case.cov_only:
            out = dict(base, cov_only=True, covariance=cov)
            if case.return_moment:
                m = moment if moment is not None else C * cov["tokens"]
                out["moment_b64"] = base64.b64encode(m.float().cpu().contiguous().numpy().tobytes()).decode()
            out["seconds"] = dict(times, total=time.perf_counter() - started)
            return out

    result = dict(base, covariance=cov)
    if case.evaluate:
        t = time.perf_counter()
        result["pre"] = evaluate(model, case)
        times["eval"] = time.perf_counter() - t
    edit, stats = compute_edit(model, target, case, C, times)
    v_star = stats.pop("v_star_vector")
    result.update(stats)
    lo, hi = target.rows
    with applied(edit) as saved:
        t = time.perf_counter()
        k, now = read_key_value(model, target, [case.rewrite])
        result["update"] = {"norm": float(edit.delta().norm()), "right_norm": float(edit.right.norm()),
                            "value_error": float((now[0] - v_star).norm() / v_star.norm())}
        times["update"] += time.perf_counter() - t
        if case.evaluate:
            t = time.perf_counter()
            result["post"] = evaluate(model, case)
            times["eval"] += time.perf_counter() - t
    result["restored"] = bool(torch.equal(target.module.weight.data[lo:hi], saved))
    result["seconds"] = dict(times, total=time.perf_counter() - started)
    return result
