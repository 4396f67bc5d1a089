"""What the engine knows about one model architecture, as one table per model file.

``mamba.ARCHITECTURE`` and ``gpt_neox.ARCHITECTURE`` are :class:`Architecture` rows; everything that
used to branch on the model type (checkpoint loading, the cache's byte estimate, ROME's edit targets,
the knockout method, the sever paths) reads them. ``engine.architectures`` maps ``model_type`` to
its row and prints the tables as JSON for the TypeScript side to compare with its own lists.

This module defines only the row types (no model imports), so the model files can build their rows
without an import loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from .errors import CheckpointError
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
    embedding_key: str = ""  # the token embedding (vocab_size, hidden_size), after rename_keys: checked first

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


# ---- config.json values -------------------------------------------------------------------------
# The model files parse config.json through these, so a wrong type, a zero or an absurd size is a
# CheckpointError naming the field (INVALID_ARGUMENT), not a TypeError or ZeroDivisionError deep in
# ``from_hf`` (INTERNAL) nor a model of terabytes. The limits are far above any released model of
# these families (mamba-2.8b: d 2560, 64 layers, vocab 50280; pythia-12b: d 5120, 36 layers) and
# below what one host could allocate; a checkpoint's tensors must match them anyway.

MAX_HIDDEN = 65_536  # hidden_size / d_model
MAX_LAYERS = 1_024  # num_hidden_layers / n_layer
MAX_VOCAB = 1 << 20  # vocab_size (1,048,576; real vocabularies are <= 262k)
MAX_INTERMEDIATE = 1 << 18  # intermediate_size (262,144)
MAX_SMALL = 1_024  # heads, state size, conv kernel, expand, pad multiple
MAX_POSITIONS = 1 << 24  # max_position_embeddings (only a prompt-length limit; nothing is allocated by it)

REQUIRED = object()


def describe_value(value) -> str:
    """A config value for an error message: numbers (cut short), else only the JSON type."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        text = repr(value)
        return text if len(text) <= 24 else text[:20] + "..."
    return {bool: "a boolean", str: "a string", list: "a list", dict: "an object", type(None): "null"}.get(
        type(value), type(value).__name__)


def config_int(cfg: dict, key: str, default=REQUIRED, low: int = 1, high: int = MAX_HIDDEN, model: str = "") -> int:
    """``cfg[key]`` as an int in ``[low, high]`` (``default`` when absent or null; absent and required is
    an error). A float with an integral value is accepted (some exporters write ``2.0``)."""
    value = cfg.get(key) if isinstance(cfg, dict) else None
    if value is None:
        if default is REQUIRED:
            raise CheckpointError(f"config.json lacks {key!r}, which a {model or 'model'} config needs", field=key)
        return default
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise CheckpointError(
            f"config.json {key}: expected an integer in [{low}, {high}], got {describe_value(value)}", field=key)
    return value


def config_float(cfg: dict, key: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    """``cfg[key]`` as a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``), ``default`` when absent."""
    value = cfg.get(key)
    if value is None:
        return default
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value > low if low_open else value >= low) and value <= high)
    if not ok:
        raise CheckpointError(
            f"config.json {key}: expected a number in {'(' if low_open else '['}{low}, {high}], got {describe_value(value)}",
            field=key)
    return float(value)


def config_bool(cfg: dict, key: str, default: bool) -> bool:
    """``cfg[key]`` as a JSON boolean, ``default`` when absent (a string "false" would be truthy)."""
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise CheckpointError(f"config.json {key}: expected true or false, got {describe_value(value)}", field=key)
    return value


def config_object(cfg: dict, key: str) -> dict:
    """``cfg[key]`` as a JSON object, ``{}`` when absent or null."""
    value = cfg.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CheckpointError(f"config.json {key}: expected an object, got {describe_value(value)}", field=key)
    return value
