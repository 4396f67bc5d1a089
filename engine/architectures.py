"""The one registry of model types: ``model_type`` → the model file's ``ARCHITECTURE`` table.

Nothing else in the engine lists model types; checkpoint loading, the cache estimate and the
experiments look their architecture up here. ``python -m engine.architectures`` prints the tables as
JSON (``{model_type: {sites, sever_paths, default_sever_paths, edit_matrices}}``; sites in the order
of proto's ``Site`` enum, as ``shared/src/sites.ts`` lists them) so a TypeScript test can check
that its own lists agree.
"""

from __future__ import annotations

import json
import sys

from . import gpt_neox, mamba, mamba2
from .architecture import Architecture
from .errors import CheckpointError

ARCHITECTURES = {a.model_type: a for a in (mamba.ARCHITECTURE, mamba2.ARCHITECTURE, gpt_neox.ARCHITECTURE)}


def get(model_type: str) -> Architecture:
    """The table of ``model_type``; an unknown type is a ``CheckpointError`` naming the known ones."""
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise CheckpointError(
            f"config.json model_type: expected one of {sorted(ARCHITECTURES)}, got {model_type!r}; this engine "
            "implements only these architectures",
            field="model_type",
        )
    return arch


def model_type_of(cfg: dict) -> str:
    """``config.json``'s ``model_type``, or the architecture that claims a config without one (the
    original state-spaces Mamba config)."""
    mt = cfg.get("model_type")
    if mt is None:
        for arch in ARCHITECTURES.values():
            if arch.claims_config is not None and arch.claims_config(cfg):
                return arch.model_type
    return get(mt).model_type


def tables() -> dict:
    """Every architecture's lists, sites in the proto enum's order."""
    from .proto import engine_pb2 as pb

    order = {name[len("SITE_"):].lower(): number for name, number in pb.Site.items()}
    out = {}
    for mt, arch in ARCHITECTURES.items():
        t = arch.table()
        t["sites"] = sorted(t["sites"], key=order.__getitem__)
        out[mt] = t
    return out


def main() -> int:
    json.dump(tables(), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
