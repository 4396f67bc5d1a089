"""What the engine knows about one model architecture, as one table per model file.

``mamba.ARCHITECTURE`` and ``gpt_neox.ARCHITECTURE`` are :class:`Architecture` rows; everything that
used to branch on the model type (checkpoint loading, the cache's byte estimate, ROME's edit targets,
the knockout method, the sever paths) reads them. ``engine.architectures`` maps ``model_type`` to
its row and prints the tables as JSON for the TypeScript side to compare with its own lists.

This module defines only the row types (no model imports), so the model files can build their rows
without an import loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from .sites import BLOCK, INPUT, Site

#: The sever experiment's "plain restoration" path (no block site frozen).
NO_PATH = "none"


@dataclass(frozen=True)
class EditTarget:
    """A matrix ROME may edit: the ``nn.Linear`` at ``module`` (a dotted path with ``{layer}``) and the
    rows of its weight (output features) the matrix owns, ``rows(config) -> (start, end)``."""

    module: str
    rows: Callable[[object], Tuple[int, int]]
    key: str  # what the module's input (the key k) is, for docs
    value: str  # what the owned rows of its output (the value) are, for docs

    def module_name(self, layer: int) -> str:
        return self.module.format(layer=layer)


@dataclass(frozen=True)
class Architecture:
    """One model type: how to build and load it, its sites, and what each experiment may touch."""

    model_type: str  # config.json's model_type
    config: type  # ``Config`` with ``from_hf(dict)``, ``num_layers``, ``hidden_size``, ...
    lm: type  # ``LM(config)``, the nn.Module
    rename_keys: Callable[[dict, object], dict]  # checkpoint tensor names → ours
    ignorable_key: Callable[[str, object], bool]  # checkpoint tensors the model need not use
    sites: Dict[str, Site]  # the intervention sites (``sites.site_table``)
    sever_paths: Tuple[str, ...]  # paths a sever cell may freeze: block sites and ``none``
    default_sever_paths: Tuple[str, ...]  # the paths a sever sweep runs when its spec names none
    edit_targets: Dict[str, EditTarget]  # ROME's matrices, by name
    knockout: str  # the knockout method (``experiments.knockout.METHODS``)
    residual_bytes: Callable[[object, int], int]  # bytes an element of the residual stream, per run-dtype bytes
    kept_state_bytes_per_token: Callable[[object, int], int]  # a layer's kept corrupted state, a token and row
    claims_config: Optional[Callable[[dict], bool]] = None  # a config.json without model_type that is this model

    def __post_init__(self):
        block = {name for name, s in self.sites.items() if s.where == BLOCK}
        wrong = [p for p in self.sever_paths if p != NO_PATH and p not in block]
        if wrong or not set(self.default_sever_paths) <= set(self.sever_paths):
            raise ValueError(f"{self.model_type}: sever paths {wrong or self.default_sever_paths} are not block sites")

    def prompt_cache_bytes(self, config, num_tokens: int, samples: int, dtype_bytes: int) -> int:
        """Bytes ``cache.PromptRuns`` holds for one prompt (see ``cache.prompt_cache_bytes``)."""
        L, T, S = config.num_layers, num_tokens, samples
        rb = self.residual_bytes(config, dtype_bytes)
        clean = 0
        for site in self.sites.values():
            layers = 1 if site.where == INPUT else L
            clean += layers * T * getattr(config, site.width) * (rb if site.dtype == "residual" else dtype_bytes)
        stream = (L + 1) * S * T * config.hidden_size * rb
        kept = L * S * T * self.kept_state_bytes_per_token(config, dtype_bytes)
        return clean + stream + kept

    def table(self) -> dict:
        """The lists the TypeScript side keeps too (``python -m engine.architectures``)."""
        return {"sites": list(self.sites), "sever_paths": list(self.sever_paths),
                "default_sever_paths": list(self.default_sever_paths), "edit_matrices": list(self.edit_targets)}
