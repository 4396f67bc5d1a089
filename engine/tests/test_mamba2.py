"""Mamba-2 (``engine/mamba2.py``): config.json parsing and its refusals, the scan against SSD's other
(quadratic, attention-like) form, the state-spaces checkpoint layout, resuming from a kept state, and
ROME's edit targets on the Mamba-2 block."""

import json
import math

import pytest
import torch

from engine import experiments, mamba2
from engine.architectures import get as architecture_of, model_type_of
from engine.checkpoint import load_checkpoint
from engine.errors import CheckpointError
from engine.runtime import Engine, SwapSpec
from engine.testing import mamba2_config, random_state, write_checkpoint, write_random_checkpoint

IDS = [5, 17, 33, 2, 41, 9, 60]


def test_config_json_as_transformers_5_writes_it_parses_with_an_infinite_time_step_limit():
    c = mamba2.Config.from_hf(json.loads(json.dumps(mamba2_config())))
    assert (c.dt_min, c.dt_max) == (0.0, math.inf)
    assert (c.nheads, c.head_dim, c.ngroups, c.d_inner, c.conv_dim) == (4, 8, 2, 32, 32 + 2 * 2 * 4)
    c = mamba2.Config.from_hf(mamba2_config(time_step_limit=[0.001, 0.5]))
    assert (c.dt_min, c.dt_max) == (0.001, 0.5)
    assert mamba2.Config.from_hf({k: v for k, v in mamba2_config().items() if k != "time_step_limit"}).dt_max == math.inf


@pytest.mark.parametrize("overrides,field,says", [
    ({"num_heads": 3}, "num_heads", "expected 32"),
    ({"n_groups": 3}, "n_groups", "divisor of num_heads (4)"),
    ({"time_step_limit": [0.0, {"__float__": "Inf"}]}, "time_step_limit", "expected [low, high]"),
    ({"time_step_limit": [0.5, 0.1]}, "time_step_limit", "0 <= low <= high"),
    ({"time_step_limit": 0.1}, "time_step_limit", "expected [low, high]"),
    ({"rms_norm": False}, "rms_norm", "only true"),
    ({"hidden_act": "gelu"}, "hidden_act", "expected 'silu'"),
    ({"head_dim": "8"}, "head_dim", "expected an integer"),
    ({"num_heads": None}, "num_heads", "lacks 'num_heads'"),
])
def test_a_bad_config_value_is_a_checkpoint_error_naming_the_field(tmp_path, overrides, field, says):
    cfg = mamba2_config(**overrides)
    with pytest.raises(CheckpointError) as err:
        mamba2.Config.from_hf(cfg)
    assert err.value.field == field and says in err.value.message
    # the same through loading a folder, before any weight is read
    write_checkpoint(tmp_path, cfg, random_state(mamba2_config()))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(tmp_path))
    assert err.value.field == field


def test_the_scan_equals_ssds_quadratic_form():
    """SSD's duality: the model's scan (``Mamba2Mixer.ssm``), like the recurrence S_t = exp(Δ_t A) S_{t−1} + Δ_t x_t B_tᵀ, y_t = S_t C_t + D x_t equals
    y_t = Σ_{s≤t} (C_t·B_s) exp(A Σ_{s<r≤t} Δ_r) Δ_s x_s + D x_t, computed here directly in float64."""
    torch.manual_seed(0)
    c = mamba2.Config.from_hf(mamba2_config())
    mixer = mamba2.LM(c).double().layers[0].mixer
    with torch.no_grad():
        mixer.A_log.copy_(torch.log(torch.rand(c.nheads) * 4 + 0.5))
        mixer.D.uniform_(-1, 1)
        b, l = 2, 9
        cv, dt = torch.randn(b, l, c.conv_dim, dtype=torch.float64), torch.randn(b, l, c.nheads, dtype=torch.float64)
        y, _ = mixer.ssm(cv, dt, None, keep=False)  # (b, l, d_in)

        x, B, C = cv.split([c.d_inner, c.ngroups * c.d_state, c.ngroups * c.d_state], dim=-1)
        x = x.view(b, l, c.nheads, c.head_dim)
        group = torch.arange(c.nheads) // (c.nheads // c.ngroups)  # the group of each head
        B, C = B.view(b, l, c.ngroups, c.d_state)[:, :, group], C.view(b, l, c.ngroups, c.d_state)[:, :, group]
        delta = torch.nn.functional.softplus(dt + mixer.dt_bias)  # (b, l, H)
        A = -torch.exp(mixer.A_log)
        cum = torch.cumsum(delta * A, dim=1)  # (b, l, H)
        want = torch.zeros(b, l, c.nheads, c.head_dim, dtype=torch.float64)
        for t in range(l):
            for s in range(t + 1):
                w = (C[:, t] * B[:, s]).sum(-1) * torch.exp(cum[:, t] - cum[:, s]) * delta[:, s]  # (b, H)
                want[:, t] += w[..., None] * x[:, s]
        want += mixer.D[:, None] * x
    # the scan runs in float32 whatever the model's dtype (its state is a long product of decays)
    torch.testing.assert_close(y, want.reshape(b, l, c.d_inner), rtol=1e-5, atol=2e-5 * float(want.abs().max()))


