"""long-file: each Triton kernel sits beside the PyTorch code that is its CPU path and reference.

Kernels of the packed fast path: Mamba's causal conv and selective scan over packed rows, its
RMSNorm in half precision, and NeoX's rotary embedding fused with the padding of q, k and v.

The fast path (``engine/trace.py``) lays a prompt's cells out as *packed rows*: row r is one
(cell, corrupted sample) and holds only the tokens it recomputes, ``t_r .. T-1``, at positions
``off_r .. off_r + len_r - 1`` of one ``(positions, width)`` matrix. Matrix products run on that
matrix directly (no padding, no wasted rows). The two steps of a Mamba block that look along the
tokens need each row's past, which lives in the corrupted run's cache:

* ``conv_packed``: the causal depthwise conv reads the k−1 inputs before each position; before the
  row's first position they come from the cached conv input ``a`` of the row's sample.
* ``scan_packed``: the selective scan starts from the cached SSM state at ``t_r − 1``; it also
  applies the D skip, the ``ssm`` and ``gate`` restores at the row's first token, and the gating
  ``s ⊙ SiLU(z)``, so the block's whole middle is one kernel.

Each has a Triton kernel (CUDA, one program per (row, channel block): ≤ T sequential steps in
registers, no host synchronisation) and a PyTorch path (CPU, or no Triton) that runs the model's
own maths (``F.conv1d``; ``mamba.selective_scan``'s update, step k of every row at once). Rounding
follows the reference: values the model holds in its run dtype (conv output, Δ after softplus, s, g,
s ⊙ g) are rounded to it; the state and the scan stay float32. ``bench/kernels.py`` times them.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F


def use_kernel_cache() -> None:
    """``FACTSWEEP_KERNEL_CACHE=<folder>``: Triton keeps its compiled kernels there (it sets
    ``TRITON_CACHE_DIR`` unless that is set already), so a restarted worker loads them instead of
    compiling again. Must run before Triton is imported (here, and first thing in ``engine.worker``)."""
    folder = os.environ.get("FACTSWEEP_KERNEL_CACHE", "")
    if folder and not os.environ.get("TRITON_CACHE_DIR"):
        os.environ["TRITON_CACHE_DIR"] = os.path.abspath(folder)


use_kernel_cache()

try:  # Triton ships with PyTorch 2.x CUDA wheels; Debian's CPU PyTorch 1.13 has none.
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the install
    triton = None


def host_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without waiting for the work already queued there: on CUDA a copy
    from pageable memory blocks the host until the stream drains, so a prepare begun while a grid runs
    (the worker's lookahead) would wait for that grid before launching anything; from pinned memory
    the copy is queued like a kernel (the pinned block is kept until the copy is done)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


#: Kernels ``FACTSWEEP_NO_TRITON`` can turn off by name.
NAMED_KERNELS = {"ssd"}


def use_triton(t: torch.Tensor, d_state: int = 16, kernel: str = "") -> bool:
    """Triton kernels for CUDA tensors when Triton imports and the state size is a power of two.
    ``FACTSWEEP_NO_TRITON=1`` (any value but 0) turns them all off; a comma-separated list of names
    from ``NAMED_KERNELS`` turns those alone off (``ssd``: the Mamba-2 scan of ``engine/ssd_kernels.py``),
    e.g. to time one against its PyTorch path inside the whole fast path."""
    off = os.environ.get("FACTSWEEP_NO_TRITON", "")
    if off not in ("", "0"):
        names = set(off.split(","))
        if not names <= NAMED_KERNELS or kernel in names:
            return False
    return triton is not None and t.is_cuda and d_state & (d_state - 1) == 0


#: (channels a program, warps) of the scan kernel; bench/kernels.py times the alternatives.
SCAN_CONFIG = (256, 4)


# ----------------------------------------------------------------------------- RMSNorm
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight · (x / rms(x)), computed in float32 and rounded to the weight's dtype before the product
    (HF ``MambaRMSNorm``). For half-precision weights on CUDA one Triton pass instead of six kernels
    (7% of the bf16 mamba-2.8b grid: 0.261 s vs 0.282 s): its fp32 statistic can differ from
    PyTorch's by an ulp, far under the bf16 rounding of its output. For float32 weights the PyTorch
    ops: there that ulp, repeated in every layer, moved the golden Mamba's p by 1.4e-5 to 2.8e-5 on
    CUDA, over the golden check's 1e-5."""
    d = x.shape[-1]
    if use_triton(x) and x.is_contiguous() and weight.dtype in (torch.bfloat16, torch.float16):
        x2 = x.view(-1, d)
        out = torch.empty(x2.shape, device=x.device, dtype=weight.dtype)
        _rms_norm_kernel[(x2.shape[0],)](x2, x2.stride(0), weight, out, out.stride(0), d, eps,
                                         BLOCK=triton.next_power_of_2(d), num_warps=8)
        return out.view(*x.shape[:-1], d)
    x32 = x.float()
    y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(weight.dtype)


