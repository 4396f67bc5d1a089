# long-file: the fast path is one pipeline (plan, pack on the host, one transfer, layer pass, pending results); splitting it scatters its index conventions
"""Causal tracing cells: restore a clean site value into the corrupted run and measure p(answer).

A cell (site, layer l, token t, window w) copies the clean run's value of ``site`` at token t into
the corrupted run in every layer of ROME's window ``range(max(0, l − w//2), min(L, l − (−w//2)))``
(``embed`` has no layers: it is restored at the input of layer 0). The measure is p(answer) at the
last token, the mean over the corrupted rows (noise samples), and the mean answer logit.

Two paths compute the same numbers:

* :func:`run_cells_slow`, the reference: per cell, a full forward of the corrupted rows with the clean
  value written in by the site hook. Nothing cached; the clean run is recomputed per call.
* :func:`run_cells_fast`: restoring at (layer j, token t) leaves every layer before j and every token
  before t as in the corrupted run. So a cell resumes at its first restored layer j, on tokens t..T−1
  only, from the cached corrupted state at t−1 (Mamba: conv window and SSM state; NeoX: keys and
  values). All cells of a call (every token, site and window) run together as *packed rows* (one
  row per (cell, noise sample), holding only its tokens t..T−1; see :class:`Pack`), in one pass over
  the layers: rows are sorted by the layer they start at, so the rows started by layer j are a
  prefix and each layer's matrix products run on exactly the (row, token) pairs that change. The
  steps that look along the tokens (Mamba's conv and scan) are the kernels of ``engine/kernels.py``
  (Triton on CUDA); NeoX's attention pads rows to T tokens by absolute position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import time
from typing import Callable, Optional

import numpy as np
import torch

from . import kernels
from .cache import PromptRuns
from .errors import InvalidArgument, NumericError
from .prepare import answer_measures, record_clean
from .sites import INPUT, OUTPUT, refuse_head


@dataclass
class CellSpec:
    """One cell of a prompt: restore ``site`` at ``token`` over the window of layers around ``layer``."""

    site: str
    layer: int
    token: int
    window: int = 1


def window_layers(layer: int, window: int, num_layers: int) -> range:
    """ROME's window of ``window`` layers centred on ``layer`` (``trace_important_window``)."""
    w = max(1, window)
    return range(max(0, layer - w // 2), min(num_layers, layer - (-w // 2)))


@dataclass
class Plans:
    """Where each cell enters the computation, as arrays over the cells of a call: its ``token``; the
    first layer that has to be recomputed (``start``); and the ``nj`` consecutive layers from ``j0``
    where it restores ``kinds[kind]``: ``"input"``, the residual stream entering layer j (j = 0: the
    embedding; j = L: the final norm's input), or a block site written inside layer j."""

    token: np.ndarray
    start: np.ndarray
    kind: np.ndarray
    j0: np.ndarray
    nj: np.ndarray
    kinds: list
    prompt: Optional[np.ndarray] = None  # cells of several prompts in one pass (engine/packed.py): each cell's prompt

    def __len__(self) -> int:
        return len(self.token)

    def patched(self, i: int) -> set:
        """The (site, layer) hooks cell i writes at its token (the slow path's view of the plan)."""
        kind, js = self.kinds[self.kind[i]], range(int(self.j0[i]), int(self.j0[i] + self.nj[i]))
        if kind != "input":
            return {(kind, j) for j in js}
        return {("embed", 0) if j == 0 else ("residual", j - 1) for j in js}


def plan_cells(model, cells: list, num_tokens: int) -> Plans:
    """Validate cells against the model and prompt and plan them (errors name the first bad cell)."""
    sites, L = getattr(model, "CELL_SITES", model.SITES), model.config.num_layers  # Mamba-2 adds per-head ssm sites
    kinds = ["input"] + [n for n, site in sites.items() if site.where not in (INPUT, OUTPUT)]
    code = {n: (0 if site.where in (INPUT, OUTPUT) else kinds.index(n)) for n, site in sites.items()}
    where = {n: site.where for n, site in sites.items()}
    n = len(cells)
    names = [c.site for c in cells]
    bad = next((i for i, name in enumerate(names) if name not in code), None)
    if bad is not None:
        refuse_head(model, sites, bad, names[bad])
        raise InvalidArgument(
            f"cells[{bad}].site: unknown site {names[bad]!r} for {type(model).__module__.split('.')[-1]}; valid: {list(sites)}",
            field="site",
        )
    layer = np.fromiter((c.layer for c in cells), dtype=np.int64, count=n)
    token = np.fromiter((c.token for c in cells), dtype=np.int64, count=n)
    window = np.fromiter((c.window for c in cells), dtype=np.int64, count=n)
    for field_, ok, msg in (
        ("layer", (layer >= 0) & (layer < L), f"expected 0..{L - 1}, got {{}}"),
        ("token", (token >= 0) & (token < num_tokens), f"expected 0..{num_tokens - 1} (prompt tokens), got {{}}"),
        ("window", window >= 0, "expected ≥ 1 (0 means 1), got {}"),
    ):
        if not ok.all():
            i = int(np.argmin(ok))
            raise InvalidArgument(f"cells[{i}].{field_}: " + msg.format(getattr(cells[i], field_)), field=field_)
    w = np.maximum(window, 1)
    lo, hi = np.maximum(0, layer - w // 2), np.minimum(L, layer - (-w // 2))  # window_layers, vectorised
    kind = np.fromiter((code[name] for name in names), dtype=np.int64, count=n)
    w_in = np.fromiter((where[name] == INPUT for name in names), dtype=bool, count=n)
    w_out = np.fromiter((where[name] == OUTPUT for name in names), dtype=bool, count=n)
    start = np.where(w_in, 0, np.where(w_out, lo + 1, lo))
    j0 = start.copy()
    nj = np.where(w_in, 1, hi - lo)
    return Plans(token=token, start=start, kind=kind, j0=j0, nj=nj, kinds=kinds)


def run_cells_slow(model, ids: torch.Tensor, corrupted: torch.Tensor, answer_id: Optional[int], cells: list) -> torch.Tensor:
    """Reference path: for each cell, a full forward of the corrupted rows with the clean values
    written in at the cell's token and window. The answer defaults to the clean argmax.
    Returns (cells, 2): p(answer), answer logit."""
    plans = plan_cells(model, cells, ids.shape[0])
    last, clean = record_clean(model, ids)
    if answer_id is None:
        answer_id = int(last.argmax())
    out = []
    for i in range(len(plans)):
        t = int(plans.token[i])
        patched = plans.patched(i)

        def hook(site, layer, value, t=t, patched=patched):
            if (site, layer) not in patched:
                return value
            value = value.clone()
            value[:, t] = clean[site][layer if site != "embed" else 0, t].to(value.dtype)
            return value

        logits, _ = model(inputs_embeds=corrupted, hook=hook)
        out.append(answer_measures(logits[:, -1], answer_id).mean(0))
    return torch.stack(out) if out else torch.zeros(0, 2)


# ----------------------------------------------------------------------------- fast path
@dataclass
class Pack:
    """One micro-batch of cells as packed rows (see ``engine/kernels.py``): row r = (cell, sample),
    holding tokens t_r..T−1 at positions off_r.. of a (positions, width) matrix. Rows are sorted by
    the layer they start at, so the rows (and positions) started by layer j are a prefix:
    ``rows_at[j]`` / ``pos_at[j]``. Index tensors live on the model's device."""

    runs: PromptRuns
    n_cells: int
    rows_at: list  # j = 0..L: rows with start <= j
    pos_at: list  # j = 0..L: their positions
    row_sample: torch.Tensor  # (R,)
    row_off: torch.Tensor  # (R,) first position
    row_len: torch.Tensor  # (R,) T - t_r
    h0_idx: torch.Tensor  # (R,) sample·T + t_r − 1: the cached state before the first token (−1: none)
    last_pos: torch.Tensor  # (R,) the row's last-token position
    pos_first: torch.Tensor  # (N,) first position of the position's row
    pos_token: torch.Tensor  # (N,) absolute token
    pos_cache: torch.Tensor  # (N,) sample·T + token: the position's entry in a cached (S, T, ...) tensor
    pad_pos: torch.Tensor  # (N,) r·T + token: the position in rows padded to T tokens
    pos_row: torch.Tensor  # (N,) its row
    init_idx: torch.Tensor  # (N,) its input: entry of the cached stream (L+1, S, T, d) at the row's start layer
    patch_rows: torch.Tensor  # (P,) every restore: its row, grouped by (site or "input", layer)
    patch_pos: torch.Tensor  # (P,) its position (the row's first)
    patch_src: torch.Tensor  # (P,) its clean source row j·T + t
    patch_at: dict  # (site or "input", layer) -> (begin, end) of its group
    memo: dict = field(default_factory=dict)  # per-pack tensors a model computes once (NeoX: rotary tables)

    def patches(self, site: str, j: int):
        """(rows, positions, clean source rows) restoring ``site`` (or "input") at layer j, or None."""
        at = self.patch_at.get((site, j))
        if at is None:
            return None
        a, b = at
        return self.patch_rows[a:b], self.patch_pos[a:b], self.patch_src[a:b]

    def patch(self, site: str, j: int, value: torch.Tensor) -> torch.Tensor:
        """Restore ``site`` of layer j: its clean value at each patched row's first position (in place)."""
        p = self.patches(site, j)
        if p is None:
            return value
        value.index_copy_(0, p[1], self.clean_rows(site)[p[2]].to(value.dtype))
        return value

    def row_src(self, site: str, j: int, R: int) -> Optional[torch.Tensor]:
        """(R,) clean source row of each of the first R rows restoring ``site`` at layer j (−1: none)."""
        p = self.patches(site, j)
        if p is None:
            return None
        return torch.full((R,), -1, dtype=torch.int64, device=p[0].device).index_copy_(0, p[0], p[2])

    def clean_rows(self, site: str) -> torch.Tensor:
        """The clean values of ``site`` as (L·T, width) rows (the sources of ``row_src``)."""
        c = self.runs.clean[site]
        return c.reshape(-1, c.shape[-1])


def run_cells_fast(model, runs: PromptRuns, cells: list, max_rows: Optional[int] = None) -> torch.Tensor:
    """Cached path (see the module docstring). Returns (cells, 2): p(answer), answer logit.

    Every cell of the call runs in one pass over the layers per micro-batch (sized from free GPU
    memory, or ``max_rows`` rows); all index tensors are built on the host and sent to the device in
    one transfer before any compute is queued, so reading the results is the only synchronisation."""
    return run_plans(model, runs, plan_cells(model, cells, runs.num_tokens), max_rows)


def run_plans(model, runs: PromptRuns, plans: Plans, max_rows: Optional[int] = None) -> torch.Tensor:
    """:func:`run_cells_fast` of planned cells (engine/packed.py plans several prompts' cells at once)."""
    device = runs.stream.device
    if not len(plans):
        return torch.zeros(0, 2, device=device)
    order = np.lexsort((plans.token, plans.start))  # by start layer, then token
    hosts, k = [], 0
    for size in _micro_batches(model, runs, plans.token[order], max_rows):
        hosts.append(_pack_host(model, runs, plans, order[k:k + size]))
        k += size
    # Each array starts at an even offset: 16-byte aligned views, so Triton (which specialises its
    # kernels on pointer alignment) compiles one variant per kernel, not one per alignment pattern.
    parts = [order.astype(np.int64)] + [a for h in hosts for a in h[1].values()]
    flat = np.concatenate([np.pad(a, (0, a.size % 2)) for a in parts])
    dev = kernels.host_to_device(torch.from_numpy(flat), device)  # the one host→device transfer
    dev_order, at = dev[: len(order)], _even(len(order))
    results = []
    for (meta, arrays) in hosts:
        views = {}
        for name, a in arrays.items():
            views[name] = dev[at:at + a.size]
            at += _even(a.size)
        results.append(_run_pack(model, _make_pack(runs, meta, views)))
    out = torch.empty(len(plans), 2, device=device)
    out[dev_order] = torch.cat(results)
    return out


def device_clock(device: torch.device):
    """A timing event recorded now on ``device``'s current stream (CUDA), else ``None``: the start of
    a :class:`PendingCells`' ``seconds``."""
    if device.type != "cuda":
        return None
    begin = torch.cuda.Event(enable_timing=True)
    begin.record(torch.cuda.current_stream(device))
    return begin


class PendingCells:
    """Cell results whose device work is queued (``Engine.run_cells_launch``). On CUDA the results are
    copied into pinned host memory behind the grid and an event marks their end, so work queued after
    this does not delay them; ``array()`` waits for that event (the call's one host synchronisation),
    checks the values, and reports the count to ``on_done`` once; ``seconds`` is then the call's compute
    time (CUDA: from ``begin`` to the grid's end on the device, so host work meanwhile is not counted)."""

    def __init__(self, out: torch.Tensor, cells: list, prompt_key: str, begin, started: float,
                 device: Optional[torch.device] = None, on_done: Optional[Callable[[int], None]] = None):
        self._cells, self._prompt_key, self._begin, self._on_done = cells, prompt_key, begin, on_done
        self._done = None
        if begin is not None:
            self._host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            self._host.copy_(out, non_blocking=True)
            self._done = torch.cuda.Event(enable_timing=True)
            self._done.record(torch.cuda.current_stream(device))  # begin's stream
        else:
            self._host = out.detach()
        self._launch_seconds = time.perf_counter() - started
        self._array: Optional[np.ndarray] = None
        self.seconds: Optional[float] = None

    def __len__(self) -> int:
        return len(self._cells)

    def busy(self) -> bool:
        """Whether the device is still computing these cells (CUDA; never on the CPU, where the work is
        done by the time the object exists)."""
        return self._done is not None and self._array is None and not self._done.query()

    def array(self) -> np.ndarray:
        """(cells, 2) float64: p(answer) and answer logit per cell, in request order (the run dtype's
        values, exactly). ``NumericError`` (field ``cells``) for NaN/inf."""
        if self._array is None:
            started = time.perf_counter()
            if self._done is not None:
                self._done.synchronize()
            values = self._host.to(torch.float64).numpy().reshape(len(self._cells), 2)
            self.seconds = (self._begin.elapsed_time(self._done) / 1e3 if self._done is not None
                            else self._launch_seconds + time.perf_counter() - started)
            bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
            if bad.size:
                raise NumericError(
                    f"NaN or inf in the outputs of {bad.size} cell(s) of prompt {self._prompt_key!r} (first: "
                    f"cells[{bad[0]}] = {self._cells[bad[0]]}); the model overflows the run dtype",
                    field="cells",
                )
            if self._on_done is not None:
                self._on_done(len(self._cells))
            self._array = values
        return self._array

    def values(self) -> list:
        """[(p, logit)] per cell as Python floats (what ``Engine.run_cells`` returns)."""
        return [(p, lg) for p, lg in self.array().tolist()]


def _even(n: int) -> int:
    return n + n % 2


def _micro_batches(model, runs: PromptRuns, tokens: np.ndarray, max_rows: Optional[int]) -> list:
    """Sizes of consecutive micro-batches of the sorted cells (their tokens given): at most ``max_rows``
    rows and at most what half the free GPU memory holds (CPU: 256 MiB) at the model's bytes per
    packed position."""
    S, T = runs.cell_samples, runs.num_tokens
    device = runs.stream.device
    dtype = next(model.parameters()).dtype
    per_pos = model.packed_bytes_per_position(dtype, kernels.use_triton(runs.stream), T)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free // 2
    else:
        budget = 1 << 28
    max_pos = max(T * S, budget // per_pos)
    pos = S * (T - tokens)
    if (not max_rows or len(tokens) * S <= max_rows) and pos.sum() <= max_pos:
        return [len(tokens)]
    sizes, rows, npos, n = [], 0, 0, 0
    for q in pos.tolist():
        if n and ((max_rows and rows + S > max_rows) or npos + q > max_pos):
            sizes.append(n)
            rows = npos = n = 0
        rows, npos, n = rows + S, npos + q, n + 1
    sizes.append(n)
    return sizes


def _pack_host(model, runs: PromptRuns, plans: Plans, cells: np.ndarray):
    """Host (numpy) index arrays of one micro-batch of ``cells`` (indices into ``plans``, sorted by
    start layer); see :class:`Pack`."""
    L, S, T = model.config.num_layers, runs.cell_samples, runs.num_tokens
    n_cells = len(cells)
    start, token = plans.start[cells], plans.token[cells]
    prompt = np.zeros(n_cells, dtype=np.int64) if plans.prompt is None else plans.prompt[cells]
    row_cell = np.repeat(np.arange(n_cells), S)
    # a cell's rows are its prompt's samples (prompts packed together are S samples each, in order)
    row_sample = np.tile(np.arange(S, dtype=np.int64), n_cells) + prompt[row_cell] * S
    row_token, row_start = token[row_cell], start[row_cell]
    row_len = T - row_token
    row_off = np.concatenate([[0], np.cumsum(row_len)[:-1]]).astype(np.int64)
    N = int(row_len.sum())
    pos_row = np.repeat(np.arange(len(row_len)), row_len)
    pos_first = row_off[pos_row]
    pos_token = row_token[pos_row] + np.arange(N) - pos_first
    rows_at = np.searchsorted(row_start, np.arange(L + 1), side="right")
    ends = np.concatenate([[0], np.cumsum(row_len)])
    # Restores: one per (cell, layer of its run, sample), grouped by (kind, layer).
    nj, j0, kind = plans.nj[cells], plans.j0[cells], plans.kind[cells]
    c_rep = np.repeat(np.arange(n_cells), nj)
    j = j0[c_rep] + np.arange(len(c_rep)) - np.repeat(np.cumsum(nj) - nj, nj)
    key = np.repeat(kind[c_rep] * (L + 1) + j, S)
    p_rows = (c_rep[:, None] * S + np.arange(S)).reshape(-1)
    # the clean source row: prompt p's block of L (sites) or L + 1 (input: embed + residual) layers
    p_src = np.repeat((prompt[c_rep] * np.where(kind[c_rep] == 0, L + 1, L) + j) * T + token[c_rep], S)
    by = np.argsort(key, kind="stable")
    key, p_rows, p_src = key[by], p_rows[by], p_src[by]
    uniq, first = np.unique(key, return_index=True)
    last = np.append(first[1:], len(key))
    patch_at = {(plans.kinds[k // (L + 1)], k % (L + 1)): (a, b) for k, a, b in zip(uniq.tolist(), first.tolist(), last.tolist())}
    meta = {"n_cells": n_cells, "rows_at": rows_at.tolist(), "pos_at": ends[rows_at].tolist(), "patch_at": patch_at}
    arrays = {
        "row_sample": row_sample, "row_off": row_off, "row_len": row_len,
        "h0_idx": np.where(row_token > 0, row_sample * T + row_token - 1, -1),
        "last_pos": row_off + row_len - 1, "pos_first": pos_first, "pos_token": pos_token,
        "pos_cache": row_sample[pos_row] * T + pos_token, "pad_pos": pos_row * T + pos_token, "pos_row": pos_row,
        "init_idx": (row_start[pos_row] * runs.num_samples + row_sample[pos_row]) * T + pos_token,
        "patch_rows": p_rows, "patch_pos": row_off[p_rows], "patch_src": p_src,
    }
    return meta, {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in arrays.items()}


def _make_pack(runs: PromptRuns, meta: dict, v: dict) -> Pack:
    return Pack(runs=runs, n_cells=meta["n_cells"], rows_at=meta["rows_at"], pos_at=meta["pos_at"],
                row_sample=v["row_sample"], row_off=v["row_off"], row_len=v["row_len"], h0_idx=v["h0_idx"],
                last_pos=v["last_pos"], pos_first=v["pos_first"], pos_token=v["pos_token"], pos_cache=v["pos_cache"],
                pad_pos=v["pad_pos"], pos_row=v["pos_row"], init_idx=v["init_idx"], patch_rows=v["patch_rows"], patch_pos=v["patch_pos"],
                patch_src=v["patch_src"], patch_at=meta["patch_at"])


def _run_pack(model, pk: Pack) -> torch.Tensor:
    """Layer by layer over the started prefix of the packed rows; (cells, 2) measures of the pack."""
    runs = pk.runs
    L, S, T = model.config.num_layers, runs.cell_samples, runs.num_tokens
    d = runs.stream.shape[-1]
    h = runs.stream.reshape(-1, d)[pk.init_idx]  # (N, d) every row's input at its start layer
    P = runs.clean["embed"].shape[0]  # prompts packed together (their embeds stacked; 1 alone)
    clean_in = torch.cat([runs.clean["embed"].to(h.dtype).view(P, 1, T, d), runs.clean["residual"].view(P, L, T, d)], 1)
    clean_in = clean_in.reshape(-1, d)  # P·(L+1)·T rows

    def restore_input(j: int):
        p = pk.patches("input", j)
        if p is not None:
            h.index_copy_(0, p[1], clean_in[p[2]])

    for j in range(L):
        restore_input(j)
        n = pk.pos_at[j]
        if n:
            model.layers[j].forward_packed(h[:n], j, pk)  # updates h[:n] in place
    restore_input(L)
    logits = model.head(h[pk.last_pos])  # (R, V)
    if P > 1:  # each row's own prompt's answer
        ans = runs.answers[pk.row_sample // S]
        p = torch.softmax(logits.float(), dim=-1).gather(1, ans[:, None])[:, 0]
        measures = torch.stack([p, logits.gather(1, ans[:, None])[:, 0].float()], dim=-1)
    else:
        measures = answer_measures(logits, runs.answer_id)
    return measures.view(pk.n_cells, S, 2).mean(1)
