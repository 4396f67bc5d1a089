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
from typing import Optional

import numpy as np
import torch

from .cache import PromptRuns
from .errors import InvalidArgument, NumericError
from .sites import INPUT, OUTPUT


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


@dataclass(frozen=True)
class _Plan:
    """Where a cell enters the computation: residual inputs it overwrites (input of layer j, j = L is
    the final norm), block sites it overwrites, and the first layer that has to be recomputed."""

    token: int
    start: int
    input_patches: tuple  # layers j whose input (token t) becomes the clean residual / embedding
    block_patches: tuple  # (site, layer) written inside block `layer`


def plan_cells(model, cells: list, num_tokens: int) -> list:
    """Validate cells against the model and prompt and plan each one (errors name the cell index)."""
    sites, L = model.SITES, model.config.num_layers
    plans = []
    for i, c in enumerate(cells):
        site = sites.get(c.site)
        if site is None:
            raise InvalidArgument(
                f"cells[{i}].site: unknown site {c.site!r} for {type(model).__module__.split('.')[-1]}; valid: {list(sites)}",
                field="site",
            )
        if not 0 <= c.layer < L:
            raise InvalidArgument(f"cells[{i}].layer: expected 0..{L - 1}, got {c.layer}", field="layer")
        if not 0 <= c.token < num_tokens:
            raise InvalidArgument(f"cells[{i}].token: expected 0..{num_tokens - 1} (prompt tokens), got {c.token}", field="token")
        if c.window < 0:
            raise InvalidArgument(f"cells[{i}].window: expected ≥ 1 (0 means 1), got {c.window}", field="window")
        layers = window_layers(c.layer, c.window, L)
        if site.where == INPUT:
            plans.append(_Plan(c.token, 0, (0,), ()))
        elif site.where == OUTPUT:
            plans.append(_Plan(c.token, layers[0] + 1, tuple(j + 1 for j in layers), ()))
        else:
            plans.append(_Plan(c.token, layers[0], (), tuple((c.site, j) for j in layers)))
    return plans


def _answer_measures(logits: torch.Tensor, answer_id: int) -> torch.Tensor:
    """(rows, V) last-token logits → (rows, 2): p(answer), answer logit."""
    p = torch.softmax(logits.float(), dim=-1)[:, answer_id]
    return torch.stack([p, logits[:, answer_id].float()], dim=-1)


def record_clean(model, ids: torch.Tensor):
    """Clean run of ids (T,): last-token logits (V,) and every site's value: {site: (L, T, w)}, embed (1, T, d)."""
    rec: dict = {}

    def hook(site, layer, value):
        rec.setdefault(site, {})[layer] = value[0].detach()
        return value

    logits, _ = model(ids[None], hook=hook)
    clean = {site: torch.stack([by_layer[j] for j in sorted(by_layer)]) for site, by_layer in rec.items()}
    return logits[0, -1], clean


def build_runs(model, ids: torch.Tensor, corrupted: torch.Tensor, answer_id: Optional[int]) -> PromptRuns:
    """Run the clean prompt and the corrupted rows (S, T, d) once, keeping what the fast path needs."""
    last, clean = record_clean(model, ids)
    logits, (kept, stream) = model(inputs_embeds=corrupted, keep=True)
    kept = [tuple(t.detach().contiguous() for t in k) for k in kept]  # views of wider tensors otherwise
    stream = torch.stack([h.detach() for h in stream])  # (L+1, S, T, d)
    argmax = last.argmax()
    answer = argmax if answer_id is None else torch.tensor(answer_id, device=last.device)
    m_clean = _answer_measures(last[None], answer)[0]  # (2,)
    m_corrupt = _answer_measures(logits[:, -1], answer).mean(0)  # (2,)
    finite = torch.isfinite(last).all() & torch.isfinite(logits[:, -1]).all()
    # one device→host transfer for all the scalars
    vals = torch.cat([m_clean, m_corrupt, argmax[None].float(), answer[None].float(), finite[None].float()]).tolist()
    if vals[6] != 1.0:
        raise NumericError(
            "NaN or inf in the model's output logits ("
            + ("clean run" if not bool(torch.isfinite(last).all()) else "corrupted run")
            + "); the weights or the corruption (noise scale) overflow the run dtype",
            field="logits",
        )
    return PromptRuns(
        answer_id=int(vals[5]), clean_argmax=int(vals[4]), p_clean=vals[0], logit_clean=vals[1],
        p_corrupt=vals[2], logit_corrupt=vals[3], num_tokens=ids.shape[0], num_samples=corrupted.shape[0],
        clean=clean, stream=stream, kept=kept,
    )


