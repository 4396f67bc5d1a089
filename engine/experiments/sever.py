"""Path blocking (ROME's severing test; paper §2 "path-blocking", romba ``scripts/path_blocking.py``).

On a prepared prompt with its corruption: in the corrupted run, restore the clean residual state h
at (token t, layer l) (site ``residual``, one layer: the output of block l, i.e. the input of block
l + 1), while a path's output at token t is frozen to its corrupted-run value in every layer after l
(its value at layers ≤ l is the corrupted run's anyway). If recovery falls with the path frozen, the
restored state reaches the answer through that path. Paths: any block site of the model, i.e.
Mamba ``ssm`` (s), ``gate`` (g), ``mixer`` (o, the whole block), also ``in_ssm`` and ``conv``;
GPT-NeoX ``attn``, ``mlp``; ``none`` is plain restoration (equal to ``run_cells`` of
``residual``, window 1). With noise, each noise sample's row is frozen to that sample's corrupted
values and p is the mean over samples, as tracing does.

Computed like the tracing fast path: a cell resumes at block l + 1 on tokens t..T−1 from the cached
corrupted state at t − 1; cells of one token run as one batch.

Params (JSON object)::

    cells: [{ token: int 0..T−1, layer: int 0..L−1, path: str }]   (non-empty)

Result (JSON object)::

    p:         [float] p(answer) per cell, in order (mean over noise samples)
    p_clean:   float, clean p(answer)
    p_corrupt: float, corrupted p(answer) (mean over noise samples)
    answer_id: int
    samples:   int, corrupted rows (noise samples; 1 for swap)
"""

from __future__ import annotations

import bisect
import math

import torch

from ..errors import NumericError
from ..architecture import NO_PATH as NONE
from . import register
from ._common import as_int, as_list, bad, check_keys

def _parse(params: dict, ck, T: int) -> list:
    check_keys(params, ("cells",))
    if "cells" not in params:
        raise bad("cells", "a non-empty array of {token, layer, path}", None)
    L, paths = ck.config.num_layers, list(ck.architecture.sever_paths)
    cells = []
    for i, c in enumerate(as_list(params["cells"], "cells")):
        if not isinstance(c, dict):
            raise bad(f"cells[{i}]", "an object {token, layer, path}", c)
        check_keys(c, ("token", "layer", "path"), f"cells[{i}]")
        for k in ("token", "layer", "path"):
            if k not in c:
                raise bad(f"cells[{i}].{k}", "a value (every cell has token, layer and path)", None)
        token = as_int(c["token"], f"cells[{i}].token", 0, T - 1)
        layer = as_int(c["layer"], f"cells[{i}].layer", 0, L - 1)
        path = c["path"]
        if path not in paths:
            raise bad(f"cells[{i}].path", f"one of {paths} for this {ck.model_type} model", path)
        cells.append((token, layer, path))
    return cells


def corrupted_site_values(model, corrupted: torch.Tensor, sites: set) -> dict:
    """The corrupted run's value of each block site: {site: (L, S, T, width)}."""
    rec: dict = {s: {} for s in sites}

    def hook(site, layer, value):
        if site in rec:
            rec[site][layer] = value.detach()
        return value

    model(inputs_embeds=corrupted, hook=hook)
    return {s: torch.stack([by[j] for j in sorted(by)]) for s, by in rec.items()}


@register("sever")
def sever(engine, model_id: str, prompt_key: str, params: dict) -> dict:
    """p(answer) per cell with the residual restored and the cell's path frozen; see the module doc."""
    prompt = engine.prepared(model_id, prompt_key)
    ck, runs = prompt.checkpoint, prompt.runs
    model = ck.model
    cells = _parse(params, ck, runs.num_tokens)
    S = runs.num_samples
    with torch.no_grad():
        frozen_sites = {p for _, _, p in cells if p != NONE}
        corrupt_vals = {}
        if frozen_sites:
            _, corrupted = engine.prompt_inputs(model_id, prompt_key)
            corrupt_vals = corrupted_site_values(model, corrupted, frozen_sites)
        by_token: dict = {}
        for i, (t, l, _) in enumerate(cells):
            by_token.setdefault(t, []).append(i)
        per_chunk = max(1, engine.max_batch_rows // S)
        out = [0.0] * len(cells)
        for t, idx in sorted(by_token.items()):
            idx.sort(key=lambda i: cells[i][1])
            for k in range(0, len(idx), per_chunk):
                part = idx[k:k + per_chunk]
                ps = _run_group(model, runs, t, [cells[i] for i in part], corrupt_vals).cpu().tolist()
                for i, p in zip(part, ps):
                    out[i] = p
    bad_cells = [i for i, p in enumerate(out) if not math.isfinite(p)]
    if bad_cells:
        raise NumericError(f"NaN or inf in p of cells[{bad_cells[0]}]; the model overflows the run dtype", field="cells")
    engine.cells_run += len(cells)
    return {"p": out, "p_clean": runs.p_clean, "p_corrupt": runs.p_corrupt, "answer_id": runs.answer_id, "samples": S}


def _run_group(model, runs, t: int, cells: list, corrupt_vals: dict) -> torch.Tensor:
    """One batched forward of cells (token t, layer, path) sorted by layer; rows cell-major, sample-minor.
    Row r starts at block l_r + 1 with token t's input set to the clean residual of block l_r; rows
    not started yet carry the cached corrupted stream. Returns p(answer) per cell (mean over samples)."""
    L, S, n_cells = model.config.num_layers, runs.num_samples, len(cells)
    R = n_cells * S
    device = runs.stream.device
    starts = [l + 1 for _, l, _ in cells for _ in range(S)]  # sorted
    rows = torch.arange(S, device=device).repeat(n_cells)  # (R,) noise sample of each row
    path_of_row = [p for _, _, p in cells for _ in range(S)]
    freeze = {site: torch.tensor([p == site for p in path_of_row], device=device) for site in corrupt_vals}

    def restore_input(x: torch.Tensor, j: int) -> torch.Tensor:
        """Rows starting at block j get token t's input = the clean residual of block j − 1."""
        lo, hi = bisect.bisect_left(starts, j), bisect.bisect_right(starts, j)
        if lo == hi:
            return x
        x = x.clone()
        x[lo:hi, 0] = runs.clean["residual"][j - 1, t].to(x.dtype)
        return x

    j0 = starts[0]
    x = restore_input(runs.stream[j0][rows, t:], j0)  # (R, T-t, d)
    for j in range(j0, L):
        n = bisect.bisect_right(starts, j)  # rows started by block j: a prefix

        def hook(site, value, j=j, n=n):
            if site not in freeze:
                return value
            mask = freeze[site][:n, None]  # (n, 1)
            frozen = corrupt_vals[site][j, rows[:n], t].to(value.dtype)  # (n, width)
            return torch.cat([torch.where(mask, frozen, value[:, 0])[:, None], value[:, 1:]], dim=1)

        layer = model.layers[j]
        y, _ = layer(x[:n], hook, layer.resume_state(runs.kept[j], t, rows[:n]), t)  # (n, T-t, d)
        if n < R:
            y = torch.cat([y, runs.stream[j + 1][rows[n:], t:].to(y.dtype)], dim=0)
        x = restore_input(y, j + 1)
    probs = torch.softmax(model.head(x[:, -1]).float(), dim=-1)[:, runs.answer_id]  # (R,)
    return probs.view(n_cells, S).mean(1)
