"""The cached fast path gives the numbers of the plain slow path, for every site of both
architectures, both corruptions, windows 1, 3 and 10, every layer and token (edges included)."""

import os

import pytest
import torch

from engine.runtime import CellSpec, Engine, NoiseSpec, SwapSpec
from engine.testing import golden_model, write_random_checkpoint
from engine.trace import window_layers

IDS = [5, 17, 33, 2, 41, 9, 60]  # 7 tokens, subject [1, 3)
SWAP = [5, 50, 12, 2, 41, 9, 60]
SUBJECT = (1, 3)

# (name, model_type, config overrides); golden models are added where the golden folder exists.
RANDOM_MODELS = [
    ("mamba-random", "mamba", {"num_hidden_layers": 5}),
    ("neox-parallel", "gpt_neox", {"num_hidden_layers": 5, "use_parallel_residual": True}),
    ("neox-sequential", "gpt_neox", {"num_hidden_layers": 5, "use_parallel_residual": False}),
]
GOLDEN = [n for n in ("mamba-tiny", "neox-tiny") if golden_model(n)]
MODELS = [m[0] for m in RANDOM_MODELS] + GOLDEN


# FACTSWEEP_TEST_DEVICE=cuda:0 runs the fast path's Triton kernels against the slow path on a GPU
# (float32, TF32 off). Tolerance: the golden check's for trace grids. Both paths are float32, but a
# BLAS picks its kernel (and summation order) by matrix shape, and the two paths multiply different
# shapes: with OpenBLAS the golden Mamba differs by up to ~5e-6 in p where its activations are large.
DEVICE = os.environ.get("FACTSWEEP_TEST_DEVICE", "cpu")
P_TOL = 1e-5


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    if DEVICE != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    eng = Engine(trace_rows=64)  # small micro-batches: exercises splitting a call's cells too
    for name, mt, over in RANDOM_MODELS:
        eng.load_model(name, write_random_checkpoint(tmp_path_factory.mktemp(name), mt, seed=3, **over), device=DEVICE)
    for name in GOLDEN:
        eng.load_model(name, golden_model(name), device=DEVICE)
    return eng


def prepare(eng, name, corruption):
    spec = SwapSpec(SWAP) if corruption == "swap" else NoiseSpec(scale=3.0, samples=3, seed=7)
    key = f"{name}/{corruption}"
    return eng.prepare_prompt(name, key, IDS, SUBJECT, spec), key


CASES = [(m, c) for m in MODELS for c in ("noise", "swap")]


@pytest.mark.parametrize("name,corruption", CASES, ids=[f"{m}-{c}" for m, c in CASES])
def test_fast_path_equals_slow_path_for_every_site_window_layer_and_token(engine, name, corruption):
    info = engine.model_info(name)
    pinfo, key = prepare(engine, name, corruption)
    T = pinfo.num_tokens
    for site in info.sites:
        cells = [CellSpec(site, l, t, w) for w in (1, 3, 10) for l in range(info.num_layers) for t in range(T)]
        fast = torch.tensor(engine.run_cells(name, key, cells))
        slow = torch.tensor(engine.run_cells(name, key, cells, slow_path=True))
        err = (fast - slow).abs().max(dim=0).values
        print(f"{name} {corruption} {site}: max |dp| {err[0]:.2e}")
        assert err[0] <= P_TOL, f"{site}: p differs by {err[0]:.2e}"
        assert err[1] <= 1e-4 * max(1.0, slow[:, 1].abs().max().item()), f"{site}: logit differs by {err[1]:.2e}"
        # the grid is not trivial: restoring moves the answer somewhere (else fast == slow would prove little)
        assert (fast[:, 1] - pinfo.logit_corrupt).abs().max() > 1e-2, f"{site}: no cell moves the answer logit"


