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
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

from engine import mamba
from engine.checkpoint import DTYPES, Checkpoint
from engine.experiments import run
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
    rnd = lambda n: torch.randint(1, V, (n,), generator=g).tolist()  # noqa: E731  (0 is the bos/eos id)
    subject = rnd(3)
    prompt = rnd(2) + subject + rnd(6)
    params = {
        "matrix": "W_o", "layer": layer, "subject_ids": subject,
        "rewrite": {"ids": prompt, "subject": [2, 5], "in_context": {"ids": rnd(1) + prompt, "subject": [3, 6]}},
        "target_new_ids": rnd(2), "target_true_ids": rnd(2),
        "paraphrases": [rnd(4) + subject + rnd(5) for _ in range(2)],
        "neighbourhood": [rnd(3) + rnd(6) for _ in range(2)],
        "kl_prompts": [{"ids": subject + rnd(2), "subject": [0, 3]}],
        "corpus": [rnd(a.corpus_len) for _ in range(a.corpus_seqs)],
        "generation": {"max_new_tokens": a.gen_tokens} if a.gen_tokens else None,
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    if a.profile:
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch.profiler.profile(activities=acts) as prof:
            r = run(eng, "m", "edit", "bench", params)
        total = time.perf_counter() - t
        ka = prof.key_averages()
        by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        with open(a.profile, "w", encoding="utf-8") as f:
            f.write(ka.table(sort_by=by, row_limit=40) + "\n" + ka.table(sort_by="self_cpu_time_total", row_limit=25))
    else:
        r = run(eng, "m", "edit", "bench", params)
        total = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0

    name = "tiny" if a.tiny else "mamba-2.8b"
    print(f"{name} shape {shape}, {a.dtype} on {device}: weights {weights / 2**30:.2f} GiB, built in {build_s:.1f} s")
    print(f"corpus {r['covariance']['tokens']} tokens, C {r['covariance']['dim']}², edit of {r['module']} rows {r['rows']}")
    for phase in ("covariance", "key", "v_star", "update", "eval"):
        print(f"  {phase:10s} {r['seconds'].get(phase, 0.0):8.2f} s")
    print(f"  {'total':10s} {total:8.2f} s;  peak GPU memory {peak / 2**30:.2f} GiB" if peak else f"  {'total':10s} {total:8.2f} s")
    print(f"v*: {r['v_star']['steps']} steps, loss {r['v_star']['loss']:.3f}, stopped by {r['v_star']['stopped']}; "
          f"restored {r['restored']}; ES pre {r['pre']['ES']} post {r['post']['ES']}")
    print(json.dumps({"bench": "rome_gpu", "shape": name, "dtype": a.dtype, "device": str(device), "layer": layer,
                      "weights_bytes": weights, "build_s": build_s, "seconds": r["seconds"], "total_s": total,
                      "peak_gpu_bytes": peak, "corpus_tokens": r["covariance"]["tokens"], "v_star": r["v_star"],
                      "restored": r["restored"], "torch": torch.__version__}))
    return 0 if r["restored"] else 1


if __name__ == "__main__":
    sys.exit(main())
