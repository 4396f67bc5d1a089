"""The knockout experiment (``engine/experiments/knockout.py``) on tiny random checkpoints: cases
whose answer is known without the code under test, and params refused with the field named."""

import pytest
import torch

from engine import experiments
from engine.errors import NotFound
from engine.experiments import knockout as ko
from engine.runtime import Engine, SwapSpec
from engine.testing import assert_refused, write_random_checkpoint
from engine.trace import record_clean

IDS = [5, 17, 33, 2, 41, 9, 60]  # 7 tokens, subject [1, 3)
SUBJECT = (1, 3)
SWAP = [5, 50, 12, 2, 41, 9, 60]
CORPUS = [[3, 8, 21, 40, 7], [11, 12, 13], [60, 2, 2, 9, 30, 31]]
MODELS = {
    "mamba": ("mamba", {"num_hidden_layers": 5}),
    "mamba2": ("mamba2", {"num_hidden_layers": 5}),
    "neox-parallel": ("gpt_neox", {"num_hidden_layers": 5, "use_parallel_residual": True}),
    "neox-sequential": ("gpt_neox", {"num_hidden_layers": 5, "use_parallel_residual": False}),
}
ALL_SETS = ["subject", "subject_last", "non_subject", "last"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    eng = Engine(max_batch_rows=8)  # small: the rows of one call run in several chunks
    for name, (mt, over) in MODELS.items():
        eng.load_model(name, write_random_checkpoint(tmp_path_factory.mktemp(name), mt, seed=5, **over))
    return eng


def prepare(eng, name, ids=IDS, subject=SUBJECT, key="p"):
    swap = [50 if i in range(*subject) else t for i, t in enumerate(ids)]
    return eng.prepare_prompt(name, key, ids, subject, SwapSpec(swap))


def run(eng, name, key="p", **params):
    params.setdefault("corpus", CORPUS)
    return experiments.run(eng, name, "knockout", key, params)


@pytest.mark.parametrize("name", list(MODELS))
def test_knocking_out_an_empty_token_set_changes_nothing(engine, name):
    info = prepare(engine, name)
    L = engine.model_info(name).num_layers
    empty = {"name": "empty", "positions": []}
    res = run(engine, name, layers=list(range(L)), window=3, token_sets=[empty, *ALL_SETS])
    assert res["p"] == pytest.approx(info.p_clean)
    by_set = {}
    for row in res["rows"]:
        by_set.setdefault(row["token_set"], []).append(row)
    for row in by_set["empty"]:
        assert row["p_knocked"] == pytest.approx(info.p_clean, abs=1e-6), row
        assert row["relative_change"] == pytest.approx(0.0, abs=1e-5)
    # the non-empty sets do move the answer, so the comparison above is not vacuous
    assert max(abs(r["relative_change"]) for s in ALL_SETS for r in by_set[s]) > 1e-2

    # a named set that is empty for this prompt: no non-subject token when the prompt is subject + last
    prepare(engine, name, ids=[17, 33, 60], subject=(0, 2), key="short")
    res = run(engine, name, key="short", layer=2, window=10, token_sets=["non_subject"])
    assert res["rows"][0]["positions"] == []
    assert res["rows"][0]["p_knocked"] == pytest.approx(res["p"], abs=1e-6)


@pytest.mark.parametrize("name", ["neox-parallel", "neox-sequential"])
def test_neox_knockout_of_every_earlier_position_in_every_layer_is_the_model_on_the_last_token_alone(engine, name):
    """Exact for attention knockout with rotary positions: the last token then attends only to
    itself in every layer, a single key gets weight 1 whatever its logit, and rotary scores depend
    on relative positions only, so its residual stream is that of the one-token prompt."""
    prepare(engine, name)
    model = engine.checkpoint(name).model
    L, T = model.config.num_layers, len(IDS)
    res = run(engine, name, layer=L // 2, window=2 * L, token_sets=[{"name": "before_last", "positions": list(range(T - 1))}])
    row = res["rows"][0]
    assert row["layers"] == list(range(L))
    with torch.no_grad():
        alone = torch.softmax(model(torch.tensor([[IDS[-1]]]))[0][0, -1], -1)[res["answer_id"]].item()
    assert row["p_knocked"] == pytest.approx(alone, abs=1e-5)
    assert abs(res["p"] - alone) > 1e-3  # the context mattered before the knockout

    # blocking every key, the last token's own included, reads nothing: a finite answer, not NaN
    res = run(engine, name, layer=L // 2, window=2 * L, token_sets=[{"name": "all", "positions": list(range(T))}])
    assert 0.0 <= res["rows"][0]["p_knocked"] <= 1.0


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_mamba_knockout_of_every_earlier_position_in_every_layer_leaves_p_depending_on_the_last_token_only(engine, name):
    """Mamba mean-ablation is not the one-token run (the ablated positions still feed the conv and
    the scan, with the corpus mean of a), but with every position before the last replaced in every
    layer the last token's states depend only on its own id and the prompt length: two prompts
    that share only their last token give the same p_knocked. Mamba-2: its ``in_ssm`` holds Δ's
    projection too (Δ comes from in_proj, not from the conv), so the same holds."""
    other = [7, 44, 19, 3, 27, 61, 60]  # same length and last token as IDS, every other token differs
    T = len(IDS)
    every = [{"name": "before_last", "positions": list(range(T - 1))}]
    prepare(engine, name, key="a")
    a = run(engine, name, key="a", layer=2, window=10, token_sets=every)
    assert a["rows"][0]["layers"] == [0, 1, 2, 3, 4]
    # the same answer token measured in the other prompt
    engine.prepare_prompt(name, "b", other, SUBJECT, SwapSpec(SWAP), answer_id=a["answer_id"])
    b = run(engine, name, key="b", layer=2, window=10, token_sets=every)
    assert b["rows"][0]["p_knocked"] == pytest.approx(a["rows"][0]["p_knocked"], abs=1e-6)
    assert abs(b["p"] - a["p"]) > 1e-3  # without the knockout the two prompts differ


def test_mamba_rows_batched_from_the_cached_clean_run_equal_one_full_forward_each(engine):
    """Reference: a full forward from the embeddings, one row at a time, with a hook that writes
    the corpus mean at the set and the clean a elsewhere (not the last token) in the window."""
    prepare(engine, "mamba")
    model = engine.checkpoint("mamba").model
    res = run(engine, "mamba", layers=[0, 2, 4], window=3, token_sets=ALL_SETS)
    means, _, _ = ko.corpus_means(engine, "mamba", model, CORPUS)
    ids = torch.tensor(IDS)
    with torch.no_grad():
        _, clean = record_clean(model, ids)
        for row in res["rows"]:
            pos, layers = row["positions"], set(row["layers"])

            def hook(site, j, v, pos=pos, layers=layers):
                if site != "in_ssm" or j not in layers:
                    return v
                v = v.clone()
                v[0, : len(IDS) - 1] = clean["in_ssm"][j, : len(IDS) - 1]
                v[0, pos] = means[j]
                return v

            p = torch.softmax(model(ids[None], hook=hook)[0][0, -1], -1)[res["answer_id"]].item()
            assert row["p_knocked"] == pytest.approx(p, abs=1e-6), row


def test_the_corpus_mean_of_a_is_over_every_corpus_token_and_is_computed_once_per_model_and_corpus(engine):
    model = engine.checkpoint("mamba").model
    means, tokens, h = ko.corpus_means(engine, "mamba", model, CORPUS)
    assert tokens == sum(len(s) for s in CORPUS)
    with torch.no_grad():
        a = torch.cat([record_clean(model, torch.tensor(s))[1]["in_ssm"] for s in CORPUS], dim=1)  # (L, tokens, d_in)
    assert torch.allclose(means, a.mean(dim=1), atol=1e-6)
    again, _, h2 = ko.corpus_means(engine, "mamba", model, [list(s) for s in CORPUS])
    assert again is means and h2 == h  # served from the process cache
    other, _, h3 = ko.corpus_means(engine, "mamba", model, CORPUS[:2])
    assert h3 != h and not torch.equal(other, means)


def test_bad_params_are_refused_naming_the_field(engine):
    prepare(engine, "mamba")
    prepare(engine, "neox-parallel")
    cases = [
        ("mamba", {"layer": 2, "corpus": CORPUS, "layers": [1]}, "params.layer"),
        ("mamba", {"corpus": CORPUS}, "params.layer"),
        ("mamba", {"layer": 5, "corpus": CORPUS}, "params.layer"),
        ("mamba", {"layers": [0, "x"], "corpus": CORPUS}, "params.layers[1]"),
        ("mamba", {"layer": 1, "window": 0, "corpus": CORPUS}, "params.window"),
        ("mamba", {"layer": 1, "token_sets": ["subject", "verb"], "corpus": CORPUS}, "params.token_sets[1]"),
        ("mamba", {"layer": 1, "token_sets": [{"name": "x", "positions": [9]}], "corpus": CORPUS},
         "params.token_sets[0].positions[0]"),
        ("mamba", {"layer": 1}, "params.corpus"),
        ("mamba", {"layer": 1, "corpus": [[1, 2], [3, 9999]]}, "params.corpus[1][1]"),
        ("mamba", {"layer": 1, "corpus": []}, "params.corpus"),
        ("neox-parallel", {"layer": 1, "windw": 3}, "params.windw"),
    ]
    assert_refused(engine, "knockout", "p", cases)
    with pytest.raises(NotFound) as err:
        experiments.run(engine, "mamba", "knockout", "never-prepared", {"layer": 1, "corpus": CORPUS})
    assert err.value.field == "prompt_key"
