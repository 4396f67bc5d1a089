"""The Mamba-2 (SSD) scan of the packed fast path: a Triton kernel on CUDA, its PyTorch path beside it.

Packed rows as in ``engine/kernels.py`` (row r holds positions off_r .. off_r+len_r−1 of one
(positions, width) matrix and resumes from the corrupted run's cached state). Mamba-2's step differs
from Mamba-1's: the decay exp(Δ·A) is one scalar a head (not a (d_in, N) matrix), B and C are shared by
the heads of a group, and the state is (H, P, N) a row, N = 128 in the released checkpoints: 2.6 MB a
row in float32 at the 2.7b shape. The PyTorch path steps every row at once and writes that state
several times a step; the kernel keeps one (P-block, N) tile of it in registers for all of a row's
steps, so it reads the cached state once and writes only y.

:func:`scan_packed` is the dispatcher: Triton where ``kernels.use_triton`` allows (CUDA, power-of-two
N; ``FACTSWEEP_NO_TRITON=ssd`` turns this kernel alone off), else :func:`scan_packed_torch`, the
reference the kernel is tested against (``engine/tests/test_ssd_kernels.py``). Both return the scan's
y plus the D skip, rounded to the run dtype, i.e. the ``ssm`` site.
"""

from __future__ import annotations

import torch

from .kernels import triton, use_triton

if triton is not None:
    import triton.language as tl

#: (head channels a program, warps) of the kernel; ``bench/ssd_kernels.py`` times the alternatives.
SSD_CONFIG = (32, 4)


def scan_packed(cv, delta, A, D, H, h0_idx, off, length, steps: int, nheads: int, ngroups: int, d_state: int):
    """y + D·x of the SSD recurrence S_t = exp(Δ_t A_h) S_{t−1} + Δ_t x_t ⊗ B_t, y_t = S_t C_t, on packed rows.

    cv: (n, d_in + 2·g·N) the conv output [x, B, C] in the run dtype (a row-strided view is fine);
    delta: (n, H) float32 Δ (after softplus and the limit); A: (H,) float32 (= −exp(A_log)); D: (H,);
    H: (S·T, H, P, N) float32 cached states; per row r: ``h0_idx`` (its row of H before the first token,
    −1: zeros), ``off``, ``length``; ``steps`` ≥ the longest row (a host int; the PyTorch path's loop).
    Returns (n, d_in) in cv's dtype."""
    if use_triton(cv, d_state, kernel="ssd"):
        return scan_packed_triton(cv, delta, A, D, H, h0_idx, off, length, nheads, ngroups, d_state)
    return scan_packed_torch(cv, delta, A, D, H, h0_idx, off, length, steps, nheads, ngroups, d_state)


