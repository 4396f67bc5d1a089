# long-file: the Python side of one benchmark (checkpoints, the engine-side measurements, the check), sharing its loading and grid
"""The Python side of bench/scaleout (run.sh calls it; see bench/scaleout/README.md).

    python3 -m bench.scaleout.engine_side models   --shapes mamba-2.8b,pythia-2.8b --prompts 500 --work DIR
    python3 -m bench.scaleout.engine_side inproc   --work DIR --model mamba-2.8b --device cuda:0 --out FILE
    python3 -m bench.scaleout.engine_side protocol --work DIR --model mamba-2.8b --device cuda:0 --out FILE
    python3 -m bench.scaleout.engine_side overlap  --work DIR --model mamba-2.8b --device cuda:0 --out FILE
    python3 -m bench.scaleout.engine_side check    --work DIR --model mamba-2.8b --spec check-bfloat16.json --results R.jsonl --out FILE

``models`` writes, per shape, a checkpoint with random weights in Hugging Face layout
(``DIR/models/<shape>/config.json`` + ``model.safetensors``, in the run dtype), the pre-tokenized
prompts (``DIR/<shape>/prompts.json``: 16 random tokens, subject [2, 5), swap corruption: the subject
tokens of the next prompt) and the sweep spec over them (``DIR/<shape>/spec.json``: the paper's grid,
all layers and tokens, one shard per prompt unless --shard-cells).

``inproc`` times the engine's API in this process, ``protocol`` one ``python -m engine`` worker driven
over its framed protobuf protocol (Hello, LoadModel, then PreparePrompt + RunCells per prompt, one at a
time, as the agent does). Both run one untimed warm-up prompt first, then every prompt; they write JSON.
``overlap`` measures what a worker's lookahead can hide: per prompt, the grid alone, the prepare alone,
and the grid of prompt i queued with the prepare of prompt i + 1 behind it (what the worker does when
the agent's next PreparePrompt is already there), plus the prepare's kernel time from the profiler.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

SHAPES = {
    "mamba-2.8b": dict(model_type="mamba", architectures=["MambaForCausalLM"], hidden_size=2560, num_hidden_layers=64,
                       state_size=16, conv_kernel=4, expand=2, intermediate_size=5120, time_step_rank=160,
                       vocab_size=50280, layer_norm_epsilon=1e-5, residual_in_fp32=True, use_bias=False,
                       use_conv_bias=True, tie_word_embeddings=True, hidden_act="silu"),
    "pythia-2.8b": dict(model_type="gpt_neox", architectures=["GPTNeoXForCausalLM"], hidden_size=2560,
                        num_hidden_layers=32, num_attention_heads=32, intermediate_size=10240, vocab_size=50304,
                        max_position_embeddings=2048, rotary_pct=0.25, rotary_emb_base=10000, layer_norm_eps=1e-5,
                        use_parallel_residual=True, attention_bias=True, hidden_act="gelu", tie_word_embeddings=False),
    # CPU development: the same code paths at tiny sizes
    "mamba-tiny": dict(model_type="mamba", architectures=["MambaForCausalLM"], hidden_size=64, num_hidden_layers=4,
                       state_size=16, conv_kernel=4, expand=2, intermediate_size=128, time_step_rank=4, vocab_size=1000,
                       layer_norm_epsilon=1e-5, residual_in_fp32=True, use_bias=False, use_conv_bias=True,
                       tie_word_embeddings=True, hidden_act="silu"),
    "pythia-tiny": dict(model_type="gpt_neox", architectures=["GPTNeoXForCausalLM"], hidden_size=64, num_hidden_layers=4,
                        num_attention_heads=4, intermediate_size=256, vocab_size=1000, max_position_embeddings=128,
                        rotary_pct=0.25, rotary_emb_base=10000, layer_norm_eps=1e-5, use_parallel_residual=True,
                        attention_bias=True, hidden_act="gelu", tie_word_embeddings=False),
}
# The paper's grid (bench/engine.py GRIDS): Mamba residual w1 + mixer/ssm/gate w10; NeoX residual w1 + attn/mlp w10.
GRIDS = {"mamba": [("residual", 1), ("mixer", 10), ("ssm", 10), ("gate", 10)],
         "gpt_neox": [("residual", 1), ("attn", 10), ("mlp", 10)]}
TOKENS = 16
SUBJECT = (2, 5)


def log(msg: str) -> None:
    print(f"[scaleout {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cells_of(model_type: str, layers: int, tokens: int, grid: str = "paper") -> list:
    """(site, layer, token, window) in the planner's order: grid entry, then layer, then token. ``grid``
    "residual": the residual stream alone (w1), a small grid (issue 14's packing)."""
    entries = GRIDS[model_type] if grid == "paper" else [("residual", 1)]
    return [(s, l, t, w) for s, w in entries for l in range(layers) for t in range(tokens)]


def spec_cells(spec: dict, cfg: dict) -> list:
    """The cells a spec written by ``models`` plans for each prompt (its grid, its first layers)."""
    grid = "residual" if [g["site"] for g in spec["grid"]] == ["residual"] else "paper"
    layers = cfg["num_hidden_layers"] if spec["layers"] == "all" else len(spec["layers"])
    return cells_of(cfg["model_type"], layers, TOKENS, grid)


def make_prompts(vocab: int, n: int, seed: int) -> list:
    """n random prompts of TOKENS ids; swap corruption: prompt i's subject tokens replaced by prompt
    i+1's (a different subject of the same length, aligned on the last subject token, as romba's swap)."""
    rng = random.Random(seed)
    ids = [[rng.randrange(100, vocab) for _ in range(TOKENS)] for _ in range(n)]
    b, e = SUBJECT
    prompts = []
    for i in range(n):
        partner = ids[(i + 1) % n] if n > 1 else [(x + 7919) % vocab for x in ids[i]]
        corrupted = ids[i][:b] + partner[b:e] + ids[i][e:]
        if corrupted == ids[i]:  # same subject tokens by chance: shift them
            corrupted = ids[i][:b] + [(x + 7919) % vocab for x in ids[i][b:e]] + ids[i][e:]
        prompts.append({"input_ids": ids[i], "subject": [b, e], "corrupted_ids": corrupted})
    return prompts


def cmd_models(args) -> None:
    import torch

    from engine.checkpoint_files import save_safetensors
    from engine.testing import random_state

    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[args.dtype]
    summary = []
    for name in args.shapes.split(","):
        cfg = dict(SHAPES[name])
        folder = os.path.join(args.work, "models", name)
        os.makedirs(folder, exist_ok=True)
        t0 = time.perf_counter()
        # random_state draws on the default device; on a GPU that is seconds instead of minutes at 2.8b.
        if args.device != "cpu":
            with torch.device(args.device):
                state = random_state(cfg, seed=0)
        else:
            state = random_state(cfg, seed=0)
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        params = sum(v.numel() for v in state.values())
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(dict(cfg, torch_dtype=args.dtype), f, indent=1)
        save_safetensors(os.path.join(folder, "model.safetensors"), state)
        del state
        if args.device != "cpu":
            torch.cuda.empty_cache()
        written = time.perf_counter() - t0

        prompts = make_prompts(cfg["vocab_size"], args.prompts, seed=1)
        if args.corruption == "noise":  # the planner refuses swap ids under noise corruption
            prompts = [{k: v for k, v in p.items() if k != "corrupted_ids"} for p in prompts]
        out = os.path.join(args.work, name)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "prompts.json"), "w") as f:
            json.dump(prompts, f)
        mt, L = cfg["model_type"], cfg["num_hidden_layers"]
        layers = min(args.layers or L, L)
        per_prompt = len(cells_of(mt, layers, TOKENS, args.grid))
        spec = {
            "name": f"scaleout-{name}",
            "kind": "trace",
            "model": {"id": name, "path": os.path.abspath(folder), "dtype": args.dtype},
            "dataset": {"prompts": prompts},
            "corruption": ({"kind": "swap", "seed": 1} if args.corruption == "swap"
                           else {"kind": "noise", "scale": 3, "std": "auto", "samples": args.samples, "seed": 1}),
            "grid": [{"site": s, "window": w} for s, w in (GRIDS[mt] if args.grid == "paper" else [("residual", 1)])],
            "layers": "all" if layers == L else list(range(layers)),
            "tokens": "all",
            "shard_cells": args.shard_cells or per_prompt,
            "max_attempts": 3,
        }
        with open(os.path.join(out, "spec.json"), "w") as f:
            json.dump(spec, f)
        # primer.json: a 4-prompt sweep of the same model run first, so the measured sweep meets a warm
        # cluster (model loaded, kernels compiled), as every sweep after a cluster's first does;
        # check-<dtype>.json: sampled prompts whose system results `check` compares with the engine alone.
        picks = sorted({0, len(prompts) // 3, len(prompts) - 1})
        extra = {"primer.json": dict(spec, name=spec["name"] + "-primer", dataset={"prompts": prompts[:4]})}
        for dt in sorted({args.dtype, "float32"}):
            extra[f"check-{dt}.json"] = dict(spec, name=f"{spec['name']}-check-{dt}", model=dict(spec["model"], dtype=dt),
                                             dataset={"prompts": [prompts[i] for i in picks]})
        for fname, body in extra.items():
            with open(os.path.join(out, fname), "w") as f:
                json.dump(body, f)
        row = {"model": name, "params": params, "dtype": args.dtype, "prompts": len(prompts), "cells_per_prompt": per_prompt,
               "corruption": spec["corruption"],
               "shard_cells": spec["shard_cells"], "checkpoint_bytes": os.path.getsize(os.path.join(folder, "model.safetensors")),
               "write_s": round(written, 2)}
        log(f"{name}: {params / 1e9:.3f} B parameters, {row['checkpoint_bytes'] / 2**30:.2f} GiB written in {written:.1f} s; "
            f"{len(prompts)} prompts x {per_prompt} cells")
        summary.append(row)
    print(json.dumps(summary))


def _load(args):
    with open(os.path.join(args.work, args.model, getattr(args, "spec", None) or "spec.json")) as f:
        spec = json.load(f)
    with open(os.path.join(spec["model"]["path"], "config.json")) as f:
        cfg = json.load(f)
    prompts = spec["dataset"]["prompts"][: args.limit or None]
    cells = spec_cells(spec, cfg)
    return spec, cfg, prompts, cells


def corruption_of(spec: dict, p: dict):
    """The engine's corruption for prompt p under the spec's: swap ids, or noise as the agent sends it
    (std "auto" = 0: computed over the subject tokens' embeddings, as ROME does)."""
    from engine.corruption import NoiseSpec, SwapSpec

    c = spec["corruption"]
    if c["kind"] == "swap":
        return SwapSpec(p["corrupted_ids"])
    return NoiseSpec(scale=c["scale"], std=None if c["std"] == "auto" else c["std"], samples=c["samples"], seed=c["seed"])


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def cmd_inproc(args) -> None:
    import torch

    from engine.runtime import Engine
    from engine.trace import CellSpec

    spec, cfg, prompts, cells = _load(args)
    specs = [CellSpec(s, l, t, w) for s, l, t, w in cells]
    eng = Engine()
    t0 = time.perf_counter()
    eng.load_model("m", spec["model"]["path"], dtype=spec["model"]["dtype"], device=args.device)
    _sync(args.device)
    load_s = time.perf_counter() - t0

    def one(key, p):
        a = time.perf_counter()
        eng.prepare_prompt("m", key, p["input_ids"], tuple(p["subject"]), corruption_of(spec, p))
        _sync(args.device)
        b = time.perf_counter()
        out = eng.run_cells("m", key, specs)  # returns host floats: synchronised
        c = time.perf_counter()
        return b - a, c - b, out

    w_prep, w_run, _ = one("warm-up", prompts[0])
    prep, run = [], []
    t0 = time.perf_counter()
    for i, p in enumerate(prompts):
        a, b, out = one(f"p{i}", p)
        prep.append(a)
        run.append(b)
    wall = time.perf_counter() - t0
    n = len(prompts) * len(cells)
    res = {"mode": "in_process", "model": args.model, "device": args.device, "prompts": len(prompts),
           "cells": n, "load_s": load_s, "warm_up_prepare_s": w_prep, "warm_up_run_s": w_run,
           "wall_s": wall, "prepare_s": sum(prep), "run_cells_s": sum(run),
           "grid_cells_per_s": n / sum(run), "cells_per_s": n / wall,
           "prepare_ms_median": 1e3 * sorted(prep)[len(prep) // 2], "run_cells_ms_median": 1e3 * sorted(run)[len(run) // 2]}
    if args.device.startswith("cuda"):
        res["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    log(f"in-process {args.model}: {n} cells in {wall:.2f} s ({n / wall:.0f} cells/s; run_cells alone {n / sum(run):.0f} "
        f"cells/s; prepare median {res['prepare_ms_median']:.0f} ms, run_cells median {res['run_cells_ms_median']:.0f} ms)")
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


def cmd_protocol(args) -> None:
    from engine import PROTOCOL_VERSION
    from engine.framing import WorkerClient
    from engine.proto import engine_pb2 as pb

    spec, cfg, prompts, cells = _load(args)
    site = {s: pb.Site.Value(f"SITE_{s.upper()}") for s in {c[0] for c in cells}}
    pcells = [pb.Cell(site=site[s], layer=l, token=t, window=w) for s, l, t, w in cells]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    device = args.device
    if device.startswith("cuda"):  # as the agent starts a worker: it sees its one GPU as cuda:0
        env["CUDA_VISIBLE_DEVICES"] = device.split(":")[1] if ":" in device else "0"
        device = "cuda:0"
    errlog = open(args.out + ".stderr", "w")
    t_spawn = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "engine"], cwd=root, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=errlog)
    try:
        client = WorkerClient(proc.stdin, proc.stdout)

        def call(**body):
            r = client.call(**body)
            if r.WhichOneof("body") == "error":
                raise RuntimeError(f"worker error on {list(body)[0]}: {r.error}")
            return r

        call(hello=pb.Hello(protocol_version=PROTOCOL_VERSION))
        ready_s = time.perf_counter() - t_spawn
        t0 = time.perf_counter()
        call(load_model=pb.LoadModel(model_id="m", path=spec["model"]["path"], dtype=spec["model"]["dtype"], device=device))
        load_s = time.perf_counter() - t0

        def wire_corruption(p):
            c = spec["corruption"]
            if c["kind"] == "swap":
                return pb.Corruption(swap=pb.SwapCorruption(corrupted_ids=p["corrupted_ids"]))
            return pb.Corruption(noise=pb.NoiseCorruption(scale=c["scale"], std=0 if c["std"] == "auto" else c["std"],
                                                          samples=c["samples"], seed=c["seed"]))

        def one(key, p):
            a = time.perf_counter()
            call(prepare_prompt=pb.PreparePrompt(model_id="m", prompt_key=key, input_ids=p["input_ids"],
                                                 subject_start=p["subject"][0], subject_end=p["subject"][1],
                                                 corruption=wire_corruption(p)))
            b = time.perf_counter()
            r = call(run_cells=pb.RunCells(model_id="m", prompt_key=key, cells=pcells))
            c = time.perf_counter()
            assert len(r.cells.p) == len(pcells), "wrong number of cell results"
            return b - a, c - b, r.cells.seconds

        w_prep, w_run, _ = one("warm-up", prompts[0])
        prep, run, eng_s = [], [], []
        t0 = time.perf_counter()
        for i, p in enumerate(prompts):
            a, b, s = one(f"p{i}", p)
            prep.append(a)
            run.append(b)
            eng_s.append(s)
        wall = time.perf_counter() - t0
        call(shutdown=pb.Shutdown())
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    n = len(prompts) * len(cells)
    res = {"mode": "worker_protocol", "model": args.model, "device": args.device, "prompts": len(prompts), "cells": n,
           "spawn_to_hello_s": ready_s, "load_s": load_s, "warm_up_prepare_s": w_prep, "warm_up_run_s": w_run,
           "wall_s": wall, "prepare_s": sum(prep), "run_cells_s": sum(run), "engine_run_cells_s": sum(eng_s),
           "cells_per_s": n / wall, "prepare_ms_median": 1e3 * sorted(prep)[len(prep) // 2],
           "run_cells_ms_median": 1e3 * sorted(run)[len(run) // 2]}
    log(f"worker protocol {args.model}: {n} cells in {wall:.2f} s ({n / wall:.0f} cells/s; worker spawn -> Hello {ready_s:.1f} s, "
        f"LoadModel {load_s:.1f} s; prepare median {res['prepare_ms_median']:.0f} ms, run_cells median {res['run_cells_ms_median']:.0f} ms)")
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


def cmd_overlap(args) -> None:
    """Grid alone, prepare alone and grid(i) + prepare(i+1) queued together, per prompt (medians), and
    the CUDA kernel time of one prepare (torch.profiler): how much of a prepare is host launches that a
    lookahead hides behind the running grid, and how much is device time that stays serial."""
    import torch

    from engine.runtime import Engine
    from engine.trace import CellSpec

    spec, cfg, prompts, cells = _load(args)
    specs = [CellSpec(s, l, t, w) for s, l, t, w in cells]
    eng = Engine()
    eng.load_model("m", spec["model"]["path"], dtype=spec["model"]["dtype"], device=args.device)

    def prep(key, p):
        eng.prepare_prompt("m", key, p["input_ids"], tuple(p["subject"]), corruption_of(spec, p))

    def med(xs):
        return 1e3 * sorted(xs)[len(xs) // 2]

    prep("w", prompts[0])
    eng.run_cells("m", "w", specs)
    alone_prep, alone_grid, together = [], [], []
    for i, p in enumerate(prompts):
        _sync(args.device)
        a = time.perf_counter()
        prep(f"a{i}", p)
        _sync(args.device)
        b = time.perf_counter()
        eng.run_cells("m", f"a{i}", specs)
        c = time.perf_counter()
        alone_prep.append(b - a)
        alone_grid.append(c - b)
        eng.evict("m", [f"a{i}"])
    prep("o0", prompts[0])
    _sync(args.device)
    for i in range(len(prompts) - 1):
        a = time.perf_counter()
        pending = eng.run_cells_launch("m", f"o{i}", specs)
        prep(f"o{i + 1}", prompts[i + 1])
        pending.array()
        together.append(time.perf_counter() - a)
        eng.evict("m", [f"o{i}"])
    kernel_ms = None
    if args.device.startswith("cuda"):
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            prep("prof", prompts[-1])
            _sync(args.device)
        kernel_ms = sum(e.self_device_time_total if hasattr(e, "self_device_time_total") else e.self_cuda_time_total
                        for e in prof.key_averages()) / 1e3
    res = {"mode": "overlap", "model": args.model, "device": args.device, "prompts": len(prompts),
           "cells_per_prompt": len(cells), "grid_ms": med(alone_grid), "prepare_ms": med(alone_prep),
           "grid_then_prepare_ms": med(alone_grid) + med(alone_prep), "grid_with_next_prepare_ms": med(together),
           "prepare_kernel_ms": kernel_ms}
    res["hidden_share_of_prepare"] = (res["grid_then_prepare_ms"] - res["grid_with_next_prepare_ms"]) / res["prepare_ms"]
    log(f"overlap {args.model}: grid {res['grid_ms']:.1f} ms, prepare {res['prepare_ms']:.1f} ms "
        f"(kernels {kernel_ms if kernel_ms is None else round(kernel_ms, 1)} ms), grid + next prepare queued "
        f"{res['grid_with_next_prepare_ms']:.1f} ms: {100 * res['hidden_share_of_prepare']:.0f}% of the prepare hidden")
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


def cmd_check(args) -> None:
    """The system's results of a check sweep (``sweepctl results --format jsonl``) against the engine
    alone on the same prompts and cells, in this process: every cell present once, and the largest
    |p_system - p_engine|."""
    from engine.runtime import Engine
    from engine.trace import CellSpec

    spec, cfg, prompts, cells = _load(args)
    got = {}
    with open(args.results) as f:
        for line in f:
            r = json.loads(line)
            key = (int(r["prompt_index"]), r["site"], int(r["layer"]), int(r["token"]), int(r["window"]))
            got.setdefault(key, []).append(float(r["p"]))
    eng = Engine()
    eng.load_model("m", spec["model"]["path"], dtype=spec["model"]["dtype"], device=args.device)
    specs = [CellSpec(s, l, t, w) for s, l, t, w in cells]
    compared, missing, repeated, worst = 0, 0, 0, 0.0
    for i, p in enumerate(prompts):
        eng.prepare_prompt("m", f"c{i}", p["input_ids"], tuple(p["subject"]), corruption_of(spec, p))
        for (s, l, t, w), (pv, _) in zip(cells, eng.run_cells("m", f"c{i}", specs)):
            seen = got.get((i, s, l, t, min(w, 2 * cfg["num_hidden_layers"])))  # the planner cuts windows to 2 × layers
            if not seen:
                missing += 1
                continue
            repeated += len(seen) > 1
            compared += 1
            worst = max(worst, abs(seen[0] - pv))
    res = {"mode": "check", "model": args.model, "dtype": spec["model"]["dtype"], "device": args.device,
           "prompts": len(prompts), "cells_compared": compared, "cells_missing": missing, "cells_repeated": repeated,
           "rows": sum(len(v) for v in got.values()), "max_abs_diff_p": worst}
    log(f"check {args.model} {spec['model']['dtype']}: {compared} cells compared, {missing} missing, {repeated} repeated, "
        f"max |p_system - p_engine| = {worst:.3g}")
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("models", help="write checkpoints, prompts and specs")
    m.add_argument("--shapes", default="mamba-2.8b,pythia-2.8b")
    m.add_argument("--prompts", type=int, default=500)
    m.add_argument("--work", required=True)
    m.add_argument("--device", default="cuda", help="where to draw the random weights (cpu or cuda)")
    m.add_argument("--dtype", default="bfloat16")
    m.add_argument("--shard-cells", type=int, default=0, help="cells per shard (0: one shard per prompt)")
    m.add_argument("--corruption", choices=["swap", "noise"], default="swap")
    m.add_argument("--samples", type=int, default=10, help="noise samples (with --corruption noise)")
    m.add_argument("--grid", choices=["paper", "residual"], default="paper",
                   help="the paper's sites, or the residual stream alone (a small grid)")
    m.add_argument("--layers", type=int, default=0, help="trace the first N layers only (0: all)")
    m.set_defaults(fn=cmd_models)
    for name, fn in (("inproc", cmd_inproc), ("protocol", cmd_protocol), ("overlap", cmd_overlap)):
        p = sub.add_parser(name)
        p.add_argument("--work", required=True)
        p.add_argument("--model", required=True)
        p.add_argument("--device", default="cuda:0")
        p.add_argument("--limit", type=int, default=0, help="first N prompts only (0: all)")
        p.add_argument("--out", required=True)
        p.add_argument("--spec", default="", help="spec file under DIR/<model>/ (default spec.json)")
        p.set_defaults(fn=fn)
    c = sub.add_parser("check", help="compare a check sweep's exported results with the engine alone")
    c.add_argument("--work", required=True)
    c.add_argument("--model", required=True)
    c.add_argument("--spec", required=True, help="the check sweep's spec file under DIR/<model>/")
    c.add_argument("--results", required=True, help="its results as sweepctl results --format jsonl wrote them")
    c.add_argument("--device", default="cuda:0")
    c.add_argument("--limit", type=int, default=0)
    c.add_argument("--out", required=True)
    c.set_defaults(fn=cmd_check)
    args = ap.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