@pytest.mark.parametrize("chunk", [1, 3, 8, 64])
def test_the_chunked_scan_equals_the_per_token_recurrence_from_any_state(chunk):
    """The model's forward uses SSD's chunked form; ``ssd_scan`` is the plain recurrence. Same y and the
    same state after every token (what the cache keeps), from zeros and from a given state."""
    torch.manual_seed(3)
    b, l, H, P, n = 2, 11, 4, 8, 4
    x, delta = torch.randn(b, l, H, P), torch.rand(b, l, H) * 0.5
    A = -torch.rand(H) * 8 - 0.5
    B, C = torch.randn(b, l, H, n), torch.randn(b, l, H, n)
    h0 = torch.randn(b, H, P, n)
    for start in (None, h0):
        y_ref, S_ref = mamba2.ssd_scan(x, delta, A, B, C, start, keep=True)
        y, S = mamba2.ssd_chunked(x, delta, A, B, C, start, keep=True, chunk=chunk)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(S, S_ref, rtol=1e-5, atol=1e-5)
        y2, none = mamba2.ssd_chunked(x, delta, A, B, C, start, keep=False, chunk=chunk)
        assert none is None
        torch.testing.assert_close(y2, y_ref, rtol=1e-5, atol=1e-5)


def test_heads_of_one_group_share_b_and_c_and_groups_do_not():
    """Changing the B of group 1 changes the output of heads 2 and 3 (group 1) only."""
    torch.manual_seed(1)
    c = mamba2.Config.from_hf(mamba2_config())
    mixer = mamba2.LM(c).layers[0].mixer
    cv, dt = torch.randn(1, 5, c.conv_dim), torch.randn(1, 5, c.nheads)
    with torch.no_grad():
        y0, _ = mixer.ssm(cv, dt, None, False)
        cv2 = cv.clone()
        cv2[..., c.d_inner + c.d_state:c.d_inner + 2 * c.d_state] += 1.0  # B of group 1
        y1, _ = mixer.ssm(cv2, dt, None, False)
    moved = (y1 - y0).abs().view(5, c.nheads, c.head_dim).amax(dim=(0, 2))
    assert moved[:2].max() == 0 and moved[2:].min() > 1e-3


