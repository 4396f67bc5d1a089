"""The parameters of a ROME edit request (schema in ``rome/__init__.py``): defaults and validation.

Every error is an ``InvalidArgument`` naming ``params.<field>``, what was expected and what came
(``_common.bad``), raised before any weight changes.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

from ...errors import NotFound
from .._common import as_ids, bad

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
    # Matrix products of the v* optimisation (ours): "float32" exactly; "tf32" lets CUDA's matrix units
    # round their float32 inputs to TF32 (no effect on a CPU); "bf16" runs its forward and backward under
    # bf16 autocast. The key, the update and the evaluation stay in the run dtype either way.
    "v_precision": "float32",
}

V_PRECISIONS = ("float32", "tf32", "bf16")

GENERATION = {"max_new_tokens": 32, "top_k": 5, "seed": 0, "return_ids": False}


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
    #: A C computed elsewhere (the cluster's object store, fetched by the agent): path, sha256, dim, tokens.
    covariance_file: Optional[dict] = None
    #: With cov_only: write the float32 sum of k kᵀ (row-major) to this file (the agent uploads it).
    moment_path: Optional[str] = None


def _ids(value, field: str, vocab: int, max_pos: int) -> List[int]:
    """Token ids; a bad one's error names the whole list ``params.<field>``."""
    return as_ids(value, field, vocab, max_pos, name_token=False)


def _find(hay: List[int], needle: List[int]) -> int:
    for i in range(len(hay) - len(needle) + 1):
        if hay[i : i + len(needle)] == needle:
            return i
    return -1


def _prompt(obj, field: str, vocab: int, max_pos: int, subject_ids: Optional[List[int]], check_tokens: bool) -> Prompt:
    """A {ids, subject} object: ids validated, the subject span inside the prompt, and (check_tokens)
    the tokens there equal to subject_ids; without a span, subject_ids is looked for in ids."""
    if not isinstance(obj, dict):
        raise bad(field, 'an object {"ids": [...], "subject": [start, end]}', obj)
    ids = _ids(obj.get("ids"), f"{field}.ids", vocab, max_pos)
    span = obj.get("subject")
    if span is None:
        if not subject_ids:
            raise bad(f"{field}.subject", "the subject's token span [start, end) (or params.subject_ids to look it up)", None)
        at = _find(ids, subject_ids)
        if at < 0:
            raise bad(f"{field}.subject", f"params.subject_ids {subject_ids} in params.{field}.ids", ids,
                      "the subject is absent: tokenize it as it appears in the prompt (with its leading space when "
                      "it is not the first word) or give the span")
        return Prompt(ids, at + len(subject_ids) - 1)
    if (not isinstance(span, (list, tuple)) or len(span) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) for v in span)):
        raise bad(f"{field}.subject", "[start, end] token indices", span)
    s, e = span
    if not 0 <= s < e <= len(ids):
        raise bad(f"{field}.subject", f"0 <= start < end <= {len(ids)}", span,
                  f"the span is empty or outside the prompt of {len(ids)} tokens")
    if check_tokens and subject_ids is not None and ids[s:e] != subject_ids:
        raise bad(f"{field}.subject", f"the tokens of params.subject_ids {subject_ids} at [{s}, {e})", ids[s:e],
                  "the subject is absent there; fix the span or the subject's tokenization")
    return Prompt(ids, e - 1)


def _hparams(raw) -> dict:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise bad("hparams", "an object", raw)
    unknown = sorted(set(raw) - set(HPARAMS))
    if unknown:
        raise bad(f"hparams.{unknown[0]}", f"a known hyper-parameter ({', '.join(sorted(HPARAMS))})", unknown[0],
                  "remove or rename the unknown one")
    hp = dict(HPARAMS, **raw)
    for k in ("v_num_grad_steps", "v_prob_stop_after", "context_seed", "context_top_k", "mom2_max_len", "mom2_batch_tokens"):
        v = hp[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k in ("context_seed", "v_prob_stop_after") else 1):
            raise bad(f"hparams.{k}", "a positive integer", v)
    for k in ("v_lr", "v_weight_decay", "clamp_norm_factor", "kl_factor", "v_loss_stop", "cov_ridge"):
        v = hp[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise bad(f"hparams.{k}", "a non-negative number", v)
    if hp["v_prob_stop"] is not None and (isinstance(hp["v_prob_stop"], bool) or not isinstance(hp["v_prob_stop"], (int, float))):
        raise bad("hparams.v_prob_stop", "a probability or null", hp["v_prob_stop"])
    ctx = hp["context_template_length_params"]
    if (not isinstance(ctx, list) or any(not isinstance(x, (list, tuple)) or len(x) != 2
                                         or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in x) for x in ctx)):
        raise bad("hparams.context_template_length_params",
                  "[[length, count], ...] of non-negative integers (ROME: [[5, 10], [10, 10]])", ctx)
    if not isinstance(hp["mom2_adjustment"], bool):
        raise bad("hparams.mom2_adjustment", "true or false", hp["mom2_adjustment"])
    if hp["v_precision"] not in V_PRECISIONS:
        raise bad("hparams.v_precision", f"one of {list(V_PRECISIONS)}", hp["v_precision"], 'use "float32" for the paper\'s setting')
    return hp


