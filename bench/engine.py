"""long-file: one benchmark per configuration: the grid, both baselines, the floors, prepare and start-up.

Engine benchmark: a causal-trace grid on one GPU, against the two ways researchers trace today.

Runs on the GPU machine (PyTorch 2.x, transformers 5.x):

    python3 -m bench.engine --out $OUT                 # the issue's configurations
    python3 -m bench.engine --quick --device cpu       # tiny shapes, a smoke test anywhere

For each configuration it builds a random-weight ``transformers`` model of the real shape (seeded),
loads the same weights into the engine, and times one prompt's full grid: the engine's cached,
batched fast path; the batched-hooks baseline (bench/hf_baselines.py, 256 rows a forward); and the
naive baseline (one forward per cell) on a sample of cells, extrapolated to the grid. Both baselines
also run on the engine's own model (its site hooks; "hooks" and "percell"), which is valid for every
site: transformers' CUDA Mamba path cannot be hooked at s or g. It reports
seconds a grid, cells/s, ratios to both baselines, the fraction of the arithmetic floor (from a
matrix-product rate measured in the same run), peak GPU memory and the largest difference of the
engine's probabilities from the baselines'. Prints a table last; writes JSON to --out.

Start-up and prepare (issue 14), per configuration, with these stable JSON keys:
``ready_s`` (the engine's LoadModel work: weights onto the device, then ``Engine.warm_up``, whose
share is ``warm_up_s``; on CUDA unless --no-warm-up), the first prompt after ready
(``prepare_first_s``, ``run_cells_first_s``, ``first_prompt_s``), steady ones (``prepare_steady_s``:
median over --prepare-repeats fresh prompts; ``run_cells_s`` = ``engine_s``; ``steady_prompt_s``),
``first_over_steady``, ``prepare_share_of_grid`` (steady prepare over the grid's run_cells) and
``prepare_reference_s`` (the per-token reference prepare, ``prepare.build_runs_slow``: the prepare
before issue 14). --engine-only skips every baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback

import torch

from engine.checkpoint import build_checkpoint
from engine.corruption import NoiseSpec, SwapSpec, corrupted_embeddings
from engine.runtime import Engine
from engine import prepare, trace
from engine.runtime import PromptSpec
from engine.prepare import record_clean
from engine.trace import CellSpec, window_layers

from .hf_baselines import Cell, batched_hooks, clean_values, naive

SHAPES = {
    "mamba-2.8b": dict(model_type="mamba", hidden_size=2560, num_hidden_layers=64, state_size=16, conv_kernel=4, expand=2,
                       time_step_rank=160, vocab_size=50280),
    # mamba2-2.7b (state-spaces): 64 blocks, d 2560, 80 heads of 64, state 128, 1 group; vocab 50277 padded to 50288
    "mamba2-2.7b": dict(model_type="mamba2", hidden_size=2560, num_hidden_layers=64, num_heads=80, head_dim=64,
                        state_size=128, n_groups=1, conv_kernel=4, expand=2, chunk_size=256, vocab_size=50288),
    # the mamba2-2.7b shape with 8 of its 64 layers: a profile of its PyTorch scan fits a device call
    "mamba2-2.7b-l8": dict(model_type="mamba2", hidden_size=2560, num_hidden_layers=8, num_heads=80, head_dim=64,
                           state_size=128, n_groups=1, conv_kernel=4, expand=2, chunk_size=256, vocab_size=50288),
    "pythia-2.8b": dict(model_type="gpt_neox", hidden_size=2560, num_hidden_layers=32, num_attention_heads=32,
                        intermediate_size=10240, rotary_pct=0.25, use_parallel_residual=True, vocab_size=50304,
                        max_position_embeddings=2048),
    # --quick: same code paths, tiny sizes
    "mamba-tiny": dict(model_type="mamba", hidden_size=64, num_hidden_layers=4, state_size=16, conv_kernel=4, expand=2,
                       time_step_rank=4, vocab_size=1000),
    "mamba2-tiny": dict(model_type="mamba2", hidden_size=64, num_hidden_layers=4, num_heads=8, head_dim=16,
                        state_size=16, n_groups=1, conv_kernel=4, expand=2, chunk_size=8, vocab_size=1000),
    "pythia-tiny": dict(model_type="gpt_neox", hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=256, rotary_pct=0.25, use_parallel_residual=True, vocab_size=1000,
                        max_position_embeddings=128),
}
GRIDS = {"mamba": [("residual", 1), ("mixer", 10), ("ssm", 10), ("gate", 10)],
         "mamba2": [("residual", 1), ("mixer", 10), ("ssm", 10), ("gate", 10)],
         "gpt_neox": [("residual", 1), ("attn", 10), ("mlp", 10)]}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int):
    """Median wall time of `repeats` runs after one warm-up; returns (seconds, last result)."""
    out = fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def matmul_rate(device, dtype) -> float:
    """FLOP/s of a large matrix product on this device and dtype (the floor's denominator)."""
    n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sec, _ = timed(lambda: a @ b, device, 5)
    return 2 * n ** 3 / sec


def flops_per_token_layer(cfg: dict) -> float:
    d = cfg["hidden_size"]
    if cfg["model_type"] == "mamba":
        di = cfg["expand"] * d
        r, n = cfg["time_step_rank"], cfg["state_size"]
        return 2 * (d * 2 * di + di * (r + 2 * n) + r * di + di * d) + 10 * di * n  # projections + scan
    if cfg["model_type"] == "mamba2":
        di, n, g, H = cfg["expand"] * d, cfg["state_size"], cfg["n_groups"], cfg["num_heads"]
        return 2 * (d * (2 * di + 2 * g * n + H) + di * d) + 6 * di * n  # in_proj, out_proj + scan (update, readout)
    ff = cfg["intermediate_size"]
    return 2 * (d * 3 * d + d * d + 2 * d * ff)  # qkv, dense, mlp (attention scores are small at T <= 32)


def floor_flops(cfg: dict, cells: list, T: int, rows_per_cell: int) -> float:
    """Arithmetic of recomputing only layers >= a cell's first restored layer and tokens >= its token."""
    L = cfg["num_hidden_layers"]
    per = flops_per_token_layer(cfg)
    unembed = 2 * cfg["hidden_size"] * cfg["vocab_size"]
    total = 0.0
    for c in cells:
        l0 = window_layers(c.layer, c.window, L)[0]
        total += (L - l0) * (T - c.token) * per + unembed
    return total * rows_per_cell


def hf_model(name: str, dtype, device, seed: int, need_slow: bool = False):
    import transformers

    cfg = dict(SHAPES[name])
    mt = cfg.pop("model_type")
    torch.manual_seed(seed)
    if mt == "mamba":
        config = transformers.MambaConfig(**cfg, residual_in_fp32=True, use_bias=False, use_conv_bias=True, tie_word_embeddings=True)
        cls = transformers.MambaForCausalLM
    elif mt == "mamba2":
        config = transformers.Mamba2Config(**cfg, residual_in_fp32=True, use_bias=False, use_conv_bias=True,
                                           tie_word_embeddings=True, rms_norm=True, norm_before_gate=False)
        cls = transformers.Mamba2ForCausalLM
    else:
        config = transformers.GPTNeoXConfig(**cfg, tie_word_embeddings=False, hidden_act="gelu")
        cls = transformers.GPTNeoXForCausalLM
    with torch.device(device):
        model = cls(config).to(dtype).eval()
    # Random init gives near-uniform outputs; scale the embeddings as the golden files do so the
    # clean answer has a probability worth restoring.
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(8.0)
    if mt == "mamba2" and need_slow:
        # transformers' Mamba2 mixer applies the gate inside its gated norm, and its hooks
        # (bench/hf_baselines.py) know Mamba-1's mixer only: its s and g are not reachable.
        return model, config.to_dict(), "transformers' Mamba2Mixer gates inside its norm: the ssm and gate sites cannot be hooked"
    if mt == "mamba" and need_slow:
        # On CUDA transformers 5.x applies the gate inside its fused scan, so s and g are never
        # separate values a hook can reach; only a release with a `slow_forward` exposes them.
        # (`_slow_forward` is PyTorch's tracing helper, which calls forward: not a substitute.)
        for layer in model.backbone.layers:
            if not hasattr(layer.mixer, "slow_forward"):
                return model, config.to_dict(), (f"transformers {transformers.__version__} has no MambaMixer.slow_forward: "
                                                 "the ssm and gate sites cannot be hooked on its CUDA path")
            layer.mixer.forward = layer.mixer.slow_forward
    return model, config.to_dict(), None


@torch.no_grad()
def engine_batched_hooks(model, corrupted: torch.Tensor, clean: dict, cells: list, answer: int, batch: int) -> torch.Tensor:
    """The batched-hooks baseline on the engine's model: ``batch`` rows a full forward, each row's
    clean values written at its own (site, layers, token) by the model's site hook.
    corrupted: (S, T, d) input embeddings; a cell's S rows are averaged."""
    L = model.config.num_layers
    S = corrupted.shape[0]
    per = max(1, batch // S)
    out = []
    for start in range(0, len(cells), per):
        chunk = cells[start:start + per]
        plan: dict = {}
        for i, c in enumerate(chunk):
            for j in ([0] if c.site == "embed" else window_layers(c.layer, c.window, L)):
                rows, toks = plan.setdefault((c.site, j), ([], []))
                rows += range(i * S, (i + 1) * S)
                toks += [c.token] * S
        plan = {k: (torch.tensor(r, device=corrupted.device), torch.tensor(t, device=corrupted.device)) for k, (r, t) in plan.items()}

        def hook(site, layer, value, plan=plan):
            p = plan.get((site, layer))
            if p is None:
                return value
            value = value.clone()
            value[p[0], p[1]] = clean[site][layer, p[1]].to(value.dtype)
            return value

        logits, _ = model(inputs_embeds=corrupted.repeat(len(chunk), 1, 1), hook=hook)
        out.append(torch.softmax(logits[:, -1].float(), -1)[:, answer].view(len(chunk), S).mean(1))
    return torch.cat(out)


def profile_table(fn, device, rows: int = 25) -> str:
    """The device kernels of one call of fn, by total time (what the next optimisation should target)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)


def prepare_timing(engine, cfg: dict, ids: list, subject: tuple, spec, corruption: str, device, args) -> dict:
    """Steady prepare time: the median over ``--prepare-repeats`` prompts never seen (fresh random ids
    of the same length, each evicted after), and the per-token reference prepare on the same inputs."""
    gen = torch.Generator().manual_seed(2)
    times, ref_times = [], []
    for i in range(args.prepare_repeats):
        p_ids = torch.randint(100, cfg["vocab_size"], (len(ids),), generator=gen).tolist()
        if corruption == "swap":
            p_spec = SwapSpec([(x + 7919) % cfg["vocab_size"] if subject[0] <= t < subject[1] else x for t, x in enumerate(p_ids)])
        else:
            p_spec = spec
        sync(device)
        t0 = time.perf_counter()
        engine.prepare_prompt("m", f"steady-{i}", p_ids, subject, p_spec)
        sync(device)
        times.append(time.perf_counter() - t0)
        engine.evict("m", [f"steady-{i}"])
        if args.prepare_reference and i < 3:
            ck = engine.checkpoint("m")
            with torch.no_grad():
                x_ids, corrupted = engine._inputs(ck, PromptSpec(p_ids, subject, p_spec, None, ""))
                sync(device)
                t0 = time.perf_counter()
                prepare.build_runs_slow(ck.model, x_ids, corrupted, None)
                sync(device)
                ref_times.append(time.perf_counter() - t0)
    out = {"prepare_steady_s": statistics.median(times), "prepare_times_s": times}
    if ref_times:
        out["prepare_reference_s"] = statistics.median(ref_times)
    if args.profile:
        ck = engine.checkpoint("m")
        with torch.no_grad():
            x_ids, corrupted = engine._inputs(ck, PromptSpec(ids, subject, spec, None, ""))
            out["prepare_profile"] = profile_table(lambda: prepare.build_runs(ck.model, x_ids, corrupted, None), device, rows=12)
        print(out["prepare_profile"], flush=True)
    return out


def run_config(name: str, dtype_name: str, T: int, corruption: str, device, args, residual_only: bool = False) -> dict:
    dtype = DTYPES[dtype_name]
    cfg = SHAPES[name]
    L = cfg["num_hidden_layers"]
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(100, cfg["vocab_size"], (T,), generator=gen).tolist()
    subject = (2, 6)
    result = {"model": name, "dtype": dtype_name, "tokens": T, "corruption": corruption}

    if args.no_hf:  # engine only (no transformers here): random weights from the engine's test helpers
        from engine.testing import random_state

        model, hf_cfg, hf_unhookable = None, {k: v for k, v in cfg.items()}, "--no-hf"
        hf_cfg.update(rope_parameters={"partial_rotary_factor": cfg.get("rotary_pct", 0.25), "rope_theta": 10000.0, "rope_type": "default"})
        state = random_state(hf_cfg, device=str(device) if hasattr(torch, "get_default_device") else None)
    else:
        need_slow = any(site in ("ssm", "gate") for site, _ in (GRIDS[cfg["model_type"]] if not (args.residual_only or residual_only) else GRIDS[cfg["model_type"]][:1]))
        model, hf_cfg, hf_unhookable = hf_model(name, dtype, device, seed=0, need_slow=need_slow)
        state = dict(model.state_dict())
        out_emb = model.get_output_embeddings()
        if cfg["model_type"] == "gpt_neox" and "embed_out.weight" not in state:
            state.pop("lm_head.weight", None)  # transformers 5 names the NeoX head lm_head; checkpoints say embed_out
            state["embed_out.weight"] = out_emb.weight
    hf_cfg["model_type"] = cfg["model_type"]
    engine = Engine(trace_rows=args.trace_rows)
    sync(device)
    t0 = time.perf_counter()
    engine.models["m"] = build_checkpoint(hf_cfg, state, dtype="bfloat16" if dtype_name == "bf16" else "float32",
                                          device=str(device))
    sync(device)
    result["engine_load_s"] = time.perf_counter() - t0
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        free, _ = torch.cuda.mem_get_info(device)
        engine.cache.set_budget(int(free * 0.5))  # as Engine.load_model does on a GPU
    # As Engine.load_model does before a worker replies to LoadModel (weights come from memory here).
    result["warm_up_s"] = engine.warm_up("m") if not args.no_warm_up else 0.0
    result["ready_s"] = time.perf_counter() - t0

    sites = GRIDS[cfg["model_type"]] if not (args.residual_only or residual_only) else GRIDS[cfg["model_type"]][:1]
    result["sites"] = [s for s, _ in sites]
    cells = [CellSpec(s, l, t, w) for s, w in sites for l in range(L) for t in range(T)]
    base_cells = [Cell(c.site, c.layer, c.token, c.window) for c in cells]
    if corruption == "swap":
        corrupted_ids = list(ids)
        for t in range(*subject):
            corrupted_ids[t] = (ids[t] + 7919) % cfg["vocab_size"]
        spec = SwapSpec(corrupted_ids)
        S = 1
    else:
        spec = NoiseSpec(scale=3.0, samples=args.samples, seed=1)
        S = args.samples
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # The first prompt after ready (a worker's first shard), then steady ones.
    t0 = time.perf_counter()
    info = engine.prepare_prompt("m", "p", ids, subject, spec)
    sync(device)
    result["prepare_first_s"] = result["prepare_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.run_cells("m", "p", cells)
    result["run_cells_first_s"] = time.perf_counter() - t0
    result["first_prompt_s"] = result["prepare_first_s"] + result["run_cells_first_s"]
    result["p_clean"], result["p_corrupt"] = info.p_clean, info.p_corrupt
    sec, out = timed(lambda: engine.run_cells("m", "p", cells), device, args.repeats)
    ours = torch.tensor([p for p, _ in out], dtype=torch.float64)
    result.update(cells=len(cells), engine_s=sec, run_cells_s=sec, engine_cells_per_s=len(cells) / sec)
    result.update(prepare_timing(engine, cfg, ids, subject, spec, corruption, device, args))
    result["steady_prompt_s"] = result["prepare_steady_s"] + sec
    result["first_over_steady"] = result["first_prompt_s"] / result["steady_prompt_s"]
    result["prepare_share_of_grid"] = result["prepare_steady_s"] / sec
    if "prepare_reference_s" in result:
        result["prepare_reference_share_of_grid"] = result["prepare_reference_s"] / sec
    print(f"ready {result['ready_s']:.2f} s (warm-up {result['warm_up_s']:.2f}); prepare first "
          f"{result['prepare_first_s'] * 1e3:.1f} ms, steady {result['prepare_steady_s'] * 1e3:.2f} ms "
          f"({result['prepare_share_of_grid']:.1%} of the grid), reference {result.get('prepare_reference_s', 0) * 1e3:.1f} ms; "
          f"run_cells first {result['run_cells_first_s']:.3f} s, steady {sec:.4f} s; first/steady prompt "
          f"{result['first_over_steady']:.2f}", flush=True)
    if device.type == "cuda":
        result["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
    rate = matmul_rate(device, dtype)
    fl = floor_flops(cfg, cells, T, S)
    result.update(matmul_flops_per_s=rate, floor_flops=fl, floor_s=fl / rate, fraction_of_floor=(fl / rate) / sec)

    if args.attention and cfg["model_type"] == "gpt_neox":
        from engine import gpt_neox

        default = gpt_neox.ATTENTION
        for b in args.attention.split(","):
            gpt_neox.ATTENTION = b
            bsec_, bout_ = timed(lambda: engine.run_cells("m", "p", cells), device, args.repeats)
            result[f"engine_s_attention_{b}"] = bsec_
            result[f"max_abs_diff_attention_{b}"] = float((torch.tensor([p for p, _ in bout_], dtype=torch.float64) - ours).abs().max())
            print(f"attention {b}: {bsec_:.4f} s", flush=True)
        gpt_neox.ATTENTION = default

    if args.profile:
        result["profile"] = profile_table(lambda: engine.run_cells("m", "p", cells), device)
        print(result["profile"], flush=True)

    if args.engine_only:
        del engine, model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return result

    # Baselines on the engine's own model (the reference maths, golden-checked against transformers):
    # valid for every site, where transformers' CUDA Mamba path cannot be hooked.
    em = engine.models["m"].model
    x_ids = torch.tensor(ids, device=device)
    with torch.no_grad():
        corrupted_e = corrupted_embeddings(em, x_ids, subject, spec)  # (S, T, d): swap ids or noise, as prepared
        _, clean_e = record_clean(em, x_ids)
    try:
        # On a sample of the cells where the grid is large (its time scales with the cells: full forwards)
        hn = len(cells) if not args.hooks_sample else min(len(cells), args.hooks_sample)
        hidx = list(range(0, len(cells), max(1, len(cells) // hn)))[:hn]
        hcells = [cells[i] for i in hidx]
        esec, eout = timed(lambda: engine_batched_hooks(em, corrupted_e, clean_e, hcells, info.answer_id, args.rows), device, 1)
        esec *= len(cells) / len(hcells)
        ediff = (ours[hidx] - eout.double().cpu()).abs()
        result.update(hooks_s=esec, hooks_cells_timed=len(hcells), speedup_vs_hooks=esec / sec, max_abs_diff_vs_hooks=float(ediff.max()),
                      max_abs_diff_vs_hooks_at=str(hcells[int(ediff.argmax())]))
    except Exception as exc:
        result["hooks_error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    idx = torch.linspace(0, len(cells) - 1, args.naive_sample).round().long().tolist()
    t0 = time.perf_counter()
    slow = engine.run_cells("m", "p", [cells[i] for i in idx], slow_path=True)  # one full forward a cell
    per_cell = (time.perf_counter() - t0) / len(idx)
    sdiff = (ours[idx] - torch.tensor([p for p, _ in slow], dtype=torch.float64)).abs()
    result.update(percell_s_per_cell=per_cell, percell_grid_s=per_cell * len(cells),
                  speedup_vs_percell=per_cell * len(cells) / sec, max_abs_diff_vs_percell=float(sdiff.max()))

    if args.reference and dtype_name != "fp32":
        # bf16 rounding, measured: the same cells on the same weights in float32 (the fast path, which
        # the tests hold equal to the slow path in float32), against which both bf16 results are judged.
        engine.models["ref"] = build_checkpoint(hf_cfg, {k: v.float() for k, v in state.items()}, dtype="float32", device=str(device))
        engine.prepare_prompt("ref", "p", ids, subject, spec)
        ref = torch.tensor([p for p, _ in engine.run_cells("ref", "p", cells)], dtype=torch.float64)
        for label, vals, at in (("engine", ours, list(range(len(cells)))),
                                ("hooks", eout.double().cpu() if "hooks_s" in result else None, hidx if "hooks_s" in result else None)):
            if vals is None:
                continue
            err = (vals - ref[at]).abs()
            result[f"{label}_vs_fp32"] = {"max": float(err.max()), "p99": float(err.quantile(0.99)), "mean": float(err.mean()),
                                          "over_0.01": int((err > 0.01).sum()), "cells": len(at), "worst": str(cells[at[int(err.argmax())]])}
        del engine.models["ref"]
        engine.evict("ref", all=True)

    if hf_unhookable:
        result["hf_note"] = hf_unhookable
    if not args.no_hf and not hf_unhookable:
        if corruption == "swap":
            corrupted = torch.tensor([spec.corrupted_ids], device=device)
        else:
            # The engine's own corrupted embeddings (seeded numpy draw), so both sides run the same input.
            corrupted = corrupted_embeddings(engine.models["m"].model, x_ids, subject, spec).to(dtype)
        try:
            clean = clean_values(model, x_ids, sorted({s for s, _ in sites}))
            bsec, bout = timed(lambda: batched_hooks(model, corrupted, clean, base_cells, info.answer_id, batch=args.rows), device, 1)
            diff = (ours - bout.double().cpu()).abs()
            result.update(batched_s=bsec, speedup_vs_batched=bsec / sec, max_abs_diff_vs_batched=float(diff.max()),
                          max_abs_diff_at=str(cells[int(diff.argmax())]))
        except Exception as exc:  # report and go on: one failing baseline must not lose the rest
            result["batched_error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        try:
            idx = torch.linspace(0, len(cells) - 1, args.naive_sample).round().long().tolist()
            sample = [base_cells[i] for i in idx]
            noise_rows = None
            if corruption == "noise":
                emb_noise = corrupted - model.get_input_embeddings()(x_ids)[None]
                noise_rows = torch.cat([torch.zeros_like(emb_noise[:1]), emb_noise])
                corrupted_rows = torch.tensor([ids] * S, device=device)
            else:
                corrupted_rows = corrupted
            t0 = time.perf_counter()
            nout = naive(model, x_ids, corrupted_rows, sample, info.answer_id, embed_noise=noise_rows)
            sync(device)
            per_cell = (time.perf_counter() - t0) / len(sample)
            ndiff = (ours[idx] - nout.double().cpu()).abs()
            result.update(naive_s_per_cell=per_cell, naive_grid_s=per_cell * len(cells), speedup_vs_naive=per_cell * len(cells) / sec,
                          max_abs_diff_vs_naive=float(ndiff.max()))
        except Exception as exc:
            result["naive_error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
    del engine, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (smoke test)")
    ap.add_argument("--configs", default="mamba-2.8b:bf16:16:swap,pythia-2.8b:bf16:16:swap,mamba-2.8b:fp32:16:swap,mamba-2.8b:bf16:16:noise:residual,"
                    "mamba2-2.7b:bf16:16:swap",
                    help="comma-separated model:dtype:tokens:corruption[:residual] (':residual' times the residual grid only)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rows", type=int, default=256, help="rows a forward of the batched-hooks baselines")
    ap.add_argument("--trace-rows", type=int, default=None, help="rows a micro-batch of the engine (default: from free memory)")
    ap.add_argument("--profile", action="store_true", help="print the engine's device kernels by time")
    ap.add_argument("--reference", action="store_true", help="judge bf16 results against the same cells in float32")
    ap.add_argument("--hooks-sample", type=int, default=0, help="time the engine-model hooks baseline on this many cells (0: all) and scale")
    ap.add_argument("--attention", default="", help="comma-separated SDPA backends to time the NeoX engine with (flash,efficient,cudnn,math)")
    ap.add_argument("--samples", type=int, default=10, help="noise samples")
    ap.add_argument("--naive-sample", type=int, default=8, help="cells timed with the naive baseline")
    ap.add_argument("--residual-only", action="store_true")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers baselines")
    ap.add_argument("--engine-only", action="store_true", help="time the engine alone (no baselines, no float32 reference)")
    ap.add_argument("--no-warm-up", action="store_true", help="skip Engine.warm_up (the first prompt then compiles the kernels)")
    ap.add_argument("--prepare-repeats", type=int, default=5, help="fresh prompts the steady prepare time is the median of")
    ap.add_argument("--no-prepare-reference", dest="prepare_reference", action="store_false",
                    help="skip timing the per-token reference prepare")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    configs = [(c.split(":") + [""])[:5] for c in args.configs.split(",")]
    if args.quick:
        configs = [[m.replace("2.8b", "tiny").replace("2.7b", "tiny"), d, t, c, r] for m, d, t, c, r in configs]
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "triton_cache_dir": os.environ.get("TRITON_CACHE_DIR", ""), "kernel_cache": os.environ.get("FACTSWEEP_KERNEL_CACHE", "")}
    results = []
    for m, d, t, c, only in configs:
        print(f"--- {m} {d} T={t} {c} {only}", flush=True)
        try:
            r = run_config(m, d, int(t), c, device, args, residual_only=only == "residual")
        except Exception as exc:
            traceback.print_exc()
            r = {"model": m, "dtype": d, "tokens": int(t), "corruption": c, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(r), flush=True)
        results.append(r)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench-engine.json"), "w") as f:
        json.dump({"env": env, "args": vars(args), "results": results}, f, indent=1)
    print(f"\n{env}")
    for r in results:
        for label in ("engine", "hooks"):
            if f"{label}_vs_fp32" in r:
                print(f"{r['model']} {r['dtype']} T{r['tokens']} {r['corruption']}: {label} vs float32 {r[f'{label}_vs_fp32']}")
    print(f"{'config':36} {'ready s':>8} {'warm s':>7} {'prep 1st ms':>11} {'prep ms':>8} {'prep ref ms':>11} "
          f"{'prep/grid':>9} {'cells 1st s':>11} {'cells s':>8} {'1st/steady':>10}")
    for r in results:
        if "error" in r:
            continue
        name = f"{r['model']} {r['dtype']} T{r['tokens']} {r['corruption']}"
        print(f"{name:36} {r['ready_s']:>8.2f} {r['warm_up_s']:>7.2f} {r['prepare_first_s'] * 1e3:>11.1f} "
              f"{r['prepare_steady_s'] * 1e3:>8.2f} {r.get('prepare_reference_s', float('nan')) * 1e3:>11.1f} "
              f"{r['prepare_share_of_grid']:>9.1%} {r['run_cells_first_s']:>11.3f} {r['run_cells_s']:>8.4f} "
              f"{r['first_over_steady']:>10.2f}")
    print(f"{'config':36} {'cells':>6} {'engine s':>9} {'cells/s':>8} {'hooks s':>8} {'x hooks':>7} {'percell s':>9} "
          f"{'x percell':>9} {'HF hooks s':>10} {'x HF':>6} {'floor':>6} {'peak GiB':>8} {'dp hooks':>8} {'dp HF':>8}")
    for r in results:
        name = f"{r['model']} {r['dtype']} T{r['tokens']} {r['corruption']}{' (residual)' if r.get('sites') == ['residual'] else ''}"
        if "error" in r:
            print(f"{name:36} error: {r['error']}")
            continue
        g = lambda k, f="{:.3f}": f.format(r[k]) if k in r else "-"  # noqa: E731
        print(f"{name:36} {r['cells']:>6} {g('engine_s'):>9} {g('engine_cells_per_s', '{:.0f}'):>8} {g('hooks_s'):>8} "
              f"{g('speedup_vs_hooks', '{:.1f}'):>7} {g('percell_grid_s', '{:.1f}'):>9} {g('speedup_vs_percell', '{:.0f}'):>9} "
              f"{g('batched_s'):>10} {g('speedup_vs_batched', '{:.1f}'):>6} {g('fraction_of_floor', '{:.1%}'):>6} "
              f"{r.get('peak_gpu_bytes', 0) / 2**30:>8.1f} {g('max_abs_diff_vs_hooks', '{:.1e}'):>8} "
              f"{g('max_abs_diff_vs_batched', '{:.1e}'):>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
