"""One ROME edit of W_o at the mamba-2.8b shape with random weights: wall time per phase, peak memory.

    # on the GPU machine (float32, as the paper runs Mamba):
    bash scripts/engine-python.sh -m bench.rome_gpu --device cuda:0
    # here, a tiny shape on the CPU (checks the script end to end):
    bash scripts/engine-python.sh -m bench.rome_gpu --tiny --device cpu

The model is built directly from the engine's ``mamba.Config`` / ``mamba.LM`` (no checkpoint file:
d 2560, 64 layers, state 16, conv 4, expand 2, dt rank 160, vocab 50280), initialised like a
fresh Mamba (A = 1..16, Δ bias = softplus⁻¹ of log-uniform [1e-3, 0.1], embeddings N(0, 0.02)),
and handed to an ``Engine`` under a model id; the edit then goes through the worker's entry point
``experiments.run(engine, id, "edit", ...)`` with the paper's hyper-parameters (21 context
templates, 20 steps, ...). Corpus and case are random token ids (``--corpus-seqs`` × ``--corpus-len``
tokens for C). Phases (from the result's ``seconds``): covariance, key (context prefixes, k̄, u),
v_star, update, eval (pre + post evaluation incl. generation). Prints one JSON line at the end.

``--v-precision float32,tf32,bf16`` times, per option (``hparams.v_precision``) and after one untimed
warm-up edit (Triton compiles its kernels there), three kinds of edit, by the scope of what they find
cached in the worker:

- **cold** (``seconds``): every cache emptied (C, context prefixes, pre-edit evaluations, decode
  graphs), as a fresh worker's first edit;
- **new case** (``new_case_edit``, the median of ``--new-cases`` (3) other random cases of the same
  lengths): the first edit of a case on a warm worker, as every case after the first in a sweep. Kept:
  per model the context prefixes and decode graphs, per (layer, key module) C. Done: the case's pre-edit
  evaluation, its k̄ and v*;
- **further** (``further_edit``, the median of ``--further`` (3)): another edit of the same case, as a
  sweep's other (layer, matrix) edits of a case; the pre-edit evaluation (per case) is kept too.

``sweep`` is the paper's sweep from those medians: each case edited at every layer × 3 matrices (192
edits at mamba-2.8b), one new-case edit and 191 further edits a case: the amortised seconds an edit and
the GPU-hours of ``--sweep-cases`` (2,000) cases, C (once per cluster) and the once-per-worker work
(context prefixes, graph captures: cold − new case − covariance) apart. ``--json FILE`` writes one
object per option (bench/results/rome-gpu.json); ``--profile FILE`` profiles one more new-case edit
per option.

Share of the floor of a v* step. A step runs blocks layer..L-1 forward and, for δ's gradient only
(the weights are frozen), backward, on the batch of R rewriting + K KL prompts, T tokens a row (from
each prompt's subject-last token on: ``rome.vstar`` resumes there; ``tokens_whole`` the padded whole
prompts, as before), and the head at the S scored positions. With P = d·2d_in + d_in·(r + 2n) + r·d_in + d_in·d the
weights of one block's matrix products:

    FLOPs = 4·(R+K)·T·(L − layer)·P + 4·S·d·V        (2 forward + 2 for the input gradient)
    bytes = 2·(L − layer)·P·w + 2·V·d·w               (each weight read once forward, once backward)
    floor = max(FLOPs / matmul rate, bytes / copy bandwidth)

The scan, conv and elementwise work (O(tokens·d_in·n)) are left out: under 1% of the FLOPs. The rates
are measured in the same call (8192³ products: float32 without TF32, TF32, bf16; a device copy of 4
GiB counting bytes read plus written); the rate for an option is that of its matrix products.
share = floor / (v_star seconds / steps).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time

import torch

from engine import mamba
from engine.checkpoint import DTYPES, Checkpoint
from engine.experiments import rome, run
from engine.experiments.rome import algorithm as rome_algorithm
from engine.runtime import Engine

SHAPE_2P8B = dict(d_model=2560, n_layer=64, vocab_size=50280, d_state=16, d_conv=4, expand=2, dt_rank=160)
SHAPE_TINY = dict(d_model=64, n_layer=4, vocab_size=512, d_state=16, d_conv=4, expand=2, dt_rank=4)


def build(shape: dict, dtype: torch.dtype, device: torch.device, seed: int) -> mamba.LM:
    torch.manual_seed(seed)
    cfg = mamba.Config(**shape)
    if hasattr(torch, "get_default_device"):  # PyTorch >= 2: initialise on the device itself
        with device:
            model = mamba.LM(cfg)
    else:
        model = mamba.LM(cfg).to(device)
    with torch.no_grad():
        for layer in model.layers:
            mx = layer.mixer
            mx.A_log.copy_(torch.log(torch.arange(1, cfg.d_state + 1, dtype=torch.float32, device=device)).repeat(cfg.d_inner, 1))
            dt = torch.exp(torch.rand(cfg.d_inner, device=device) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            mx.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        model.backbone.embeddings.weight.normal_(0.0, 0.02)
    return model.to(dtype).eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny shape (d 64, 4 layers, vocab 512) that runs on a CPU")
    ap.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--layer", type=int, default=None, help="edited layer (default 15, the paper's; tiny: 1)")
    ap.add_argument("--corpus-seqs", type=int, default=64)
    ap.add_argument("--corpus-len", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=16, help="generated tokens per evaluation prompt (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--v-precision", default="float32",
                    help="comma-separated hparams.v_precision options to time, one edit each (float32, tf32, bf16)")
    ap.add_argument("--further", type=int, default=3, help="further edits of the case per option (their median is reported)")
    ap.add_argument("--new-cases", type=int, default=3, help="first edits of new cases on the warm worker per option (their median is reported)")
    ap.add_argument("--sweep-cases", type=int, default=2000, help="cases of the paper's sweep for the GPU-hours estimate")
    ap.add_argument("--json", default=None, metavar="FILE", help="write one object per option here")
    ap.add_argument("--profile", default=None, metavar="FILE",
                    help="run the edit under torch.profiler and write its busiest operators (self device and host time) to FILE")
    a = ap.parse_args(argv)

    device = torch.device(a.device)
    dtype = DTYPES[a.dtype]
    shape = SHAPE_TINY if a.tiny else SHAPE_2P8B
    layer = a.layer if a.layer is not None else (1 if a.tiny else 15)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32, as Engine.load_model sets
        torch.backends.cudnn.allow_tf32 = False

    t = time.perf_counter()
    model = build(shape, dtype, device, a.seed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    build_s = time.perf_counter() - t
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    eng = Engine()
    eng.models["m"] = Checkpoint(model_type="mamba", config=model.config, model=model, dtype=dtype, device=device, path="<random>")

    g = torch.Generator().manual_seed(a.seed + 1)
    V = shape["vocab_size"]
    options = [o.strip() for o in a.v_precision.split(",") if o.strip()]
    params = case_params(g, V, layer, None, a.gen_tokens)  # the ids of the earlier runs' one case (drawn first)
    params["corpus"] = [torch.randint(1, V, (a.corpus_len,), generator=g).tolist() for _ in range(a.corpus_seqs)]
    # the new cases: other random facts of the same token lengths (a sweep's cases differ in lengths too;
    # equal ones keep the comparison with the first edit about the caches alone); one more per option
    # for --profile
    new_cases = [dict(case_params(g, V, layer, params["corpus"], a.gen_tokens)) for _ in range(len(options) * (a.new_cases + 1))]
    rates = measure_rates(device) if device.type == "cuda" else None
    before = [p.detach().clone() for p in model.parameters()]  # every weight, to check the restore bit for bit
    name = "tiny" if a.tiny else "mamba-2.8b"
    print(f"{name} shape {shape}, {a.dtype} on {device}: weights {weights / 2**30:.2f} GiB, built in {build_s:.1f} s")
    if rates:
        print("rates: " + ", ".join(f"{k} {v / 1e12:.1f} TFLOP/s" if k != "copy" else f"copy {v / 1e12:.2f} TB/s" for k, v in rates.items()))
    run(eng, "m", "edit", "warm-up", dict(params, generation=None, hparams={"v_num_grad_steps": 2}))  # Triton compiles here
    rows = []
    for oi, opt in enumerate(options):
        p = dict(params, hparams={"v_precision": opt})
        news = [dict(c, hparams={"v_precision": opt}) for c in new_cases[oi * (a.new_cases + 1):(oi + 1) * (a.new_cases + 1)]]
        _forget(model)  # cold: every phase computed as a fresh worker's first edit computes it
        r, total, peak, intact = _timed(eng, model, before, p, device)
        # a further edit of the same case: C, context prefixes, the pre-edit evaluation and the decode
        # graphs cached (a sweep's other (layer, matrix) edits of the case; C is computed once per
        # cluster); v* is the edit's own, as always
        further_runs = [_timed(eng, model, before, p, device) for _ in range(a.further)]
        (r2, total2, _, _), intact2 = _median(further_runs)
        further = sorted(x[1] for x in further_runs)
        # the first edit of a new case on a warm worker: model- and (layer, module)-scope caches kept
        # (C, context prefixes, decode graphs), the case's own work (pre-edit evaluation, k̄, v*) done
        new_runs = [_timed(eng, model, before, c, device) for c in news[:a.new_cases]]
        (r3, total3, _, _), intact3 = _median(new_runs)
        if a.profile:
            acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with torch.profiler.profile(activities=acts) as prof:  # one more new case's edit, profiled
                run(eng, "m", "edit", "bench", news[-1])
            ka = prof.key_averages()
            by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            with open(f"{a.profile}.{opt}", "w", encoding="utf-8") as f:
                f.write(ka.table(sort_by=by, row_limit=40) + "\n" + ka.table(sort_by="self_cpu_time_total", row_limit=25))
        floor = step_floor(model, shape, layer, params, rates, opt, dtype) if rates else None
        step_s = r["seconds"]["v_star"] / r["v_star"]["steps"]
        step2_s = r2["seconds"]["v_star"] / r2["v_star"]["steps"]
        share = floor["seconds"] / step_s if floor else None
        sweep = sweep_estimate(shape, total3, total2, r["seconds"].get("covariance", 0.0), total, a.sweep_cases)
        print(f"v_precision {opt}: corpus {r['covariance']['tokens']} tokens, C {r['covariance']['dim']}², edit of {r['module']}")
        print(f"  {'phase':10s} {'cold':>8s}   {'new case':>8s}   {'further':>8s}")
        for phase in ("covariance", "key", "v_star", "update", "eval"):
            print(f"  {phase:10s} " + "   ".join(f"{x['seconds'].get(phase, 0.0):8.3f} s" for x in (r, r3, r2)))
        print(f"  {'total':10s} {total:8.3f} s   {total3:8.3f} s   {total2:8.3f} s" + (f";  peak GPU memory {peak / 2**30:.2f} GiB" if peak else ""))
        print(f"  new cases' totals {', '.join(f'{x[1]:.3f}' for x in sorted(new_runs, key=lambda x: x[1]))} s; further edits' totals "
              f"{', '.join(f'{x:.3f}' for x in further)} s (the medians' phases shown)")
        print(f"  v*: {r['v_star']['steps']} steps of {step_s * 1e3:.1f} ms (further edit {step2_s * 1e3:.1f} ms), loss {r['v_star']['loss']:.3f}, "
              f"stopped by {r['v_star']['stopped']}, resumed {r['v_star'].get('resumed')}"
              + (f"; floor of a step {floor['seconds'] * 1e3:.1f} ms ({floor['flops'] / 1e12:.2f} TFLOP, {floor['bytes'] / 1e9:.1f} GB, "
                 f"{floor['tokens']} tokens a row), share {share:.3f}; with the whole prompts ({floor['tokens_whole']} tokens) "
                 f"{floor['seconds_whole'] * 1e3:.1f} ms" if floor else ""))
        for tag, x in (("cold", r), ("new-case", r3), ("further", r2)):
            sub = x["v_star"].get("seconds", {})
            print(f"  v* of the {tag} edit: " + ", ".join(f"{k} {v:.3f} s" for k, v in sub.items()) + f"; graph {x['v_star']['cuda_graph']}"
                  + (f" ({x['v_star']['cuda_graph_error']})" if "cuda_graph_error" in x["v_star"] else ""))
        print(f"  restored {r['restored']}/{r3['restored']}/{r2['restored']}, every weight bit-equal to before: {intact}/{intact3}/{intact2}; "
              f"ES pre {r['pre']['ES']} post {r['post']['ES']}; pre-edit evaluation cached: new case {r3.get('pre_cached')}, "
              f"further edit {r2.get('pre_cached')}")
        print(f"  paper's sweep ({sweep['edits_per_case']} edits a case: 1 new-case + {sweep['edits_per_case'] - 1} further): "
              f"{sweep['per_edit_seconds']:.3f} s an edit, {sweep['cases']} cases {sweep['gpu_hours']:.1f} GPU-hours "
              f"(+ once per cluster C, + once per worker {sweep['once_per_worker_seconds']:.2f} s)")
        phases = lambda x, t: dict({k: x["seconds"].get(k, 0.0) for k in ("covariance", "key", "v_star", "update", "eval")}, total=t)  # noqa: E731
        row = {"shape": name, "dtype": a.dtype, "v_precision": opt, "device": str(device),
               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "layer": layer,
               "seconds": phases(r, total),
               "v_step_seconds": step_s, "v_step_floor": floor, "v_step_share_of_floor": share, "rates": rates,
               "peak_gpu_bytes": peak, "corpus_tokens": r["covariance"]["tokens"], "v_star": r["v_star"],
               "restored": r["restored"] and r2["restored"] and r3["restored"], "weights_bit_equal": intact and intact2 and intact3,
               "post": {k: r["post"][k] for k in ("ES", "PS", "NS")}, "torch": torch.__version__,
               "further_edit": {"seconds": phases(r2, total2),
                                "v_step_seconds": step2_s, "pre_cached": r2.get("pre_cached"), "covariance_cached": r2["covariance"]["cached"],
                                "v_star": r2["v_star"], "post": {k: r2["post"][k] for k in ("ES", "PS", "NS")},
                                "totals": further},
               "new_case_edit": {"seconds": phases(r3, total3),
                                 "v_step_seconds": r3["seconds"]["v_star"] / r3["v_star"]["steps"], "pre_cached": r3.get("pre_cached"),
                                 "covariance_cached": r3["covariance"]["cached"], "v_star": r3["v_star"],
                                 "post": {k: r3["post"][k] for k in ("ES", "PS", "NS")}, "totals": sorted(x[1] for x in new_runs)},
               "sweep": sweep}
        rows.append(row)
        print(json.dumps(dict(row, bench="rome_gpu")))
        if not (row["restored"] and row["weights_bit_equal"]):
            return 1
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


def case_params(g: torch.Generator, V: int, layer: int, corpus, gen_tokens: int) -> dict:
    """One random case (token ids 1..V-1; 0 is the bos/eos id) of fixed lengths: an 11-token rewrite
    prompt with a 3-token subject, 2 paraphrases, 2 neighbourhood prompts, 2-token objects."""
    rnd = lambda n: torch.randint(1, V, (n,), generator=g).tolist()  # noqa: E731
    subject = rnd(3)
    prompt = rnd(2) + subject + rnd(6)
    return {
        "matrix": "W_o", "layer": layer, "subject_ids": subject,
        "rewrite": {"ids": prompt, "subject": [2, 5], "in_context": {"ids": rnd(1) + prompt, "subject": [3, 6]}},
        "target_new_ids": rnd(2), "target_true_ids": rnd(2),
        "paraphrases": [rnd(4) + subject + rnd(5) for _ in range(2)],
        "neighbourhood": [rnd(3) + rnd(6) for _ in range(2)],
        "kl_prompts": [{"ids": subject + rnd(2), "subject": [0, 3]}],
        "corpus": corpus,
        "generation": {"max_new_tokens": gen_tokens} if gen_tokens else None,
    }


def sweep_estimate(shape: dict, new_case_s: float, further_s: float, covariance_s: float, cold_s: float, cases: int) -> dict:
    """The paper's sweep: each case edited at every layer × 3 matrices (W_a, W_g, W_o), a case's edits
    one after another on a warm worker (planning sends them so; the cache affinity keeps them there):
    its first edit a new-case edit, the rest further edits. Times are this run's (one layer, W_o); C is
    once per cluster and (layer, key module), outside the per-edit figure; once per worker: the context
    prefixes and the graph captures (cold − new case − covariance)."""
    per_case = 3 * shape["n_layer"]
    case_s = new_case_s + (per_case - 1) * further_s
    return {"cases": cases, "edits_per_case": per_case, "per_case_seconds": case_s, "per_edit_seconds": case_s / per_case,
            "gpu_hours": cases * case_s / 3600, "once_per_worker_seconds": cold_s - new_case_s - covariance_s,
            "covariance_seconds_each": covariance_s, "covariances": 2 * shape["n_layer"],
            "basis": "per_case_seconds = new_case_edit.total + (edits_per_case - 1) * further_edit.total (medians, this layer and W_o)"}


def _median(runs: list):
    """The run of median wall time (runs: _timed tuples), and whether every run restored every weight."""
    runs = sorted(runs, key=lambda x: x[1])
    return runs[len(runs) // 2], all(x[3] and x[0]["restored"] for x in runs)


def _forget(model) -> None:
    """Empty the per-model caches (C, context prefixes, pre-edit evaluations, decode graphs, case passes)."""
    rome_algorithm._COV.clear()
    rome_algorithm._CTX.clear()
    importlib.import_module("engine.experiments.rome.evaluate")._PRE.clear()  # the module: rome.evaluate is its function
    importlib.import_module("engine.experiments.rome.forward")._DECODE.clear()
    importlib.import_module("engine.experiments.rome.vstar")._PASS.clear()


def _timed(eng, model, before, p: dict, device):
    """One edit through the worker's entry point: (result, wall seconds, peak GPU bytes, every weight
    bit-equal to ``before`` afterwards)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    r = run(eng, "m", "edit", "bench", p)
    total = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return r, total, peak, all(torch.equal(x, y) for x, y in zip(model.parameters(), before))