def test_the_state_spaces_layout_loads_as_mamba2_and_gives_the_hf_layouts_logits(tmp_path):
    hf = mamba2_config()
    state = random_state(hf, seed=4)
    write_checkpoint(tmp_path / "hf", hf, state)
    ss_cfg = {"d_model": 16, "n_layer": 4, "vocab_size": 64, "pad_vocab_size_multiple": 8, "tie_embeddings": True,
              "residual_in_fp32": True, "ssm_cfg": {"layer": "Mamba2", "d_state": 4, "d_conv": 4, "expand": 2,
                                                    "headdim": 8, "ngroups": 2, "chunk_size": 8}}
    assert model_type_of(ss_cfg) == "mamba2" and model_type_of(dict(ss_cfg, ssm_cfg={"d_state": 4})) == "mamba"
    ss_state = {("backbone.embedding.weight" if k == "backbone.embeddings.weight" else k): v for k, v in state.items()}
    write_checkpoint(tmp_path / "ss", ss_cfg, ss_state)
    a, b = load_checkpoint(str(tmp_path / "hf")), load_checkpoint(str(tmp_path / "ss"))
    assert b.model_type == "mamba2"
    with torch.no_grad():
        torch.testing.assert_close(a.model(torch.tensor([IDS]))[0], b.model(torch.tensor([IDS]))[0], rtol=0, atol=0)
    for bad, field in ((dict(ss_cfg, ssm_cfg=dict(ss_cfg["ssm_cfg"], D_has_hdim=True)), "D_has_hdim"),
                       (dict(ss_cfg, d_intermediate=64), "d_intermediate"), (dict(ss_cfg, attn_layer_idx=[1]), "attn_layer_idx"),
                       (dict(ss_cfg, rms_norm=False), "rms_norm")):
        with pytest.raises(CheckpointError) as err:
            mamba2.Config.from_hf(bad)
        assert err.value.field == field
    # the state-spaces defaults (mamba2-130m's config.json names only the layer): d_state 128, headdim 64
    c = mamba2.Config.from_hf({"d_model": 768, "d_intermediate": 0, "n_layer": 24, "vocab_size": 50277,
                               "ssm_cfg": {"layer": "Mamba2"}, "attn_layer_idx": [], "rms_norm": True,
                               "pad_vocab_size_multiple": 16, "tie_embeddings": True})
    assert (c.nheads, c.head_dim, c.d_state, c.ngroups, c.vocab_size) == (24, 64, 128, 1, 50288)


def test_a_tensor_of_the_wrong_shape_is_refused_naming_it(tmp_path):
    state = random_state(mamba2_config())
    state["backbone.layers.1.mixer.dt_bias"] = torch.zeros(5)
    write_checkpoint(tmp_path, mamba2_config(), state)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(tmp_path))
    assert "dt_bias" in err.value.field and "[4]" in err.value.message


