"""Layer sweep of ROME edits on one machine, through the worker's entry point (``experiments.run``).

    bash scripts/engine-python.sh -m engine.experiments.rome_sweep --model models/mamba-facts \\
        --cases engine/tests/fixtures/edit_cases_world.json --n 20 --matrices W_o,W_a,W_g \\
        --out runs/rome-sweep-mamba.json

For every (matrix, layer) it edits each of the first ``--n`` cases of a fixture written by
``scripts/engine/make_edit_cases.mjs`` and prints ROME's summary (means of ES/PS/NS/EM/PM/NM over cases and
S = harmonic mean of the mean ES, PS, NS), post-edit, plus the pre-edit baseline. The distributed
sweep does the same per shard; this is the single-process reference and the source of the figures
in the report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ..architectures import get as architecture_of
from ..runtime import Engine
from . import run
from .rome import HPARAMS, summarize


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="checkpoint folder (models/mamba-facts, models/neox-facts)")
    ap.add_argument("--cases", default="engine/tests/fixtures/edit_cases_world.json")
    ap.add_argument("--n", type=int, default=20, help="cases per (matrix, layer)")
    ap.add_argument("--matrices", default="", help="comma-separated; default: every matrix of the model type")
    ap.add_argument("--layers", default="all", help="'all' or comma-separated layer indices")
    ap.add_argument("--hparams", default="{}", help=f"JSON object overriding any of {sorted(HPARAMS)}")
    ap.add_argument("--no-generation", action="store_true", help="skip the generation-entropy samples")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="", help="write summaries and per-case results as JSON here")
    a = ap.parse_args(argv)

    eng = Engine()
    info = eng.load_model("m", a.model, dtype=a.dtype, device=a.device)
    with open(a.cases) as f:
        fx = json.load(f)
    cases = fx["cases"][: a.n]
    matrices = a.matrices.split(",") if a.matrices else list(architecture_of(info.model_type).edit_targets)
    layers = list(range(info.num_layers)) if a.layers == "all" else [int(x) for x in a.layers.split(",")]
    hparams = json.loads(a.hparams)
    extra = {"generation": None} if a.no_generation else {}

    out = {"model": a.model, "cases_file": a.cases, "n": len(cases), "hparams": dict(HPARAMS, **hparams), "sweep": []}
    started = time.perf_counter()
    print(f"{a.model}: {len(cases)} cases, corpus {fx.get('corpus_tokens')} tokens, matrices {matrices}, layers {layers}", flush=True)
    for matrix in matrices:
        print(f"\n{matrix}\nlayer    ES    PS    NS     S |   EM    PM    NM |  GE  | pre ES/PS/NS/S          | s/case", flush=True)
        for layer in layers:
            t = time.perf_counter()
            results = []
            for c in cases:
                params = dict(c["params"], matrix=matrix, layer=layer, corpus=fx["corpus"], bos_id=fx.get("bos_id", 0),
                              hparams=hparams, **extra)
                r = run(eng, "m", "edit", f"case-{c['case_id']}", params)
                r["case_id"] = c["case_id"]
                results.append(r)
            post, pre = summarize(results, "post"), summarize(results, "pre")
            per = (time.perf_counter() - t) / len(cases)
            pct = lambda x: "  -  " if x is None else f"{100 * x:5.1f}"  # noqa: E731
            ge = "  -  " if post["GE"] is None else f"{post['GE']:5.2f}"
            print(f"{layer:5d} {pct(post['ES'])} {pct(post['PS'])} {pct(post['NS'])} {pct(post['S'])} | "
                  f"{pct(post['EM'])} {pct(post['PM'])} {pct(post['NM'])} | {ge} | "
                  f"{pct(pre['ES'])} {pct(pre['PS'])} {pct(pre['NS'])} {pct(pre['S'])} | {per:5.2f}", flush=True)
            out["sweep"].append({"matrix": matrix, "layer": layer, "post": post, "pre": pre, "seconds_per_case": per,
                                 "restored_all": all(r["restored"] for r in results),
                                 "cases": [{k: r[k] for k in ("case_id", "v_star", "key", "update")}
                                           | {"post": {k: r["post"][k] for k in ("ES", "PS", "NS", "EM", "PM", "NM")},
                                              "pre": {k: r["pre"][k] for k in ("ES", "PS", "NS")}} for r in results]})
            out["seconds"] = time.perf_counter() - started
            if a.out:  # after every (matrix, layer): a stopped sweep keeps what it finished
                write(a.out, out)
    if a.out:
        print(f"\nwrote {a.out}")
    return 0


def write(path: str, out: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(out, f, indent=1)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    sys.exit(main())
