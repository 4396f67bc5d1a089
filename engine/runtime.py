"""The engine API that the worker (``engine/worker.py``) drives; see ``engine/API.md``.

    eng = Engine(cache_budget_bytes=2 << 30)
    eng.load_model("m", "/ckpt/mamba-2.8b", dtype="float32", device="cuda:0")
    info = eng.prepare_prompt("m", "fact-17/swap", ids, (3, 6), SwapSpec(corrupted_ids))
    eng.run_cells("m", "fact-17/swap", [CellSpec("residual", l, t) for l in range(64) for t in range(16)])

A prepared prompt is remembered (its ids, subject, corruption) until evicted explicitly; its cached
runs may be dropped by the LRU budget at any time and are then rebuilt on the next ``run_cells``
(a cache miss), so the cache's budget never turns into an error for the caller.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional, Union

import torch

from . import packed, prepare, trace
from .cache import PromptCache, PromptRuns, prompt_cache_bytes
from .checkpoint import Checkpoint, load_checkpoint
from .corruption import NoiseSpec, SwapSpec, corrupted_embeddings, validate_ids
from .errors import InvalidArgument, NotFound, NumericError
from .kernels import host_to_device
from .sites import BLOCK
from .trace import CellSpec, PendingCells

log = logging.getLogger("engine.runtime")


def on_device(device: torch.device):
    """The model's GPU as the current CUDA device while its work is launched: Triton launches on the
    current device, so a model on cuda:1 in a process whose current device is cuda:0 fails otherwise
    (found on a 2-GPU host; workers see one GPU each and never hit it)."""
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()

__all__ = ["Engine", "PendingCells", "ModelInfo", "PromptInfo", "EngineStats", "PreparedPrompt", "NoiseSpec", "SwapSpec", "CellSpec"]

DEFAULT_CPU_BUDGET = 2 << 30
# The sites of the warm-up's full-size grid (those a model has; residual window 1, the others 10): the
# paper's grid, 4 sites for Mamba, 3 for NeoX (bench/engine.py's GRIDS).
WARM_UP_GRID_SITES = ("residual", "mixer", "ssm", "gate", "attn", "mlp")


@dataclass
class ModelInfo:
    model_id: str
    model_type: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    max_positions: int  # 0: no limit (Mamba)
    sites: list
    dtype: str
    device: str


@dataclass
class PromptInfo:
    prompt_key: str
    num_tokens: int
    answer_id: int
    p_clean: float
    p_corrupt: float
    logit_clean: float
    logit_corrupt: float
    cache_bytes: int
    cache_hit: bool
    clean_argmax: int


@dataclass
class EngineStats:
    cache_bytes: int
    cache_budget_bytes: int
    cached_prompt_keys: list
    cache_hits: int
    cache_misses: int
    cache_evictions: int
    cells_run: int
    device_memory_used_bytes: int


@dataclass
class PromptSpec:
    """What a prepared prompt was made from: enough to rebuild its runs after an eviction."""

    ids: list
    subject: tuple
    corruption: Union[NoiseSpec, SwapSpec]
    answer_id: Optional[int]
    fingerprint: str


@dataclass
class PreparedPrompt:
    """A prepared prompt as the experiment kinds use it: the model, what the prompt was made from, and
    its cached clean and corrupted runs (``cache.PromptRuns``)."""

    checkpoint: Checkpoint
    spec: PromptSpec
    runs: PromptRuns


def _fingerprint(ids, subject, corruption, answer_id) -> str:
    h = hashlib.sha256(repr((list(ids), tuple(subject), answer_id, type(corruption).__name__)).encode())
    if isinstance(corruption, NoiseSpec):
        h.update(repr((corruption.scale, corruption.std, corruption.samples, corruption.seed)).encode())
        if corruption.explicit is not None:
            h.update(torch.as_tensor(corruption.explicit).float().cpu().numpy().tobytes())
    else:
        h.update(repr(list(corruption.corrupted_ids)).encode())
    return h.hexdigest()


class Engine:
    """Loaded models, prepared prompts and their cache; all calls raise ``engine.errors`` types."""

    def __init__(self, cache_budget_bytes: Optional[int] = None, max_batch_rows: int = 256,
                 trace_rows: Optional[int] = None):
        """``max_batch_rows``: rows a forward in the experiment kinds; ``trace_rows``: rows a micro-batch
        of the tracing fast path (None: as many as half the free GPU memory holds; CPU: 1 GiB)."""
        self._budget_given = bool(cache_budget_bytes)
        self.cache = PromptCache(cache_budget_bytes or DEFAULT_CPU_BUDGET)
        self.max_batch_rows = max_batch_rows
        self.trace_rows = trace_rows
        self.models: dict = {}
        self.specs: dict = {}
        self.cells_run = 0

    # -- models ---------------------------------------------------------------------------
    def load_model(self, model_id: str, path: str, dtype: str = "float32", device: str = "cpu",
                   allow_pickle: bool = False, cache_budget_bytes: Optional[int] = None,
                   warm_up: Optional[bool] = None) -> ModelInfo:
        """Load a checkpoint folder under ``model_id`` (replacing, and dropping the prompts of, a model
        already loaded under that id). ``cache_budget_bytes`` (0/None: keep) sets the engine's budget.
        ``warm_up`` (None: on CUDA unless ``FACTSWEEP_WARM_UP=0``): run :meth:`warm_up` before returning,
        so the first real prompt finds its kernels compiled."""
        if not model_id:
            raise InvalidArgument("model_id: expected a non-empty name for the model", field="model_id")
        ck = load_checkpoint(path, dtype=dtype, device=device, allow_pickle=allow_pickle)
        if ck.device.type == "cuda":
            # float32 must mean float32 (the goldens hold to 1e-5): no TF32 in matmuls or cuDNN convs.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        if model_id in self.models:
            self._forget(model_id, None)
        self.models[model_id] = ck
        if cache_budget_bytes:
            self.cache.set_budget(cache_budget_bytes)
            self._budget_given = True
        elif not self._budget_given and ck.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(ck.device)
            self.cache.set_budget(int(free * 0.5))  # leave the rest for activations of cell batches
        if warm_up is None:
            warm_up = ck.device.type == "cuda" and os.environ.get("FACTSWEEP_WARM_UP", "1") != "0"
        if warm_up:
            self.warm_up(model_id)
        return self.model_info(model_id)

    def warm_up(self, model_id: str, num_tokens: int = 16) -> float:
        """Compile and run once every kernel variant that prompts of this model will use (CUDA: Triton
        JIT and its disk cache, CUDA modules loaded lazily, cuBLAS handles, the allocator's first
        blocks): a prepare and a few ``run_cells`` calls on two dummy prompts (``num_tokens`` tokens
        swap, and 3 noise samples on a shorter one, so that sizes of both Triton specialisations
        occur), each site alone and all mixed, windows 1 and 10, a one-position call; then one full-size
        grid on the swap prompt (every layer × token × the sites of ``WARM_UP_GRID_SITES``, as a sweep
        runs them), so the caching allocator's large blocks and the full-grid matrix shapes are met here,
        not by the first real prompt; freed after (the allocator keeps its blocks: no ``empty_cache``).
        Nothing enters the cache or the stats. A no-op on the CPU (nothing to compile). Returns its seconds."""
        ck = self.checkpoint(model_id)
        if ck.device.type != "cuda":
            return 0.0
        with on_device(ck.device):
            return self._warm_up(model_id, ck, num_tokens)

    def _warm_up(self, model_id: str, ck: Checkpoint, num_tokens: int) -> float:
        t0 = time.perf_counter()
        c, model = ck.config, ck.model
        L, V = c.num_layers, c.vocab_size
        T = max(4, num_tokens if not c.max_positions else min(num_tokens, c.max_positions))
        sites = list(model.SITES)
        blocks = [n for n, s in model.SITES.items() if s.where == BLOCK]
        prompts = [(T, SwapSpec([(13 * i + 5) % V for i in range(T)])),
                   (max(4, T - 3), NoiseSpec(samples=3, seed=1))]
        with torch.no_grad():
            for n_tok, corruption in prompts:
                spec = PromptSpec([(7 * i + 11) % V for i in range(n_tok)], (1, 3), corruption, None, "")
                ids, corrupted = self._inputs(ck, spec)
                try:
                    runs = prepare.build_runs(model, ids, corrupted, None)
                except NumericError as err:  # odd weights on a dummy prompt: warm what ran, go on
                    log.warning("warm-up of %s stopped early: %s", model_id, err)
                    break
                layers, tokens = sorted({0, L // 2, L - 1}), sorted({0, n_tok // 2, n_tok - 1})
                mixed = [CellSpec(s, l, t, w) for s in sites for w in (1, 10) for l in layers for t in tokens]
                calls = [mixed] + [[CellSpec(s, L // 2, n_tok // 2, 10), CellSpec(s, L - 1, n_tok - 1, 1)] for s in blocks]
                calls.append([CellSpec(blocks[0], L - 1, n_tok - 1, 1)])  # one position a row
                if isinstance(corruption, SwapSpec):  # one full-size grid (see the docstring)
                    calls.append([CellSpec(s, l, t, 1 if s == "residual" else 10)
                                  for s in WARM_UP_GRID_SITES if s in model.SITES for l in range(L) for t in range(n_tok)])
                for cells in calls:
                    begin = trace.device_clock(ck.device)
                    out = trace.run_cells_fast(model, runs, cells, self.trace_rows)
                    try:  # through PendingCells: its pinned host buffer and events warm too (no stats)
                        PendingCells(out, cells, "warm-up", begin, time.perf_counter(), ck.device).array()
                    except NumericError:  # odd weights on a dummy prompt: the kernels ran all the same
                        pass
                    del out
                del runs
        torch.cuda.synchronize(ck.device)
        seconds = time.perf_counter() - t0
        log.info("model %s warmed up in %.2f s", model_id, seconds)
        return seconds

    def model_info(self, model_id: str) -> ModelInfo:
        ck = self.checkpoint(model_id)
        c = ck.config
        return ModelInfo(
            model_id=model_id, model_type=ck.model_type, num_layers=c.num_layers, hidden_size=c.hidden_size,
            vocab_size=c.vocab_size, max_positions=c.max_positions, sites=list(ck.model.SITES),
            dtype=str(ck.dtype).replace("torch.", ""), device=str(ck.device),
        )

    def checkpoint(self, model_id: str) -> Checkpoint:
        """The loaded checkpoint of ``model_id`` (``NotFound`` naming ``model_id`` otherwise)."""
        ck = self.models.get(model_id)
        if ck is None:
            raise NotFound(f"model_id {model_id!r} is not loaded; loaded: {sorted(self.models)}", field="model_id")
        return ck

    # -- prompts --------------------------------------------------------------------------
    def prepare_prompt(self, model_id: str, prompt_key: str, input_ids: list, subject: tuple,
                       corruption: Union[NoiseSpec, SwapSpec], answer_id: Optional[int] = None) -> PromptInfo:
        """Validate a prompt and run (or find cached) its clean and corrupted runs."""
        ck = self.checkpoint(model_id)
        c = ck.config
        if not prompt_key:
            raise InvalidArgument("prompt_key: expected a non-empty cache key", field="prompt_key")
        ids = validate_ids(input_ids, c.vocab_size, "input_ids", c.max_positions)
        T = len(ids)
        try:
            b, e = (int(subject[0]), int(subject[1]))
        except (TypeError, ValueError, IndexError) as err:
            raise InvalidArgument(f"subject: expected a (start, end) token span, got {subject!r}", field="subject") from err
        if not 0 <= b < e <= T:
            raise InvalidArgument(
                f"subject: token span [{b}, {e}) is outside the prompt of {T} tokens or empty; expected "
                f"0 <= start < end <= {T}",
                field="subject",
            )
        if answer_id is not None and not 0 <= int(answer_id) < c.vocab_size:
            raise InvalidArgument(f"answer_id: {answer_id} is outside the vocabulary [0, {c.vocab_size})", field="answer_id")
        if not isinstance(corruption, (NoiseSpec, SwapSpec)):
            raise InvalidArgument(f"corruption: expected noise or swap, got {type(corruption).__name__}", field="corruption")
        fp = _fingerprint(ids, (b, e), corruption, answer_id)
        key = (model_id, prompt_key)
        old = self.specs.get(key)
        if old is not None and old.fingerprint != fp:
            raise InvalidArgument(
                f"prompt_key {prompt_key!r} is already prepared with other inputs; evict it first or use a "
                "key unique per (model, prompt, corruption)",
                field="prompt_key",
            )
        spec = PromptSpec(ids, (b, e), corruption, None if answer_id is None else int(answer_id), fp)
        runs = self.cache.get(key)
        hit = runs is not None
        if runs is None:
            runs = self._build(ck, spec)
            self.specs[key] = spec
            self.cache.put(key, runs)
        return PromptInfo(
            prompt_key=prompt_key, num_tokens=T, answer_id=runs.answer_id, p_clean=runs.p_clean,
            p_corrupt=runs.p_corrupt, logit_clean=runs.logit_clean, logit_corrupt=runs.logit_corrupt,
            cache_bytes=runs.nbytes, cache_hit=hit, clean_argmax=runs.clean_argmax,
        )

    def _spec(self, model_id: str, prompt_key: str) -> PromptSpec:
        spec = self.specs.get((model_id, prompt_key))
        if spec is None:
            raise NotFound(f"prompt_key {prompt_key!r} was not prepared for model {model_id!r}; call prepare_prompt first", field="prompt_key")
        return spec

    def _inputs(self, ck: Checkpoint, spec: PromptSpec):
        ids = host_to_device(torch.tensor(spec.ids, dtype=torch.long), ck.device)
        return ids, corrupted_embeddings(ck.model, ids, spec.subject, spec.corruption)

    def _build(self, ck: Checkpoint, spec: PromptSpec) -> PromptRuns:
        with torch.no_grad(), on_device(ck.device):
            ids, corrupted = self._inputs(ck, spec)
            return prepare.build_runs(ck.model, ids, corrupted, spec.answer_id)

    def prepared(self, model_id: str, prompt_key: str) -> PreparedPrompt:
        """A prepared prompt with its cached runs. Runs that the LRU budget dropped are rebuilt and cached
        again here (a cache miss), never an error; a prompt never prepared is ``NotFound``."""
        ck = self.checkpoint(model_id)
        spec = self._spec(model_id, prompt_key)
        key = (model_id, prompt_key)
        runs = self.cache.get(key)
        if runs is None:  # dropped by the LRU budget: rebuild
            runs = self._build(ck, spec)
            self.cache.put(key, runs)
        return PreparedPrompt(ck, spec, runs)

    def prompt_inputs(self, model_id: str, prompt_key: str) -> tuple:
        """(clean ids (T,), corrupted input embeddings (S, T, d)) of a prepared prompt, as its runs were made."""
        return self._inputs(self.checkpoint(model_id), self._spec(model_id, prompt_key))

    # -- cells ----------------------------------------------------------------------------
    def run_cells(self, model_id: str, prompt_key: str, cells: list, slow_path: bool = False) -> list:
        """(p(answer), answer logit) per cell, in order. ``slow_path``: full recompute, no cache.
        The synchronous form of :meth:`run_cells_launch` (``.values()`` of its pending result)."""
        return self.run_cells_launch(model_id, prompt_key, cells, slow_path).values()

    def run_cells_launch(self, model_id: str, prompt_key: str, cells: list, slow_path: bool = False) -> "PendingCells":
        """Queue the cells' device work and return without waiting for it: the result's ``array()`` /
        ``values()`` is the one host synchronisation (on CUDA the results are copied into pinned host
        memory behind the grid, so work queued after this call does not delay them). Argument errors
        (unknown model or prompt, bad cells) are raised here; NaN/inf in the results by ``array()``.
        On the CPU everything is computed here (CPU ops are synchronous)."""
        started = time.perf_counter()
        ck = self.checkpoint(model_id)
        spec = self._spec(model_id, prompt_key)
        cells = [CellSpec(c.site, int(c.layer), int(c.token), int(c.window) or 1) for c in cells]
        with torch.no_grad(), on_device(ck.device):
            return self._launch(ck, spec, model_id, prompt_key, cells, slow_path, started)

    def _launch(self, ck: Checkpoint, spec: PromptSpec, model_id: str, prompt_key: str, cells: list, slow_path: bool,
                started: float) -> "PendingCells":
        begin = trace.device_clock(ck.device)
        if slow_path:
            ids, corrupted = self._inputs(ck, spec)
            out = trace.run_cells_slow(ck.model, ids, corrupted, spec.answer_id, cells)
        else:
            out = trace.run_cells_fast(ck.model, self.prepared(model_id, prompt_key).runs, cells, self.trace_rows)
        return PendingCells(out, cells, prompt_key, begin, started, ck.device, self._count_cells)

    def run_cells_packed_launch(self, model_id: str, prompts: list) -> list:
        """Several prompts' cells in one pass (small grids keep the GPU busy; ``engine/packed.py``):
        ``prompts`` is [(prompt_key, cells)]; returns a :class:`PendingCells` per prompt, whose values equal
        :meth:`run_cells_launch` on that prompt alone. Prompts of other lengths or samples run apart."""
        started = time.perf_counter()
        ck = self.checkpoint(model_id)
        keys = [self._spec(model_id, key) and key for key, _ in prompts]  # NotFound for an unprepared one
        cells = [[CellSpec(c.site, int(c.layer), int(c.token), int(c.window) or 1) for c in cs] for _, cs in prompts]
        with torch.no_grad(), on_device(ck.device):
            begin = trace.device_clock(ck.device)
            outs = packed.run_cells_packed(ck.model, [(self.prepared(model_id, k).runs, c) for k, c in zip(keys, cells)], self.trace_rows)
            return [PendingCells(o, c, k, begin, started, ck.device, self._count_cells) for o, c, k in zip(outs, cells, keys)]

    def _count_cells(self, n: int) -> None:
        self.cells_run += n

    # -- cache ----------------------------------------------------------------------------
    def evict(self, model_id: str, prompt_keys: Optional[list] = None, all: bool = False) -> tuple:
        """Forget prompts (their specs and cached runs): the given keys, or all of ``model_id`` (all models
        if ``model_id`` is empty) when ``all``. Returns (prompts forgotten, cache bytes now)."""
        if all:
            n = self._forget(model_id or None, None)
        else:
            if model_id not in self.models:
                self.checkpoint(model_id)
            n = self._forget(model_id, list(prompt_keys or []))
        return n, self.cache.nbytes

    def _forget(self, model_id: Optional[str], prompt_keys: Optional[list]) -> int:
        keys = [k for k in list(self.specs) if (model_id is None or k[0] == model_id)
                and (prompt_keys is None or k[1] in prompt_keys)]
        for k in keys:
            self.specs.pop(k, None)
            self.cache.remove(k)
        return len(keys)

    def stats(self) -> EngineStats:
        used = 0
        devices = {ck.device for ck in self.models.values() if ck.device.type == "cuda"}
        for d in devices:
            used += torch.cuda.memory_allocated(d)
        if not devices:
            used = self.cache.nbytes + sum(
                p.numel() * p.element_size() for ck in self.models.values() for p in ck.model.parameters())
        s = self.cache.stats
        return EngineStats(
            cache_bytes=self.cache.nbytes, cache_budget_bytes=self.cache.budget_bytes,
            cached_prompt_keys=[k[1] for k in self.cache.keys()], cache_hits=s.hits, cache_misses=s.misses,
            cache_evictions=s.evictions, cells_run=self.cells_run, device_memory_used_bytes=used,
        )

    def prompt_cache_bytes(self, model_id: str, num_tokens: int, samples: int = 1) -> int:
        """Cache bytes one prompt of ``num_tokens`` tokens would take for this model, without running it."""
        ck = self.checkpoint(model_id)
        return prompt_cache_bytes(ck.model_type, ck.config, num_tokens, samples, ck.dtype)
