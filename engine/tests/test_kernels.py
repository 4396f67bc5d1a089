"""The Triton kernels of the packed fast path equal its PyTorch path (CUDA only; skipped elsewhere).

On a GPU machine: ``FACTSWEEP_TEST_DEVICE=cuda:0 python3 -m pytest engine/tests/test_kernels.py
engine/tests/test_fast_path.py`` also runs the whole fast path (Triton) against the slow path."""

import pytest
import torch

from engine import kernels

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and kernels.triton is not None),
                                reason="needs CUDA and Triton")


def packed_rows(S=3, T=16, seed=0):
    """Rows (sample, first token) packed as the fast path packs them, with their index tensors."""
    g = torch.Generator().manual_seed(seed)
    rows = [(s, t) for s in range(S) for t in range(T)]
    rows = [rows[i] for i in torch.randperm(len(rows), generator=g)]
    off, first, cache, token, h0 = [], [], [], [], []
    n = 0
    for s, t in rows:
        off.append(n)
        h0.append(s * T + t - 1 if t > 0 else -1)
        for u in range(t, T):
            first.append(n)
            cache.append(s * T + u)
            token.append(u)
        n += T - t
    dev = "cuda"
    L = lambda x: torch.tensor(x, dtype=torch.int64, device=dev)  # noqa: E731
    return dict(n=n, off=L(off), length=L([T - t for _, t in rows]), h0=L(h0), first=L(first), cache=L(cache), token=L(token))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_kernel_equals_pytorch_path(dtype):
    S, T, d_in, k = 3, 16, 320, 4
    p = packed_rows(S, T)
    torch.manual_seed(1)
    xz = torch.randn(p["n"], 2 * d_in, device="cuda", dtype=dtype)
    a = xz[:, :d_in]  # a row-strided view, as in the model
    cache_a = torch.randn(S, T, d_in, device="cuda", dtype=dtype)
    w = torch.randn(d_in, 1, k, device="cuda", dtype=dtype)
    b = torch.randn(d_in, device="cuda", dtype=dtype)
    with torch.backends.cudnn.flags(allow_tf32=False):
        ref = kernels._conv_torch(a, cache_a, w, b, p["first"], p["cache"], p["token"]).float()
    out = kernels._conv_triton(a, cache_a, w, b, p["first"], p["cache"], p["token"]).float()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert (out - ref).abs().max() <= tol * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("restores", [False, True])
def test_scan_kernel_equals_pytorch_path(dtype, restores):
    S, T, d_in, N = 2, 16, 192, 16
    p = packed_rows(S, T, seed=2)
    n, R = p["n"], p["off"].shape[0]
    torch.manual_seed(3)
    mk = lambda *s: torch.randn(*s, device="cuda").to(dtype)  # noqa: E731
    c, z = mk(n, d_in), mk(n, 2 * d_in)[:, d_in:]
    dt = (mk(n, d_in).float() - 2).to(dtype)
    x_dbl = mk(n, 2 * N + 8)
    B, C = x_dbl[:, 8:8 + N], x_dbl[:, 8 + N:]
    A = -torch.exp(torch.rand(d_in, N, device="cuda") * 2)
    D = mk(d_in)
    H = torch.randn(S * T, d_in, N, device="cuda")
    src = clean = None
    if restores:
        src = torch.where(torch.rand(R, device="cuda") < 0.5, torch.randint(0, 40, (R,), device="cuda"), -1)
        clean = mk(40, d_in)
    args = (c, dt, B, C, z, A, D, H, p["h0"], p["off"], p["length"], src, clean, src, clean)
    ref = kernels._scan_torch(*args).float()
    out = kernels._scan_triton(*args).float()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert (out - ref).abs().max() <= tol * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_scatter_kernel_equals_pytorch_path(dtype, monkeypatch):
    S, T, H, e, r = 2, 16, 6, 80, 20
    p = packed_rows(S, T, seed=4)
    n, R = p["n"], p["off"].shape[0]
    torch.manual_seed(5)
    qkv = torch.randn(n, H, 3, e, device="cuda").to(dtype)
    inv = 1.0 / (10000 ** (torch.arange(0, r, 2, device="cuda", dtype=torch.float32) / r))
    f = torch.outer(torch.arange(T, device="cuda", dtype=torch.float32), inv)
    emb = torch.cat([f, f], -1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    rows = torch.repeat_interleave(torch.arange(R, device="cuda"), p["length"])
    pad = rows * T + p["token"]
    outs = []
    for triton_on in (True, False):
        monkeypatch.setenv("FACTSWEEP_NO_TRITON", "0" if triton_on else "1")
        qp, kp, vp = (torch.full((R * T, H, e), float("nan"), device="cuda", dtype=dtype) for _ in range(3))
        kernels.rotary_scatter(qkv, cos, sin, p["token"], pad, qp, kp, vp, r)
        outs.append((qp[pad].float(), kp[pad].float(), vp[pad].float()))
    for a, b in zip(*outs):
        assert torch.isfinite(a).all()  # every packed position written
        assert (a - b).abs().max() <= (1e-6 if dtype == torch.float32 else 1e-2) * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,T,keep", [(2, 16, 1), (4, 13, 3)])
def test_prepare_kernels_equal_their_pytorch_paths(dtype, rows, T, keep, monkeypatch):
    # scan_rows (KEEP variant of the scan kernel: s and every kept state) and conv_rows, Triton vs PyTorch.
    d_in, N, k = 320, 16, 4
    n = rows * T
    torch.manual_seed(6)
    mk = lambda *s: torch.randn(*s, device="cuda").to(dtype)  # noqa: E731
    a = mk(n, 2 * d_in)[:, :d_in]
    w, b = mk(d_in, 1, k), mk(d_in)
    c = mk(n, d_in)
    dt = (mk(n, d_in).float() - 2).to(dtype)
    x_dbl = mk(n, 2 * N + 8)
    B, C = x_dbl[:, 8:8 + N], x_dbl[:, 8 + N:]
    A = -torch.exp(torch.rand(d_in, N, device="cuda") * 2)
    D = mk(d_in)
    outs = []
    for triton_on in (True, False):
        monkeypatch.setenv("FACTSWEEP_NO_TRITON", "0" if triton_on else "1")
        with torch.backends.cudnn.flags(allow_tf32=False):
            conv = kernels.conv_rows(a, w, b, T).float()
        s, H = kernels.scan_rows(c, dt, B, C, A, D, rows, T, keep)
        outs.append((conv, s.float(), H))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for got, want in zip(*outs):
        assert got.shape == want.shape and torch.isfinite(got).all()
        assert (got - want).abs().max() <= tol * max(1.0, want.abs().max().item())
