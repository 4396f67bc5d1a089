"""Checkpoint loading: formats, key names, strictness, and the errors a user sees for bad folders."""

import json
import os

import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.checkpoint_files import read_safetensors, save_safetensors
from engine.errors import CheckpointError, InvalidArgument, NotFound, NumericError
from engine.runtime import Engine, SwapSpec
from engine.testing import mamba_config, neox_config, random_state, write_checkpoint, write_random_checkpoint

IDS = [5, 17, 33, 2, 41, 9, 60]


def logits_of(path, **kw):
    ck = load_checkpoint(path, **kw)
    with torch.no_grad():
        return ck.model(torch.tensor(IDS)[None])[0][0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64])
def test_safetensors_round_trip_keeps_values_shapes_and_dtypes(tmp_path, dtype):
    t = (torch.randn(3, 5) * 100).to(dtype)
    save_safetensors(tmp_path / "x.safetensors", {"a.b": t, "scalar": torch.tensor(2.5, dtype=torch.float64)})
    got = read_safetensors(str(tmp_path / "x.safetensors"))
    assert got["a.b"].dtype == dtype and torch.equal(got["a.b"], t)
    assert got["scalar"].shape == () and got["scalar"].item() == 2.5


def test_unknown_model_type_is_refused_listing_the_supported_ones(tmp_path):
    path = write_random_checkpoint(tmp_path / "m", "gpt_neox")
    cfg = json.load(open(os.path.join(path, "config.json")))
    cfg["model_type"] = "llama"
    json.dump(cfg, open(os.path.join(path, "config.json"), "w"))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert e.value.field == "model_type"
    assert "'llama'" in str(e.value) and "gpt_neox" in str(e.value) and "mamba" in str(e.value)


def test_a_missing_tensor_is_named_with_its_expected_shape(tmp_path):
    cfg = mamba_config()
    state = random_state(cfg)
    del state["backbone.layers.2.mixer.A_log"]
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(write_checkpoint(tmp_path / "m", cfg, state))
    assert e.value.field == "backbone.layers.2.mixer.A_log"
    assert "backbone.layers.2.mixer.A_log [32, 4]" in str(e.value)


def test_a_misshaped_tensor_is_named_with_expected_and_found_shapes(tmp_path):
    cfg = neox_config()
    state = random_state(cfg)
    state["gpt_neox.layers.1.mlp.dense_h_to_4h.weight"] = torch.zeros(40, 16)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(write_checkpoint(tmp_path / "m", cfg, state))
    assert e.value.field == "gpt_neox.layers.1.mlp.dense_h_to_4h.weight"
    assert "expected shape [48, 16]" in str(e.value) and "found [40, 16]" in str(e.value)


def test_an_unused_tensor_is_refused_but_known_transformers_buffers_are_not(tmp_path):
    cfg = neox_config()
    state = random_state(cfg)
    state["gpt_neox.layers.0.attention.rotary_emb.inv_freq"] = torch.ones(4)  # old Pythia checkpoints
    load_checkpoint(write_checkpoint(tmp_path / "ok", cfg, state))
    state["gpt_neox.layers.0.attention.extra.weight"] = torch.ones(4)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(write_checkpoint(tmp_path / "bad", cfg, state))
    assert e.value.field == "gpt_neox.layers.0.attention.extra.weight"


def test_nan_in_weights_is_a_numeric_error_naming_the_tensor(tmp_path):
    cfg = mamba_config()
    state = random_state(cfg)
    state["backbone.layers.1.mixer.out_proj.weight"][3, 4] = float("nan")
    with pytest.raises(NumericError) as e:
        load_checkpoint(write_checkpoint(tmp_path / "m", cfg, state))
    assert e.value.field == "backbone.layers.1.mixer.out_proj.weight" and "NaN" in str(e.value)


def test_float64_weights_that_overflow_the_run_dtype_are_a_numeric_error(tmp_path):
    cfg = neox_config()
    state = {k: v.double() for k, v in random_state(cfg).items()}
    state["embed_out.weight"][0, 1] = 1e39  # finite in float64, inf in float32 and bfloat16 (max 3.4e38)
    with pytest.raises(NumericError) as e:
        load_checkpoint(write_checkpoint(tmp_path / "m", cfg, state), dtype="bfloat16")
    assert e.value.field == "embed_out.weight" and "inf" in str(e.value)