def run_cells_slow(model, ids: torch.Tensor, corrupted: torch.Tensor, answer_id: Optional[int], cells: list) -> torch.Tensor:
    """Reference path: for each cell, a full forward of the corrupted rows with the clean values
    written in at the cell's token and window. The answer defaults to the clean argmax.
    Returns (cells, 2): p(answer), answer logit."""
    plans = plan_cells(model, cells, ids.shape[0])
    last, clean = record_clean(model, ids)
    if answer_id is None:
        answer_id = int(last.argmax())
    out = []
    for plan in plans:
        t = plan.token
        patched = set(plan.block_patches)
        patched |= {("residual", j - 1) for j in plan.input_patches if j > 0}
        patched |= {("embed", 0) for j in plan.input_patches if j == 0}

        def hook(site, layer, value, t=t, patched=patched):
            if (site, layer) not in patched:
                return value
            value = value.clone()
            value[:, t] = clean[site][layer if site != "embed" else 0, t].to(value.dtype)
            return value

        logits, _ = model(inputs_embeds=corrupted, hook=hook)
        out.append(_answer_measures(logits[:, -1], answer_id).mean(0))
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
    init_idx: torch.Tensor  # (N,) its input: entry of the cached stream (L+1, S, T, d) at the row's start layer
    patches: dict  # (site or "input", layer) -> (rows, positions, clean source rows j·T + t)
    memo: dict = field(default_factory=dict)  # per-pack tensors a model computes once (NeoX: rotary tables)

    def patch(self, site: str, j: int, value: torch.Tensor) -> torch.Tensor:
        """Restore ``site`` of layer j: its clean value at each patched row's first position (in place)."""
        p = self.patches.get((site, j))
        if p is None:
            return value
        clean = self.runs.clean[site]
        value.index_copy_(0, p[1], clean.reshape(-1, clean.shape[-1])[p[2]].to(value.dtype))
        return value

    def row_src(self, site: str, j: int, R: int) -> Optional[torch.Tensor]:
        """(R,) clean source row of each of the first R rows restoring ``site`` at layer j (−1: none)."""
        p = self.patches.get((site, j))
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
    plans = plan_cells(model, cells, runs.num_tokens)
    device = runs.stream.device
    if not plans:
        return torch.zeros(0, 2, device=device)
    order = sorted(range(len(plans)), key=lambda i: (plans[i].start, plans[i].token))
    chunks = _micro_batches(model, runs, [plans[i] for i in order], max_rows)
    hosts, k = [], 0
    for size in chunks:
        hosts.append(_pack_host(model, runs, [plans[i] for i in order[k:k + size]]))
        k += size
    flat = np.concatenate([np.asarray(order, dtype=np.int64)] + [a for h in hosts for a in h[1].values()])
    dev = torch.from_numpy(flat).to(device)  # the one host→device transfer
    dev_order, at = dev[: len(order)], len(order)
    results = []
    for (meta, arrays) in hosts:
        views = {}
        for name, a in arrays.items():
            views[name] = dev[at:at + a.size]
            at += a.size
        results.append(_run_pack(model, _make_pack(runs, meta, views)))
    out = torch.empty(len(plans), 2, device=device)
    out[dev_order] = torch.cat(results)
    return out


