"""The LRE experiment (``engine/experiments/lre.py``): the Jacobian estimator on models whose map
from the subject state to the output is known, against finite differences on random models, and
params refused with the field named."""

import pytest
import torch

from engine import experiments
from engine.errors import InvalidArgument
from engine.experiments.lre import jacobian_and_bias
from engine.runtime import Engine
from engine.testing import mamba2_config, mamba_config, neox_config, random_state, write_checkpoint, write_random_checkpoint

L = 4
PROMPTS = [[5, 17, 33, 2], [8, 40, 12, 9, 61], [3, 3, 20], [44, 7, 19, 30, 2, 6]]


def identity_after(model_type: str, layer: int) -> tuple:
    """A random checkpoint whose blocks after ``layer`` add nothing to the residual stream (their
    output projections are zero), so the last block's output is exactly h at layer ``layer``."""
    config = {"mamba": mamba_config, "mamba2": mamba2_config}.get(model_type, neox_config)(num_hidden_layers=L)
    state = random_state(config, seed=4)
    for j in range(layer + 1, L):
        if model_type in ("mamba", "mamba2"):
            state[f"backbone.layers.{j}.mixer.out_proj.weight"].zero_()
        else:
            for mod in ("attention.dense", "mlp.dense_4h_to_h"):
                state[f"gpt_neox.layers.{j}.{mod}.weight"].zero_()
                state[f"gpt_neox.layers.{j}.{mod}.bias"].zero_()
    return config, state


def top1(model, ids) -> int:
    with torch.no_grad():
        return int(model(torch.tensor([ids]))[0][0, -1].argmax())


@pytest.mark.parametrize("model_type", ["mamba", "mamba2", "gpt_neox"])
@pytest.mark.parametrize("layer", [-1, 1])
def test_on_a_model_whose_map_from_h_to_the_output_is_the_identity_the_lre_is_exact_and_faithful(tmp_path, model_type, layer):
    """Blocks after ℓ add nothing and the subject's last token is the prompt's last, so z = h: the
    estimator must find J = I and b = 0, and its prediction is the model's own output at β = 1 (and at
    any β > 0, since the final norm is scale invariant up to its epsilon)."""
    config, state = identity_after(model_type, layer)
    eng = Engine(max_batch_rows=6)  # 16 output coordinates in 3 backward batches
    eng.load_model("m", write_checkpoint(tmp_path / "m", config, state))
    model = eng.checkpoint("m").model
    d = config["hidden_size"]
    J, b, _ = jacobian_and_bias(model, PROMPTS[0], len(PROMPTS[0]) - 1, layer, rows=6)
    assert torch.allclose(J, torch.eye(d), atol=1e-5)
    assert b.abs().max() < 1e-4

    objects = [top1(model, p) for p in PROMPTS]
    wrong = (objects[3] + 1) % config["vocab_size"]
    facts = [{"ids": p, "subject_last": len(p) - 1, "object_id": o} for p, o in zip(PROMPTS, objects)]
    facts[3]["object_id"] = wrong  # a fact the model gets wrong is left out of faithfulness
    res = experiments.run(eng, "m", "lre", "", {"layer": layer, "betas": [0.5, 1.0, 2.0], "train": facts[:2], "test": facts})
    assert res["n_test_correct"] == 3 and res["n_test"] == 4 and res["n_train"] == 2
    assert res["faithfulness"] == [1.0, 1.0, 1.0]
    assert [t["correct"] for t in res["tests"]] == [True, True, True, False]
    assert all(t["lre_top1"][1] == t["model_top1"] for t in res["tests"])


