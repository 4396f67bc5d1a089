"""ROME (rank-one model editing) of one projection, with CounterFact-style evaluation: sweep kind ``edit``.

Paper §3 (``shared/reference/paper-methods.md``); the algorithm is ROME's (Meng et al. 2022,
``kmeng01/rome``: ``compute_u``, ``compute_v``, ``rome_main``) as romba adapted it to Mamba.
One request edits one fact (a *case*) at one (layer, matrix), evaluates before and after, and
restores the weights bit-identically (only the touched rows are kept aside).

Files: ``params.py`` (the request's defaults and validation), ``algorithm.py`` (steps 1–3 and 5),
``vstar.py`` (step 4),
``evaluate.py`` (step 6 and ``summarize``), ``forward.py`` (the edit target, a hook on it, padded
forwards, sampling); this file is the entry point. The edit targets are the model files' tables
(``Architecture.edit_targets`` in ``mamba.py`` / ``gpt_neox.py``):

============== ============================ ======================== ==============================
model          matrix                       key k (the module input) value (the module output)
============== ============================ ======================== ==============================
mamba          ``W_o`` = mixer.out_proj      s ⊗ g (d_inner)          o (d_model)
mamba          ``W_a`` = in_proj rows        norm(h) (d_model)        a = in_proj(·)[:d_inner]
               0..d_inner
mamba          ``W_g`` = in_proj rows        norm(h) (d_model)        z = in_proj(·)[d_inner:]
               d_inner..2·d_inner                                     (before SiLU)
mamba2         ``W_o`` = mixer.out_proj      GatedRMSNorm(y, g)       o (d_model)
mamba2         ``W_a`` = in_proj rows        norm(h) (d_model)        x = in_proj(·)[d_inner:2·d_inner]
               d_inner..2·d_inner                                     (x of xBC, before the conv)
mamba2         ``W_g`` = in_proj rows 0..    norm(h) (d_model)        z = in_proj(·)[:d_inner]
               d_inner                                                (before SiLU)
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
   ``v_precision`` (ours; default ``float32``): ``tf32`` or ``bf16`` (autocast) matrix products for
   the optimisation only, about 2× faster at mamba-2.8b on an H200 with scores within a point of
   float32 on the tiny models (``bench/RESULTS.md``, issue 17).
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
      "return_moment": false,                   # with cov_only: also the float32 sum of k kᵀ, base64
      "corpus_slice": [0, 100],                 # optional: only these sequences of the corpus
      "moment_path": "/dir/part.f32",           # with cov_only: write that sum (float32, row-major) here;
                                                # the result gains "moment_sha256" (the cluster's
                                                # covariance shards: the agent uploads the file)
      "covariance_file": {"path", "sha256", "dim", "tokens"}   # a C (float32 dim×dim, row-major)
                                                # merged by the coordinator and fetched by the agent:
                                                # used instead of computing C from the corpus; its
                                                # dim, size, hash and values are checked first
    }

Result (JSON object)::

    {
      "kind": "edit", "prompt_key", "model_type", "matrix", "layer",
      "module": "backbone.layers.3.mixer.out_proj", "rows": [0, 128],
      "covariance": {"tokens", "sequences", "dim", "corpus_hash", "trace", "cached", "seconds"}
                    | null,                      # null when mom2_adjustment is false
      "key": {"contexts": 21, "k_norm", "kbar_norm", "u_dot_k", "cosine_k_kbar"},
      "v_star": {"steps", "loss", "nll", "kl", "weight_decay", "avg_prob", "v_init_norm",
                 "delta_norm", "clamped", "stopped": "loss"|"prob"|"steps",
                 "cuda_graph": bool, "cuda_graph_error"?,    # the steps replayed a CUDA graph (CUDA only)
                 "resumed": bool,                            # the steps ran from the subject's last token
                 "seconds": {"passes", "first_step", "steps"}},  # before the steps; step 0 (+ capture); the rest
      "update": {"norm", "right_norm", "value_error"},   # value_error: ‖W'k − v*‖/‖v*‖ after the update
      "pre": EVAL, "post": EVAL,                # absent when evaluate is false
      "pre_cached": bool,                        # pre came from this process's cache: an earlier edit
                                                # of the same case (prompts, objects, generation) and weights
      "restored": true,                          # the touched rows equal the saved copy bit for bit
      "seconds": {"covariance", "key", "v_star", "update", "eval", "total"}
    }
    EVAL = {"rewrite": {"nll_new", "nll_true", "p_new", "p_true", "top1", "top1_is_new",
                        "top1_is_true"},
            "paraphrases": [{"nll_new", "nll_true"}], "neighbourhood": [{"nll_new", "nll_true"}],
            "ES", "PS", "NS", "S", "EM", "PM", "NM",            # PS/PM, NS/NM null with no prompts
            "generation": {"entropy", "ids"?} | null}

With ``cov_only`` the result is ``{"kind", "cov_only": true, "matrix", "layer", "module",
"covariance": {...}, "moment_b64"?, "moment_sha256"?, "seconds"}``. With ``covariance_file``,
``covariance`` is ``{"tokens", "dim", "trace", "fetched": true, "cached", "seconds"}``. Bad params raise ``InvalidArgument`` naming
``params.<field>`` (what was expected, what came); a singular C or a non-finite v* raises
``NumericError``; all are raised before the weights change, and an error while they are changed
restores them first.

Speed (Mamba, Mamba-2): v*'s steps run only the tokens from each prompt's subject-last token on,
resumed from the states there (``vstar.py``). Each piece of one-time work is kept in the worker at its
scope: per model the context prefixes and decode graphs; per (layer, key module) C (an LRU that holds
all of a 2.8B model's); per case the pre-edit evaluation (``pre_cached``) and v*'s pass over its
prompts (``vstar.case_pass``), so a sweep's further edits of a case skip both. Mamba's evaluation
samples from the states of its NLL pass (no prompt passes of its own). On CUDA the scans run as one Triton launch
forward and one backward (``engine/scan_grad.py``); v*'s steps and sampling's decode steps replay
CUDA graphs, the decode graph kept per model and batch size (``FACTSWEEP_NO_CUDA_GRAPH=1`` turns them
off, ``FACTSWEEP_NO_TRITON=1`` the kernels). The CPU runs the PyTorch loops.

The weights are edited in place for the duration of one request (the worker runs one request at a
time); cached causal-tracing runs stay valid because the restore is exact.
"""

