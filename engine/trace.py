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
  values). Cells of one token t run as one batch; a row whose start layer is later than the batch's
  takes the cached corrupted residual until it starts (rows are sorted by start, so the started rows
  are always a prefix and no compute is spent on the others).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .cache import PromptRuns
from .errors import InvalidArgument, NumericError
from .sites import BLOCK, INPUT, OUTPUT


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
    kept = [tuple(t.detach() for t in k) for k in kept]
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


def run_cells_fast(model, runs: PromptRuns, cells: list, max_rows: int = 256) -> torch.Tensor:
    """Cached path (see the module docstring). Returns (cells, 2): p(answer), answer logit.

    All index and mask tensors of the call are built on the host and sent to the device in one
    transfer before any compute is queued, so the only host synchronisation is reading the results."""
    plans = plan_cells(model, cells, runs.num_tokens)
    device = runs.stream.device
    if not plans:
        return torch.zeros(0, 2, device=device)
    S = runs.num_samples
    per_chunk = max(1, max_rows // S)
    by_token: dict = {}
    for i, p in enumerate(plans):
        by_token.setdefault(p.token, []).append(i)
    chunks = []  # (token, cell indices sorted by start layer)
    for t, idx in sorted(by_token.items()):
        idx.sort(key=lambda i: plans[i].start)
        chunks += [(t, idx[k:k + per_chunk]) for k in range(0, len(idx), per_chunk)]

    # Patch masks of every chunk: one bool row per (chunk, kind, layer), rows = cells × samples.
    width = max(len(c) for _, c in chunks) * S
    mask_rows, chunk_keys = [], []
    for _, idx in chunks:
        keys: dict = {}
        for c, i in enumerate(idx):
            for j in plans[i].input_patches:
                keys.setdefault(("input", j), []).append(c)
            for site, j in plans[i].block_patches:
                keys.setdefault((site, j), []).append(c)
        row_of = {}
        for key, cs in keys.items():
            m = np.zeros(width, dtype=bool)
            for c in cs:
                m[c * S:(c + 1) * S] = True
            row_of[key] = len(mask_rows)
            mask_rows.append(m)
        chunk_keys.append(row_of)
    order = np.concatenate([np.asarray(idx, dtype=np.int64) for _, idx in chunks])
    masks_host = np.stack(mask_rows).view(np.uint8).reshape(-1) if mask_rows else np.zeros(0, np.uint8)
    host = np.concatenate([order.view(np.uint8), masks_host])  # int64 first: keeps its view aligned
    dev = torch.from_numpy(host).to(device)  # the one host→device transfer
    dev_order = dev[: order.size * 8].view(torch.int64)
    dev_masks = dev[order.size * 8:].view(len(mask_rows), width).bool() if mask_rows else None

    results = []
    for (t, idx), row_of in zip(chunks, chunk_keys):
        masks = {key: dev_masks[r] for key, r in row_of.items()}
        results.append(_run_group(model, runs, t, [plans[i] for i in idx], masks))  # (cells, 2)
    out = torch.empty(len(plans), 2, device=device)
    out[dev_order] = torch.cat(results)
    return out


def _run_group(model, runs: PromptRuns, t: int, plans: list, masks: dict) -> torch.Tensor:
    """One batched forward of cells of token t, sorted by start layer. Rows: cell-major, sample-minor.
    ``masks[(site or "input", layer)]``: (≥ rows,) bool device tensor of the rows patched there."""
    L, S, n_cells = model.config.num_layers, runs.num_samples, len(plans)
    R = n_cells * S
    device = runs.stream.device
    starts = [p.start for p in plans for _ in range(S)]  # sorted, one per row
    rows = torch.arange(S, device=device).repeat(n_cells)  # (R,) sample of each row

    clean_in = [runs.clean["embed"][0, t]] + [runs.clean["residual"][j, t] for j in range(L)]  # input of layer j

    def patch_token0(v: torch.Tensor, mask: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        v0 = torch.where(mask[: v.shape[0], None], value.to(v.dtype), v[:, 0])  # (n, w)
        return torch.cat([v0[:, None], v[:, 1:]], dim=1)

    def patch_input(x: torch.Tensor, j: int) -> torch.Tensor:
        mask = masks.get(("input", j))
        return x if mask is None else patch_token0(x, mask, clean_in[j])

    j0 = starts[0]
    x = patch_input(runs.stream[j0][rows, t:], j0)  # (R, T-t, d)
    for j in range(j0, L):
        n = bisect.bisect_right(starts, j)  # rows started by layer j: a prefix
        layer = model.layers[j]

        def hook(site, value, j=j):
            mask = masks.get((site, j))
            return value if mask is None else patch_token0(value, mask, runs.clean[site][j, t])

        state = layer.resume_state(runs.kept[j], t, rows[:n])
        y, _ = layer(x[:n], hook=hook, state=state, pos0=t)  # (n, T-t, d)
        if n < R:
            y = torch.cat([y, runs.stream[j + 1][rows[n:], t:].to(y.dtype)], dim=0)  # (R, T-t, d)
        x = patch_input(y, j + 1)
    logits = model.head(x[:, -1])  # (R, V)
    return _answer_measures(logits, runs.answer_id).view(n_cells, S, 2).mean(1)