# ----------------------------------------------------------------------------- NeoX: rotary + padding
def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] → [−x2, x1] over the last dim: the rotation of rotary embeddings (``gpt_neox`` and
    the PyTorch path below use it; ``_rotary_scatter_kernel`` does the same in registers)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rotary_scatter(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos_token: torch.Tensor,
                   pad_pos: torch.Tensor, qp: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, r: int) -> None:
    """Rotate the first r dims of q and k of packed ``qkv`` (n, H, 3, e) by each position's token and
    write q, k, v into rows padded to T tokens: ``qp``/``kp``/``vp`` (R·T, H, e) at ``pad_pos``.
    cos/sin: (T, r) tables in the run dtype. Rounds as ``Attention.rotary`` does in the run dtype."""
    n, H, _, e = qkv.shape
    if use_triton(qkv) and qkv.is_contiguous() and all(t.is_contiguous() for t in (qp, kp, vp, cos, sin)):
        grid = (n, triton.cdiv(H, 4))
        _rotary_scatter_kernel[grid](qkv, cos, sin, pos_token, pad_pos, qp, kp, vp, H, e, r,
                                     BLOCK_H=4, BLOCK_E=triton.next_power_of_2(e), num_warps=4)
        return
    c, s_ = cos[pos_token[:n]][:, None, None, :], sin[pos_token[:n]][:, None, None, :]  # (n, 1, 1, r)
    qk = qkv[:, :, :2]
    rot = qk[..., :r]
    qk = torch.cat([rot * c + rotate_half(rot) * s_, qk[..., r:]], dim=-1)
    pad = pad_pos[:n]
    qp.index_copy_(0, pad, qk[:, :, 0])
    kp.index_copy_(0, pad, qk[:, :, 1].to(kp.dtype))
    vp.index_copy_(0, pad, qkv[:, :, 2].to(vp.dtype))


# ----------------------------------------------------------------------------- causal conv
def conv_packed(a: torch.Tensor, cache_a: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                pos_first: torch.Tensor, pos_cache: torch.Tensor, pos_token: torch.Tensor) -> torch.Tensor:
    """SiLU(causal depthwise conv1d) of packed ``a`` (n, d_in) (a row-strided view is fine).

    cache_a: (S, T, d_in) the corrupted run's conv input; weight (d_in, 1, k); per position p < n:
    ``pos_first`` its row's first position, ``pos_cache`` = sample·T + token, ``pos_token``.
    Returns c (n, d_in) in a's dtype."""
    if use_triton(a):
        return _conv_triton(a, cache_a, weight, bias, pos_first, pos_cache, pos_token)
    return _conv_torch(a, cache_a, weight, bias, pos_first, pos_cache, pos_token)


def rows_index(rows: int, T: int, device) -> dict:
    """Index tensors of ``rows`` whole rows of T tokens packed one after another (``conv_rows`` and
    ``scan_rows`` take them, so that a prepare builds them once, not once per layer)."""
    p = torch.arange(rows * T, device=device)
    token = p % T
    return {"token": token, "first": p - token, "off": torch.arange(0, rows * T, T, device=device),
            "length": torch.full((rows,), T, device=device, dtype=torch.int64),
            "h0": torch.full((rows,), -1, device=device, dtype=torch.int64)}


