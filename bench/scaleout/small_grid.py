"""How busy a small grid keeps the GPU, and what packing several prompts into one engine pass could gain.

    python3 -m bench.scaleout.small_grid --work /tmp/factsweep-scaleout --models mamba-2.8b,pythia-2.8b --out FILE

Uses the checkpoints ``engine_side models`` wrote under ``--work``. Per model and grid (the paper's
grid; ``residual`` w1 alone; ``residual`` w1 on 8 of the layers; ``residual`` w1 on 8-token prompts),
per prompt: ``run_cells`` of the grid's cells repeated k times in one call (k = 1, 4, 16; the paper's
grid, the reference, k = 1 only). A call of
k copies runs k times the rows and positions of one prompt's grid in one pass per layer, as k prompts
packed into one pass would (same kernels, same launches, k times the work): its time over k is what a
packed pass would cost a prompt, an upper bound of the gain (one prompt's cached runs serve all copies).
``--packed``: k different prompts packed into one pass instead (``Engine.run_cells_packed_launch``).
``busy`` = the CUDA kernel time of one k = 1 call (torch.profiler) over its wall time: below 1, the
host's launches, not the GPU, set the pace. Swap corruption, random prompts; medians over ``--prompts``.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from bench.scaleout.engine_side import GRIDS, SUBJECT, log


def grids_of(model_type: str, layers: int) -> list:
    """(name, tokens a prompt, cells as (site, layer, token, window)) of the grids measured."""
    full = GRIDS[model_type]

    def cells(sites, ls, T):
        return [(s, l, t, w) for s, w in sites for l in ls for t in range(T)]

    return [("paper", 16, cells(full, range(layers), 16)),
            ("residual", 16, cells(full[:1], range(layers), 16)),
            ("residual-l8", 16, cells(full[:1], range(min(8, layers)), 16)),
            ("residual-t8", 8, cells(full[:1], range(layers), 8))]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--models", default="mamba-2.8b,pythia-2.8b")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--copies", default="1,4,16")
    ap.add_argument("--packed", action="store_true", help="k different prompts packed into one pass instead of k copies of one")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    import os

    import torch

    from engine.corruption import SwapSpec
    from engine.runtime import Engine
    from engine.trace import CellSpec

    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rows = []
    for name in args.models.split(","):
        folder = os.path.join(args.work, "models", name)
        with open(os.path.join(folder, "config.json")) as f:
            cfg = json.load(f)
        eng = Engine()
        eng.load_model("m", folder, dtype=cfg["torch_dtype"], device=args.device)
        rng = random.Random(7)
        for gname, T, cells in grids_of(cfg["model_type"], cfg["num_hidden_layers"]):
            specs = [CellSpec(*c) for c in cells]
            keys, prep = [], []
            ks = [int(x) for x in args.copies.split(",")]
            n_keys = args.prompts + 1 + (max(ks) if args.packed else 0)
            for i in range(n_keys):
                ids = [rng.randrange(100, cfg["vocab_size"]) for _ in range(T)]
                swap = ids[:SUBJECT[0]] + [rng.randrange(100, cfg["vocab_size"]) for _ in range(*SUBJECT)] + ids[SUBJECT[1]:]
                sync()
                a = time.perf_counter()
                eng.prepare_prompt("m", f"{gname}{i}", ids, SUBJECT, SwapSpec(swap))
                sync()
                prep.append(time.perf_counter() - a)
                keys.append(f"{gname}{i}")
            for k in [1] if gname == "paper" else ks:  # paper: the reference
                if args.packed and k > 1:  # k different prompts in one pass (Engine.run_cells_packed_launch)
                    def call(at, k=k):
                        [p.array() for p in eng.run_cells_packed_launch("m", [(key, specs) for key in keys[at:at + k]])]
                else:  # k copies of one prompt's cells in one call (the proxy; k = 1: the prompt alone)
                    def call(at, k=k):
                        eng.run_cells("m", keys[at], specs * k)  # returns host floats: synchronised
                call(0)  # new sizes: allocator blocks, kernel variants
                times = []
                for at in range(1, args.prompts + 1):
                    a = time.perf_counter()
                    call(at)
                    times.append(time.perf_counter() - a)
                t = sorted(times)[len(times) // 2]
                row = {"model": name, "grid": gname, "tokens": T, "cells": len(cells), "copies": k,
                       "packed": bool(args.packed and k > 1),
                       "call_ms": 1e3 * t, "ms_a_prompt": 1e3 * t / k, "cells_per_s": k * len(cells) / t,
                       "prepare_ms": 1e3 * sorted(prep[1:])[len(prep[1:]) // 2]}
                if cuda and k == 1:
                    from torch.profiler import ProfilerActivity, profile

                    with profile(activities=[ProfilerActivity.CUDA]) as prof:
                        a = time.perf_counter()
                        eng.run_cells("m", keys[1], specs)
                        wall = time.perf_counter() - a
                    kern = sum((getattr(e, "self_device_time_total", None) if hasattr(e, "self_device_time_total") else e.self_cuda_time_total)
                               for e in prof.key_averages()) / 1e3
                    launches = sum(e.count for e in prof.key_averages() if getattr(getattr(e, "device_type", None), "name", "") == "CUDA")
                    row.update(kernel_ms=kern, profiled_ms=1e3 * wall, busy=kern / (1e3 * wall), kernels=launches)
                rows.append(row)
                log(f"small grid {name} {gname} (T {T}, {len(cells)} cells) {'packed ' if row['packed'] else 'x'}{k}: {row['call_ms']:.1f} ms a call, "
                    f"{row['ms_a_prompt']:.1f} ms a prompt, {row['cells_per_s']:.0f} cells/s"
                    + (f"; kernels {row['kernel_ms']:.1f} of {row['profiled_ms']:.1f} ms ({row['kernels']} launches)"
                       if "busy" in row else ""))
            eng.evict("m", keys)
        del eng
        if cuda:
            torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
