"""The table and JSON of bench/scaleout/run.sh, from the per-step results under --work.

One object per model shape in --out (a list), with the fields of issue 14 first, then detail:
    model, prompts, in_process_cells_per_s, worker_protocol_cells_per_s, system_1gpu_cells_per_s,
    system_2gpu_cells_per_s (null when not measured), first_result_s, worker_ready_s, commit
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import re


def _json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _ms(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


def agent_times(work: str, tag: str) -> dict:
    """From the agent's log: its start -> each engine worker's handshake ('ready: pid ...'), and ->
    the first shard it finished."""
    out = {}
    try:
        start = float(open(os.path.join(work, "results", f"{tag}.agent-start-ms")).read())
        lines = open(os.path.join(work, "logs", f"{tag}.agent.log")).read().splitlines()
    except (OSError, ValueError):
        return out
    ready = [_ms(l.split()[0]) for l in lines if " ready: pid " in l]
    done = [_ms(l.split()[0]) for l in lines if re.search(r" shard \S+ done: ", l)]
    if ready:
        out["worker_ready_s"] = (max(ready) - start) / 1000
        out["workers_ready"] = len(ready)
    if done:
        out["agent_first_shard_done_s"] = (min(done) - start) / 1000
    # the worker's lookahead at work: each worker logs at exit how many grids had the next prepare behind them
    ahead = [re.search(r"prepare ran behind (\d+) of (\d+) grids", l) for l in lines]
    ahead = [m for m in ahead if m]
    if ahead:
        out["lookahead_grids"] = [sum(int(m.group(1)) for m in ahead), sum(int(m.group(2)) for m in ahead)]
    # small grids the workers packed into one pass (engine/worker.py --pack-below), and in how many passes
    packed = [m for m in (re.search(r"(\d+) small grids ran packed in (\d+) passes", l) for l in lines) if m]
    out["packed_grids"] = [sum(int(m.group(1)) for m in packed), sum(int(m.group(2)) for m in packed)]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--hardware", default="")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    res = os.path.join(args.work, "results")
    made = {r["model"]: r for r in (_json(os.path.join(res, "models.json")) or [])}
    rows = []
    for m in args.models.split(","):
        a = _json(os.path.join(res, f"{m}.inproc.json")) or {}
        b = _json(os.path.join(res, f"{m}.protocol.json")) or {}
        s1 = _json(os.path.join(res, f"{m}-system1.json")) or {}
        s2 = _json(os.path.join(res, f"{m}-system2.json")) or {}
        p1 = _json(os.path.join(res, f"{m}-system1.primer.json")) or {}
        p2 = _json(os.path.join(res, f"{m}-system2.primer.json")) or {}
        o = _json(os.path.join(res, f"{m}.overlap.json")) or {}
        checks = [c for c in (_json(x) for x in sorted(glob.glob(os.path.join(res, f"{m}.check-*.json")))) if c]
        t1, t2 = agent_times(args.work, f"{m}-system1"), agent_times(args.work, f"{m}-system2")
        ok = lambda s: s.get("state") == "done"  # noqa: E731
        row = {
            "model": m,
            "prompts": made.get(m, {}).get("prompts"),
            "in_process_cells_per_s": a.get("grid_cells_per_s"),
            "worker_protocol_cells_per_s": b.get("cells_per_s"),
            "system_1gpu_cells_per_s": s1.get("cells_per_s") if ok(s1) else None,
            "system_2gpu_cells_per_s": s2.get("cells_per_s") if ok(s2) else None,
            "first_result_s": s1.get("first_result_s"),
            "worker_ready_s": t1.get("worker_ready_s"),
            "commit": args.commit,
            # detail
            "hardware": args.hardware,
            "dtype": made.get(m, {}).get("dtype"),
            "corruption": made.get(m, {}).get("corruption"),
            "cells_per_prompt": made.get(m, {}).get("cells_per_prompt"),
            "shard_cells": made.get(m, {}).get("shard_cells"),
            "in_process_with_prepare_cells_per_s": a.get("cells_per_s"),
            "in_process_prepare_ms_median": a.get("prepare_ms_median"),
            "in_process_run_cells_ms_median": a.get("run_cells_ms_median"),
            "in_process_load_s": a.get("load_s"),
            "worker_protocol_prepare_ms_median": b.get("prepare_ms_median"),
            "worker_protocol_run_cells_ms_median": b.get("run_cells_ms_median"),
            "worker_protocol_spawn_to_hello_s": b.get("spawn_to_hello_s"),
            "worker_protocol_load_s": b.get("load_s"),
            # warm start: the first prompt after LoadModel returned (prepare + run_cells) over a steady one (medians)
            "first_prompt_over_steady": ((b["warm_up_prepare_s"] + b["warm_up_run_s"]) * 1e3 / (b["prepare_ms_median"] + b["run_cells_ms_median"])
                                         if b.get("warm_up_run_s") is not None else None),
            "system_1gpu_steady_cells_per_s": s1.get("steady_cells_per_s"),
            "system_1gpu_done_s": s1.get("done_s"),
            "system_1gpu_state": s1.get("state"),
            "system_1gpu_agent_first_shard_done_s": t1.get("agent_first_shard_done_s"),
            "system_1gpu_lookahead_grids": t1.get("lookahead_grids"),  # [grids with the next prepare behind, grids]
            "system_2gpu_lookahead_grids": t2.get("lookahead_grids"),
            "system_1gpu_packed_grids": t1.get("packed_grids"),  # [grids packed, passes]
            "system_2gpu_steady_cells_per_s": s2.get("steady_cells_per_s"),
            "system_2gpu_done_s": s2.get("done_s"),
            "system_2gpu_state": s2.get("state"),
            "system_2gpu_first_result_s": s2.get("first_result_s"),
            "system_2gpu_worker_ready_s": t2.get("worker_ready_s"),
            "cells": s1.get("cells") or b.get("cells") or a.get("cells"),
            # the cluster's first sweep of the model (the primer; absent with --no-primer): LoadModel + warm-up inside
            "cold_first_result_s": p1.get("first_result_s"),
            "cold_done_s": p1.get("done_s"),
            "system_2gpu_cold_first_result_s": p2.get("first_result_s"),
            "launch_s": s1.get("launch_s"),
            "overlap": {k: o.get(k) for k in ("prompts", "grid_ms", "prepare_ms", "prepare_kernel_ms", "grid_with_next_prepare_ms",
                                              "hidden_share_of_prepare")} if o else None,
            "system_equals_engine": [{k: c.get(k) for k in ("dtype", "prompts", "cells_compared", "cells_missing", "cells_repeated",
                                                            "max_abs_diff_p")} for c in checks],
        }
        rows.append(row)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)

    def f(x, d=0):
        return "–" if x is None else f"{x:,.{d}f}"

    def r(x, y):
        return "–" if x is None or not y else f"{x / y:.2f}"

    print()
    print("| model | prompts | in-process grid cells/s | worker protocol | × | system 1 GPU | × | steady | system 2 GPUs | × | 2/1 GPU | first result s | worker ready s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for x in rows:
        g = x["in_process_cells_per_s"]
        print(f"| {x['model']} | {x['prompts']} | {f(g)} (with prepare {f(x['in_process_with_prepare_cells_per_s'])}) | "
              f"{f(x['worker_protocol_cells_per_s'])} | {r(x['worker_protocol_cells_per_s'], g)} | "
              f"{f(x['system_1gpu_cells_per_s'])} | {r(x['system_1gpu_cells_per_s'], g)} | {f(x['system_1gpu_steady_cells_per_s'])} | "
              f"{f(x['system_2gpu_cells_per_s']) if x['system_2gpu_cells_per_s'] is not None else 'unmeasured'} | "
              f"{r(x['system_2gpu_cells_per_s'], g)} | {r(x['system_2gpu_cells_per_s'], x['system_1gpu_cells_per_s'])} | "
              f"{f(x['first_result_s'], 1)} | {f(x['worker_ready_s'], 1)} |")
    print()
    print("× = ratio to the in-process grid rate (run_cells alone). System rates: cells / (sweepctl launch -> the last result);")
    print("steady = cells after the first result / (first -> last result). first result and worker ready: 1-GPU run.")
    for x in rows:
        o = x["overlap"]
        if o:
            print(f"{x['model']} overlap: grid {f(o['grid_ms'], 1)} ms, prepare {f(o['prepare_ms'], 1)} ms (kernels "
                  f"{f(o['prepare_kernel_ms'], 1)} ms), grid + next prepare queued {f(o['grid_with_next_prepare_ms'], 1)} ms")
        print(f"{x['model']} cold first sweep: first result {f(x['cold_first_result_s'], 1)} s; warm: {f(x['first_result_s'], 1)} s; "
              f"worker's first prompt after LoadModel {f(x['first_prompt_over_steady'], 2)}x a steady one")
        for c in x["system_equals_engine"]:
            print(f"{x['model']} system == engine ({c['dtype']}): {c['cells_compared']} cells, {c['cells_missing']} missing, "
                  f"{c['cells_repeated']} repeated, max |dp| {c['max_abs_diff_p']}")


if __name__ == "__main__":
    main()