def measure_rates(device) -> dict:
    """Matrix-product rates (FLOP/s) of 8192³ products on random data, float32 without and with TF32
    and bf16, and the device-copy bandwidth (bytes read + written per second): medians of 10."""
    out = {}
    n = 8192
    old = torch.backends.cuda.matmul.allow_tf32
    for key, dt, tf32 in (("float32", torch.float32, False), ("tf32", torch.float32, True), ("bf16", torch.bfloat16, False)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        x, y = torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt)
        out[key] = 2 * n**3 / _median_s(lambda: x @ y, device)
    torch.backends.cuda.matmul.allow_tf32 = old
    src = torch.randn(1 << 30, device=device)  # 4 GiB
    dst = torch.empty_like(src)
    out["copy"] = 2 * src.numel() * 4 / _median_s(lambda: dst.copy_(src), device)
    return out


def _median_s(fn, device, reps: int = 10) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize(device)
        times.append(s.elapsed_time(e) / 1e3)
    return sorted(times)[len(times) // 2]


def step_floor(model, shape: dict, layer: int, params: dict, rates: dict, opt: str, dtype: torch.dtype) -> dict:
    """FLOPs, bytes and the floor (s) of one v* step (module docstring), from the shape and the case's
    actual prompts (the context prefixes the edit sampled, still in the per-model cache). T is the
    tokens a step runs per row: from the subject's last token on (``rome.vstar``: the earlier ones are
    causally before δ); ``tokens_whole`` / ``seconds_whole`` the same with the whole padded prompts."""
    hp = rome.HPARAMS
    prefixes = rome.context_prefixes(model, 0, hp["context_template_length_params"], hp["context_seed"], hp["context_top_k"])
    tnew = params["target_new_ids"]
    rw, ic = params["rewrite"], params["rewrite"]["in_context"]
    rows_ = [(len(rw["ids"]) + len(tnew) - 1, rw["subject"][1] - 1)]
    rows_ += [(len(p) + len(ic["ids"]) + len(tnew) - 1, len(p) + ic["subject"][1] - 1) for p in prefixes]
    rows_ += [(len(k["ids"]), k["subject"][1] - 1) for k in params["kl_prompts"]]
    rows, T_whole = len(rows_), max(n for n, _ in rows_)
    T = max(n - last for n, last in rows_)
    scored = (1 + len(prefixes)) * len(tnew) + len(params["kl_prompts"])
    d, L, V, n, k = shape["d_model"], shape["n_layer"], shape["vocab_size"], shape["d_state"], shape["dt_rank"]
    di = shape["expand"] * d
    P = d * 2 * di + di * (k + 2 * n) + k * di + di * d
    w = torch.finfo(dtype).bits // 8
    nbytes = 2 * (L - layer) * P * w + 2 * V * d * w
    rate = rates["bf16" if opt == "bf16" else opt]
    floor = lambda t: max((4 * rows * t * (L - layer) * P + 4 * scored * d * V) / rate, nbytes / rates["copy"])  # noqa: E731
    return {"flops": 4 * rows * T * (L - layer) * P + 4 * scored * d * V, "bytes": nbytes, "rows": rows, "tokens": T,
            "scored": scored, "seconds": floor(T), "tokens_whole": T_whole, "seconds_whole": floor(T_whole),
            "formula": "max((4*rows*T*(L-layer)*P + 4*scored*d*V)/rate, (2*(L-layer)*P + 2*V*d)*bytes/copy_bw)"}


if __name__ == "__main__":
    sys.exit(main())
