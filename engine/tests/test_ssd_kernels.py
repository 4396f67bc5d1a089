"""The Mamba-2 scan kernel (``engine/ssd_kernels.py``) equals its PyTorch path, on packed rows of
different lengths resuming from cached states, in float32 and bfloat16, with one and several groups.

Runs on CUDA with Triton (on a GPU machine: ``python3 -m pytest engine/tests/test_ssd_kernels.py``), or
on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``, where Triton is installed); skipped
elsewhere. The whole fast path against the slow path on CUDA: ``FACTSWEEP_TEST_DEVICE=cuda:0 python3 -m
pytest engine/tests/test_mamba2_fast_path.py``."""

import os

import pytest
import torch
import torch.nn.functional as F

from engine import kernels, ssd_kernels

if torch.cuda.is_available() and kernels.triton is not None:
    DEVICE = "cuda"
elif kernels.triton is not None and os.environ.get("TRITON_INTERPRET") == "1":
    DEVICE = "cpu"
else:
    DEVICE = None
pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs Triton on CUDA, or TRITON_INTERPRET=1")


def packed_rows(S, T, rows, seed):
    """``rows`` rows (sample, first token) drawn at random, packed one after another: a row starting at
    token t holds T − t positions and resumes from cached state s·T + t − 1 (t = 0: zeros)."""
    g = torch.Generator().manual_seed(seed)
    sample = torch.randint(0, S, (rows,), generator=g)
    tok = torch.randint(0, T, (rows,), generator=g)
    tok[0], tok[-1] = 0, T - 1  # a row from a zero state and a one-position row
    length = T - tok
    off = torch.cumsum(length, 0) - length
    h0 = torch.where(tok > 0, sample * T + tok - 1, torch.full_like(tok, -1))
    return {k: v.to(DEVICE) for k, v in dict(off=off, length=length, h0=h0).items()}, int(length.sum())


# (heads, head_dim, state, groups, tokens): one group with rows of up to 37 tokens; several groups with a
# head_dim that is no power of two (masked channels); the mamba2-2.7b head (64 × 128) with two groups.
SHAPES = [(8, 16, 16, 1, 37), (6, 24, 32, 3, 9), (4, 64, 128, 2, 16)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("nheads,P,N,G,T", SHAPES)
def test_ssd_kernel_equals_pytorch_path(dtype, nheads, P, N, G, T):
    S = 2
    ix, n = packed_rows(S, T, rows=7, seed=nheads + N)
    torch.manual_seed(P + G)
    d_in = nheads * P
    e = d_in + 2 * G * N
    wide = torch.randn(n, e + 5, device=DEVICE).to(dtype)
    cv = wide[:, 5:]  # a row-strided view, as the conv output's split is in the model
    delta = F.softplus(torch.randn(n, nheads, device=DEVICE) - 1)
    A = -torch.exp(torch.rand(nheads, device=DEVICE) * 2)
    D = torch.randn(nheads, device=DEVICE).to(dtype)
    H = torch.randn(S * T, nheads, P, N, device=DEVICE)
    args = (cv, delta, A, D, H, ix["h0"], ix["off"], ix["length"])
    ref = ssd_kernels.scan_packed_torch(*args, T, nheads, G, N).float()
    out = torch.full((n, d_in), float("nan"), device=DEVICE, dtype=dtype)  # poisoned: every element must be written
    ssd_kernels.scan_packed_triton(*args, nheads, G, N, out=out)
    assert torch.isfinite(out).all()
    err = (out.float() - ref).norm() / ref.norm()
    assert err <= (1e-5 if dtype == torch.float32 else 1e-2), err
    # The cached state matters: the same rows from zero states differ (the kernel reads H).
    zero = ssd_kernels.scan_packed_triton(cv, delta, A, D, H, torch.full_like(ix["h0"], -1), ix["off"], ix["length"],
                                          nheads, G, N).float()
    assert (zero - out.float()).abs().max() > 1e-2


def test_named_kernel_switch(monkeypatch):
    # FACTSWEEP_NO_TRITON=ssd turns the Mamba-2 scan alone off; =1 (or an unknown name) turns all off.
    t = torch.zeros(1, device="cuda") if DEVICE == "cuda" else None
    if t is None:
        pytest.skip("use_triton is true only for CUDA tensors")
    monkeypatch.setenv("FACTSWEEP_NO_TRITON", "ssd")
    assert not kernels.use_triton(t, 128, kernel="ssd") and kernels.use_triton(t, 16)
    monkeypatch.setenv("FACTSWEEP_NO_TRITON", "1")
    assert not kernels.use_triton(t, 16)
    monkeypatch.setenv("FACTSWEEP_NO_TRITON", "scan")
    assert not kernels.use_triton(t, 16)