def split_xbc(cv, nheads: int, ngroups: int, d_state: int):
    """cv (n, d_in + 2·g·N) → x (n, H, P), B, C (n, H, N) in float32, each head reading its group's B and C."""
    n = cv.shape[0]
    d_in = cv.shape[1] - 2 * ngroups * d_state
    x, B, C = cv.split([d_in, ngroups * d_state, ngroups * d_state], dim=-1)
    per = nheads // ngroups
    Bh, Ch = (t.float().view(n, ngroups, d_state).repeat_interleave(per, dim=1) for t in (B, C))
    return x.float().view(n, nheads, d_in // nheads), Bh, Ch


def scan_packed_torch(cv, delta, A, D, H, h0_idx, off, length, steps: int, nheads: int, ngroups: int, d_state: int):
    """The PyTorch path (CPU, no Triton) and the kernel's reference: step k of every row at once,
    ``steps`` steps; a row past its end repeats its last position with its update masked off, so no
    step asks the device which rows are left (no host synchronisation on CUDA)."""
    x, B, C = split_xbc(cv, nheads, ngroups, d_state)  # (n, H, P), (n, H, N), (n, H, N)
    h = torch.where((h0_idx >= 0)[:, None, None, None], H[h0_idx.clamp(min=0)], H.new_zeros(()))  # (R, H, P, N)
    y = x.new_empty(x.shape)
    decay = torch.exp(delta * A)  # (n, H)
    last = length - 1  # (R,)
    for k in range(steps):
        live = (last >= k)[:, None, None, None]  # (R, 1, 1, 1)
        p = off + torch.minimum(last, torch.full_like(last, k))  # (R,) each row's position at step k (or its last)
        dBx = (delta[p].unsqueeze(-1) * x[p]).unsqueeze(-1) * B[p].unsqueeze(-2)  # (R, H, P, N)
        h = torch.where(live, decay[p][:, :, None, None] * h + dBx, h)
        y[p] = torch.matmul(h, C[p].unsqueeze(-1)).squeeze(-1)  # a finished row writes its last y again
    y = y + x * D.float()[:, None]  # D skip
    return y.reshape(cv.shape[0], -1).to(cv.dtype)


def scan_packed_triton(cv, delta, A, D, H, h0_idx, off, length, nheads: int, ngroups: int, d_state: int, out=None):
    """One program a (row, head, block of the head's P channels): the state tile stays in registers over
    the row's steps (a device-side loop over its length: no host synchronisation). ``out``: an (n, d_in)
    tensor of cv's dtype to write into (the tests poison one), else a new one."""
    n, e = cv.shape
    d_in = e - 2 * ngroups * d_state
    P = d_in // nheads
    R = off.shape[0]
    out = torch.empty(n, d_in, device=cv.device, dtype=cv.dtype) if out is None else out
    if cv.stride(1) != 1:
        cv = cv.contiguous()
    delta = delta.contiguous()
    H = H if H.is_contiguous() else H.contiguous()
    block_p, warps = SSD_CONFIG
    block_p = min(block_p, triton.next_power_of_2(P))
    grid = (R, nheads, triton.cdiv(P, block_p))
    _ssd_scan_kernel[grid](
        cv, cv.stride(0), delta, delta.stride(0), A, D, H, h0_idx, off, length, out, out.stride(0),
        d_in, P, nheads, nheads // ngroups, ngroups,
        NS=d_state, BLOCK_P=block_p, num_warps=warps,
    )
    return out


if triton is not None:

    @triton.jit
    def _ssd_scan_kernel(cv_ptr, scv, dl_ptr, sdl, A_ptr, D_ptr, H_ptr, h0i_ptr, off_ptr, len_ptr, out_ptr, so,
                         DI, P, NH, PER, G, NS: tl.constexpr, BLOCK_P: tl.constexpr):
        r = tl.program_id(0)
        hd = tl.program_id(1)
        pp = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
        pm = pp < P
        nn = tl.arange(0, NS)
        ch = hd * P + pp  # the head's channels of x (and of y)
        grp = hd // PER
        b_col = DI + grp * NS + nn  # the group's B, then its C, in [x, B, C]
        c_col = DI + G * NS + grp * NS + nn
        a = tl.load(A_ptr + hd).to(tl.float32)
        dv = tl.load(D_ptr + hd).to(tl.float32)
        hi = tl.load(h0i_ptr + r).to(tl.int64)
        h = tl.load(H_ptr + (hi * NH + hd) * (P * NS) + pp[:, None] * NS + nn[None, :],
                    mask=pm[:, None] & (hi >= 0), other=0.0)  # (BLOCK_P, NS)
        p = tl.load(off_ptr + r).to(tl.int64)
        ln = tl.load(len_ptr + r)
        ty = out_ptr.dtype.element_ty
        # Step k+1's loads are issued before step k's arithmetic (they do not depend on the state).
        xv = tl.load(cv_ptr + p * scv + ch, mask=pm, other=0.0)
        bv = tl.load(cv_ptr + p * scv + b_col)
        cc = tl.load(cv_ptr + p * scv + c_col)
        dl = tl.load(dl_ptr + p * sdl + hd)
        for k in range(0, ln):
            more = k + 1 < ln
            q = p + 1
            xv_n = tl.load(cv_ptr + q * scv + ch, mask=pm & more, other=0.0)
            bv_n = tl.load(cv_ptr + q * scv + b_col, mask=(nn < NS) & more, other=0.0)
            cc_n = tl.load(cv_ptr + q * scv + c_col, mask=(nn < NS) & more, other=0.0)
            dl_n = tl.load(dl_ptr + q * sdl + hd, mask=more, other=0.0)

            x32 = xv.to(tl.float32)
            decay = tl.exp(dl * a)
            h = decay * h + (dl * x32)[:, None] * bv.to(tl.float32)[None, :]
            y = tl.sum(h * cc.to(tl.float32)[None, :], axis=1) + x32 * dv
            tl.store(out_ptr + p * so + ch, y.to(ty), mask=pm)
            xv, bv, cc, dl, p = xv_n, bv_n, cc_n, dl_n, q