def test_original_state_spaces_names_and_config_load_as_the_hf_checkpoint(tmp_path):
    cfg = mamba_config(vocab_size=64)
    state = random_state(cfg)
    hf = write_checkpoint(tmp_path / "hf", cfg, state)
    orig_cfg = {"d_model": 16, "n_layer": 4, "vocab_size": 61, "pad_vocab_size_multiple": 8,
                "ssm_cfg": {"d_state": 4, "dt_rank": 2}, "rms_norm": True, "residual_in_fp32": True}
    orig_state = {("backbone.embedding.weight" if k == "backbone.embeddings.weight" else k): v for k, v in state.items()}
    orig_state["lm_head.weight"] = state["backbone.embeddings.weight"]  # state-spaces saves the tied head too
    orig = write_checkpoint(tmp_path / "orig", orig_cfg, orig_state)
    assert torch.equal(logits_of(hf), logits_of(orig))


def test_sharded_index_loads_the_same_model_as_one_file(tmp_path):
    cfg = neox_config()
    state = random_state(cfg)
    one = write_checkpoint(tmp_path / "one", cfg, state)
    folder = tmp_path / "sharded"
    folder.mkdir()
    json.dump(cfg, open(folder / "config.json", "w"))
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for fname, keys in halves.items():
        save_safetensors(folder / fname, {k: state[k] for k in keys})
    json.dump({"metadata": {}, "weight_map": {k: f for f, ks in halves.items() for k in ks}},
              open(folder / "model.safetensors.index.json", "w"))
    assert torch.equal(logits_of(one), logits_of(str(folder)))


def test_pickled_weights_are_refused_unless_allowed(tmp_path):
    cfg = mamba_config()
    state = random_state(cfg)
    folder = tmp_path / "bin"
    folder.mkdir()
    json.dump(cfg, open(folder / "config.json", "w"))
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(str(folder))
    assert e.value.field == "allow_pickle" and "execute" in str(e.value)
    safe = write_checkpoint(tmp_path / "st", cfg, state)
    assert torch.equal(logits_of(str(folder), allow_pickle=True), logits_of(safe))


def test_missing_folder_weights_and_bad_dtype_or_device_are_named(tmp_path):
    with pytest.raises(NotFound) as e:
        load_checkpoint(str(tmp_path / "nope"))
    assert e.value.field == "path"
    (tmp_path / "empty").mkdir()
    json.dump(mamba_config(), open(tmp_path / "empty" / "config.json", "w"))
    with pytest.raises(NotFound) as e:
        load_checkpoint(str(tmp_path / "empty"))
    assert "model.safetensors" in str(e.value)
    path = write_random_checkpoint(tmp_path / "m", "mamba")
    with pytest.raises(InvalidArgument) as e:
        load_checkpoint(path, dtype="int8")
    assert e.value.field == "dtype" and "bfloat16" in str(e.value)
    with pytest.raises(InvalidArgument) as e:
        load_checkpoint(path, device="tpu:0")
    assert e.value.field == "device"


def test_float16_is_refused_where_this_pytorch_cannot_multiply_it(tmp_path):
    path = write_random_checkpoint(tmp_path / "m", "gpt_neox")
    try:
        torch.ones(2, 2, dtype=torch.float16) @ torch.ones(2, 2, dtype=torch.float16)
    except RuntimeError:  # PyTorch 1.13 on CPU
        with pytest.raises(InvalidArgument) as e:
            load_checkpoint(path, dtype="float16")
        assert e.value.field == "dtype" and "bfloat16" in str(e.value)
    else:
        assert load_checkpoint(path, dtype="float16").dtype == torch.float16


def test_a_model_loaded_in_bfloat16_on_the_engine_reports_its_dtype(tmp_path):
    eng = Engine()
    info = eng.load_model("m", write_random_checkpoint(tmp_path / "m", "gpt_neox"), dtype="bfloat16")
    assert (info.dtype, info.device, info.model_type, info.max_positions) == ("bfloat16", "cpu", "gpt_neox", 32)
    assert info.sites == ["embed", "residual", "attn", "mlp"]
    p = eng.prepare_prompt("m", "k", IDS, (1, 3), SwapSpec([5, 50, 12, 2, 41, 9, 60]))
    assert 0 < p.p_clean <= 1
