"""Mamba's selective scan as one Triton launch per direction: forward, and backward as a
``torch.autograd.Function`` (ROME's v*: gradients reach δ through every layer above the edit).

``mamba.selective_scan`` steps through the tokens in Python: under autograd that is ~5 launches a
token and layer forward and ~10 backward, so a v* step at the mamba-2.8b shape was host-bound (the
H200 busy 6.8 s of 16 s, 133k ``mul`` launches). Here one program per (row, block of channels) keeps
its (BLOCK_D, N) state in registers and walks the tokens:

forward   h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t B_t) u_t,  y_t = h_t · C_t   (the reference's order)
backward  in reverse, with g the gradient reaching h_t (from y_t and from h_{t+1}):
          g  ← g + dy_t ⊗ C_t
          dC_t = Σ_d dy_t h_t,   du_t = Δ_t Σ_n g B_t,   dB_t = Σ_d g Δ_t u_t,
          dΔ_t = Σ_n g (A exp(Δ_t A) h_{t-1} + B_t u_t),   g ← g ⊙ exp(Δ_t A)
          (dB, dC: each program writes its channels' partial sum, added up after the launch: no
          atomics, so the result does not depend on the programs' order.)

The forward stores every h_t (b, l, d_in, N) float32 for the backward (one layer at mamba-2.8b, 23
rows of 22 tokens: 165 MB). No gradient for A, D or h0 (v* freezes the weights): where one of them
needs a gradient the caller uses the PyTorch loop. ``enabled()`` says whether the caller asked for
this path (``fused()``): ROME's edit turns it on; elsewhere the model's forward stays the reference
loop, whose rounding the golden checks were made with.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

import torch

from . import kernels

triton = kernels.triton
if triton is not None:
    import triton.language as tl

_ON = [False]

#: Channels a program and warps; ``bench/rome_gpu.py --check`` compares against the PyTorch loop.
BLOCK_D, WARPS = 64, 4


@contextmanager
def fused(on: bool = True):
    """Within the block, ``mamba.selective_scan`` on CUDA tensors takes this module's kernels."""
    old = _ON[0]
    _ON[0] = on
    try:
        yield
    finally:
        _ON[0] = old


def enabled() -> bool:
    return _ON[0]


def applies(u: torch.Tensor, A: torch.Tensor, h0: Optional[torch.Tensor]) -> bool:
    """This path can run: asked for, Triton on u's device, and no gradient wanted for A or h0."""
    return (_ON[0] and kernels.use_triton(u, A.shape[1]) and not A.requires_grad
            and (h0 is None or not h0.requires_grad))


def selective_scan(u, delta, A, B, C, h0=None, keep=False):
    """As ``mamba.selective_scan`` (same arguments and results), through the Triton kernels."""
    u, delta, B, C = (t.float().contiguous() for t in (u, delta, B, C))
    A = A.float().contiguous()
    h0 = None if h0 is None else h0.float().contiguous()
    if torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, B, C)):
        y, H = _Scan.apply(u, delta, A, B, C, h0)
        return y, (H.detach() if keep else None)
    y, H = _forward(u, delta, A, B, C, h0, store=keep)
    return y, H


class _Scan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0):
        y, H = _forward(u, delta, A, B, C, h0, store=True)
        ctx.mark_non_differentiable(H)
        ctx.save_for_backward(u, delta, A, B, C, H, h0 if h0 is not None else H.new_zeros(0))
        ctx.has_h0 = h0 is not None
        return y, H

    @staticmethod
    def backward(ctx, dy, _dH):
        u, delta, A, B, C, H, h0 = ctx.saved_tensors
        du, ddelta, dB, dC = _backward(dy.contiguous(), u, delta, A, B, C, H, h0 if ctx.has_h0 else None)
        return du, ddelta, None, dB, dC, None


def _forward(u, delta, A, B, C, h0, store: bool):
    b, l, d_in = u.shape
    n = A.shape[1]
    y = torch.empty(b, l, d_in, device=u.device, dtype=torch.float32)
    H = torch.empty(b, l, d_in, n, device=u.device, dtype=torch.float32) if store else y
    grid = (b, triton.cdiv(d_in, BLOCK_D))
    _fwd_kernel[grid](u, delta, A, B, C, h0 if h0 is not None else y, y, H, l, d_in,
                      NS=n, BLOCK=BLOCK_D, HAS_H0=h0 is not None, STORE=store, num_warps=WARPS)
    return y, (H if store else None)