def test_resuming_from_a_kept_state_continues_the_full_run_exactly():
    """What sever, ROME and lre rely on: the block run on tokens t.. from resume_state(kept, t) gives the
    full run's outputs there, at every t (0, inside the conv window and after it)."""
    torch.manual_seed(2)
    c = mamba2.Config.from_hf(mamba2_config(conv_kernel=4))
    model = mamba2.LM(c)
    model.load_state_dict(random_state(mamba2_config(conv_kernel=4), seed=2))
    with torch.no_grad():
        h = model.embed(torch.tensor([IDS, IDS[::-1]])).float()  # (2, T, d)
        block = model.layers[1]
        full, kept = block(h, keep=True)
        rows = torch.tensor([1, 0])
        for t in range(len(IDS)):
            part, _ = block(h[rows, t:], state=block.resume_state(kept, t, rows), pos0=t)
            torch.testing.assert_close(part, full[rows, t:], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    eng = Engine()
    eng.load_model("m2", write_random_checkpoint(tmp_path_factory.mktemp("m2"), "mamba2", seed=8))
    eng.prepare_prompt("m2", "p", IDS, (1, 3), SwapSpec([5, 50, 12, 2, 41, 9, 60]))
    return eng


@pytest.mark.parametrize("matrix,rows,drop", [("W_o", (0, 16), 1.0), ("W_a", (32, 64), 1.0), ("W_g", (0, 32), 0.02)])
def test_a_rome_edit_of_each_mamba2_matrix_moves_the_answer_changes_only_its_rows_and_is_undone(engine, matrix, rows, drop):
    # rows: out_proj's output rows (all of d_model); in_proj's x rows d_in..2·d_in and z rows 0..d_in
    model = engine.checkpoint("m2").model
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    res = experiments.run(engine, "m2", "edit", "", edit_params(matrix, 1))
    target = architecture_of("mamba2").edit_targets[matrix]
    assert res["module"] == target.module_name(1) and res["rows"] == list(rows)
    assert res["post"]["rewrite"]["nll_new"] < res["pre"]["rewrite"]["nll_new"] - drop
    assert res["update"]["value_error"] < 1e-3 and res["restored"] is True
    after = model.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []


@pytest.mark.parametrize("matrix", ["W_o", "W_g"])
def test_an_edit_of_a_per_token_matrix_in_the_last_layer_cannot_reach_a_later_token(engine, matrix):
    """Known answer: in the last block, o and g at the subject's last token feed only that token's
    residual, which the last token's prediction never reads; W_a feeds the scan, so it does."""
    L = engine.model_info("m2").num_layers
    res = experiments.run(engine, "m2", "edit", "", edit_params(matrix, L - 1))
    assert res["post"]["rewrite"]["nll_new"] == res["pre"]["rewrite"]["nll_new"]
    res = experiments.run(engine, "m2", "edit", "", edit_params("W_a", L - 1))
    assert res["post"]["rewrite"]["nll_new"] < res["pre"]["rewrite"]["nll_new"] - 1.0


def edit_params(matrix: str, layer: int) -> dict:
    corpus = [[(7 * i + 3 * j) % 64 for j in range(12)] for i in range(40)]
    return {"matrix": matrix, "layer": layer, "rewrite": {"ids": IDS[:5], "subject": [1, 3]},
            "target_new_ids": [11], "target_true_ids": [29], "corpus": corpus, "generation": None,
            "hparams": {"context_template_length_params": [[3, 2]], "v_num_grad_steps": 25, "kl_factor": 0.0,
                        "cov_ridge": 1e-2}}


def test_the_worker_loads_mamba2_and_runs_its_cells_over_the_protocol(tmp_path):
    """The real ``python -m engine`` process: ModelInfo names Mamba-2's sites by the proto enum, and
    RunCells gives the numbers of the engine in-process."""
    from engine.proto import engine_pb2 as pb
    from engine.testing import worker_session
    from engine.wire import site_value
    from engine.runtime import CellSpec

    path = write_random_checkpoint(tmp_path / "m", "mamba2", seed=8, num_hidden_layers=3)
    swap = [5, 50, 12, 2, 41, 9, 60]
    sites = ["embed", "residual", "in_ssm", "gate", "conv", "ssm", "mixer"]
    cells = [CellSpec(s, l, t, 3) for s in sites for l in range(3) for t in range(len(IDS))]
    local = Engine()
    local.load_model("m", path)
    local.prepare_prompt("m", "k", IDS, (1, 3), SwapSpec(swap))
    want = local.run_cells("m", "k", cells)
    with worker_session(path) as client:
        loaded = client.call(load_model=pb.LoadModel(model_id="again", path=str(path)))
        assert loaded.model.model_type == "mamba2" and list(loaded.model.sites) == [site_value(s) for s in sites]
        prep = client.call(prepare_prompt=pb.PreparePrompt(
            model_id="m", prompt_key="k", input_ids=IDS, subject_start=1, subject_end=3,
            corruption=pb.Corruption(swap=pb.SwapCorruption(corrupted_ids=swap))))
        assert prep.WhichOneof("body") == "prompt", prep
        reply = client.call(run_cells=pb.RunCells(model_id="m", prompt_key="k", cells=[
            pb.Cell(site=site_value(c.site), layer=c.layer, token=c.token, window=c.window) for c in cells]))
        assert reply.WhichOneof("body") == "cells", reply
        assert list(reply.cells.p) == pytest.approx([p for p, _ in want], abs=1e-7)


def test_a_config_json_with_a_bare_infinity_as_transformers_4_writes_it_loads_and_nan_does_not(tmp_path):
    state = random_state(mamba2_config())
    write_checkpoint(tmp_path / "v4", mamba2_config(), state)
    cfg = dict(mamba2_config(), time_step_limit=[0.0, "INF"])
    (tmp_path / "v4" / "config.json").write_text(json.dumps(cfg).replace('"INF"', "Infinity"))
    ck = load_checkpoint(str(tmp_path / "v4"))
    assert ck.config.dt_max == math.inf
    (tmp_path / "v4" / "config.json").write_text(json.dumps(cfg).replace('"INF"', "NaN"))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(tmp_path / "v4"))
    assert "NaN" in err.value.message
    # an infinity where a finite number is needed is refused by the field's check
    (tmp_path / "v4" / "config.json").write_text(json.dumps(dict(cfg, time_step_limit=None, layer_norm_epsilon="EPS")).replace('"EPS"', "Infinity"))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(tmp_path / "v4"))
    assert err.value.field == "layer_norm_epsilon"