from __future__ import annotations

import base64
import time

import torch

from ... import scan_grad
from .. import register
from .algorithm import (Edit, applied, compute_edit, compute_v, context_prefixes, covariance, load_covariance, read_key_value,
                        write_moment)
from .evaluate import evaluate, evaluate_unedited, forget_unedited, hmean, ngram_entropy, summarize, target_nlls
from . import vstar
from .forward import Tap, Target, sample, target_of
from .params import GENERATION, HPARAMS, Case, Prompt, parse_params

__all__ = ["run_edit", "parse_params", "HPARAMS", "GENERATION", "Case", "Prompt", "Target", "Tap", "target_of",
           "covariance", "load_covariance", "write_moment", "context_prefixes", "read_key_value", "compute_v", "compute_edit", "Edit", "applied",
           "evaluate", "evaluate_unedited", "target_nlls", "sample", "ngram_entropy", "hmean", "summarize"]


@register("edit")
def run_edit(engine, model_id: str, prompt_key: str, params: dict) -> dict:
    """One ROME edit (or, with ``cov_only``, one covariance); see the module docstring. Mamba's scans
    take the fused Triton kernels on CUDA (``engine.scan_grad``)."""
    with scan_grad.fused():
        return _edit(engine, model_id, prompt_key, params)


def _edit(engine, model_id: str, prompt_key: str, params: dict) -> dict:
    started = time.perf_counter()
    ck = engine.checkpoint(model_id)
    model = ck.model
    case = parse_params(ck.architecture, ck.config, params)
    target = target_of(ck.architecture, model, case.matrix, case.layer)
    times = {}
    base = {"kind": "edit", "prompt_key": prompt_key, "model_type": ck.model_type, "matrix": case.matrix,
            "layer": case.layer, "module": target.name, "rows": list(target.rows)}

    C, cov = None, None
    if case.covariance_file is not None and case.hp["mom2_adjustment"]:
        t = time.perf_counter()
        C, cov = load_covariance(model, target, case.covariance_file)
        times["covariance"] = time.perf_counter() - t
    elif case.corpus is not None and (case.hp["mom2_adjustment"] or case.cov_only):
        t = time.perf_counter()
        C, cov = covariance(model, target, case.corpus, case.corpus_hash, case.hp["mom2_max_len"], case.hp["mom2_batch_tokens"])
        times["covariance"] = time.perf_counter() - t
        moment = cov.pop("moment_sum", None)
        if case.cov_only:
            out = dict(base, cov_only=True, covariance=cov)
            m = moment if moment is not None else C * cov["tokens"]
            if case.return_moment:
                out["moment_b64"] = base64.b64encode(m.float().cpu().contiguous().numpy().tobytes()).decode()
            if case.moment_path is not None:
                out["moment_sha256"] = write_moment(case.moment_path, m)
            out["seconds"] = dict(times, total=time.perf_counter() - started)
            return out

    result = dict(base, covariance=cov)
    if case.evaluate:
        t = time.perf_counter()
        result["pre"], result["pre_cached"] = evaluate_unedited(model, case)
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
    if not result["restored"]:
        forget_unedited(model)  # its pre-edit evaluations and case passes were of the weights as they were
        vstar.forget(model)
    result["seconds"] = dict(times, total=time.perf_counter() - started)
    return result
