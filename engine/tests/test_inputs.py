"""Bad prompts, corruptions and cells give typed errors naming the field; noise is ROME's and seeded."""

import pytest
import torch

from engine.errors import InvalidArgument, NotFound, NumericError
from engine.runtime import CellSpec, Engine, NoiseSpec, SwapSpec
from engine.testing import mamba_config, random_state, write_checkpoint, write_random_checkpoint

IDS = [5, 17, 33, 2, 41, 9, 60]
SWAP = [5, 50, 12, 2, 41, 9, 60]


@pytest.fixture(scope="module")
def eng(tmp_path_factory):
    e = Engine()
    e.load_model("mamba", write_random_checkpoint(tmp_path_factory.mktemp("m"), "mamba", seed=1))
    e.load_model("neox", write_random_checkpoint(tmp_path_factory.mktemp("n"), "gpt_neox", seed=1))
    return e


def error_of(fn, *args, **kw):
    with pytest.raises(Exception) as e:
        fn(*args, **kw)
    return e.value


@pytest.mark.parametrize("subject", [(5, 9), (-1, 2), (3, 3), (4, 2)])
def test_a_subject_span_outside_the_prompt_is_refused(eng, subject):
    e = error_of(eng.prepare_prompt, "mamba", "k", IDS, subject, SwapSpec(SWAP))
    assert isinstance(e, InvalidArgument) and e.field == "subject"
    assert f"[{subject[0]}, {subject[1]})" in str(e) and "7 tokens" in str(e)


def test_a_token_id_beyond_the_vocabulary_is_refused_naming_its_position(eng):
    e = error_of(eng.prepare_prompt, "neox", "k", IDS[:3] + [64] + IDS[4:], (1, 3), SwapSpec(SWAP))
    assert isinstance(e, InvalidArgument) and e.field == "input_ids"
    assert "input_ids[3] = 64" in str(e) and "[0, 64)" in str(e)


def test_corrupted_ids_of_another_length_are_refused(eng):
    e = error_of(eng.prepare_prompt, "mamba", "k", IDS, (1, 3), SwapSpec(SWAP + [1]))
    assert isinstance(e, InvalidArgument) and e.field == "corrupted_ids"
    assert "expected 7" in str(e) and "got 8" in str(e)


def test_corrupted_ids_beyond_the_vocabulary_are_refused(eng):
    e = error_of(eng.prepare_prompt, "mamba", "k", IDS, (1, 3), SwapSpec([99] + SWAP[1:]))
    assert isinstance(e, InvalidArgument) and e.field == "corrupted_ids"


def test_a_prompt_longer_than_the_positions_of_neox_is_refused_but_not_for_mamba(eng):
    long = (IDS * 5)[:33]  # neox_config has max_position_embeddings 32
    e = error_of(eng.prepare_prompt, "neox", "long", long, (1, 3), NoiseSpec(samples=2))
    assert isinstance(e, InvalidArgument) and e.field == "input_ids" and "at most 32" in str(e)
    assert eng.prepare_prompt("mamba", "long", long, (1, 3), NoiseSpec(samples=2)).num_tokens == 33


def test_explicit_noise_of_the_wrong_shape_is_refused(eng):
    e = error_of(eng.prepare_prompt, "mamba", "k", IDS, (1, 3), NoiseSpec(explicit=torch.zeros(2, 6, 16)))
    assert isinstance(e, InvalidArgument) and e.field == "explicit_noise" and "(samples, 7, 16)" in str(e)


@pytest.mark.parametrize("cell,field,text", [
    (CellSpec("attn", 0, 0), "site", "['embed', 'residual', 'in_ssm', 'gate', 'conv', 'ssm', 'mixer']"),
    (CellSpec("residual", 4, 0), "layer", "expected 0..3, got 4"),
    (CellSpec("residual", -1, 0), "layer", "expected 0..3"),
    (CellSpec("ssm", 0, 7), "token", "expected 0..6"),
])
def test_bad_cells_are_refused_naming_the_cell_and_the_valid_range(eng, cell, field, text):
    eng.prepare_prompt("mamba", "cells", IDS, (1, 3), SwapSpec(SWAP))
    e = error_of(eng.run_cells, "mamba", "cells", [CellSpec("residual", 0, 0), cell])
    assert isinstance(e, InvalidArgument) and e.field == field
    assert "cells[1]" in str(e) and text in str(e)