@pytest.mark.parametrize("model_type", ["mamba", "mamba2", "gpt_neox"])
@pytest.mark.parametrize("layer", [-1, 0, 2])
def test_the_jacobian_matches_central_finite_differences_on_a_random_model(tmp_path, model_type, layer):
    eng = Engine()
    eng.load_model("m", write_random_checkpoint(tmp_path / "m", model_type, seed=9, num_hidden_layers=L))
    model = eng.checkpoint("m").model
    ids, s = [5, 17, 33, 2, 41, 9, 60], 2
    J, b, _ = jacobian_and_bias(model, ids, s, layer, rows=7)
    with torch.no_grad():
        _, (_, stream) = model(torch.tensor([ids]), keep=True)
        h = stream[layer + 1][0, s].clone()

        def z_of(hh):
            x = stream[layer + 1].clone()
            x[0, s] = hh
            for j in range(layer + 1, L):
                x = model.layers[j](x)[0]
            return x[0, -1]

        assert torch.allclose(J @ h + b, z_of(h), atol=1e-5)  # b = z − J h
        gen = torch.Generator().manual_seed(0)
        for _ in range(3):
            v = torch.randn(h.shape[0], generator=gen)
            fd = (z_of(h + 1e-2 * v) - z_of(h - 1e-2 * v)) / 2e-2
            assert (fd - J @ v).norm() <= 2e-2 * fd.norm(), (fd - J @ v).norm() / fd.norm()
    # the backward batch size does not change J
    J1, _, _ = jacobian_and_bias(model, ids, s, layer, rows=1)
    assert torch.allclose(J1, J, atol=1e-6)


@pytest.mark.parametrize("model_type", ["mamba", "mamba2", "gpt_neox"])
def test_an_lre_fit_on_one_prompt_reproduces_that_prompts_prediction_at_beta_one(tmp_path, model_type):
    eng = Engine()
    eng.load_model("m", write_random_checkpoint(tmp_path / "m", model_type, seed=9, num_hidden_layers=L))
    model = eng.checkpoint("m").model
    ids = [5, 17, 33, 2, 41, 9, 60]
    fact = {"ids": ids, "subject_last": 2, "object_id": top1(model, ids)}
    res = experiments.run(eng, "m", "lre", "", {"layer": 1, "betas": [1.0], "train": [fact], "test": [fact]})
    assert res["faithfulness"] == [1.0] and res["train_correct"] == 1
    # no test fact the model gets right: faithfulness is undefined, not 0
    fact_wrong = dict(fact, object_id=(fact["object_id"] + 1) % 64)
    res = experiments.run(eng, "m", "lre", "", {"layer": 1, "train": [fact], "test": [fact_wrong]})
    assert res["n_test_correct"] == 0 and res["faithfulness"] == [None] and res["betas"] == [1.0]


def test_bad_params_are_refused_naming_the_field(tmp_path):
    eng = Engine()
    eng.load_model("m", write_random_checkpoint(tmp_path / "m", "mamba", num_hidden_layers=L))
    ok = {"ids": [1, 2, 3], "subject_last": 1, "object_id": 4}
    cases = [
        ({"train": [ok]}, "params.layer"),
        ({"layer": -2, "train": [ok]}, "params.layer"),
        ({"layer": L, "train": [ok]}, "params.layer"),
        ({"layer": 0}, "params.train"),
        ({"layer": 0, "train": []}, "params.train"),
        ({"layer": 0, "train": [ok], "betas": []}, "params.betas"),
        ({"layer": 0, "train": [ok], "betas": [1, "big"]}, "params.betas[1]"),
        ({"layer": 0, "train": [dict(ok, ids=[1, 2, 64])]}, "params.train[0].ids[2]"),
        ({"layer": 0, "train": [dict(ok, subject_last=3)]}, "params.train[0].subject_last"),
        ({"layer": 0, "train": [ok], "test": [{"ids": [1, 2], "subject_last": 0}]}, "params.test[0].object_id"),
        ({"layer": 0, "train": [ok], "test": [dict(ok, object_id=-1)]}, "params.test[0].object_id"),
        ({"layer": 0, "train": [ok], "jacobian_rows": 0}, "params.jacobian_rows"),
        ({"layer": 0, "train": [ok], "beta": [1]}, "params.beta"),
    ]
    for params, field in cases:
        with pytest.raises(InvalidArgument) as err:
            experiments.run(eng, "m", "lre", "", params)
        assert err.value.field == field, (params, err.value.message)
        assert "expected" in err.value.message
