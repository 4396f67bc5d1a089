"""Kernel benchmark for the packed fast path (GPU machine): the scan kernel's block shapes, RMSNorm,
the conv, each against its PyTorch path and against the bytes it must move.

    python3 -m bench.kernels [--rows 4096] [--out $OUT]

Sizes are one layer of the mamba-2.8b grid (d_in 5120, N 16, 16 tokens, rows with first tokens
spread over 0..15, so ~8.5 positions a row). "floor" = bytes that must move (inputs read once,
output written once) over the device-to-device copy rate measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from engine import kernels


def packed(R: int, T: int, S: int, device):
    g = torch.Generator().manual_seed(0)
    tok = torch.randint(0, T, (R,), generator=g)
    sample = torch.randint(0, S, (R,), generator=g)
    length = T - tok
    off = torch.cumsum(length, 0) - length
    n = int(length.sum())
    pos_row = torch.repeat_interleave(torch.arange(R), length)
    first = off[pos_row]
    token = tok[pos_row] + torch.arange(n) - first
    cache = sample[pos_row] * T + token
    h0 = torch.where(tok > 0, sample * T + tok - 1, -1)
    to = lambda x: x.to(device)  # noqa: E731
    return n, to(off), to(length), to(h0), to(first), to(cache), to(token)


def main(argv=None) -> int:
    import triton.testing

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    T, S, d, di, N = 16, 1, 2560, 5120, 16
    R = args.rows
    n, off, length, h0, first, cache, token = packed(R, T, S, dev)
    bf = torch.bfloat16
    torch.manual_seed(0)
    xz = torch.randn(n, 2 * di, device=dev, dtype=bf)
    a, z = xz[:, :di], xz[:, di:]
    c = torch.randn(n, di, device=dev, dtype=bf)
    dt = (torch.randn(n, di, device=dev) - 3).to(bf)
    x_dbl = torch.randn(n, 160 + 2 * N, device=dev, dtype=bf)
    B, C = x_dbl[:, 160:160 + N], x_dbl[:, 160 + N:]
    A = -torch.exp(torch.rand(di, N, device=dev) * 3)
    D = torch.randn(di, device=dev, dtype=bf)
    H = torch.randn(S * T, di, N, device=dev)
    cache_a = torch.randn(S, T, di, device=dev, dtype=bf)
    w = torch.randn(di, 1, 4, device=dev, dtype=bf)
    bias = torch.randn(di, device=dev, dtype=bf)
    x32 = torch.randn(n, d, device=dev)
    nw = torch.randn(d, device=dev, dtype=bf)

    big = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    big2 = torch.empty_like(big)
    copy_ms = triton.testing.do_bench(lambda: big2.copy_(big), return_mode="median")
    bw = 2 * big.numel() / (copy_ms / 1e3)  # bytes read + written per second
    rows = []

    def record(name, fn, nbytes, ref=None):
        ms = triton.testing.do_bench(fn, return_mode="median")
        err = None
        if ref is not None:
            out, want = fn().float(), ref().float()
            err = float(((out - want).norm() / want.norm()).item())
        rows.append({"kernel": name, "ms": ms, "floor_ms": nbytes / bw * 1e3, "of_floor": nbytes / bw * 1e3 / ms, "rel_err": err})
        print(json.dumps(rows[-1]), flush=True)

    scan_args = (c, dt, B, C, z, A, D, H, h0, off, length, None, None, None, None)
    scan_bytes = n * (3 * di * 2 + 2 * N * 2 + di * 2) + R * di * N * 4
    torch_scan = lambda: kernels._scan_torch(*scan_args)  # noqa: E731
    for cfg in [(64, 2), (64, 4), (128, 4), (128, 8), (256, 4), (256, 8), (512, 8)]:
        kernels.SCAN_CONFIG = cfg
        record(f"scan BLOCK_D={cfg[0]} warps={cfg[1]}", lambda: kernels._scan_triton(*scan_args), scan_bytes, torch_scan)
    kernels.SCAN_CONFIG = (128, 4)
    record("scan PyTorch path", torch_scan, scan_bytes)
    conv_args = (a, cache_a, w, bias, first, cache, token)
    record("conv Triton", lambda: kernels._conv_triton(*conv_args), n * di * 4, lambda: kernels._conv_torch(*conv_args))
    record("conv PyTorch path", lambda: kernels._conv_torch(*conv_args), n * di * 4)

    def rms_torch():
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)
        return nw * y.to(bf)
    record("rms_norm Triton", lambda: kernels.rms_norm(x32, nw, 1e-5), n * d * 6, rms_torch)
    record("rms_norm PyTorch", rms_torch, n * d * 6)

    print(f"\ncopy rate {bw / 1e12:.2f} TB/s (read + write); positions {n}, rows {R}")
    print(f"{'kernel':32} {'ms':>8} {'floor ms':>9} {'of floor':>9} {'rel err':>9}")
    for r in rows:
        e = "-" if r["rel_err"] is None else f"{r['rel_err']:.1e}"
        print(f"{r['kernel']:32} {r['ms']:>8.3f} {r['floor_ms']:>9.3f} {r['of_floor']:>9.1%} {e:>9}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench-kernels.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(dev), "copy_bytes_per_s": bw, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