def _corpus(params: dict, vocab: int) -> Tuple[Optional[List[List[int]]], str]:
    raw, path = params.get("corpus"), params.get("corpus_path")
    if raw is not None and path is not None:
        raise bad("corpus", "either corpus or corpus_path, not both", "both")
    if path is not None:
        if not isinstance(path, str) or not path:
            raise bad("corpus_path", "a file path", path)
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except OSError as e:
            raise NotFound(f"params.corpus_path: cannot read {path!r} ({e.strerror})", field="params.corpus_path") from e
        try:
            raw = json.loads(blob)
        except ValueError as e:
            raise bad("corpus_path", "a JSON file", path, f"it is not JSON ({e})") from e
        if isinstance(raw, dict):
            raw = raw.get("corpus")
        where = "corpus_path"
    else:
        where = "corpus"
    if raw is None:
        return None, ""
    if not isinstance(raw, list) or not raw:
        raise bad(where, "a non-empty list of token-id lists", raw)
    cut = params.get("corpus_slice")
    if cut is not None:  # a covariance shard's part of the corpus
        if (not isinstance(cut, list) or len(cut) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in cut)
                or not 0 <= cut[0] < cut[1] <= len(raw)):
            raise bad("corpus_slice", f"[start, end) with 0 <= start < end <= {len(raw)} (the corpus' sequences)", cut)
        raw = raw[cut[0]:cut[1]]
    seqs = [_ids(s, f"{where}[{i}]", vocab, 0) for i, s in enumerate(raw)]
    digest = hashlib.sha256(json.dumps(seqs, separators=(",", ":")).encode()).hexdigest()[:16]
    return seqs, digest


def _generation(gen, rewrite: Prompt, paraphrases: List[List[int]], vocab: int, max_pos: int) -> Optional[dict]:
    if gen is None:
        return None
    if not isinstance(gen, dict):
        raise bad("generation", "an object or null", gen)
    unknown = sorted(set(gen) - set(GENERATION) - {"prompts"})
    if unknown:
        raise bad(f"generation.{unknown[0]}", f"one of prompts, {', '.join(GENERATION)}", unknown[0])
    g = dict(GENERATION, **{k: v for k, v in gen.items() if k != "prompts"})
    for k in ("max_new_tokens", "top_k", "seed"):
        if isinstance(g[k], bool) or not isinstance(g[k], int) or g[k] < (0 if k == "seed" else 1):
            raise bad(f"generation.{k}", "a positive integer", g[k])
    if "prompts" in gen:
        g["prompts"] = [_ids(x, f"generation.prompts[{i}]", vocab, max_pos) for i, x in enumerate(gen["prompts"] or [])]
    else:
        g["prompts"] = [rewrite.ids] + paraphrases
    if max_pos:
        too_long = [i for i, x in enumerate(g["prompts"]) if len(x) + g["max_new_tokens"] > max_pos]
        if too_long:
            raise bad("generation.max_new_tokens", f"prompt {too_long[0]} plus the new tokens within the model's "
                      f"{max_pos} positions", g["max_new_tokens"])
    return g


