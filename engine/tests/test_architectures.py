"""The architecture tables (``engine/architectures.py``): ``python -m engine.architectures`` prints
them as JSON in the shape the TypeScript side compares with its own lists."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine import architectures
from engine.errors import CheckpointError
from engine.testing import mamba_config

REPO_ROOT = Path(__file__).resolve().parents[2]
KEYS = ["sites", "sever_paths", "default_sever_paths", "edit_matrices"]


def test_the_json_command_prints_every_model_type_with_its_four_lists():
    proc = subprocess.run([sys.executable, "-m", "engine.architectures"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    tables = json.loads(proc.stdout)
    assert sorted(tables) == sorted(architectures.ARCHITECTURES)
    for mt, t in tables.items():
        assert list(t) == KEYS, mt
        assert all(isinstance(x, str) for k in KEYS for x in t[k]) and all(t[k] for k in KEYS), mt
        arch = architectures.get(mt)
        assert sorted(t["sites"]) == sorted(arch.sites)
        assert set(t["default_sever_paths"]) <= set(t["sever_paths"]) and t["sever_paths"][0] == "none"
    assert tables["mamba"] == {
        "sites": ["embed", "residual", "mixer", "ssm", "gate", "conv", "in_ssm"],
        "sever_paths": ["none", "ssm", "gate", "mixer", "in_ssm", "conv"],
        "default_sever_paths": ["none", "ssm", "gate", "mixer"],
        "edit_matrices": ["W_o", "W_a", "W_g"],
    }
    assert tables["gpt_neox"] == {
        "sites": ["embed", "residual", "attn", "mlp"],
        "sever_paths": ["none", "attn", "mlp"],
        "default_sever_paths": ["none", "attn", "mlp"],
        "edit_matrices": ["dense_4h_to_h"],
    }


def test_model_types_are_looked_up_in_the_registry():
    assert architectures.model_type_of(mamba_config()) == "mamba"
    state_spaces = {"d_model": 16, "n_layer": 2, "vocab_size": 64, "ssm_cfg": {}}
    assert architectures.model_type_of(state_spaces) == "mamba"
    with pytest.raises(CheckpointError) as err:
        architectures.model_type_of({"model_type": "llama"})
    assert err.value.field == "model_type" and "gpt_neox" in err.value.message
