"""Several prompts' cells in one pass over the layers: small grids (a residual-only grid, short prompts,
a few layers) leave the GPU waiting on the host's ~600–800 kernel launches a pass; packed together,
k prompts cost one pass of launches (issue 14; measured in bench/RESULTS.md).

Prompts of the same length and sample count are merged into one :class:`PromptRuns` whose samples
are the prompts' samples in order (prompt p's samples are p·S .. p·S + S − 1): the cached stream and
recurrent states concatenated along the samples, the clean values of prompt p as its own block of
layers, and each prompt's answer id. The fast path (``trace.run_plans``) then runs every prompt's
cells as rows of one pack; each cell's rows read only its own prompt's state, clean values and answer,
so a prompt's results are those of :func:`trace.run_cells_fast` on it alone. Prompts of other lengths
or sample counts run in passes of their own.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .cache import PromptRuns
from .errors import InvalidArgument
from .trace import Plans, plan_cells, run_cells_fast, run_plans


def merge_runs(runs: list) -> PromptRuns:
    """One PromptRuns holding the cached runs of prompts of equal tokens and samples (see the module)."""
    first = runs[0]
    if any(r.num_tokens != first.num_tokens or r.num_samples != first.num_samples for r in runs):
        raise ValueError("merge_runs: prompts packed together need the same tokens and samples")
    device = first.stream.device
    return PromptRuns(
        answer_id=first.answer_id, clean_argmax=first.clean_argmax, p_clean=first.p_clean, p_corrupt=first.p_corrupt,
        logit_clean=first.logit_clean, logit_corrupt=first.logit_corrupt, num_tokens=first.num_tokens,
        num_samples=first.num_samples * len(runs),
        clean={site: torch.cat([r.clean[site] for r in runs]) for site in first.clean},
        stream=torch.cat([r.stream for r in runs], dim=1),
        kept=[type(k)(torch.cat(parts) for parts in zip(*(r.kept[j] for r in runs))) for j, k in enumerate(first.kept)],
        cell_samples=first.num_samples,
        answers=torch.tensor([r.answer_id for r in runs], dtype=torch.int64).to(device),
    )


def run_cells_packed(model, items: list, max_rows: Optional[int] = None) -> list:
    """``items``: (PromptRuns, cells) per prompt. Returns each prompt's (cells, 2) p(answer) and answer
    logit, as :func:`trace.run_cells_fast` gives them, with the prompts of equal tokens and samples
    run together in one pass (cells are validated per prompt first: errors name the prompt's item)."""
    plans = []
    for i, (runs, cells) in enumerate(items):
        try:
            plans.append(plan_cells(model, cells, runs.num_tokens))
        except InvalidArgument as err:
            raise InvalidArgument(f"prompts[{i}].{err.message}", field=err.field) from err
    out: list = [None] * len(items)
    groups: dict = {}
    for i, (runs, _) in enumerate(items):
        groups.setdefault((runs.num_tokens, runs.num_samples), []).append(i)
    for members in groups.values():
        if len(members) == 1:
            i = members[0]
            out[i] = run_cells_fast(model, items[i][0], items[i][1], max_rows)
            continue
        merged = merge_runs([items[i][0] for i in members])
        parts = [plans[i] for i in members]
        joined = Plans(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in ("token", "start", "kind", "j0", "nj")},
                       kinds=parts[0].kinds, prompt=np.repeat(np.arange(len(parts)), [len(p) for p in parts]))
        res = run_plans(model, merged, joined, max_rows)
        at = 0
        for i, p in zip(members, parts):
            out[i] = res[at:at + len(p)]
            at += len(p)
    return out
