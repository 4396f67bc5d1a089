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
GOLDEN = os.path.join(os.environ.get("GOLDEN_MAMBA2_DIR") or os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared",
                                                                          "golden-mamba2"), "mamba2-tiny")
P_TOL = 1e-5  # the golden check's tolerance for trace cells
# FACTSWEEP_TEST_DEVICE=cuda:0 runs the fast path against the slow path on a GPU (float32, TF32 off).
DEVICE = os.environ.get("FACTSWEEP_TEST_DEVICE", "cpu")

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
    if DEVICE != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    eng = Engine(trace_rows=64)  # small micro-batches: splitting a call's cells is exercised too
    for name, over in RANDOM:
        eng.load_model(name, write_random_checkpoint(tmp_path_factory.mktemp(name), "mamba2", seed=3, **over), device=DEVICE)
    if "mamba2-tiny" in MODELS:
        eng.load_model("mamba2-tiny", GOLDEN, device=DEVICE)
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
    ids = torch.tensor(IDS, device=DEVICE)
    _, key = prepare(engine, name, corruption)
    _, corrupted = engine.prompt_inputs(name, key)
    with torch.no_grad():
        fast, slow = build_runs(model, ids, corrupted, None), build_runs_slow(model, ids, corrupted, None)
    assert fast.answer_id == slow.answer_id and fast.p_clean == pytest.approx(slow.p_clean, abs=1e-7)
    assert fast.p_corrupt == pytest.approx(slow.p_corrupt, abs=1e-7)
    assert set(fast.clean) == set(model.SITES)  # no per-head copies: a head's clean value is a slice of ssm's
    for site in fast.clean:
        torch.testing.assert_close(fast.clean[site], slow.clean[site], rtol=1e-6, atol=1e-6)
    P = model.config.head_dim
    for k in range(model.config.nheads):  # the reference records the heads: the same numbers
        torch.testing.assert_close(slow.clean[f"ssm.h{k}"], fast.clean["ssm"][..., k * P:(k + 1) * P], rtol=1e-6, atol=1e-6)
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


@pytest.mark.parametrize("name", ["m2-groups"] + (["mamba2-tiny"] if "mamba2-tiny" in MODELS else []))
def test_per_head_ssm_restores_fast_equal_slow_for_every_head_layer_token_and_window(engine, name):
    model = engine.models[name].model
    H, L = model.config.nheads, model.config.num_layers
    pinfo, key = prepare(engine, name, "noise")
    cells = [CellSpec(f"ssm.h{k}", l, t, w) for k in range(H) for w in (1, 3) for l in range(L) for t in range(pinfo.num_tokens)]
    fast = torch.tensor(engine.run_cells(name, key, cells))
    slow = torch.tensor(engine.run_cells(name, key, cells, slow_path=True))
    assert (fast - slow)[:, 0].abs().max() <= P_TOL
    assert (fast[:, 1] - pinfo.logit_corrupt).abs().max() > 1e-2  # some head matters somewhere
    # a head is not the whole site: one head's restore differs from the site's at the same cell
    whole = torch.tensor(engine.run_cells(name, key, [CellSpec("ssm", c.layer, c.token, c.window) for c in cells[:len(cells) // H]]))
    assert (fast[:len(cells) // H, 1] - whole[:, 1]).abs().max() > 1e-3


def _mixer_change(model, clean_ids, corrupted_ids, heads, layer, token):
    """o (the mixer output) of ``layer`` at ``token`` in the corrupted run with the clean y of ``heads``
    restored there, minus o of the plain corrupted run; and p(answer) of the restored run."""
    from engine.prepare import record_clean

    with torch.no_grad():
        _, clean = record_clean(model, torch.tensor(clean_ids))
        seen = {}

        def hook(site, j, v, restore):
            if j == layer and site in restore:
                v = v.clone()
                v[:, token] = clean[site][j, token]
            if j == layer and site == "mixer":
                seen["o"] = v[0, token].double()
            return v

        ids = torch.tensor([corrupted_ids])
        model(ids, hook=lambda s, j, v: hook(s, j, v, set()))
        o0 = seen["o"]
        logits, _ = model(ids, hook=lambda s, j, v: hook(s, j, v, {f"ssm.h{k}" for k in heads}))
    return seen["o"] - o0, torch.softmax(logits[0, -1].double(), -1)


def test_per_head_restores_add_up_to_the_all_head_restore_where_each_head_is_its_own_norm_group(tmp_path):
    """The identities per-head restores obey.
    1. Restoring every head's y at once is the whole ``ssm`` restore (same numbers, any model).
    2. With one norm group per head (n_groups = num_heads), o_t = Σ_k W_o[:, head k] · norm_k(y_k ⊙ g_k)
       is a sum of per-head terms, so the change of o at the restored (layer, token) from restoring all
       heads is the sum of the changes from restoring each head alone. With one group for all heads
       the norm couples them and the sum does not hold (checked, so the identity is not vacuous)."""
    swap = [5, 50, 12, 2, 41, 9, 60]
    for groups, additive in ((4, True), (1, False)):
        eng = Engine()
        eng.load_model("m", write_random_checkpoint(tmp_path / f"g{groups}", "mamba2", seed=4, n_groups=groups))
        model = eng.models["m"].model
        H = model.config.nheads
        for layer, token in ((0, 2), (2, 1)):
            d_all, p_all = _mixer_change(model, IDS, swap, range(H), layer, token)
            singles = [_mixer_change(model, IDS, swap, [k], layer, token)[0] for k in range(H)]
            gap = (d_all - sum(singles)).abs().max().item()
            assert d_all.abs().max() > 1e-2  # the restore changes o
            if additive:
                assert gap <= 1e-5 * max(1.0, d_all.abs().max().item()), gap
            else:
                assert gap > 1e-3, gap
            # identity 1, through the engine's cells: all heads by hook == the cell restoring ssm
            eng.prepare_prompt("m", "k", IDS, (1, 3), SwapSpec(swap))
            (p_site, _), = eng.run_cells("m", "k", [CellSpec("ssm", layer, token, 1)])
            answer = eng.prepare_prompt("m", "k", IDS, (1, 3), SwapSpec(swap)).answer_id
            assert p_all[answer].item() == pytest.approx(p_site, abs=1e-6)


def test_bfloat16_runs_and_its_fast_path_matches_its_slow_path(tmp_path):
    eng = Engine()
    path = write_random_checkpoint(tmp_path / "m", "mamba2", seed=3)
    eng.load_model("f32", path)
    eng.load_model("bf16", path, dtype="bfloat16")
    p32 = eng.prepare_prompt("f32", "k", IDS, SUBJECT, SwapSpec(SWAP))
    p16 = eng.prepare_prompt("bf16", "k", IDS, SUBJECT, SwapSpec(SWAP))
    assert p16.answer_id == p32.answer_id
    assert p16.p_clean == pytest.approx(p32.p_clean, abs=0.05)
    cells = [CellSpec(s, l, t) for s in ("residual", "ssm", "ssm.h1") for l in range(4) for t in range(len(IDS))]
    fast = torch.tensor(eng.run_cells("bf16", "k", cells))
    slow = torch.tensor(eng.run_cells("bf16", "k", cells, slow_path=True))
    assert (fast - slow)[:, 0].abs().max() <= 1e-2
