"""v* (step 4 of ``rome/__init__.py``): Adam on δ, added to the edited module's output at the subject's
last token, through the layers at and above the edit; and ``hparams.v_precision``.

Models whose blocks keep a fixed-size state (``fixed_state``: Mamba and Mamba-2, a conv window and an
SSM state) run each step on the tokens from each prompt's subject-last token on only (``_resumed``):
every earlier token is causally before δ, so its part of every layer is the same in all steps. One
pass without gradients over the whole prompts keeps, per layer, the block's input and each row's state
entering its own subject-last token; the steps resume from those states. That pass depends only on the
case and the unedited weights: it is kept per case (``case_pass``) and a sweep's edits of the case at
every (layer, matrix) share it. At the mamba-2.8b shape with
ROME's 21 context prefixes that is 8 of 22 padded tokens a row (the steps' matrix products 2.75×
smaller). The other models (NeoX: the past grows with the tokens) run the whole prompts each step
(``_whole``), as does ``compute_v(resume=False)``, the reference the tests compare against.

A step keeps all its effects on the device (its loss and statistics, δ as it used it, the clamp), so
on CUDA the whole step (forward, loss, backward, Adam, clamp) is one graph replay after the first step,
and the host checks step i's stop rules while the device runs step i+1: a stop at i puts δ back as
step i used it, as the loop that checks before updating would have left it.
"""

from __future__ import annotations

import math
import os
import time
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F

from ... import scan_grad
from ...errors import NumericError
from .._common import embed, run_layers
from .forward import Tap, Target, idx, log_probs_at, pad, states_at, use_cuda_graphs, weights_id
from .params import Case, Prompt

#: Cases whose pass over the v* prompts (``case_pass``) is kept per model, least recently used dropped
#: first: at mamba-2.8b with ROME's 21 prefixes about 0.9 GB a case in float32 (22 rows of 22 tokens:
#: the residual entering each of 64 blocks, 0.3 GB, and each block's state at the subject, 0.55 GB).
CASE_PASSES = 2
_PASS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def resumable(model) -> bool:
    """Every block's state entering a token is of fixed size and independent of the token's position
    (``fixed_state``), so a row can resume at any token of its own from it."""
    return all(getattr(layer, "fixed_state", False) for layer in model.layers)


