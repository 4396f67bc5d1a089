"""The packed prepare (``prepare.build_runs``: clean and corrupted rows in one pass per layer, through
the fast path's kernels) caches what the per-token reference (``prepare.build_runs_slow``, the prepare
it replaced) caches: every tensor of ``PromptRuns`` (the clean run's site values, the corrupted
stream, the kept per-token states) and every scalar, for both architectures, both corruptions, the
golden models and float32. FACTSWEEP_TEST_DEVICE=cuda:0 compares the Triton kernels' prepare."""

import os

import pytest
import torch

from engine import prepare
from engine.runtime import Engine, NoiseSpec, PromptSpec, SwapSpec
from engine.testing import golden_model, write_random_checkpoint

IDS = [5, 17, 33, 2, 41, 9, 60]
SWAP = [5, 50, 12, 2, 41, 9, 60]
DEVICE = os.environ.get("FACTSWEEP_TEST_DEVICE", "cpu")
RANDOM_MODELS = [
    ("mamba-random", "mamba", {"num_hidden_layers": 5}),
    ("neox-parallel", "gpt_neox", {"num_hidden_layers": 5, "use_parallel_residual": True}),
    ("neox-sequential", "gpt_neox", {"num_hidden_layers": 5, "use_parallel_residual": False}),
]
MODELS = [m[0] for m in RANDOM_MODELS] + [n for n in ("mamba-tiny", "neox-tiny") if golden_model(n)]
# Relative to each tensor's largest value. On the CPU the two paths do the same maths on the same
# shapes per row and agree bit for bit with the reference BLAS; on CUDA the Triton scan (exp2) and
# the fused attention round differently from the model's own ops, by float32 rounding.
REL_TOL = 1e-6 if DEVICE == "cpu" else 2e-5


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    if DEVICE != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    eng = Engine()
    for name, mt, over in RANDOM_MODELS:
        eng.load_model(name, write_random_checkpoint(tmp_path_factory.mktemp(name), mt, seed=3, **over), device=DEVICE)
    for name in MODELS[len(RANDOM_MODELS):]:
        eng.load_model(name, golden_model(name), device=DEVICE)
    return eng


def tensors(runs) -> dict:
    out = {"stream": runs.stream}
    out.update({f"clean[{k}]": v for k, v in runs.clean.items()})
    for j, kept in enumerate(runs.kept):
        out.update({f"kept[{j}][{i}]": t for i, t in enumerate(kept)})
    return out


CASES = [(m, c) for m in MODELS for c in ("swap", "noise")]


@pytest.mark.parametrize("name,corruption", CASES, ids=[f"{m}-{c}" for m, c in CASES])
def test_packed_prepare_caches_what_the_per_token_reference_caches(engine, name, corruption):
    ck = engine.models[name]
    spec = SwapSpec(SWAP) if corruption == "swap" else NoiseSpec(scale=3.0, samples=3, seed=7)
    with torch.no_grad():
        ids, corrupted = engine._inputs(ck, PromptSpec(IDS, (1, 3), spec, None, ""))
        new = prepare.build_runs(ck.model, ids, corrupted, None)
        ref = prepare.build_runs_slow(ck.model, ids, corrupted, None)
    a, b = tensors(new), tensors(ref)
    assert a.keys() == b.keys()
    differ = []
    for key, want in b.items():
        got = a[key]
        assert got.shape == want.shape and got.dtype == want.dtype and got.device == want.device, key
        assert got.is_contiguous(), key  # what the cache counts is what it holds
        err = (got.double() - want.double()).abs().max().item()
        assert err <= REL_TOL * max(1.0, want.abs().max().item()), f"{key}: differs by {err:.2e}"
        if not torch.equal(got, want):
            differ.append(f"{key} {err:.1e}")
    print(f"{name} {corruption}: {len(b) - len(differ)} of {len(b)} tensors bit-equal; others: {differ[:4]}")
    assert new.nbytes == ref.nbytes
    assert (new.answer_id, new.clean_argmax, new.num_tokens, new.num_samples) == \
        (ref.answer_id, ref.clean_argmax, ref.num_tokens, ref.num_samples)
    for f in ("p_clean", "p_corrupt", "logit_clean", "logit_corrupt"):
        assert getattr(new, f) == pytest.approx(getattr(ref, f), rel=REL_TOL * 10, abs=1e-7), f


@pytest.mark.parametrize("model_type", ["mamba", "gpt_neox"])
def test_packed_prepare_is_bit_equal_to_the_reference_in_bfloat16_on_the_cpu(tmp_path, model_type):
    eng = Engine()
    eng.load_model("m", write_random_checkpoint(tmp_path / "m", model_type, seed=3), dtype="bfloat16")
    ck = eng.models["m"]
    for spec in (SwapSpec(SWAP), NoiseSpec(samples=3, seed=7)):
        with torch.no_grad():
            ids, corrupted = eng._inputs(ck, PromptSpec(IDS, (1, 3), spec, None, ""))
            new = tensors(prepare.build_runs(ck.model, ids, corrupted, None))
            ref = tensors(prepare.build_runs_slow(ck.model, ids, corrupted, None))
        assert [k for k in ref if not torch.equal(new[k], ref[k])] == []


def test_warm_up_is_a_no_op_on_the_cpu(tmp_path):
    eng = Engine()
    eng.load_model("m", write_random_checkpoint(tmp_path / "m", "mamba"))
    assert eng.warm_up("m") == 0.0
    assert eng.stats().cache_bytes == 0 and eng.stats().cells_run == 0


@pytest.mark.skipif(not DEVICE.startswith("cuda"), reason="warm-up runs on CUDA only")
def test_warm_up_on_cuda_leaves_no_prompt_and_no_stats(engine):
    before = engine.stats()
    for name in MODELS:
        assert engine.warm_up(name) > 0.0
    after = engine.stats()
    assert (after.cache_bytes, after.cells_run, after.cache_hits, after.cache_misses) == \
        (before.cache_bytes, before.cells_run, before.cache_hits, before.cache_misses)