def _covariance_file(raw) -> Optional[dict]:
    """params.covariance_file: {path, sha256, dim, tokens} of a float32 C the agent fetched (input from
    outside: the size and hash are checked when it is read)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise bad("covariance_file", '{"path", "sha256", "dim", "tokens"}', raw)
    path, sha, dim, tokens = raw.get("path"), raw.get("sha256"), raw.get("dim"), raw.get("tokens")
    if not isinstance(path, str) or not path:
        raise bad("covariance_file.path", "a file path", path)
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise bad("covariance_file.sha256", "64 lower-case hex digits", sha)
    for k, v in (("dim", dim), ("tokens", tokens)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise bad(f"covariance_file.{k}", "a positive integer", v)
    return {"path": path, "sha256": sha, "dim": dim, "tokens": tokens}


def parse_params(architecture, config, params: dict) -> Case:
    """Validate the request for a model of ``architecture`` (its ``edit_targets``) and ``config``."""
    vocab, max_pos = config.vocab_size, config.max_positions
    valid = list(architecture.edit_targets)
    matrix = params.get("matrix")
    if matrix not in valid:
        raise bad("matrix", f"one of {', '.join(valid)} for a {architecture.model_type} model", matrix)
    layer = params.get("layer")
    L = config.num_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < L:
        raise bad("layer", f"an integer in [0, {L - 1}] (the model has {L} layers)", layer)
    hp = _hparams(params.get("hparams"))
    corpus, digest = _corpus(params, vocab)
    cov_only = bool(params.get("cov_only", False))
    cov_file = None if cov_only else _covariance_file(params.get("covariance_file"))
    moment_path = params.get("moment_path") if cov_only else None
    if moment_path is not None and (not isinstance(moment_path, str) or not moment_path):
        raise bad("moment_path", "a file path", moment_path)
    if (hp["mom2_adjustment"] or cov_only) and corpus is None and cov_file is None:
        raise bad("corpus", "token-id lists (or params.corpus_path) for the key covariance C", None,
                  "or set hparams.mom2_adjustment to false")
    bos = params.get("bos_id", 0)
    if isinstance(bos, bool) or not isinstance(bos, int) or not 0 <= bos < vocab:
        raise bad("bos_id", f"a token id in [0, {vocab})", bos)
    if cov_only:
        return Case(matrix, layer, None, None, [], [], [], [], [], corpus, digest, bos, hp, None, False, True,
                    bool(params.get("return_moment", False)), None, moment_path)

    subject_ids = params.get("subject_ids")
    if subject_ids is not None:
        subject_ids = _ids(subject_ids, "subject_ids", vocab, 0)
    tnew = _ids(params.get("target_new_ids"), "target_new_ids", vocab, 0)
    ttrue = _ids(params.get("target_true_ids"), "target_true_ids", vocab, 0)
    if tnew == ttrue:
        raise bad("target_new_ids", f"an object other than target_true_ids {ttrue}", tnew)
    rw = params.get("rewrite")
    rewrite = _prompt(rw, "rewrite", vocab, max_pos, subject_ids, True)
    ic = rw.get("in_context") if isinstance(rw, dict) else None
    in_context = rewrite if ic is None else _prompt(ic, "rewrite.in_context", vocab, max_pos, None, False)

    def prompt_list(name):
        raw = params.get(name) or []
        if not isinstance(raw, list):
            raise bad(name, "a list of token-id lists", raw)
        return [_ids(x, f"{name}[{i}]", vocab, max_pos) for i, x in enumerate(raw)]

    paraphrases, neighbourhood = prompt_list("paraphrases"), prompt_list("neighbourhood")
    kl_raw = params.get("kl_prompts") or []
    if not isinstance(kl_raw, list):
        raise bad("kl_prompts", "a list of {ids, subject} objects", kl_raw)
    # the span is authoritative here: BPE may split the subject otherwise in another sentence
    kl_prompts = [_prompt(x, f"kl_prompts[{i}]", vocab, max_pos, subject_ids, False) for i, x in enumerate(kl_raw)]
    if hp["kl_factor"] > 0 and not kl_prompts:
        raise bad("kl_prompts", f'at least one prompt (ROME: "{{subject}} is a") while hparams.kl_factor is {hp["kl_factor"]}',
                  kl_raw, "or set kl_factor to 0")
    gen = _generation(params.get("generation", {}), rewrite, paraphrases, vocab, max_pos)
    if max_pos:
        longest = max(l for l, _ in hp["context_template_length_params"]) if hp["context_template_length_params"] else 0
        need = longest + len(in_context.ids) + len(tnew)
        if need > max_pos:
            raise bad("rewrite.in_context.ids", f"a context prefix, the prompt and the target within the model's {max_pos} "
                      "positions", f"{need} tokens")
    return Case(matrix, layer, rewrite, in_context, tnew, ttrue, paraphrases, neighbourhood, kl_prompts, corpus, digest,
                bos, hp, gen, bool(params.get("evaluate", True)), False, False, cov_file)
