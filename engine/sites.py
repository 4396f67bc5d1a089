"""Intervention sites: the named states a cell can read and restore (the design vocabulary).

Each architecture declares its sites in ONE table (``mamba.SITES``, ``gpt_neox.SITES``) of
:class:`Site` rows; the model code calls ``hook(name, value)`` at the point where each value is made,
so reading and overwriting are the same mechanism for every site. ``where`` says where restoring the
site enters the computation, which is all the fast path needs to know:

* ``input``: the input of layer 0 (``embed``; the cell's layer and window are ignored).
* ``output``: the output of block l, i.e. the input of block l + 1 (``residual``).
* ``block``: a value made inside block l (Mamba ``mixer``, ``ssm``, ...; NeoX ``attn``, ``mlp``).

A hook is ``hook(site, layer, value) -> value`` at model level and ``hook(site, value) -> value``
inside a block (the block's layer is bound by the caller). ``value`` is ``(b, l, width)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .errors import InvalidArgument

INPUT, OUTPUT, BLOCK = "input", "output", "block"

ModelHook = Callable[[str, int, torch.Tensor], torch.Tensor]
BlockHook = Callable[[str, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Site:
    """One row of an architecture's site table."""

    name: str
    where: str  # INPUT | OUTPUT | BLOCK
    width: str  # name of the config attribute that gives the value's last dimension
    doc: str
    dtype: str = "model"  # "model": the run dtype; "residual": the residual stream's (Mamba: float32)


def site_table(*rows: Site) -> dict[str, Site]:
    """An ordered ``{name: Site}`` table."""
    return {r.name: r for r in rows}


def bind(hook: Optional[ModelHook], layer: int) -> Optional[BlockHook]:
    """The block-level hook of ``layer`` (None stays None, so unhooked forwards cost nothing)."""
    if hook is None:
        return None
    return lambda site, value: hook(site, layer, value)


def call(hook: Optional[BlockHook], site: str, value: torch.Tensor) -> torch.Tensor:
    """``hook(site, value)`` or ``value`` when there is no hook."""
    return value if hook is None else hook(site, value)


class HookedLM(nn.Module):
    """The forward pass both model files share: embed → blocks → head, with the model-level hook
    called at ``embed`` and after every block (``residual``). A subclass provides ``layers``,
    ``embed(ids)``, ``head(h)`` and ``residual_dtype()``; its blocks return ``(output, kept)``."""

    def forward(self, input_ids: Optional[torch.Tensor] = None, inputs_embeds: Optional[torch.Tensor] = None,
                hook: Optional[ModelHook] = None, keep: bool = False):
        """Full forward. Returns logits (b, l, V) and, if keep, per layer the kept states (the block's
        resumable state: Mamba conv input and SSM states, NeoX keys and values) plus the residual
        stream entering every layer and the final norm: (L+1) × (b, l, d)."""
        h = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # (b, l, d)
        if hook is not None:
            h = hook("embed", 0, h)
        h = h.to(self.residual_dtype())  # Mamba's float32 residual; a no-op for NeoX
        kept, stream = [], [h]
        for i, layer in enumerate(self.layers):
            h, k = layer(h, bind(hook, i), keep=keep)  # (b, l, d)
            if hook is not None:
                h = hook("residual", i, h)
            kept.append(k)
            stream.append(h)
        return self.head(h), ((kept, stream) if keep else None)


def refuse_head(model, sites: dict, i: int, name: str) -> None:
    """A per-head site (``ssm.h<k>``) the model does not have: say which heads it has, or that it has none."""
    site, dot, head = name.partition(".h")
    if not dot or not head.isdigit():
        return
    arch = type(model).__module__.split('.')[-1]
    if site not in sites:
        raise InvalidArgument(f"cells[{i}].site: unknown site {site!r} for {arch}; valid: {list(model.SITES)}", field="site")
    heads = sorted(int(n[len(site) + 2:]) for n in sites if n.startswith(site + ".h") and n[len(site) + 2:].isdigit())
    if not heads:
        raise InvalidArgument(f"cells[{i}].head: {arch} models have no per-head {site} restores (only Mamba-2's ssm); "
                              "expected the cell without a head", field="head")
    raise InvalidArgument(f"cells[{i}].head: expected 0..{heads[-1]} (this {arch} model has {len(heads)} heads), "
                          f"got {head}", field="head")
