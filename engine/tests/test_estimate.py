"""``engine.estimate`` (what ``sweepctl plan`` prints as memory per worker): its figures are what a
loaded model and its prepared prompts really take, and bad requests are clear errors."""

import json
import os
import subprocess
import sys

import pytest

from engine.errors import InvalidArgument
from engine.estimate import worker_memory
from engine.runtime import Engine, NoiseSpec, SwapSpec
from engine.testing import write_random_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("model_type", ["mamba", "mamba2", "gpt_neox"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_estimate_equals_the_loaded_weights_and_the_cache_of_the_prepared_prompts(tmp_path, model_type, dtype):
    path = write_random_checkpoint(tmp_path / "m", model_type)
    eng = Engine()
    eng.load_model("m", path, dtype=dtype)
    model = eng.models["m"].model
    ids = [5, 17, 33, 2, 41, 9, 60]
    for samples, spec in [(1, SwapSpec([5, 50, 12, 2, 41, 9, 60])), (3, NoiseSpec(samples=3))]:
        short = eng.prepare_prompt("m", f"s{samples}", ids[:4], (1, 2), spec if samples > 1 else SwapSpec(ids[:3] + [7]))
        long = eng.prepare_prompt("m", f"l{samples}", ids, (1, 3), spec)
        est = worker_memory(path, dtype, [4, 7], samples)
        assert est["weights"] == sum(p.numel() * p.element_size() for p in model.parameters())
        assert est["prompt_cache_max"] == long.cache_bytes
        assert est["prompt_cache_total"] == short.cache_bytes + long.cache_bytes
        assert est["longest_prompt_tokens"] == 7
        for kind in ("gpu", "cpu"):
            assert est["minimum"][kind] == est["weights"] + long.cache_bytes + est["batch_min"][kind] > est["weights"]


def test_the_command_reads_a_request_on_stdin_and_names_a_bad_field(tmp_path):
    path = write_random_checkpoint(tmp_path / "m", "mamba")
    env = {**os.environ, "PYTHONPATH": REPO}

    def run(req):
        return subprocess.run([sys.executable, "-m", "engine.estimate"], input=json.dumps(req), env=env,
                              capture_output=True, text=True, timeout=120)

    ok = run({"path": path, "dtype": "bfloat16", "samples": 1, "tokens": [9, 4, 9]})
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == worker_memory(path, "bfloat16", [9, 4, 9], 1)
    bad = run({"path": path, "tokens": [4, 0]})
    assert bad.returncode == 2 and "tokens: expected an integer" in bad.stderr
    missing = run({"path": str(tmp_path / "nope"), "tokens": [4]})
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    with pytest.raises(InvalidArgument, match="dtype"):
        worker_memory(path, "int8", [4])
