"""Experiments beyond causal tracing, run by the worker's RunExperiment request.

Each kind is one module that registers a function ``(engine, model_id, prompt_key, params) -> dict``
with :func:`register`; parameters and results are JSON objects the module documents. Kinds:
``knockout`` and ``sever`` (information flow, paper §2 and §5), ``lre`` (linear relation
embeddings, §4), ``edit`` (ROME, §3).
"""

from __future__ import annotations

import importlib
from typing import Callable, Dict

from ..errors import InvalidArgument

Experiment = Callable[..., dict]
_REGISTRY: Dict[str, Experiment] = {}
#: kind -> module that defines it (imported on first use, so the worker starts fast).
_MODULES = {"knockout": "knockout", "sever": "sever", "lre": "lre", "edit": "rome"}


def register(kind: str) -> Callable[[Experiment], Experiment]:
    def deco(fn: Experiment) -> Experiment:
        _REGISTRY[kind] = fn
        return fn

    return deco


def kinds() -> list:
    return sorted(_MODULES)


def run(engine, model_id: str, kind: str, prompt_key: str, params: dict) -> dict:
    """Runs one experiment; unknown kinds are an InvalidArgument listing the known ones."""
    if kind not in _MODULES:
        raise InvalidArgument(f"unknown experiment kind {kind!r}; expected one of {', '.join(kinds())}", field="kind")
    if kind not in _REGISTRY:
        try:
            importlib.import_module(f"{__name__}.{_MODULES[kind]}")
        except ModuleNotFoundError as exc:
            raise InvalidArgument(f"experiment kind {kind!r} is not available in this engine build ({exc})", field="kind") from exc
    return _REGISTRY[kind](engine, model_id, prompt_key, params)
