"""Mamba-2's cached fast path (packed rows resuming from the corrupted run's conv window and per-head
SSM state) gives the numbers of the plain slow path for every site, both corruptions, windows 1, 3
and 10, every layer and token (first and last included); its prepare equals the reference prepare."""

import os

import pytest
import torch

from engine.prepare import build_runs, build_runs_slow
from engine.runtime import CellSpec, Engine, NoiseSpec, SwapSpec
from engine.testing import write_random_checkpoint

IDS = [5, 17, 33, 2, 41, 9, 60]  # 7 tokens, subject [1, 3)
SWAP = [5, 50, 12, 2, 41, 9, 60]
SUBJECT = (1, 3)
GOLDEN = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "golden-mamba2", "mamba2-tiny")
P_TOL = 1e-5  # the golden check's tolerance for trace cells

# (name, config overrides): 2 groups of 2 heads; 1 group with a longer conv than the prompt's edge tokens;
# a gate applied after the norm.
RANDOM = [
    ("m2-groups", {"num_hidden_layers": 5}),
    ("m2-one-group-conv6", {"n_groups": 1, "conv_kernel": 6, "num_heads": 2, "head_dim": 16}),
    ("m2-norm-before-gate", {"norm_before_gate": True}),
]
MODELS = [n for n, _ in RANDOM] + (["mamba2-tiny"] if os.path.isfile(os.path.join(GOLDEN, "config.json")) else [])


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    eng = Engine(trace_rows=64)  # small micro-batches: splitting a call's cells is exercised too
    for name, over in RANDOM:
        eng.load_model(name, write_random_checkpoint(tmp_path_factory.mktemp(name), "mamba2", seed=3, **over))
    if "mamba2-tiny" in MODELS:
        eng.load_model("mamba2-tiny", GOLDEN)
    return eng


def prepare(eng, name, corruption):
    vocab = eng.model_info(name).vocab_size
    ids, swap = [i % vocab for i in IDS], [i % vocab for i in SWAP]
    spec = SwapSpec(swap) if corruption == "swap" else NoiseSpec(scale=3.0, samples=3, seed=7)
    key = f"{name}/{corruption}"
    return eng.prepare_prompt(name, key, ids, SUBJECT, spec), key


CASES = [(m, c) for m in MODELS for c in ("noise", "swap")]


@pytest.mark.parametrize("name,corruption", CASES, ids=[f"{m}-{c}" for m, c in CASES])
def test_fast_path_equals_slow_path_for_every_site_window_layer_and_token(engine, name, corruption):
    info = engine.model_info(name)
    assert info.sites == ["embed", "residual", "in_ssm", "gate", "conv", "ssm", "mixer"]
    pinfo, key = prepare(engine, name, corruption)
    T = pinfo.num_tokens
    for site in info.sites:
        cells = [CellSpec(site, l, t, w) for w in (1, 3, 10) for l in range(info.num_layers) for t in range(T)]
        fast = torch.tensor(engine.run_cells(name, key, cells))
        slow = torch.tensor(engine.run_cells(name, key, cells, slow_path=True))
        err = (fast - slow).abs().max(dim=0).values
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


def test_cells_batched_with_others_give_the_numbers_they_give_alone(engine):
    name = "m2-groups"
    info = engine.model_info(name)
    pinfo, key = prepare(engine, name, "noise")
    cells = [CellSpec(s, l, t, 3) for s in info.sites for l in range(info.num_layers) for t in range(pinfo.num_tokens)]
    together = torch.tensor(engine.run_cells(name, key, cells))
    alone = torch.tensor([engine.run_cells(name, key, [c])[0] for c in cells[::5]])
    assert (together[::5] - alone).abs().max() <= 1e-5


@pytest.mark.parametrize("corruption", ["noise", "swap"])
def test_prepare_equals_the_reference_prepare(engine, corruption):
    # build_runs (one pass for the clean and corrupted rows) against build_runs_slow (separate forwards):
    # every cached tensor the fast path resumes from, the kept conv inputs and per-head SSM states included.
    name = "m2-groups"
    model = engine.models[name].model
    ids = torch.tensor(IDS)
    _, key = prepare(engine, name, corruption)
    _, corrupted = engine.prompt_inputs(name, key)
    with torch.no_grad():
        fast, slow = build_runs(model, ids, corrupted, None), build_runs_slow(model, ids, corrupted, None)
    assert fast.answer_id == slow.answer_id and fast.p_clean == pytest.approx(slow.p_clean, abs=1e-7)
    assert fast.p_corrupt == pytest.approx(slow.p_corrupt, abs=1e-7)
    assert set(fast.clean) == set(slow.clean) == set(model.SITES)
    for site in fast.clean:
        torch.testing.assert_close(fast.clean[site], slow.clean[site], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fast.stream, slow.stream, rtol=1e-6, atol=1e-6)
    c = model.config
    for j in range(c.num_layers):
        xbc, H = fast.kept[j]
        assert xbc.shape == (corrupted.shape[0], len(IDS), c.conv_dim)
        assert H.shape == (corrupted.shape[0], len(IDS), c.nheads, c.head_dim, c.d_state) and H.dtype == torch.float32
        for a, b in zip(fast.kept[j], slow.kept[j]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_the_cache_estimate_is_what_a_prepared_prompt_holds(engine):
    for corruption, samples in (("swap", 1), ("noise", 3)):
        pinfo, _ = prepare(engine, "m2-groups", corruption)
        assert pinfo.cache_bytes == engine.prompt_cache_bytes("m2-groups", len(IDS), samples)
