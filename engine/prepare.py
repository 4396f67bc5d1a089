"""Preparing a prompt: its clean run and its corrupted run (every noise sample), keeping what the
fast path of ``engine/trace.py`` resumes from: the clean run's value of every site, the corrupted
run's residual stream entering every layer and each layer's kept states (Mamba: conv window and SSM
state at every token; NeoX: keys and values), and the clean and corrupted answer measures.

* :func:`build_runs`: both runs as one batch of whole rows, one pass over the layers, each block
  through the fast path's kernels (``forward_prepare``; no per-token loop on CUDA).
* :func:`build_runs_slow`: the reference it replaced (a recording hook on the clean run, then a
  plain forward of the corrupted rows), kept for ``engine/tests/test_prepare.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from .cache import PromptRuns
from .errors import NumericError


def answer_measures(logits: torch.Tensor, answer_id: int) -> torch.Tensor:
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


@dataclass
class Prep:
    """A prompt's clean and corrupted runs as one batch of whole rows (prepare): ``rows`` = S + 1 rows
    of ``num_tokens`` tokens packed as (rows·T, width), the S corrupted rows first (so their positions
    are the cache's sample·T + token) and the clean row last. A block's ``forward_prepare`` runs all
    of them at once and hands the clean row's site values to :meth:`record`."""

    samples: int
    num_tokens: int
    num_layers: int
    parts: dict = field(default_factory=dict)  # site -> the clean row's value of each layer so far (views)
    memo: dict = field(default_factory=dict)  # per-prompt tensors a model computes once (rotary, indices)

    @property
    def rows(self) -> int:
        return self.samples + 1

    def record(self, site: str, j: int, value: torch.Tensor) -> None:
        """Keep the clean row (the last T positions) of ``value`` (…, width) as the site's value at layer
        j (layers come in order; a view, stacked once at the end: no copy a layer and site)."""
        self.parts.setdefault(site, []).append(value.reshape(-1, value.shape[-1])[-self.num_tokens:])

    def clean(self) -> dict:
        """{site: (L, T, width)}: the recorded values stacked."""
        return {site: torch.stack(views) for site, views in self.parts.items()}

    def hook(self, j: int):
        """A block-level hook of layer j for a block's own forward on rows (…, T, width) whose last row
        is the clean one: records its value of each site and changes nothing."""
        def record(site: str, value: torch.Tensor) -> torch.Tensor:
            self.record(site, j, value)
            return value
        return record


def build_runs(model, ids: torch.Tensor, corrupted: torch.Tensor, answer_id: Optional[int]) -> PromptRuns:
    """Run the clean prompt and the corrupted rows (S, T, d), keeping what the fast path needs: one
    pass over the layers for both runs together (every noise sample included), each block through
    the fast path's kernels (``forward_prepare``; no per-token loop on CUDA). Equal to
    :func:`build_runs_slow`, the per-token reference, within float32 rounding
    (``engine/tests/test_prepare.py``)."""
    S, T, d = corrupted.shape
    L = model.config.num_layers
    pp = Prep(samples=S, num_tokens=T, num_layers=L)
    emb = model.embed(ids[None])  # (1, T, d)
    h = torch.cat([corrupted, emb.to(corrupted.dtype)]).to(model.residual_dtype()).reshape(-1, d)  # (rows·T, d)
    hs, kept = [h], []
    for j, layer in enumerate(model.layers):
        h, k = layer.forward_prepare(h, j, pp)
        pp.record("residual", j, h)
        hs.append(h)
        kept.append(k)
    logits = model.head(h.view(S + 1, T, d)[:, -1].contiguous())  # (rows, V) last-token logits
    # One copy a cached tensor, not one a layer: the corrupted rows entering every layer and the final
    # norm; every layer's kept states stacked, each layer's entry a (contiguous) view of the stack.
    stream = torch.stack([x[:S * T] for x in hs]).view(L + 1, S, T, d)
    stacked = [torch.stack([k[i] for k in kept]) for i in range(len(kept[0]))]
    kept = [tuple(t[j] for t in stacked) for j in range(L)]
    clean = {"embed": emb.detach(), **pp.clean()}
    return _finish_runs(logits[S], logits[:S], clean, stream, kept, T, S, answer_id)


def build_runs_slow(model, ids: torch.Tensor, corrupted: torch.Tensor, answer_id: Optional[int]) -> PromptRuns:
    """The reference prepare (what :func:`build_runs` replaced): the clean run with a recording hook,
    then the corrupted rows, each a plain forward of the model (Mamba: its per-token scan loop)."""
    last, clean = record_clean(model, ids)
    logits, (kept, stream) = model(inputs_embeds=corrupted, keep=True)
    kept = [tuple(t.detach().contiguous() for t in k) for k in kept]  # views of wider tensors otherwise
    stream = torch.stack([h.detach() for h in stream])  # (L+1, S, T, d)
    return _finish_runs(last, logits[:, -1], clean, stream, kept, ids.shape[0], corrupted.shape[0], answer_id)


def _finish_runs(last: torch.Tensor, corrupt_last: torch.Tensor, clean: dict, stream: torch.Tensor, kept: list,
                 T: int, S: int, answer_id: Optional[int]) -> PromptRuns:
    """PromptRuns from the clean run's last-token logits (V,), the corrupted rows' (S, V) and the cache."""
    argmax = last.argmax()
    answer = argmax if answer_id is None else torch.full((), answer_id, dtype=argmax.dtype, device=last.device)  # no host copy
    m_clean = answer_measures(last[None], answer)[0]  # (2,)
    m_corrupt = answer_measures(corrupt_last, answer).mean(0)  # (2,)
    finite = torch.isfinite(last).all() & torch.isfinite(corrupt_last).all()
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
        p_corrupt=vals[2], logit_corrupt=vals[3], num_tokens=T, num_samples=S,
        clean=clean, stream=stream, kept=kept,
    )
