"""The prompt cache: its size is what the config predicts, it stays under its budget by LRU
eviction, and an evicted prompt still runs (rebuilt) with the same results."""

import pytest
import torch

from engine.cache import prompt_cache_bytes
from engine.errors import ResourceExhausted
from engine.runtime import CellSpec, Engine, NoiseSpec, SwapSpec
from engine.testing import write_random_checkpoint

IDS = [5, 17, 33, 2, 41, 9, 60]
SWAP = [5, 50, 12, 2, 41, 9, 60]


@pytest.mark.parametrize("model_type", ["mamba", "gpt_neox"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_predicted_cache_bytes_equal_the_real_cache_of_a_prompt(tmp_path, model_type, dtype):
    eng = Engine()
    eng.load_model("m", write_random_checkpoint(tmp_path / "m", model_type), dtype=dtype)
    for key, ids, spec, samples in [("swap", IDS, SwapSpec(SWAP), 1), ("noise", IDS * 2, NoiseSpec(samples=3), 3)]:
        info = eng.prepare_prompt("m", key, ids, (1, 3), spec)
        ck = eng.models["m"]
        assert info.cache_bytes == prompt_cache_bytes(model_type, ck.config, len(ids), samples, ck.dtype)
        assert info.cache_bytes == eng.prompt_cache_bytes("m", len(ids), samples)
    assert eng.stats().cache_bytes == sum(
        eng.prompt_cache_bytes("m", n, s) for n, s in [(7, 1), (14, 3)])


def test_the_cache_evicts_the_least_recently_used_prompt_to_stay_under_budget(tmp_path):
    path = write_random_checkpoint(tmp_path / "m", "mamba")
    probe = Engine()
    probe.load_model("m", path)
    one = probe.prompt_cache_bytes("m", len(IDS), 1)
    eng = Engine(cache_budget_bytes=int(2.5 * one))
    eng.load_model("m", path)
    cells = [CellSpec("ssm", l, t, 3) for l in range(4) for t in range(len(IDS))]
    first = eng.prepare_prompt("m", "a", IDS, (1, 3), SwapSpec(SWAP))
    before = eng.run_cells("m", "a", cells)
    eng.prepare_prompt("m", "b", IDS, (1, 3), SwapSpec(list(reversed(SWAP))))
    eng.run_cells("m", "a", cells[:1])  # "a" is now the most recently used
    eng.prepare_prompt("m", "c", IDS, (2, 4), SwapSpec(SWAP))
    s = eng.stats()
    assert s.cached_prompt_keys == ["a", "c"] and s.cache_evictions == 1
    assert s.cache_bytes == 2 * one <= s.cache_budget_bytes
    eng.prepare_prompt("m", "d", IDS, (3, 5), SwapSpec(SWAP))  # evicts "a" now
    assert eng.stats().cached_prompt_keys == ["c", "d"]
    misses = eng.stats().cache_misses
    assert eng.run_cells("m", "a", cells) == before  # rebuilt after eviction, same numbers
    assert eng.stats().cache_misses == misses + 1
    again = eng.prepare_prompt("m", "a", IDS, (1, 3), SwapSpec(SWAP))
    assert again.cache_hit and again.p_corrupt == first.p_corrupt and not first.cache_hit


def test_a_prompt_larger_than_the_whole_budget_is_refused_without_evicting(tmp_path):
    eng = Engine(cache_budget_bytes=60_000)
    eng.load_model("m", write_random_checkpoint(tmp_path / "m", "gpt_neox"))
    eng.prepare_prompt("m", "small", IDS, (1, 3), SwapSpec(SWAP))
    with pytest.raises(ResourceExhausted) as e:
        eng.prepare_prompt("m", "big", IDS * 4, (1, 3), NoiseSpec(samples=10))
    assert e.value.field == "cache_budget_bytes" and "60000" in str(e.value)
    assert eng.stats().cached_prompt_keys == ["small"]


def test_evict_forgets_the_named_prompts_or_all_of_a_model(tmp_path):
    eng = Engine()
    eng.load_model("m", write_random_checkpoint(tmp_path / "m", "mamba"))
    for k in "abc":
        eng.prepare_prompt("m", k, IDS, (1, 3), SwapSpec(SWAP))
    count, nbytes = eng.evict("m", ["b"])
    assert count == 1 and eng.stats().cached_prompt_keys == ["a", "c"] and nbytes == eng.stats().cache_bytes
    with pytest.raises(Exception) as e:
        eng.run_cells("m", "b", [CellSpec("residual", 0, 0)])
    assert e.value.field == "prompt_key"
    assert eng.evict("m", all=True) == (2, 0)


def test_mamba_2_8b_prompt_cache_figure_is_computed_without_allocating():
    from engine.mamba import Config

    c = Config(d_model=2560, n_layer=64, vocab_size=50280, d_state=16, d_conv=4, expand=2, dt_rank=160)
    swap = prompt_cache_bytes("mamba", c, 16, 1)
    noise = prompt_cache_bytes("mamba", c, 16, 10)
    # the SSM states dominate: 64 layers × 16 tokens × 5120 × 16 float32 per corrupted row
    assert swap > 64 * 16 * 5120 * 16 * 4
    assert noise - swap == 9 * (65 * 16 * 2560 * 4 + 64 * 16 * (5120 * 4 + 5120 * 16 * 4))