def compute_v(model, target: Target, case: Case, prefixes: List[List[int]], resume: bool = True):
    """v* by optimising δ on the target's output at the subject's last token; returns (v*, stats).
    ``resume``: run the steps on the tokens from the subject's last one (where the model allows)."""
    hp = case.hp
    device = target.module.weight.device
    clock = [_now(device)]  # sub-phases: the passes before the steps, the first step (and capture), the rest
    tnew = case.target_new
    rewriting = [Prompt(case.rewrite.ids + tnew[:-1], case.rewrite.last)] + [
        Prompt(pre + case.in_context.ids + tnew[:-1], len(pre) + case.in_context.last) for pre in prefixes]
    prompts = rewriting + case.kl_prompts
    R, K = len(rewriting), len(case.kl_prompts)
    tap = Tap(target)
    resumed = resume and resumable(model)
    if resumed:
        v_init, forward, first = _resumed(model, target, tap, prompts)
    else:
        with torch.no_grad():
            h0 = run_layers(model, embed(model, pad([p.ids for p in prompts], device)), 0, end=target.layer)  # below the edit, once
        v_init, forward, first = _whole(model, target, tap, h0, prompts)
    clock.append(_now(device))
    # positions whose next-token logits score the target (the last prompt token, then target[:-1]),
    # then the KL prompts' subject-last token; relative to each row's first computed token
    tb = idx([r for r in range(R) for _ in tnew], device)
    tp = idx([len(rewriting[r].ids) - len(tnew) + j - first[r] for r in range(R) for j in range(len(tnew))], device)
    tt = idx(tnew * R, device)
    sel_b = torch.cat([tb, idx(range(R, R + K), device)])
    sel_p = torch.cat([tp, idx([prompts[r].last - first[r] for r in range(R, R + K)], device)])

    delta = torch.zeros_like(v_init, requires_grad=True)
    steps = hp["v_num_grad_steps"]
    graphed = use_cuda_graphs(device) and steps > 3
    opt = torch.optim.Adam([delta], lr=hp["v_lr"], capturable=graphed)  # capturable: its step count on the device
    max_norm = hp["clamp_norm_factor"] * v_init.norm()
    # per step, on the device: loss, nll, kl, weight decay, mean p(target); δ as the step used it; clamped
    vals = torch.zeros(steps, 5, device=device)
    hist = torch.zeros(steps, v_init.shape[0], device=device)
    over = torch.zeros(steps, dtype=torch.bool, device=device)
    at = torch.zeros(1, dtype=torch.long, device=device)  # the step's index, counted on the device
    kl_init: list = []

    def one_step() -> None:
        """Forward, loss, backward, Adam, clamp: every effect on the device (recordable as one graph)."""
        lp = log_probs_at(model, forward(delta), sel_b, sel_p)
        tok_lp = lp[: tb.shape[0]].gather(1, tt[:, None]).squeeze(1).view(R, len(tnew))
        nll_each = -tok_lp.mean(1)  # (R,) token-averaged NLL of target_new
        nll = nll_each.mean()
        kl = torch.zeros((), device=device)
        if K:
            kl_lp = lp[tb.shape[0]:]
            if not kl_init:
                kl_init.append(kl_lp.detach().clone())  # the first step's, before any update
            kl = hp["kl_factor"] * F.kl_div(kl_init[0], kl_lp, log_target=True, reduction="batchmean")
        wd = hp["v_weight_decay"] * (delta.norm() / v_init.norm() ** 2)
        loss = nll + kl + wd
        vals.index_copy_(0, at, torch.stack([t.detach().float() for t in (loss, nll, kl, wd, torch.exp(-nll_each).mean())])[None])
        loss.backward()
        with torch.no_grad():
            hist.index_copy_(0, at, delta.detach()[None])
        opt.step()
        with torch.no_grad():  # ‖δ‖ ≤ max_norm: a factor of exactly 1 leaves δ as it is
            norm = delta.norm()
            big = norm > max_norm
            delta.mul_(torch.where(big, max_norm / norm, torch.ones_like(norm)))
            over.index_copy_(0, at, big[None])
            at.add_(1)

    stats = {"clamped": False, "stopped": "steps", "resumed": resumed, "cuda_graph": False}
    host, events = vals, None
    if graphed:
        host = torch.zeros(steps, 5, pin_memory=True)
        events = [torch.cuda.Event() for _ in range(steps)]

    def stop_at(i: int) -> bool:
        """Step i's loss read on the host; whether a stop rule (or the step count) ends the loop there."""
        if events is not None:
            events[i].synchronize()
        loss, _, _, _, avg_prob = host[i].tolist()
        if not math.isfinite(loss):
            raise NumericError(f"v* optimisation: loss became {loss} at step {i}", field="params.hparams.v_lr")
        if loss < hp["v_loss_stop"]:
            stats["stopped"] = "loss"
        elif hp["v_prob_stop"] is not None and i > hp["v_prob_stop_after"] and avg_prob > hp["v_prob_stop"]:
            stats["stopped"] = "prob"
        return stats["stopped"] != "steps" or i == steps - 1

    graph, lag, final = None, 0, None
    with tap.attached():
        for step in range(steps):
            if step == 0 and graphed:
                # The first step eagerly on a side stream (it is the capture's warm-up too), then the whole
                # step captured once; each later step is one replay, and the host reads step i's loss
                # while the device runs step i+1 (a stop at i puts δ back to hist[i]).
                side = torch.cuda.Stream(device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    opt.zero_grad(set_to_none=True)
                    one_step()
                torch.cuda.current_stream(device).wait_stream(side)
                try:
                    opt.zero_grad(set_to_none=True)
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g):
                        one_step()
                    graph, lag = g, 1
                    stats["cuda_graph"] = True
                except RuntimeError as e:  # the later steps run eagerly
                    stats["cuda_graph_error"] = str(e)[:200]
            elif graph is not None:
                graph.replay()
            else:
                opt.zero_grad(set_to_none=True)
                one_step()
            if step == 0:
                clock.append(_now(device))
            if events is not None:
                host[step].copy_(vals[step], non_blocking=True)
                events[step].record()
            if step >= lag and stop_at(step - lag):
                final = step - lag
                break
        if final is None:
            stop_at(steps - 1)
            final = steps - 1
    tap.add = None
    clock.append(_now(device))
    stats["seconds"] = dict(zip(("passes", "first_step", "steps"), (b - a for a, b in zip(clock, clock[1:]))))
    delta = hist[final]  # δ as step `final` used it (the steps after it were not ROME's)
    stats.update(zip(("loss", "nll", "kl", "weight_decay", "avg_prob"), host[final].tolist()))
    stats.update(clamped=bool(over[:final].any()), steps=final + 1, v_init_norm=float(v_init.norm()), delta_norm=float(delta.norm()))
    return (v_init + delta).detach(), stats


