"""ROME's algorithm (Meng et al. 2022, ``kmeng01/rome``: ``compute_u``, ``compute_v``, ``rome_main``, as
romba adapted it to Mamba): the key covariance C, the context prefixes, u, v* (``vstar.py``) and the
rank-one update, applied for the duration of a block and restored bit for bit. Steps 1–5 of
``rome/__init__.py``."""

from __future__ import annotations

import hashlib
import json
import os
import time
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from ...errors import InvalidArgument, NotFound, NumericError
from .._common import embed, run_layers
from .forward import Tap, Target, frozen, idx, pad, sample
from .params import Case, Prompt
from .vstar import compute_v, precision

#: Bytes of covariances kept per process (LRU). C's scope is (model, layer, key module), and an edit
#: sweep sends a worker every (layer, matrix) of a case before the next case: the cache must hold all of
#: a model's Cs, or the LRU cycles and every edit computes (or fetches and hashes) its C again. mamba-2.8b
#: has 64 × (5120² + 2560²) × 4 B = 8.4 GB of them (W_o's 105 MB, in_proj's 26 MB shared by W_a and W_g).
COV_CACHE_BYTES = 12 << 30

# Per model (weakly: a model loaded again under the same id gets fresh entries): covariances and
# context prefixes.
_COV: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_CTX: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _cached(cache: OrderedDict, key: tuple):
    """(C, summary marked cached) when the per-model cache holds key (now its newest entry), else None."""
    if key not in cache:
        return None
    cache.move_to_end(key)
    C, summary = cache[key]
    return C, dict(summary, cached=True)


def covariance(model, target: Target, corpus: List[List[int]], corpus_hash: str, max_len: int, batch_tokens: int):
    """(C = E[k kᵀ] float32 (dim, dim), summary dict) of the target's input over every corpus token,
    from the per-model cache when present."""
    device = target.module.weight.device
    cache = _COV.setdefault(model, OrderedDict())
    key = (target.name, corpus_hash, max_len)  # W_a and W_g share in_proj's input, hence one C
    hit = _cached(cache, key)
    if hit:
        return hit
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
            b = idx([r for r, s in enumerate(batch) for _ in s], device)
            p = idx([t for s in batch for t in range(len(s))], device)
            tap.at = (b, p)
            run_layers(model, embed(model, pad(batch, device)), 0, end=target.layer + 1)
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


def load_covariance(model, target: Target, spec: dict):
    """(C, summary) from ``params.covariance_file`` (float32, row-major, dim × dim, written by the agent
    from the cluster's object store): its dim, size, sha256 and values are checked before use; cached
    per model like a computed C, under the file's hash."""
    cache = _COV.setdefault(model, OrderedDict())
    key = (target.name, "sha256:" + spec["sha256"])
    hit = _cached(cache, key)
    if hit:
        return hit
    started = time.perf_counter()
    dim = target.module.in_features
    if spec["dim"] != dim:
        raise InvalidArgument(f"params.covariance_file.dim: expected {dim} (the input width of {target.name}), got {spec['dim']}; "
                              "the covariance belongs to another model or matrix", field="params.covariance_file.dim")
    try:
        with open(spec["path"], "rb") as f:
            blob = f.read(dim * dim * 4 + 1)
    except OSError as e:
        raise NotFound(f"params.covariance_file.path: cannot read {spec['path']!r} ({e.strerror})", field="params.covariance_file.path") from e
    if len(blob) != dim * dim * 4:
        raise InvalidArgument(f"params.covariance_file.path: {len(blob)} bytes, expected {dim * dim * 4} ({dim}x{dim} float32)",
                              field="params.covariance_file.path")
    digest = hashlib.sha256(blob).hexdigest()
    if digest != spec["sha256"]:
        raise InvalidArgument(f"params.covariance_file.sha256: the file's sha256 is {digest}, expected {spec['sha256']}; it changed or "
                              "was cut short", field="params.covariance_file.sha256")
    C = torch.frombuffer(bytearray(blob), dtype=torch.float32).view(dim, dim).to(target.module.weight.device)
    if not bool(torch.isfinite(C).all()):
        raise NumericError("params.covariance_file: C holds non-finite values", field="params.covariance_file.path")
    summary = {"tokens": spec["tokens"], "sequences": None, "dim": dim, "corpus_hash": None, "trace": float(torch.trace(C)),
               "seconds": time.perf_counter() - started, "fetched": True}
    cache[key] = (C, summary)
    _trim_cov_cache()
    return C, dict(summary, cached=False)


def write_moment(path: str, moment: torch.Tensor) -> str:
    """The float32 sum of k kᵀ to ``path`` (row-major; written beside and renamed, so a reader never
    sees half a file); returns its sha256."""
    blob = moment.float().cpu().contiguous().numpy().tobytes()
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except OSError as e:
        raise NotFound(f"params.moment_path: cannot write {path!r} ({e.strerror})", field="params.moment_path") from e
    return hashlib.sha256(blob).hexdigest()


def _trim_cov_cache() -> None:
    """Drop least recently used covariances (keeping each model's newest) above COV_CACHE_BYTES."""
    total = sum(C.numel() * C.element_size() for od in _COV.values() for C, _ in od.values())
    for od in list(_COV.values()):
        while total > COV_CACHE_BYTES and len(od) > 1:
            _, (C, _) = od.popitem(last=False)
            total -= C.numel() * C.element_size()


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
    tap.at = (idx(range(len(prompts)), device), idx([p.last for p in prompts], device))
    with torch.no_grad(), tap.attached():
        run_layers(model, embed(model, pad([p.ids for p in prompts], device)), 0, end=target.layer + 1)
    return tap.keys, tap.values


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
    with frozen(model), precision(hp["v_precision"], target.module.weight.device):
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