def _backward(dy, u, delta, A, B, C, H, h0):
    b, l, d_in = u.shape
    n = A.shape[1]
    blocks = triton.cdiv(d_in, BLOCK_D)
    du = torch.empty_like(u)
    ddelta = torch.empty_like(u)
    dB = torch.empty(b, l, blocks, n, device=u.device, dtype=torch.float32)  # per-program partial sums
    dC = torch.empty_like(dB)
    _bwd_kernel[(b, blocks)](dy, u, delta, A, B, C, H, h0 if h0 is not None else H, du, ddelta, dB, dC, l, d_in, blocks,
                             NS=n, BLOCK=BLOCK_D, HAS_H0=h0 is not None, num_warps=WARPS)
    return du, ddelta, dB.sum(2), dC.sum(2)


if triton is not None:

    @triton.jit
    def _fwd_kernel(u_ptr, d_ptr, A_ptr, B_ptr, C_ptr, h0_ptr, y_ptr, H_ptr, L, DI,
                    NS: tl.constexpr, BLOCK: tl.constexpr, HAS_H0: tl.constexpr, STORE: tl.constexpr):
        r = tl.program_id(0).to(tl.int64)
        dd = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        nn = tl.arange(0, NS)
        dm = dd < DI
        m2 = dm[:, None]
        A = tl.load(A_ptr + dd[:, None] * NS + nn[None, :], mask=m2, other=0.0)
        if HAS_H0:
            h = tl.load(h0_ptr + r * DI * NS + dd[:, None] * NS + nn[None, :], mask=m2, other=0.0)
        else:
            h = tl.zeros((BLOCK, NS), dtype=tl.float32)
        for t in range(0, L):
            row = r * L + t  # (row, token) in the (b, l, ·) layouts
            u = tl.load(u_ptr + row * DI + dd, mask=dm, other=0.0)
            dt = tl.load(d_ptr + row * DI + dd, mask=dm, other=0.0)
            Bv = tl.load(B_ptr + row * NS + nn)
            Cv = tl.load(C_ptr + row * NS + nn)
            h = tl.exp(dt[:, None] * A) * h + (dt[:, None] * Bv[None, :]) * u[:, None]
            tl.store(y_ptr + row * DI + dd, tl.sum(h * Cv[None, :], axis=1), mask=dm)
            if STORE:
                tl.store(H_ptr + row * DI * NS + dd[:, None] * NS + nn[None, :], h, mask=m2)

    @triton.jit
    def _bwd_kernel(dy_ptr, u_ptr, d_ptr, A_ptr, B_ptr, C_ptr, H_ptr, h0_ptr, du_ptr, dd_ptr, dB_ptr, dC_ptr, L, DI, NB,
                    NS: tl.constexpr, BLOCK: tl.constexpr, HAS_H0: tl.constexpr):
        r = tl.program_id(0).to(tl.int64)
        blk = tl.program_id(1)
        dd = blk * BLOCK + tl.arange(0, BLOCK)
        nn = tl.arange(0, NS)
        dm = dd < DI
        m2 = dm[:, None]
        A = tl.load(A_ptr + dd[:, None] * NS + nn[None, :], mask=m2, other=0.0)
        g = tl.zeros((BLOCK, NS), dtype=tl.float32)
        for i in range(0, L):
            t = L - 1 - i
            row = r * L + t
            u = tl.load(u_ptr + row * DI + dd, mask=dm, other=0.0)
            dt = tl.load(d_ptr + row * DI + dd, mask=dm, other=0.0)
            dy = tl.load(dy_ptr + row * DI + dd, mask=dm, other=0.0)
            Bv = tl.load(B_ptr + row * NS + nn)
            Cv = tl.load(C_ptr + row * NS + nn)
            h = tl.load(H_ptr + row * DI * NS + dd[:, None] * NS + nn[None, :], mask=m2, other=0.0)
            # h_{t-1}: the stored state, or at t = 0 the initial state (zeros without h0)
            hp = tl.load(H_ptr + (row - 1) * DI * NS + dd[:, None] * NS + nn[None, :], mask=m2 & (t > 0), other=0.0)
            if HAS_H0:
                hp += tl.load(h0_ptr + r * DI * NS + dd[:, None] * NS + nn[None, :], mask=m2 & (t == 0), other=0.0)
            g += dy[:, None] * Cv[None, :]
            part = (row * NB + blk) * NS + nn
            tl.store(dC_ptr + part, tl.sum(dy[:, None] * h, axis=0))
            dA = tl.exp(dt[:, None] * A)
            tl.store(dd_ptr + row * DI + dd, tl.sum(g * (A * dA * hp + Bv[None, :] * u[:, None]), axis=1), mask=dm)
            tl.store(du_ptr + row * DI + dd, dt * tl.sum(g * Bv[None, :], axis=1), mask=dm)
            tl.store(dB_ptr + part, tl.sum(g * (dt * u)[:, None], axis=0))
            g = g * dA