def _now(device) -> float:
    """perf_counter once the device has done what was queued (the v* sub-phases' boundaries)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


Runner = Tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor], List[int]]


def _whole(model, target: Target, tap: Tap, h0: torch.Tensor, prompts: List[Prompt]) -> Runner:
    """(v_init, forward(δ) → final residual of the whole prompts, each row's first token: 0)."""
    device = h0.device
    rows = idx(range(len(prompts)), device)
    lookup = idx([p.last for p in prompts], device)
    tap.at = (rows[:1], lookup[:1])
    with torch.no_grad(), tap.attached():
        run_layers(model, h0, target.layer, end=target.layer + 1)
    tap.at = None

    def forward(d: torch.Tensor) -> torch.Tensor:
        tap.add = (rows, lookup, d)
        return run_layers(model, h0, target.layer)

    return tap.values[0].clone(), forward, [0] * len(prompts)


def _resumed(model, target: Target, tap: Tap, prompts: List[Prompt]) -> Runner:
    """(v_init, forward(δ) → final residual of the tokens from each row's subject-last one (padded to
    the longest such suffix), each row's first token = its subject-last token), from the case's pass
    (``case_pass``)."""
    ins, states = case_pass(model, prompts)
    h0 = ins[target.layer]
    device = h0.device
    n, T = h0.shape[0], h0.shape[1]
    first = [p.last for p in prompts]
    S = max(len(p.ids) - p.last for p in prompts)
    rows = idx(range(n), device)
    # beyond a row's own end the gather repeats padding; causal, so no scored token sees it
    x = h0[rows[:, None], torch.tensor([[min(t + j, T - 1) for j in range(S)] for t in first], device=device)]  # (n, S, d)
    tap.at = (rows[:1], idx(first[:1], device))
    with torch.no_grad(), tap.attached():  # v_init: the edited block once more, as the case's pass ran it
        model.layers[target.layer](h0, None)
    tap.at = None
    v_init = tap.values[0].clone()
    at_first = idx([0] * n, device)
    blocks = list(model.layers)[target.layer:]
    states = states[target.layer:]

    def forward(d: torch.Tensor) -> torch.Tensor:
        tap.add = (rows, at_first, d)
        y = x
        for layer, state in zip(blocks, states):
            y = layer(y, None, state)[0]
        return y

    return v_init, forward, first


def case_pass(model, prompts: List[Prompt]) -> Tuple[List[torch.Tensor], List[tuple]]:
    """(the residual entering each block (b, T, d), each block's state entering each row's subject-last
    token) of the v* prompts on the unedited model, for every layer: one pass a case, from the per-model
    cache after that. It depends on the case's prompts (and the model's context prefixes) and on the
    weights alone, which every edit restores bit for bit, so a sweep's edits of one case at every
    (layer, matrix) share it (``forget`` empties a model's entries)."""
    device = next(model.parameters()).device
    first = [p.last for p in prompts]
    # the pass runs under the edit's v_precision and scan path: its numbers are theirs
    key = (weights_id(model), tuple(tuple(p.ids) for p in prompts), tuple(first), torch.backends.cuda.matmul.allow_tf32,
           _autocast(device),
           scan_grad.enabled(), os.environ.get("FACTSWEEP_NO_TRITON", ""))
    cache = _PASS.setdefault(model, OrderedDict())
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    ins, states = [], []
    with torch.no_grad():
        h = embed(model, pad([p.ids for p in prompts], device))
        for layer in model.layers:
            ins.append(h)
            h, kept = layer(h, None, keep=True)
            states.append(states_at(layer, kept, range(len(prompts)), first, device))  # entering each row's first token
            del kept
    cache[key] = (ins, states)
    while len(cache) > CASE_PASSES:
        cache.popitem(last=False)
    return cache[key]


def _autocast(device) -> bool:
    """Autocast is on for the device's type (PyTorch 2 asks by type; 1.13 has a CPU-only call)."""
    try:
        return torch.is_autocast_enabled(device.type)
    except TypeError:
        return torch.is_autocast_cpu_enabled() if device.type == "cpu" else torch.is_autocast_enabled()


def forget(model) -> None:
    """Drop the model's cached case passes (its weights are no longer the unedited ones)."""
    _PASS.pop(model, None)


@contextmanager
def precision(mode: str, device: torch.device):
    """The matrix precision of the v* optimisation (``hparams.v_precision``): TF32 matrix products on
    CUDA, or bf16 autocast; CUDA's TF32 flags are put back afterwards."""
    if mode == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False):  # no cache: CUDA graphs
            yield
        return
    if mode != "tf32":  # float32: the run's own setting (Engine.load_model turns TF32 off for float32)
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
