"""ROME's v* resumed at the subject's last token, the cached pre-edit evaluation and the cached decode
graph (issue 17), on the shipped tiny Mamba and Mamba-2 and the fixture's cases.

The v* and evaluation tests run on the CPU (CI); the decode-graph test needs CUDA (the GPU machine).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from engine import experiments, scan_grad
from engine.experiments import rome
from engine.experiments.rome import vstar
from engine.runtime import Engine

REPO_ROOT = Path(__file__).resolve().parents[2]
DEVICE = "cuda:0" if torch.cuda.is_available() else "cpu"
FEW = {"context_template_length_params": [[5, 2], [10, 2]]}


@pytest.fixture(scope="module")
def eng():
    e = Engine()
    e.load_model("mamba", str(REPO_ROOT / "models" / "mamba-facts"), device=DEVICE)
    e.load_model("mamba2", str(REPO_ROOT / "models" / "mamba2-facts"), device=DEVICE)
    return e


def case_of(eng, fixture, model_id, i, matrix, layer, **over):
    ck = eng.checkpoint(model_id)
    p = dict(fixture["cases"][i]["params"], matrix=matrix, layer=layer, corpus=fixture["corpus"][:500], bos_id=fixture["bos_id"],
             generation=None, hparams=dict(FEW, v_num_grad_steps=8))
    p.update(over)
    case = rome.parse_params(ck.architecture, ck.config, p)
    return ck.model, rome.target_of(ck.architecture, ck.model, matrix, layer), case


@pytest.mark.parametrize("model_id,matrix,layer,tol", [("mamba", "W_o", 3, 1e-6), ("mamba", "W_a", 2, 1e-6), ("mamba2", "W_g", 1, 1e-5)])
def test_v_star_resumed_at_the_subjects_last_token_equals_v_star_over_the_whole_prompts(eng, fixture, model_id, matrix, layer, tol):
    """The steps' tokens before the subject's last one are causally before δ: resuming from their state
    changes nothing but rounding (bit-equal on Mamba's loop; Mamba-2's scan sums in another order)."""
    model, target, case = case_of(eng, fixture, model_id, 5, matrix, layer)
    prefixes = rome.context_prefixes(model, case.bos_id, case.hp["context_template_length_params"], 0, 5)
    got = {}
    with scan_grad.fused(), rome.algorithm.frozen(model):
        for resume in (True, False):
            got[resume] = vstar.compute_v(model, target, case, prefixes, resume=resume)
    (v1, s1), (v0, s0) = got[True], got[False]
    assert s1["resumed"] is True and s0["resumed"] is False
    assert float((v1 - v0).norm() / v0.norm()) < tol
    assert (s1["steps"], s1["stopped"], s1["clamped"]) == (s0["steps"], s0["stopped"], s0["clamped"]) and s1["steps"] == 8
    assert abs(s1["loss"] - s0["loss"]) < 1e-4 * abs(s0["loss"])
    assert float(v1.norm()) != float(s1["v_init_norm"])  # the steps did move v* away from v_init


def test_a_stop_rule_met_at_the_first_step_leaves_v_star_at_v_init(eng, fixture):
    model, target, case = case_of(eng, fixture, "mamba", 2, "W_o", 3, hparams=dict(FEW, v_loss_stop=1e6))
    prefixes = rome.context_prefixes(model, case.bos_id, case.hp["context_template_length_params"], 0, 5)
    with rome.algorithm.frozen(model):
        v, stats = vstar.compute_v(model, target, case, prefixes)
    assert (stats["stopped"], stats["steps"], stats["delta_norm"]) == ("loss", 1, 0.0)
    assert abs(float(v.norm()) - stats["v_init_norm"]) < 1e-6 * stats["v_init_norm"]


def test_a_stop_rule_met_later_leaves_v_star_as_the_step_it_stopped_at_used_it(eng, fixture):
    """The loop checks a step's loss after queueing its update (and on CUDA the next step): a prob stop
    at step 3 gives the v* of 4 steps without stop rules, bit for bit."""
    got = {}
    for name, hp in (("stop", dict(v_num_grad_steps=10, v_prob_stop=0.0, v_prob_stop_after=2)), ("four", dict(v_num_grad_steps=4, v_prob_stop=None))):
        model, target, case = case_of(eng, fixture, "mamba", 6, "W_o", 3, hparams=dict(FEW, **hp))
        prefixes = rome.context_prefixes(model, case.bos_id, case.hp["context_template_length_params"], 0, 5)
        with scan_grad.fused(), rome.algorithm.frozen(model):
            got[name] = vstar.compute_v(model, target, case, prefixes)
    (v_stop, s_stop), (v_four, s_four) = got["stop"], got["four"]
    assert (s_stop["stopped"], s_stop["steps"], s_four["stopped"], s_four["steps"]) == ("prob", 4, "steps", 4)
    assert torch.equal(v_stop, v_four) and s_stop["loss"] == s_four["loss"] and s_stop["clamped"] == s_four["clamped"]


def test_a_further_edit_of_a_case_reuses_its_pre_edit_evaluation_which_equals_a_fresh_one(eng, fixture):
    gen = {"max_new_tokens": 4, "return_ids": True}
    params = lambda i, matrix, layer: dict(fixture["cases"][i]["params"], matrix=matrix, layer=layer,  # noqa: E731
                                           bos_id=fixture["bos_id"], generation=gen,
                                           hparams=dict(FEW, v_num_grad_steps=4, mom2_adjustment=False))  # no C: quick
    first = experiments.run(eng, "mamba", "edit", "a", params(11, "W_o", 3))
    further = experiments.run(eng, "mamba", "edit", "b", params(11, "W_a", 1))
    other = experiments.run(eng, "mamba", "edit", "c", params(12, "W_a", 1))
    assert (first["pre_cached"], further["pre_cached"], other["pre_cached"]) == (False, True, False)
    assert further["pre"] == first["pre"] and other["pre"] != first["pre"]
    model, _, case = case_of(eng, fixture, "mamba", 11, "W_a", 1, generation=gen)
    with scan_grad.fused():
        assert rome.evaluate(model, case) == further["pre"]  # the weights are the unedited ones again
    further["pre"]["ES"] = -1.0  # a caller's change to its result does not reach the cache
    assert experiments.run(eng, "mamba", "edit", "d", params(11, "W_g", 2))["pre"] == first["pre"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need CUDA (run on the GPU machine)")
def test_a_cached_decode_graph_samples_other_prompts_and_an_edited_model_as_eager_steps_do(eng, fixture, monkeypatch):
    """One graph for a batch size serves later calls: other prompts, and the weights as an edit left them."""
    model, target, case = case_of(eng, fixture, "mamba", 4, "W_o", 3)
    batches = [[[425, 897, 408, 964, 264], [290, 733, 369], [0]], [[12, 40, 7], [88, 5, 6, 9, 10], [301]]]

    def both():
        got = {}
        for off in ("0", "1"):
            monkeypatch.setenv("FACTSWEEP_NO_CUDA_GRAPH", off)
            with scan_grad.fused():
                got[off] = [rome.sample(model, b, 10, 5, torch.Generator().manual_seed(7)) for b in batches]
        return got

    before = both()
    assert before["0"] == before["1"]
    with scan_grad.fused():
        C, _ = rome.covariance(model, target, case.corpus, case.corpus_hash, 2048, 6144)
        edit, _ = rome.compute_edit(model, target, case, C, {})
    with rome.applied(edit):
        after = both()
    assert after["0"] == after["1"] and after["0"] != before["0"]


def test_v_star_from_the_cases_cached_pass_at_another_layer_and_matrix_equals_v_star_computed_afresh(eng, fixture):
    """A sweep's edits of one case share its unedited pass over the v* prompts (``vstar.case_pass``):
    an edit at another (layer, matrix) gives, bit for bit, the v* of a pass of its own; an edit at
    another v_precision does not take a pass computed under another one."""
    model = eng.checkpoint("mamba").model
    vstar.forget(model)  # the earlier tests' cases
    got = {}
    for name, (matrix, layer, opt) in {"first": ("W_o", 3, "float32"), "cached": ("W_a", 1, "float32"),
                                       "bf16": ("W_a", 1, "bf16"), "again": ("W_a", 1, "float32")}.items():
        if name == "again":
            vstar.forget(model)
        _, target, case = case_of(eng, fixture, "mamba", 7, matrix, layer)
        prefixes = rome.context_prefixes(model, case.bos_id, case.hp["context_template_length_params"], 0, 5)
        with scan_grad.fused(), rome.algorithm.frozen(model), vstar.precision(opt, target.module.weight.device):
            got[name] = vstar.compute_v(model, target, case, prefixes)
        got[name] += (len(vstar._PASS[model]),)
    assert [got[k][2] for k in ("first", "cached", "bf16", "again")] == [1, 1, 2, 1]  # the cached edit took the first's pass
    assert torch.equal(got["cached"][0], got["again"][0]) and got["cached"][1]["loss"] == got["again"][1]["loss"]
    assert not torch.equal(got["bf16"][0], got["again"][0])


@pytest.mark.parametrize("edited", [False, True])
def test_the_evaluation_in_one_pass_scores_and_samples_as_separate_prompt_passes_do(eng, fixture, edited):
    """The generation starts from the NLL pass's states (``evaluate(one_pass=True)``): the same NLLs and
    the same sampled ids as prompt passes of its own, with the default prompts (rewrite, paraphrases) and
    with prompts the NLL pass does not score."""
    model = eng.checkpoint("mamba").model
    for i, prompts in ((8, None), (9, [[5, 6, 7], [425, 897, 408, 964, 264]])):
        gen = dict({"max_new_tokens": 6, "return_ids": True}, **({"prompts": fixture["cases"][i]["params"]["paraphrases"][:1] + prompts}
                                                                  if prompts else {}))
        _, target, case = case_of(eng, fixture, "mamba", i, "W_o", 3, generation=gen)
        with scan_grad.fused():
            C, _ = rome.covariance(model, target, case.corpus, case.corpus_hash, 2048, 6144)
            edit, _ = rome.compute_edit(model, target, case, C, {})
            with rome.applied(edit) if edited else contextlib.nullcontext():
                one, two = rome.evaluate(model, case), rome.evaluate(model, case, one_pass=False)
        assert one["generation"]["ids"] == two["generation"]["ids"] and one["generation"]["entropy"] == two["generation"]["entropy"]
        assert len(one["generation"]["ids"]) == len(case.generation["prompts"])
        for a, b in zip([one["rewrite"]] + one["paraphrases"] + one["neighbourhood"], [two["rewrite"]] + two["paraphrases"] + two["neighbourhood"]):
            assert abs(a["nll_new"] - b["nll_new"]) < 1e-5 and abs(a["nll_true"] - b["nll_true"]) < 1e-5
        assert (one["ES"], one["PS"], one["NS"], one["rewrite"]["top1"]) == (two["ES"], two["PS"], two["NS"], two["rewrite"]["top1"])


def test_the_covariance_cache_holds_every_c_of_a_mamba_2p8b_sweep():
    """A sweep sends a worker every (layer, matrix) of a case in turn: an LRU smaller than all of a
    model's Cs would drop each C before its layer comes again, and every edit would compute it anew."""
    d_model, d_inner, layers = 2560, 5120, 64
    every_c = layers * (d_inner**2 + d_model**2) * 4  # W_o's C and in_proj's (W_a and W_g share it), float32
    assert every_c <= rome.algorithm.COV_CACHE_BYTES