def conv_rows(a: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], T: int,
              index: Optional[dict] = None) -> torch.Tensor:
    """SiLU(causal depthwise conv1d) of whole rows of T tokens from token 0 (prepare), packed
    ``a`` (rows·T, d_in) (a row-strided view is fine). Triton: :func:`conv_packed`'s kernel with no
    cached past; elsewhere the model's own call on rows zero-padded by k−1. Returns (rows·T, d_in)."""
    n, d_in = a.shape
    if use_triton(a):
        ix = index or rows_index(n // T, T, a.device)
        return _conv_triton(a, a, weight, bias, ix["first"], ix["first"], ix["token"])
    k = weight.shape[-1]
    rows = a.reshape(n // T, T, d_in)
    window = torch.cat([rows.new_zeros(n // T, k - 1, d_in), rows], dim=1)  # (rows, k-1+T, d_in)
    c = F.conv1d(window.transpose(1, 2), weight, bias, groups=d_in)  # (rows, d_in, T)
    return F.silu(c.transpose(1, 2)).reshape(n, d_in)


def _conv_triton(a, cache_a, weight, bias, pos_first, pos_cache, pos_token):
    n, d_in = a.shape
    k = weight.shape[-1]
    out = torch.empty(n, d_in, device=a.device, dtype=a.dtype)
    cache = cache_a.reshape(-1, d_in)
    if cache.stride(1) != 1:
        cache = cache.contiguous()
    grid = (triton.cdiv(n, 16), triton.cdiv(d_in, 256))
    _conv_kernel[grid](
        a, a.stride(0), cache, cache.stride(0), weight.reshape(d_in, k), bias if bias is not None else weight,
        out, out.stride(0), pos_first, pos_cache, pos_token, n, d_in,
        K=k, HAS_BIAS=bias is not None, BLOCK_P=16, BLOCK_D=256, num_warps=4,
    )
    return out


def _conv_torch(a, cache_a, weight, bias, pos_first, pos_cache, pos_token):
    """The PyTorch path: gather each position's window from [zero row; cache rows; packed rows]."""
    n, d_in = a.shape
    k = weight.shape[-1]
    cache = cache_a.reshape(-1, d_in).to(a.dtype)
    src = torch.cat([a.new_zeros(1, d_in), cache, a], dim=0)
    back = torch.arange(k - 1, -1, -1, device=a.device)  # how far back each tap looks: k-1 .. 0
    p = torch.arange(n, device=a.device)[:, None] - back  # (n, k) packed index of each tap
    in_row = p >= pos_first[:n, None]
    from_cache = 1 + pos_cache[:n, None] - back
    idx = torch.where(in_row, 1 + cache.shape[0] + p, torch.where(pos_token[:n, None] >= back, from_cache, torch.zeros_like(p)))
    window = src[idx]  # (n, k, d_in)
    c = F.conv1d(window.transpose(1, 2), weight, bias, groups=d_in)  # (n, d_in, 1): the model's own call
    return F.silu(c.view(n, d_in))


# ----------------------------------------------------------------------------- selective scan
def scan_packed(c, dt, B, C, z, A, D, H, h0_idx, off, length, ssm_src=None, clean_ssm=None,
                gate_src=None, clean_gate=None):
    """s ⊙ g for packed rows, where s is the selective scan of c plus the D skip, g = SiLU(z).

    c, z: (n, d_in) run dtype; dt: (n, d_in) dt_proj output *before* softplus; B, C: (n, N) views;
    A: (d_in, N) float32 (= −exp(A_log)); D: (d_in,); H: (S·T, d_in, N) float32 cached states;
    per row r < R: ``h0_idx`` (index into H of the state before its first token, −1: zeros), ``off``,
    ``length``. Restores at a row's first token: ``ssm_src`` / ``gate_src`` (R,) index a row of
    ``clean_ssm`` / ``clean_gate`` (−1: none). Returns (n, d_in) in c's dtype."""
    args = (c, dt, B, C, z, A, D, H, h0_idx, off, length, ssm_src, clean_ssm, gate_src, clean_gate)
    return _scan_triton(*args) if use_triton(c, A.shape[1]) else _scan_torch(*args)


def _scan_triton(c, dt, B, C, z, A, D, H, h0_idx, off, length, ssm_src, clean_ssm, gate_src, clean_gate):
    n, d_in = c.shape
    R = off.shape[0]
    out = torch.empty(n, d_in, device=c.device, dtype=c.dtype)
    NS = A.shape[1]
    block, warps = SCAN_CONFIG
    grid = (R, triton.cdiv(d_in, block))
    _scan_kernel[grid](
        c, c.stride(0), dt, dt.stride(0), B, B.stride(0), C, C.stride(0), z, z.stride(0),
        A, D, H, h0_idx, off, length,
        ssm_src if ssm_src is not None else off, clean_ssm if clean_ssm is not None else c,
        gate_src if gate_src is not None else off, clean_gate if clean_gate is not None else c,
        out, out.stride(0), d_in, H, 0,
        NS=NS, BLOCK_D=block, HAS_SSM=ssm_src is not None, HAS_GATE=gate_src is not None, KEEP=False, num_warps=warps,
    )
    return out


def _scan_torch(c, dt, B, C, z, A, D, H, h0_idx, off, length, ssm_src, clean_ssm, gate_src, clean_gate):
    n, d_in = c.shape
    # PyTorch path: the reference's per-step maths on the positions of step k of every row at once
    # (computed per step, so the (rows, d_in, N) temporaries stay small).
    delta = F.softplus(dt).float()
    cf, Bf, Cf = c.float(), B.float(), C.float()
    h = torch.where((h0_idx >= 0)[:, None, None], H[h0_idx.clamp(min=0)], H.new_zeros(()))  # (R, d_in, N)
    y = cf.new_empty(n, d_in)
    for k in range(int(length.max())):
        rows = (length > k).nonzero().squeeze(1)
        p = off[rows] + k
        dtk = delta[p].unsqueeze(-1)  # (r, d_in, 1)
        dBu = (dtk * Bf[p].unsqueeze(1)) * cf[p].unsqueeze(-1)  # (r, d_in, N)
        hk = torch.exp(dtk * A) * h[rows] + dBu
        h[rows] = hk
        y[p] = torch.matmul(hk, Cf[p].unsqueeze(-1)).squeeze(-1)
    s = (y + cf * D.float()).to(c.dtype)
    g = F.silu(z)
    first = off  # (R,) the first position of each row: where its restores go
    if ssm_src is not None:
        s = _restore_rows(s, first, ssm_src, clean_ssm)
    if gate_src is not None:
        g = _restore_rows(g, first, gate_src, clean_gate)
    return s * g


#: (channels a program, warps) of the scan in ``scan_rows`` (prepare: few rows, so narrower programs).
SCAN_ROWS_CONFIG = (64, 2)


def scan_rows(c, dt, B, C, A, D, rows: int, T: int, keep_rows: int, index: Optional[dict] = None):
    """The selective scan of ``rows`` whole rows of T tokens each from a zero state (a prompt's clean
    and corrupted runs in one pass), packed as (rows·T, ·) like :func:`scan_packed`'s inputs.

    Returns s (rows·T, d_in) in c's dtype (the scan plus the D skip, *not* gated: the ``ssm`` site)
    and the float32 state after every token of the first ``keep_rows`` rows, (keep_rows, T, d_in, N):
    what the fast path resumes from. Triton on CUDA; elsewhere the reference update, one step of
    every row at once."""
    n, d_in = c.shape
    NS = A.shape[1]
    H = torch.empty(keep_rows, T, d_in, NS, device=c.device, dtype=torch.float32)
    if use_triton(c, NS):
        out = torch.empty(n, d_in, device=c.device, dtype=c.dtype)
        ix = index or rows_index(rows, T, c.device)
        off, length, h0 = ix["off"], ix["length"], ix["h0"]
        block, warps = SCAN_ROWS_CONFIG
        grid = (rows, triton.cdiv(d_in, block))
        _scan_kernel[grid](
            c, c.stride(0), dt, dt.stride(0), B, B.stride(0), C, C.stride(0), c, c.stride(0),
            A, D, H, h0, off, length, off, c, off, c, out, out.stride(0), d_in, H, keep_rows * T,
            NS=NS, BLOCK_D=block, HAS_SSM=False, HAS_GATE=False, KEEP=True, num_warps=warps,
        )
        return out, H
    delta = F.softplus(dt).float().view(rows, T, d_in)
    cf = c.float().view(rows, T, d_in)
    Bf, Cf = B.float().reshape(rows, T, NS), C.float().reshape(rows, T, NS)
    h = cf.new_zeros(rows, d_in, NS)
    y = cf.new_empty(rows, T, d_in)
    for k in range(T):
        dtk = delta[:, k].unsqueeze(-1)
        h = torch.exp(dtk * A) * h + (dtk * Bf[:, k].unsqueeze(1)) * cf[:, k].unsqueeze(-1)
        y[:, k] = torch.matmul(h, Cf[:, k].unsqueeze(-1)).squeeze(-1)
        H[:, k] = h[:keep_rows]
    return (y + cf * D.float()).to(c.dtype).view(n, d_in), H


def _restore_rows(x: torch.Tensor, first: torch.Tensor, src: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """x with row r's first position set to clean[src[r]] where src[r] >= 0."""
    keep = src >= 0
    pos, rows = first[keep], src[keep]
    x = x.clone()
    x[pos] = clean[rows].to(x.dtype)
    return x


if triton is not None:

    @triton.jit
    def _conv_kernel(a_ptr, sa, cache_ptr, sc, w_ptr, b_ptr, out_ptr, so, first_ptr, cpos_ptr, tok_ptr, n, DI,
                     K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
        pp = (tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
        dd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        pm = pp < n
        dm = dd < DI
        first = tl.load(first_ptr + pp, mask=pm, other=0)
        cpos = tl.load(cpos_ptr + pp, mask=pm, other=0)
        tok = tl.load(tok_ptr + pp, mask=pm, other=0)
        acc = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
        if HAS_BIAS:
            acc += tl.load(b_ptr + dd, mask=dm, other=0.0).to(tl.float32)[None, :]
        for k in tl.static_range(K):
            back = K - 1 - k
            q = pp - back
            in_row = q >= first
            before = q < first  # the tap reads the row's past: the cached conv input
            w = tl.load(w_ptr + dd * K + k, mask=dm, other=0.0).to(tl.float32)
            va = tl.load(a_ptr + q[:, None] * sa + dd[None, :], mask=(pm & in_row)[:, None] & dm[None, :], other=0.0)
            vc = tl.load(cache_ptr + (cpos - back)[:, None] * sc + dd[None, :],
                         mask=(pm & before & (tok >= back))[:, None] & dm[None, :], other=0.0)
            acc += (va.to(tl.float32) + vc.to(tl.float32)) * w[None, :]
        x = acc.to(out_ptr.dtype.element_ty).to(tl.float32)  # conv1d's output in the run dtype
        y = x * tl.sigmoid(x)
        tl.store(out_ptr + pp[:, None] * so + dd[None, :], y.to(out_ptr.dtype.element_ty), mask=pm[:, None] & dm[None, :])

    @triton.jit
    def _scan_kernel(c_ptr, sc, dt_ptr, sdt, b_ptr, sb, cc_ptr, scc, z_ptr, sz, A_ptr, D_ptr, H_ptr, h0i_ptr, off_ptr,
                     len_ptr, ssrc_ptr, cssm_ptr, gsrc_ptr, cgate_ptr, out_ptr, so, DI, hout_ptr, n_keep,
                     NS: tl.constexpr, BLOCK_D: tl.constexpr, HAS_SSM: tl.constexpr, HAS_GATE: tl.constexpr,
                     KEEP: tl.constexpr):
        # KEEP (prepare, ``scan_rows``): the output is s itself (not gated) and the state after each
        # position p < n_keep is stored at hout[p] (positions of the kept rows are the cache's order).
        r = tl.program_id(0)
        dd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        dm = dd < DI
        nn = tl.arange(0, NS)
        dt_ty = out_ptr.dtype.element_ty
        # exp(ΔA) as exp2(Δ · A·log2 e): the special-function unit computes 2^x
        A2 = tl.load(A_ptr + dd[:, None] * NS + nn[None, :], mask=dm[:, None], other=0.0) * 1.4426950408889634
        Dv = tl.load(D_ptr + dd, mask=dm, other=0.0).to(tl.float32)
        hi = tl.load(h0i_ptr + r).to(tl.int64)
        h = tl.load(H_ptr + hi * DI * NS + dd[:, None] * NS + nn[None, :], mask=dm[:, None] & (hi >= 0), other=0.0)
        p = tl.load(off_ptr + r).to(tl.int64)
        ln = tl.load(len_ptr + r)
        if HAS_SSM:
            ssrc = tl.load(ssrc_ptr + r).to(tl.int64)
        if HAS_GATE:
            gsrc = tl.load(gsrc_ptr + r).to(tl.int64)
        # The loads of step k+1 are issued before step k's arithmetic (they do not depend on the state),
        # so each step waits on memory once per two steps' worth of work in flight.
        cv = tl.load(c_ptr + p * sc + dd, mask=dm, other=0.0)
        dt = tl.load(dt_ptr + p * sdt + dd, mask=dm, other=0.0)
        zv = tl.load(z_ptr + p * sz + dd, mask=dm, other=0.0)
        Bv = tl.load(b_ptr + p * sb + nn)
        Cv = tl.load(cc_ptr + p * scc + nn)
        for k in range(0, ln):
            more = k + 1 < ln
            q = p + 1
            cv_n = tl.load(c_ptr + q * sc + dd, mask=dm & more, other=0.0)
            dt_n = tl.load(dt_ptr + q * sdt + dd, mask=dm & more, other=0.0)
            zv_n = tl.load(z_ptr + q * sz + dd, mask=dm & more, other=0.0)
            Bv_n = tl.load(b_ptr + q * sb + nn, mask=(nn < NS) & more, other=0.0)
            Cv_n = tl.load(cc_ptr + q * scc + nn, mask=(nn < NS) & more, other=0.0)

            c32 = cv.to(tl.float32)
            d32 = dt.to(tl.float32)
            d32 = tl.where(d32 > 20.0, d32, tl.log(1.0 + tl.exp(d32)))  # softplus (PyTorch's threshold 20)
            d32 = d32.to(dt_ty).to(tl.float32)  # Δ in the run dtype, as the model holds it
            h = tl.exp2(d32[:, None] * A2) * h + (d32[:, None] * Bv.to(tl.float32)[None, :]) * c32[:, None]
            y = tl.sum(h * Cv.to(tl.float32)[None, :], axis=1) + c32 * Dv
            s = y.to(dt_ty).to(tl.float32)
            z32 = zv.to(tl.float32)
            g = (z32 * tl.sigmoid(z32)).to(dt_ty).to(tl.float32)
            if HAS_SSM:
                take = (k == 0) & (ssrc >= 0)
                s = tl.where(take, tl.load(cssm_ptr + ssrc * DI + dd, mask=dm & take, other=0.0).to(tl.float32), s)
            if HAS_GATE:
                take = (k == 0) & (gsrc >= 0)
                g = tl.where(take, tl.load(cgate_ptr + gsrc * DI + dd, mask=dm & take, other=0.0).to(tl.float32), g)
            if KEEP:
                tl.store(hout_ptr + p * (DI * NS) + dd[:, None] * NS + nn[None, :], h,
                         mask=dm[:, None] & (p < n_keep))
                res = s
            else:
                res = s * g
            tl.store(out_ptr + p * so + dd, res.to(dt_ty), mask=dm)
            cv, dt, zv, Bv, Cv, p = cv_n, dt_n, zv_n, Bv_n, Cv_n, q

    @triton.jit
    def _rms_norm_kernel(x_ptr, sx, w_ptr, out_ptr, so, D, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        m = cols < D
        x = tl.load(x_ptr + row * sx + cols, mask=m, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
        ty = out_ptr.dtype.element_ty
        y = (x * rstd).to(ty).to(tl.float32)  # normalised value in the weight's dtype, then times the weight
        w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * so + cols, (w * y).to(ty), mask=m)

    @triton.jit
    def _rotary_scatter_kernel(qkv_ptr, cos_ptr, sin_ptr, tok_ptr, pad_ptr, qp_ptr, kp_ptr, vp_ptr, H, E, R,
                               BLOCK_H: tl.constexpr, BLOCK_E: tl.constexpr):
        p = tl.program_id(0).to(tl.int64)
        hh = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        ee = tl.arange(0, BLOCK_E)
        m = (hh < H)[:, None] & (ee < E)[None, :]
        tok = tl.load(tok_ptr + p)
        dst = tl.load(pad_ptr + p)
        half = R // 2
        is_rot = ee < R
        partner = tl.where(ee < half, ee + half, ee - half)  # rotate_half: [-x2, x1]
        sign = tl.where(ee < half, -1.0, 1.0)
        cs = tl.load(cos_ptr + tok * R + ee, mask=is_rot, other=1.0).to(tl.float32)
        sn = tl.load(sin_ptr + tok * R + ee, mask=is_rot, other=0.0).to(tl.float32)
        ty = qp_ptr.dtype.element_ty
        src = qkv_ptr + p * H * 3 * E + hh[:, None] * 3 * E
        out = dst * H * E + hh[:, None] * E + ee[None, :]
        for which in tl.static_range(2):  # q, then k
            x = tl.load(src + which * E + ee[None, :], mask=m, other=0.0).to(tl.float32)
            xp = tl.load(src + which * E + partner[None, :], mask=m & is_rot[None, :], other=0.0).to(tl.float32)
            a = (x * cs[None, :]).to(ty).to(tl.float32)  # x·cos in the run dtype
            b = ((sign[None, :] * xp).to(ty).to(tl.float32) * sn[None, :]).to(ty).to(tl.float32)  # rotate_half(x)·sin
            y = tl.where(is_rot[None, :], a + b, x)
            if which == 0:
                tl.store(qp_ptr + out, y.to(ty), mask=m)
            else:
                tl.store(kp_ptr + out, y.to(kp_ptr.dtype.element_ty), mask=m)
        v = tl.load(src + 2 * E + ee[None, :], mask=m, other=0.0)
        tl.store(vp_ptr + out, v.to(vp_ptr.dtype.element_ty), mask=m)
