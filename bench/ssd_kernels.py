"""Kernel benchmark of the Mamba-2 scan of the packed fast path (GPU machine): the Triton kernel's
block shapes against its PyTorch path and against the bytes it must move.

    python3 -m bench.ssd_kernels [--rows 1024] [--out $OUT]

Sizes are one layer of the mamba2-2.7b grid (80 heads of 64, state 128, 1 group, 16 tokens, rows with
first tokens spread over 0..15, so ~8.5 positions a row). "floor" = bytes that must move (each row's
cached float32 state read once, the conv output and Δ read once, y written once) over the
device-to-device copy rate measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

from engine import ssd_kernels

from .kernels import packed


def main(argv=None) -> int:
    import triton.testing

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    T, S, nheads, P, N, G = 16, 1, 80, 64, 128, 1
    d_in = nheads * P
    e = d_in + 2 * G * N
    R = args.rows
    n, off, length, h0, _, _, _ = packed(R, T, S, dev)
    bf = torch.bfloat16
    torch.manual_seed(0)
    cv = torch.randn(n, e, device=dev, dtype=bf)
    delta = F.softplus(torch.randn(n, nheads, device=dev) - 2)
    A = -torch.exp(torch.rand(nheads, device=dev) * 2)
    D = torch.randn(nheads, device=dev, dtype=bf)
    H = torch.randn(S * T, nheads, P, N, device=dev)

    big = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    big2 = torch.empty_like(big)
    copy_ms = triton.testing.do_bench(lambda: big2.copy_(big), return_mode="median")
    bw = 2 * big.numel() / (copy_ms / 1e3)  # bytes read + written per second
    del big, big2
    rows = []
    nbytes = R * nheads * P * N * 4 + n * (e * 2 + nheads * 4 + d_in * 2)

    def record(name, fn, ref=None):
        ms = triton.testing.do_bench(fn, return_mode="median")
        err = None
        if ref is not None:
            out, want = fn().float(), ref.float()
            err = float(((out - want).norm() / want.norm()).item())
        rows.append({"kernel": name, "ms": ms, "floor_ms": nbytes / bw * 1e3, "of_floor": nbytes / bw * 1e3 / ms, "rel_err": err})
        print(json.dumps(rows[-1]), flush=True)

    scan = (cv, delta, A, D, H, h0, off, length)
    torch_scan = lambda: ssd_kernels.scan_packed_torch(*scan, T, nheads, G, N)  # noqa: E731
    ref = torch_scan()
    default = ssd_kernels.SSD_CONFIG
    for cfg in [(16, 2), (16, 4), (32, 2), (32, 4), (32, 8), (64, 4), (64, 8)]:
        ssd_kernels.SSD_CONFIG = cfg
        record(f"ssd BLOCK_P={cfg[0]} warps={cfg[1]}", lambda: ssd_kernels.scan_packed_triton(*scan, nheads, G, N), ref)
    ssd_kernels.SSD_CONFIG = default
    record("ssd PyTorch path", torch_scan)

    print(f"\ncopy rate {bw / 1e12:.2f} TB/s (read + write); positions {n}, rows {R}, default {default}")
    print(f"{'kernel':32} {'ms':>8} {'floor ms':>9} {'of floor':>9} {'rel err':>9}")
    for r in rows:
        err = "-" if r["rel_err"] is None else f"{r['rel_err']:.1e}"
        print(f"{r['kernel']:32} {r['ms']:>8.3f} {r['floor_ms']:>9.3f} {r['of_floor']:>9.1%} {err:>9}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench-ssd-kernels.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(dev), "copy_bytes_per_s": bw, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
