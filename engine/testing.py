"""Tiny random checkpoints in Hugging Face layout, for tests (ours and other packages').

    path = write_random_checkpoint(tmp_path / "m", "mamba", num_hidden_layers=3)
    Engine().load_model("m", str(path))

Weights are random but scaled so that the models are not near-uniform (answers have some
probability mass and corruptions change it), which is what makes fast-vs-slow comparisons bite.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from contextlib import contextmanager
from typing import Optional

import torch

from . import gpt_neox, mamba, mamba2
from .errors import InvalidArgument
from .checkpoint_files import save_safetensors


def mamba_config(**overrides) -> dict:
    """An HF ``MambaConfig`` dict for a tiny model."""
    cfg = {
        "model_type": "mamba", "architectures": ["MambaForCausalLM"], "hidden_size": 16,
        "num_hidden_layers": 4, "state_size": 4, "conv_kernel": 4, "expand": 2, "intermediate_size": 32,
        "time_step_rank": 2, "layer_norm_epsilon": 1e-5, "residual_in_fp32": True, "use_bias": False,
        "use_conv_bias": True, "tie_word_embeddings": True, "vocab_size": 64, "hidden_act": "silu",
    }
    cfg.update(overrides)
    return cfg


def mamba2_config(**overrides) -> dict:
    """An HF ``Mamba2Config`` dict for a tiny model: 4 heads of 8 in 2 groups (so heads share B and C),
    ``time_step_limit`` written as transformers 5 writes it."""
    cfg = {
        "model_type": "mamba2", "architectures": ["Mamba2ForCausalLM"], "hidden_size": 16,
        "num_hidden_layers": 4, "num_heads": 4, "head_dim": 8, "n_groups": 2, "state_size": 4, "conv_kernel": 4,
        "expand": 2, "chunk_size": 8, "layer_norm_epsilon": 1e-5, "residual_in_fp32": True, "use_bias": False,
        "use_conv_bias": True, "tie_word_embeddings": True, "vocab_size": 64, "hidden_act": "silu",
        "rms_norm": True, "norm_before_gate": False, "time_step_limit": [0.0, {"__float__": "Infinity"}],
    }
    cfg.update(overrides)
    return cfg


def neox_config(**overrides) -> dict:
    """An HF ``GPTNeoXConfig`` dict for a tiny model (parallel residual unless overridden)."""
    cfg = {
        "model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "hidden_size": 16,
        "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 48, "vocab_size": 64,
        "max_position_embeddings": 32, "rotary_pct": 0.5, "rotary_emb_base": 10000, "layer_norm_eps": 1e-5,
        "use_parallel_residual": True, "attention_bias": True, "hidden_act": "gelu", "tie_word_embeddings": False,
    }
    cfg.update(overrides)
    return cfg


def random_state(config: dict, seed: int = 0, device: Optional[str] = None) -> dict:
    """Random weights for a config dict, keyed as in the HF checkpoint. ``device`` (PyTorch ≥ 2.0):
    draw them there (benchmarks: seconds on a GPU instead of minutes on a CPU at 2.8b sizes; the
    numbers then differ from a CPU draw of the same seed)."""
    if device is not None and device != "cpu":
        with torch.device(device):
            return random_state(config, seed)
    torch.manual_seed(seed)
    if config.get("model_type") == "mamba":
        c = mamba.Config.from_hf(config)
        model = mamba.LM(c)
        for layer in model.layers:
            mx = layer.mixer
            with torch.no_grad():
                mx.A_log.copy_(torch.log(torch.arange(1, c.d_state + 1, dtype=torch.float32)).repeat(c.d_inner, 1))
                dt = torch.exp(torch.rand(c.d_inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
                mx.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)
                for lin in (mx.in_proj, mx.out_proj, mx.x_proj):
                    lin.weight.mul_(3.0)
        with torch.no_grad():
            model.backbone.embeddings.weight.mul_(0.5)
    elif config.get("model_type") == "mamba2":
        c = mamba2.Config.from_hf(config)
        model = mamba2.LM(c)
        with torch.no_grad():
            for layer in model.layers:
                mx = layer.mixer
                mx.A_log.copy_(torch.log(torch.rand(c.nheads) * 15 + 1))  # A in −[1, 16]
                dt = torch.exp(torch.rand(c.nheads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
                mx.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)
                mx.norm.weight.uniform_(0.5, 1.5)
                for lin in (mx.in_proj, mx.out_proj):
                    lin.weight.mul_(3.0)
            model.backbone.embeddings.weight.mul_(0.5)
    else:
        c = gpt_neox.Config.from_hf(config)
        model = gpt_neox.LM(c)
        with torch.no_grad():
            model.embed_out.weight.mul_(6.0)
            for layer in model.layers:
                for lin in (layer.attention.query_key_value, layer.mlp.dense_h_to_4h):
                    lin.weight.mul_(3.0)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def write_checkpoint(folder, config: dict, tensors: dict, filename: str = "model.safetensors") -> str:
    """Write ``config.json`` and one safetensors file; returns the folder."""
    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    save_safetensors(os.path.join(folder, filename), tensors)
    return folder


def write_random_checkpoint(folder, model_type: str, seed: int = 0, state: Optional[dict] = None, **overrides) -> str:
    """A tiny random ``mamba``, ``mamba2`` or ``gpt_neox`` checkpoint folder (config overrides as keyword arguments)."""
    config = {"mamba": mamba_config, "mamba2": mamba2_config}.get(model_type, neox_config)(**overrides)
    return write_checkpoint(folder, config, state if state is not None else random_state(config, seed))


def golden_dir() -> Optional[str]:
    """The golden folder: ``$GOLDEN_DIR``, else the first ``shared/golden`` found above the repository."""
    env = os.environ.get("GOLDEN_DIR")
    if env:
        return env if os.path.isdir(env) else None
    here = os.path.dirname(os.path.abspath(__file__))
    for up in range(2, 5):
        cand = os.path.join(here, *[".."] * up, "shared", "golden")
        if os.path.isfile(os.path.join(cand, "golden.json")):
            return os.path.normpath(cand)
    return None


def golden_model(name: str) -> Optional[str]:
    """A golden tiny checkpoint folder (``mamba-tiny``, ``neox-tiny``), or None where there is none."""
    g = golden_dir()
    path = os.path.join(g, name) if g else None
    return path if path and os.path.isfile(os.path.join(path, "config.json")) else None


@contextmanager
def worker_session(model_path: str, model_id: str = "m"):
    """A real ``python -m engine`` process, greeted and with ``model_path`` loaded as ``model_id``:
    yields its ``WorkerClient``. On a clean exit of the block the worker must still answer Stats and
    Shutdown and exit 0; it is killed if it is still running after the block."""
    from . import PROTOCOL_VERSION
    from .framing import WorkerClient
    from .proto import engine_pb2 as pb

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "engine"], cwd=root, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        client = WorkerClient(proc.stdin, proc.stdout)
        assert client.call(hello=pb.Hello(protocol_version=PROTOCOL_VERSION)).WhichOneof("body") == "hello"
        assert client.call(load_model=pb.LoadModel(model_id=model_id, path=str(model_path))).WhichOneof("body") == "model"
        yield client
        assert client.call(stats=pb.StatsRequest()).WhichOneof("body") == "stats"  # still serving
        assert client.call(shutdown=pb.Shutdown()).WhichOneof("body") == "shutdown"
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def assert_refused(engine, kind: str, prompt_key: str, cases) -> None:
    """Each ``(model_id, params, field)`` of ``cases`` makes experiment ``kind`` raise InvalidArgument
    naming ``field``, with what was expected in its message."""
    from . import experiments

    for model_id, params, field in cases:
        try:
            experiments.run(engine, model_id, kind, prompt_key, params)
        except InvalidArgument as err:
            assert err.field == field, (params, err.message)
            assert "expected" in err.message
        else:
            raise AssertionError(f"{kind} accepted {params!r}; expected an InvalidArgument naming {field}")