@pytest.mark.parametrize("name", MODELS)
def test_restoring_the_last_layer_at_the_last_token_recovers_p_clean(engine, name):
    pinfo, key = prepare(engine, name, "swap")
    L = engine.model_info(name).num_layers
    (p, logit), = engine.run_cells(name, key, [CellSpec("residual", L - 1, pinfo.num_tokens - 1, 1)])
    assert p == pytest.approx(pinfo.p_clean, abs=1e-6)
    assert logit == pytest.approx(pinfo.logit_clean, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_cells_batched_with_others_give_the_numbers_they_give_alone(engine, name):
    # The same cells batched with many others (grouped by token, different start layers) or alone.
    info = engine.model_info(name)
    pinfo, key = prepare(engine, name, "noise")
    cells = [CellSpec(s, l, t, 3) for s in info.sites for l in range(info.num_layers) for t in range(pinfo.num_tokens)]
    together = engine.run_cells(name, key, cells)
    alone = torch.tensor([engine.run_cells(name, key, [c])[0] for c in cells[::7]])
    err = (torch.tensor(together[::7]) - alone).abs().max(dim=0).values
    assert err[0] <= P_TOL, f"p differs by {err[0]:.2e}"
    assert err[1] <= 1e-4 * max(1.0, alone[:, 1].abs().max().item()), f"logit differs by {err[1]:.2e}"


def test_window_is_romes_range_of_layers_around_the_centre():
    assert list(window_layers(0, 10, 64)) == [0, 1, 2, 3, 4]
    assert list(window_layers(20, 10, 64)) == list(range(15, 25))  # l-5 .. l+4
    assert list(window_layers(63, 10, 64)) == list(range(58, 64))
    assert list(window_layers(0, 3, 4)) == [0, 1]
    assert list(window_layers(3, 3, 4)) == [2, 3]
    assert list(window_layers(2, 1, 4)) == [2]
    assert list(window_layers(2, 0, 4)) == [2]  # 0 means one layer


def test_a_window_restores_the_same_as_the_slow_path_patching_each_of_its_layers(engine):
    # Semantics check independent of window_layers: the slow path of window 3 at layer 2 equals
    # restoring layers 1, 2, 3, each of which alone gives a different answer.
    name = "mamba-random"
    _, key = prepare(engine, name, "swap")
    (p3, _), = engine.run_cells(name, key, [CellSpec("mixer", 2, 2, 3)], slow_path=True)
    singles = [engine.run_cells(name, key, [CellSpec("mixer", l, 2, 1)])[0][0] for l in (1, 2, 3)]
    assert all(abs(p3 - s) > 1e-7 for s in singles)
    model = engine.models[name].model
    from engine.trace import record_clean
    ids = torch.tensor(IDS, device=DEVICE)
    with torch.no_grad():
        _, clean = record_clean(model, ids)

        def hook(site, layer, value):
            if site == "mixer" and layer in (1, 2, 3):
                value = value.clone()
                value[:, 2] = clean["mixer"][layer, 2]
            return value

        logits, _ = model(torch.tensor(SWAP, device=DEVICE)[None], hook=hook)
    p = torch.softmax(logits[0, -1], -1)[engine.prepare_prompt(name, key, IDS, SUBJECT, SwapSpec(SWAP)).answer_id]
    assert p.item() == pytest.approx(p3, abs=1e-7)


def test_bfloat16_runs_and_fast_path_matches_slow_path(tmp_path):
    eng = Engine()
    path = write_random_checkpoint(tmp_path / "m", "mamba", seed=3)
    eng.load_model("f32", path)
    eng.load_model("bf16", path, dtype="bfloat16")
    p32 = eng.prepare_prompt("f32", "k", IDS, SUBJECT, SwapSpec(SWAP))
    p16 = eng.prepare_prompt("bf16", "k", IDS, SUBJECT, SwapSpec(SWAP))
    assert p16.answer_id == p32.answer_id
    assert p16.p_clean == pytest.approx(p32.p_clean, abs=0.05)
    cells = [CellSpec(s, l, t) for s in ("residual", "ssm") for l in range(4) for t in range(len(IDS))]
    fast = torch.tensor(eng.run_cells("bf16", "k", cells))
    slow = torch.tensor(eng.run_cells("bf16", "k", cells, slow_path=True))
    assert (fast - slow)[:, 0].abs().max() <= 1e-2