def _micro_batches(model, runs: PromptRuns, plans: list, max_rows: Optional[int]) -> list:
    """Sizes of consecutive micro-batches of the sorted plans: at most ``max_rows`` rows and at most
    what half the free GPU memory holds (CPU: 1 GiB) at the model's bytes per packed position."""
    S, T = runs.num_samples, runs.num_tokens
    device = runs.stream.device
    dtype = next(model.parameters()).dtype
    from . import kernels

    per_pos = model.packed_bytes_per_position(dtype, kernels.use_triton(runs.stream), T)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free // 2
    else:
        budget = 1 << 28
    max_pos = max(T * S, budget // per_pos)
    sizes, rows, pos, n = [], 0, 0, 0
    for p in plans:
        r, q = S, S * (T - p.token)
        if n and ((max_rows and rows + r > max_rows) or pos + q > max_pos):
            sizes.append(n)
            rows = pos = n = 0
        rows, pos, n = rows + r, pos + q, n + 1
    sizes.append(n)
    return sizes


def _pack_host(model, runs: PromptRuns, plans: list):
    """Host (numpy) index arrays of one micro-batch; see :class:`Pack`."""
    L, S, T = model.config.num_layers, runs.num_samples, runs.num_tokens
    n_cells = len(plans)
    start = np.array([p.start for p in plans], dtype=np.int64)
    token = np.array([p.token for p in plans], dtype=np.int64)
    row_cell = np.repeat(np.arange(n_cells), S)
    row_sample = np.tile(np.arange(S, dtype=np.int64), n_cells)
    row_token, row_start = token[row_cell], start[row_cell]
    row_len = T - row_token
    row_off = np.concatenate([[0], np.cumsum(row_len)[:-1]]).astype(np.int64)
    N = int(row_len.sum())
    pos_row = np.repeat(np.arange(len(row_len)), row_len)
    pos_first = row_off[pos_row]
    pos_token = row_token[pos_row] + np.arange(N) - pos_first
    pos_cache = row_sample[pos_row] * T + pos_token
    rows_at = np.searchsorted(row_start, np.arange(L + 1), side="right")
    ends = np.concatenate([[0], np.cumsum(row_len)])
    meta = {"n_cells": n_cells, "rows_at": rows_at.tolist(), "pos_at": ends[rows_at].tolist(), "patches": []}
    arrays = {
        "row_sample": row_sample, "row_off": row_off, "row_len": row_len.astype(np.int64),
        "h0_idx": np.where(row_token > 0, row_sample * T + row_token - 1, -1),
        "last_pos": row_off + row_len - 1, "pos_first": pos_first, "pos_token": pos_token,
        "pos_cache": pos_cache, "pad_pos": pos_row * T + pos_token,
        "init_idx": (row_start[pos_row] * S + row_sample[pos_row]) * T + pos_token,
    }
    keys: dict = {}
    for c, p in enumerate(plans):
        for j in p.input_patches:
            keys.setdefault(("input", j), []).append((c, j * T + p.token))
        for site, j in p.block_patches:
            keys.setdefault((site, j), []).append((c, j * T + p.token))
    for i, (key, entries) in enumerate(sorted(keys.items())):
        cs = np.array([e[0] for e in entries], dtype=np.int64)
        rows = (cs[:, None] * S + np.arange(S)).reshape(-1)
        arrays[f"p{i}r"] = rows
        arrays[f"p{i}p"] = row_off[rows]
        arrays[f"p{i}s"] = np.repeat(np.array([e[1] for e in entries], dtype=np.int64), S)
        meta["patches"].append(key)
    return meta, {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in arrays.items()}


def _make_pack(runs: PromptRuns, meta: dict, v: dict) -> Pack:
    patches = {key: (v[f"p{i}r"], v[f"p{i}p"], v[f"p{i}s"]) for i, key in enumerate(meta["patches"])}
    return Pack(runs=runs, n_cells=meta["n_cells"], rows_at=meta["rows_at"], pos_at=meta["pos_at"],
                row_sample=v["row_sample"], row_off=v["row_off"], row_len=v["row_len"], h0_idx=v["h0_idx"],
                last_pos=v["last_pos"], pos_first=v["pos_first"], pos_token=v["pos_token"], pos_cache=v["pos_cache"],
                pad_pos=v["pad_pos"], init_idx=v["init_idx"], patches=patches)


def _run_pack(model, pk: Pack) -> torch.Tensor:
    """Layer by layer over the started prefix of the packed rows; (cells, 2) measures of the pack."""
    runs = pk.runs
    L, S, T = model.config.num_layers, runs.num_samples, runs.num_tokens
    d = runs.stream.shape[-1]
    h = runs.stream.reshape(-1, d)[pk.init_idx]  # (N, d) every row's input at its start layer
    clean_in = torch.cat([runs.clean["embed"][:1].to(h.dtype), runs.clean["residual"]]).reshape(-1, d)  # (L+1)·T rows

    def restore_input(j: int):
        p = pk.patches.get(("input", j))
        if p is not None:
            h.index_copy_(0, p[1], clean_in[p[2]])

    for j in range(L):
        restore_input(j)
        n = pk.pos_at[j]
        if n:
            model.layers[j].forward_packed(h[:n], j, pk)  # updates h[:n] in place
    restore_input(L)
    logits = model.head(h[pk.last_pos])  # (R, V)
    return _answer_measures(logits, runs.answer_id).view(pk.n_cells, S, 2).mean(1)