def test_neox_refuses_mamba_sites(eng):
    eng.prepare_prompt("neox", "cells", IDS, (1, 3), SwapSpec(SWAP))
    e = error_of(eng.run_cells, "neox", "cells", [CellSpec("ssm", 0, 0)])
    assert e.field == "site" and "['embed', 'residual', 'attn', 'mlp']" in str(e)


def test_unknown_model_and_unprepared_prompt_are_not_found(eng):
    assert error_of(eng.prepare_prompt, "nope", "k", IDS, (1, 3), SwapSpec(SWAP)).field == "model_id"
    e = error_of(eng.run_cells, "mamba", "never-prepared", [CellSpec("residual", 0, 0)])
    assert isinstance(e, NotFound) and e.field == "prompt_key"


def test_reusing_a_prompt_key_for_other_inputs_is_refused(eng):
    eng.prepare_prompt("mamba", "reuse", IDS, (1, 3), SwapSpec(SWAP))
    e = error_of(eng.prepare_prompt, "mamba", "reuse", IDS, (1, 4), SwapSpec(SWAP))
    assert isinstance(e, InvalidArgument) and e.field == "prompt_key"


def test_outputs_that_overflow_to_nan_are_a_numeric_error(tmp_path):
    cfg = mamba_config()
    state = random_state(cfg, seed=1)
    state["backbone.layers.0.mixer.out_proj.weight"].fill_(3e38)  # finite, but o overflows to inf → NaN
    eng = Engine()
    eng.load_model("m", write_checkpoint(tmp_path / "m", cfg, state))
    e = error_of(eng.prepare_prompt, "m", "k", IDS, (1, 3), SwapSpec(SWAP))
    assert isinstance(e, NumericError) and e.field == "logits" and "NaN" in str(e)


def test_noise_is_seeded_and_scaled_by_the_subject_embedding_std(eng):
    a = eng.prepare_prompt("mamba", "n1", IDS, (1, 3), NoiseSpec(seed=1, samples=4))
    b = eng.prepare_prompt("mamba", "n1b", IDS, (1, 3), NoiseSpec(seed=1, samples=4))
    c = eng.prepare_prompt("mamba", "n2", IDS, (1, 3), NoiseSpec(seed=2, samples=4))
    zero = eng.prepare_prompt("mamba", "n0", IDS, (1, 3), NoiseSpec(scale=0.0, samples=4))
    assert a.p_corrupt == b.p_corrupt != c.p_corrupt
    assert zero.p_corrupt == pytest.approx(zero.p_clean, abs=1e-6)  # 4 rows vs 1: BLAS kernels differ by shape
    # ROME: std over the subject tokens' embeddings, noise = scale * std * RandomState(seed).randn
    model = eng.models["mamba"].model
    emb = model.embed(torch.tensor(IDS))
    std = float(emb[1:3].std())
    import numpy as np
    noise = torch.from_numpy(np.random.RandomState(1).randn(4, 2, 16)).float() * 3 * std
    explicit = torch.zeros(4, 7, 16)
    explicit[:, 1:3] = noise
    d = eng.prepare_prompt("mamba", "n1x", IDS, (1, 3), NoiseSpec(explicit=explicit))
    assert d.p_corrupt == pytest.approx(a.p_corrupt, abs=1e-6)
    given = eng.prepare_prompt("mamba", "n1s", IDS, (1, 3), NoiseSpec(seed=1, samples=4, std=std))
    assert given.p_corrupt == pytest.approx(a.p_corrupt, abs=1e-6)


def test_a_given_answer_is_measured_instead_of_the_clean_argmax(eng):
    free = eng.prepare_prompt("neox", "free", IDS, (1, 3), SwapSpec(SWAP))
    other = (free.clean_argmax + 1) % 64
    given = eng.prepare_prompt("neox", "given", IDS, (1, 3), SwapSpec(SWAP), answer_id=other)
    assert given.answer_id == other and given.clean_argmax == free.clean_argmax
    assert given.p_clean < free.p_clean
    assert error_of(eng.prepare_prompt, "neox", "bad", IDS, (1, 3), SwapSpec(SWAP), answer_id=64).field == "answer_id"
