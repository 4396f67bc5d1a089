"""long-file: one architecture, as mamba.py: config parsing, the model, its packed fast path and its table.

Mamba-2 (SSD) language model with named intervention sites, in plain PyTorch.

The maths is that of Hugging Face ``Mamba2ForCausalLM`` (its PyTorch path) and of state-spaces'
``mamba_ssm.modules.mamba2.Mamba2``; module and parameter names match the checkpoint keys, so loading
is a rename of the original state-spaces embedding name plus a strict load. Whole rows (the model's
forward: prepare, the slow path) run SSD's chunked form (``ssd_chunked``, ``chunk_size`` tokens a
chunk, no per-token loop); the packed fast path runs the per-token recurrence (``ssd_kernels.scan_packed``:
rows of different lengths; a Triton kernel on CUDA), whose plain form ``ssd_scan`` is the reference the
tests hold the chunked one to. The golden check (``shared/golden-mamba2``, transformers' chunked path in float64) holds both to
transformers.

References:
    Dao & Gu, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured
    State Space Duality" (2024), §7 (the Mamba-2 block) and §6 (SSD).
    Sen Sharma, Atkinson & Bau, "Locating and Editing Factual Associations in Mamba" (2024): the site
    names, carried over from Mamba-1 (see ``mamba.py``).

The block (one layer), with the sites (``SITES``) where they are made:
    u = RMSNorm(h)                                   h: residual stream entering the block
    [z, xBC, dt] = in_proj(u)                        no x_proj, no dt_proj: B, C and Δ come from in_proj
    in_ssm = [xBC, dt]                               (b, l, d_in + 2·g·n + H): all in_proj feeds the SSM
    gate   = SiLU(z)                                 (b, l, d_in)
    conv   = SiLU(causal depthwise conv1d(xBC))      (b, l, d_in + 2·g·n), then split into x, B, C
    Δ = clamp(softplus(dt + dt_bias), time_step_limit)          (b, l, H)
    per head h (group of h: h // (H/g)):  S_t = exp(Δ_t A_h) S_{t−1} + Δ_t x_t ⊗ B_t   (P, n)
                                          y_t = S_t C_t + D_h x_t                      (P,)
    ssm    = y                                       (b, l, d_in): scan output incl. the D skip, before the gate
    ssm.h<k> = y[..., k·P:(k+1)·P]                   (b, l, P): head k's part of ssm (per-head restores)
    mixer  = out_proj(GatedRMSNorm(y, gate))         (b, l, d): added to the residual stream
GatedRMSNorm(y, g) = w ⊙ (y ⊙ g) / rms(y ⊙ g), the rms taken over each group's d_in/g channels
(``norm_before_gate``: w ⊙ y / rms(y) ⊙ g). ``embed`` and ``residual`` are the model-level sites.

Glossary of dimension letters:
    b: batch rows (prompt copies: clean, noise samples, or cells being restored)
    l: tokens in this call (may be a suffix t..T-1 of the prompt when resuming from a cached state)
    d: hidden_size (d_model)
    d_in: intermediate_size = expand · d = H · P
    H: num_heads;  P: head_dim;  g: n_groups (B and C are shared by the H/g heads of a group)
    n: state_size
    e: conv_dim = d_in + 2·g·n (the conv's width: x, B and C)
    k: conv_kernel (4)
    V: vocab_size

Precision follows HF's ``residual_in_fp32``: the residual stream and the RMSNorms are float32 whatever
the run dtype; the scan runs in float32 too. On CUDA the fast path's scan is a Triton kernel
(``engine/ssd_kernels.py``) and its conv and block norm are Mamba-1's kernels; prepare runs this file's
chunked scan.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels, ssd_kernels
from .architecture import (MAX_HIDDEN, MAX_INTERMEDIATE, MAX_LAYERS, MAX_SMALL, MAX_VOCAB, Architecture,
                           EditTarget, describe_value, config_bool, config_float, config_int, config_object)
from .errors import CheckpointError
# The checkpoint naming and the block norm are Mamba-1's (same HF/state-spaces names, same RMSNorm).
from .mamba import RMSNorm, ignorable_key, rename_keys
from .sites import BLOCK, INPUT, OUTPUT, BlockHook, HookedLM, Site, call, site_table

#: The intervention sites of Mamba-2 (design vocabulary). Width names a Config attribute. The per-head
#: sites ``ssm.h<k>`` (``head_sites``) are added per model (their number is the config's); they are cell
#: sites of the engine (``LM.CELL_SITES``), on the wire a SITE_SSM cell with ``Cell.head`` (``wire.cells_from_pb``).
SITES = site_table(
    Site("embed", INPUT, "d_model", "token embeddings, the input of layer 0"),
    Site("residual", OUTPUT, "d_model", "h: residual stream after block l", dtype="residual"),
    Site("in_ssm", BLOCK, "ssm_in_dim", "[xBC, dt] = in_proj(norm(h)) but z: the conv's input and Δ before softplus"),
    Site("gate", BLOCK, "d_inner", "g = SiLU(z), z = in_proj(norm(h))[z rows]"),
    Site("conv", BLOCK, "conv_dim", "SiLU(causal depthwise conv1d(xBC)): x, B and C of the scan"),
    Site("ssm", BLOCK, "d_inner", "y: the scan output of every head incl. the D skip, before the gated norm"),
    Site("mixer", BLOCK, "d_model", "o = out_proj(GatedRMSNorm(y, g)), the block output added to the residual"),
)


HEAD_SITE = "ssm.h{}"


def head_sites(nheads: int) -> dict:
    """The per-head variants of ``ssm``: ``ssm.h<k>`` = head k's P channels of y (restoring it restores
    that head's output at the token; its state and the other heads are the corrupted run's)."""
    return site_table(*(Site(HEAD_SITE.format(k), BLOCK, "head_dim", f"y of head {k}: ssm[..., {k}·P:{k + 1}·P]")
                        for k in range(nheads)))


@dataclass
class Config:
    """Mamba-2 hyperparameters, read from an HF ``Mamba2Config`` or a state-spaces ``config.json``."""

    d_model: int
    n_layer: int
    vocab_size: int
    nheads: int
    head_dim: int = 64
    d_state: int = 128
    ngroups: int = 1
    d_conv: int = 4
    expand: int = 2
    chunk_size: int = 256
    eps: float = 1e-5
    dt_min: float = 0.0  # time_step_limit
    dt_max: float = math.inf
    residual_in_fp32: bool = True
    bias: bool = False
    conv_bias: bool = True
    norm_before_gate: bool = False
    tie_embeddings: bool = True
    max_positions: int = 0  # no position limit
    d_inner: int = 0

    def __post_init__(self):
        if not self.d_inner:
            self.d_inner = self.expand * self.d_model
        if self.d_inner > MAX_INTERMEDIATE:
            raise CheckpointError(f"config.json expand: the inner width {self.d_inner} exceeds {MAX_INTERMEDIATE}", field="expand")
        if self.nheads * self.head_dim != self.d_inner:
            raise CheckpointError(
                f"config.json num_heads × head_dim: expected {self.d_inner} (expand × hidden_size = {self.expand} × "
                f"{self.d_model}), got {self.nheads} × {self.head_dim} = {self.nheads * self.head_dim}", field="num_heads")
        if self.nheads % self.ngroups:
            raise CheckpointError(
                f"config.json n_groups: expected a divisor of num_heads ({self.nheads}), got {self.ngroups}", field="n_groups")

    @property
    def num_layers(self) -> int:
        return self.n_layer

    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def conv_dim(self) -> int:
        """Width of the conv (x, B and C): d_in + 2·g·n."""
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def ssm_in_dim(self) -> int:
        """Width of ``in_ssm``: what in_proj gives the SSM branch, xBC and dt (e + H)."""
        return self.conv_dim + self.nheads

    @classmethod
    def from_hf(cls, cfg: dict) -> "Config":
        """Parse ``config.json``: HF ``Mamba2Config`` names, or state-spaces' ``d_model``/``n_layer``/
        ``ssm_cfg`` (``layer: "Mamba2"``); every value checked (type, range), a bad one a CheckpointError."""
        if "d_model" in cfg and "hidden_size" not in cfg:  # original state-spaces config
            ssm = config_object(cfg, "ssm_cfg")
            if cfg.get("d_intermediate") not in (None, 0) or cfg.get("attn_layer_idx") not in (None, []):
                key = "attn_layer_idx" if cfg.get("attn_layer_idx") not in (None, []) else "d_intermediate"
                raise CheckpointError(f"config.json {key}: a hybrid Mamba-2 (attention layers or an MLP a block) is not "
                                      "implemented; expected 0 / [] (pure Mamba-2 blocks)", field=key)
            if not config_bool(cfg, "rms_norm", True):
                raise CheckpointError("config.json rms_norm: only true (RMSNorm blocks) is implemented", field="rms_norm")
            for key, ok in (("D_has_hdim", False), ("learnable_init_states", False), ("rmsnorm", True)):
                if config_bool(ssm, key, ok) != ok:
                    raise CheckpointError(f"config.json ssm_cfg.{key}: only {str(ok).lower()} is implemented", field=key)
            if ssm.get("d_ssm") is not None:
                raise CheckpointError("config.json ssm_cfg.d_ssm: only null (the SSM on all of d_inner) is implemented",
                                      field="d_ssm")
            d = _int(cfg, "d_model", high=MAX_HIDDEN)
            expand, head_dim = _int(ssm, "expand", 2, high=MAX_SMALL), _int(ssm, "headdim", 64, high=MAX_SMALL)
            vocab = _int(cfg, "vocab_size", high=MAX_VOCAB)
            mult = _int(cfg, "pad_vocab_size_multiple", 8, high=MAX_SMALL)
            lo, hi = _limit(ssm, "dt_limit")
            return cls(
                d_model=d, n_layer=_int(cfg, "n_layer", high=MAX_LAYERS), vocab_size=vocab + (-vocab % mult),
                nheads=expand * d // head_dim if expand * d % head_dim == 0 else 0, head_dim=head_dim,
                d_state=_int(ssm, "d_state", 128, high=MAX_SMALL), ngroups=_int(ssm, "ngroups", 1, high=MAX_SMALL),
                d_conv=_int(ssm, "d_conv", 4, high=MAX_SMALL), expand=expand,
                chunk_size=_int(ssm, "chunk_size", 256, high=1 << 16), dt_min=lo, dt_max=hi,
                residual_in_fp32=config_bool(cfg, "residual_in_fp32", True), bias=config_bool(ssm, "bias", False),
                conv_bias=config_bool(ssm, "conv_bias", True), norm_before_gate=config_bool(ssm, "norm_before_gate", False),
                tie_embeddings=config_bool(cfg, "tie_embeddings", True),
            )
        act = cfg.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise CheckpointError(f"config.json hidden_act: expected 'silu' for Mamba-2, got {describe_value(act)}", field="hidden_act")
        if not config_bool(cfg, "rms_norm", True):
            raise CheckpointError("config.json rms_norm: only true (the gated RMSNorm) is implemented", field="rms_norm")
        d = _int(cfg, "hidden_size", high=MAX_HIDDEN)
        lo, hi = _limit(cfg, "time_step_limit")
        return cls(
            d_model=d, n_layer=_int(cfg, "num_hidden_layers", high=MAX_LAYERS),
            vocab_size=_int(cfg, "vocab_size", high=MAX_VOCAB), nheads=_int(cfg, "num_heads", high=MAX_HIDDEN),
            head_dim=_int(cfg, "head_dim", 64, high=MAX_HIDDEN), d_state=_int(cfg, "state_size", 128, high=MAX_SMALL),
            ngroups=_int(cfg, "n_groups", 1, high=MAX_SMALL), d_conv=_int(cfg, "conv_kernel", 4, high=MAX_SMALL),
            expand=_int(cfg, "expand", 2, high=MAX_SMALL), chunk_size=_int(cfg, "chunk_size", 256, high=1 << 16),
            eps=config_float(cfg, "layer_norm_epsilon", 1e-5, 0.0, 1.0, low_open=True), dt_min=lo, dt_max=hi,
            residual_in_fp32=config_bool(cfg, "residual_in_fp32", True), bias=config_bool(cfg, "use_bias", False),
            conv_bias=config_bool(cfg, "use_conv_bias", True), norm_before_gate=config_bool(cfg, "norm_before_gate", False),
            tie_embeddings=config_bool(cfg, "tie_word_embeddings", True),
        )


_int = functools.partial(config_int, model="Mamba-2")
_SPECIAL = {"Infinity": math.inf, "inf": math.inf, "-Infinity": -math.inf, "-inf": -math.inf}


def _limit(cfg: dict, key: str) -> tuple:
    """``time_step_limit`` / ``dt_limit``: two numbers ``[low, high]`` with 0 ≤ low ≤ high, where either may
    be written as transformers 5 writes non-finite floats, ``{"__float__": "Infinity"}``. Default (0, inf)."""
    value = cfg.get(key)
    if value is None:
        return 0.0, math.inf
    out = []
    if isinstance(value, (list, tuple)) and len(value) == 2:
        for v in value:
            if isinstance(v, dict) and set(v) == {"__float__"} and v["__float__"] in _SPECIAL:
                v = _SPECIAL[v["__float__"]]
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v):
                out.append(float(v))
    if len(out) != 2 or not 0.0 <= out[0] <= out[1]:
        raise CheckpointError(
            f"config.json {key}: expected [low, high] with 0 <= low <= high (numbers, or {{\"__float__\": \"Infinity\"}}), "
            f"got {describe_value(value)}", field=key)
    return out[0], out[1]


class GatedRMSNorm(nn.Module):
    """``norm`` of the mixer: RMSNorm of y ⊙ g over groups of d_in/g channels (HF ``MambaRMSNormGated``,
    state-spaces ``RMSNormGated`` with ``group_size = d_in / ngroups``), in float32."""

    def __init__(self, d: int, ngroups: int, eps: float, norm_before_gate: bool):
        super().__init__()
        self.eps, self.ngroups, self.norm_before_gate = eps, ngroups, norm_before_gate
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """y, g (..., d_in) → (..., d_in) in the weight's dtype. g is SiLU(z) (the ``gate`` site)."""
        x = y.float() if self.norm_before_gate else y.float() * g.float()  # (..., d_in)
        xg = x.view(*x.shape[:-1], self.ngroups, -1)  # (..., g, d_in/g)
        x = (xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + self.eps)).view(x.shape)
        if self.norm_before_gate:
            x = x * g.float()
        return self.weight * x.to(self.weight.dtype)


class Mamba2Mixer(nn.Module):
    """in_proj → (xBC: causal conv → SiLU → split x, B, C → SSD scan (+D skip)) → GatedRMSNorm(·, SiLU(z)) → out_proj."""

    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.in_proj = nn.Linear(c.d_model, c.d_inner + c.conv_dim + c.nheads, bias=c.bias)
        # Kept as a Conv1d for the checkpoint names; forward pads by hand to resume from a cached window.
        self.conv1d = nn.Conv1d(c.conv_dim, c.conv_dim, c.d_conv, groups=c.conv_dim, bias=c.conv_bias, padding=c.d_conv - 1)
        self.dt_bias = nn.Parameter(torch.zeros(c.nheads))
        self.A_log = nn.Parameter(torch.zeros(c.nheads))
        self.D = nn.Parameter(torch.ones(c.nheads))
        self.norm = GatedRMSNorm(c.d_inner, c.ngroups, c.eps, c.norm_before_gate)
        self.out_proj = nn.Linear(c.d_inner, c.d_model, bias=c.bias)

    def split_in(self, zxbcdt: torch.Tensor):
        """in_proj's output (..., d_in + e + H) → z (..., d_in), [xBC, dt] (..., e + H): the gate and ``in_ssm``."""
        return zxbcdt.split([self.c.d_inner, self.c.ssm_in_dim], dim=-1)

    def split_ssm_in(self, a: torch.Tensor):
        """``in_ssm`` (..., e + H) → xBC (..., e), the conv's input, and dt (..., H)."""
        return a.split([self.c.conv_dim, self.c.nheads], dim=-1)

    def delta(self, dt: torch.Tensor) -> torch.Tensor:
        """Δ = clamp(softplus(dt + dt_bias), time_step_limit) in float32, (..., H)."""
        return F.softplus(dt.float() + self.dt_bias.float()).clamp(self.c.dt_min, self.c.dt_max)

    def forward(self, u: torch.Tensor, hook: Optional[BlockHook] = None, state=None, keep: bool = False):
        """u: (b, l, d) normed block input. state: (conv_past (b, k-1, e), S (b, H, P, n)) of the token before
        u's first, or None at token 0. Returns o (b, l, d) and, if keep, (xBC (b, l, e), S (b, l, H, P, n)):
        every token's conv input and SSM state, from which any later call resumes."""
        b, l, _ = u.shape
        c = self.c
        z, a = self.split_in(self.in_proj(u))  # (b, l, d_in), (b, l, e + H)
        xBC, dt = self.split_ssm_in(call(hook, "in_ssm", a))  # (b, l, e), (b, l, H)
        g = call(hook, "gate", F.silu(z))  # (b, l, d_in)

        k = c.d_conv
        past = state[0] if state is not None else xBC.new_zeros(b, k - 1, c.conv_dim)
        window = torch.cat([past.to(xBC.dtype), xBC], dim=1)  # (b, k-1+l, e)
        cv = F.conv1d(window.transpose(1, 2), self.conv1d.weight, self.conv1d.bias, groups=c.conv_dim)  # (b, e, l)
        cv = call(hook, "conv", F.silu(cv.transpose(1, 2)))  # (b, l, e)

        h0 = state[1] if state is not None else None
        y, states = self.ssm(cv, dt, h0, keep)  # (b, l, d_in), (b, l, H, P, n) or None
        y = call(hook, "ssm", y)
        if hook is not None:  # the per-head sites, each a (b, l, P) slice of y
            P = c.head_dim
            y = torch.cat([hook(HEAD_SITE.format(h), y[..., h * P:(h + 1) * P]) for h in range(c.nheads)], dim=-1)
        o = call(hook, "mixer", self.out_proj(self.norm(y, g)))  # (b, l, d)
        return o, ((xBC, states) if keep else None)

    def ssm(self, cv: torch.Tensor, dt: torch.Tensor, h0: Optional[torch.Tensor], keep: bool):
        """Split the conv output into x, B, C; Δ from dt; then the scan. cv: (b, l, e), dt: (b, l, H)."""
        c = self.c
        b, l, _ = cv.shape
        x, B, C = cv.split([c.d_inner, c.ngroups * c.d_state, c.ngroups * c.d_state], dim=-1)
        xh = x.float().view(b, l, c.nheads, c.head_dim)  # (b, l, H, P)
        Bh, Ch = (self.by_head(t.float().view(b, l, c.ngroups, c.d_state)) for t in (B, C))  # (b, l, H, n)
        A = -torch.exp(self.A_log.float())  # (H,)
        y, states = ssd_chunked(xh, self.delta(dt), A, Bh, Ch, h0, keep, c.chunk_size)  # (b, l, H, P)
        y = y + xh * self.D.float()[:, None]  # D skip
        return y.reshape(b, l, c.d_inner).to(cv.dtype), states

    def by_head(self, t: torch.Tensor) -> torch.Tensor:
        """(..., g, n) → (..., H, n): each head reads the B or C of its group (heads h·g/H share one)."""
        return t.repeat_interleave(self.c.nheads // self.c.ngroups, dim=-2)

    @staticmethod
    def resume_state(kept, t: int, rows: torch.Tensor, d_conv: int):
        """State entering token t for the given rows of kept per-token (xBC (S, T, e), S (S, T, H, P, n)):
        (conv_past (b, k-1, e), S (b, H, P, n)), zeros before the first token."""
        xbc, H = kept
        past = xbc[rows, max(0, t - d_conv + 1):t]  # (b, <=k-1, e)
        if past.shape[1] < d_conv - 1:
            past = torch.cat([past.new_zeros(past.shape[0], d_conv - 1 - past.shape[1], past.shape[2]), past], 1)
        h = H[rows, t - 1] if t > 0 else H.new_zeros(rows.shape[0], *H.shape[2:])  # (b, H, P, n)
        return past, h


def ssd_scan(x, delta, A, B, C, h0=None, keep=False):
    """The SSD recurrence, one step a token for every head at once (float32):
    S_t = exp(Δ_t A) S_{t−1} + Δ_t x_t ⊗ B_t;  y_t = S_t C_t.

    x: (b, l, H, P); delta: (b, l, H); A: (H,); B, C: (b, l, H, n); h0: (b, H, P, n) or None (zeros).
    Returns y (b, l, H, P) and, if keep, every S_t (b, l, H, P, n)."""
    b, l, H, P = x.shape
    decay = torch.exp(delta * A)  # (b, l, H)
    dBx = (delta.unsqueeze(-1) * x).unsqueeze(-1) * B.unsqueeze(-2)  # (b, l, H, P, n)
    h = h0.float() if h0 is not None else x.new_zeros(b, H, P, B.shape[-1])  # (b, H, P, n)
    ys, hs = [], []
    for decay_i, dBx_i, C_i in zip(decay.unbind(1), dBx.unbind(1), C.unbind(1)):  # unbind: see mamba.selective_scan
        h = decay_i[:, :, None, None] * h + dBx_i  # (b, H, P, n)
        ys.append(torch.matmul(h, C_i.unsqueeze(-1)).squeeze(-1))  # (b, H, P)
        if keep:
            hs.append(h)
    return torch.stack(ys, dim=1), (torch.stack(hs, dim=1) if keep else None)


def ssd_chunked(x, delta, A, B, C, h0=None, keep=False, chunk: int = 64):
    """SSD's chunked form of :func:`ssd_scan` (the same numbers up to float32 rounding): within a chunk
    of Q tokens the "attention" form y_t = Σ_{s≤t} (C_t·B_s) exp(Σ_{s<r≤t} Δ_r A) Δ_s x_s plus the state
    entering the chunk decayed to t; between chunks the recurrence on their end states. No per-token loop: what a GPU wants for whole prompts (the model's forward,
    hence prepare and the slow path); the packed fast path keeps the per-step scan (rows of
    different lengths). Shapes as :func:`ssd_scan`."""
    b, l, H, P = x.shape
    h = h0.float() if h0 is not None else x.new_zeros(b, H, P, B.shape[-1])  # (b, H, P, n)
    ys, hs = [], []
    for c0 in range(0, l, chunk):
        sl = slice(c0, min(l, c0 + chunk))
        u = delta[:, sl].unsqueeze(-1) * x[:, sl]  # (b, Q, H, P): Δ_s x_s
        a = delta[:, sl] * A  # (b, Q, H): log-decay of each step
        cum = torch.cumsum(a, dim=1)  # (b, Q, H)
        Q = cum.shape[1]
        # seg[t, s] = Σ_{s<r≤t} a_r summed as such (SSD's segsum), not as cum_t − cum_s: no cancellation
        strict = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril(-1)[None, :, :, None]  # r > s
        seg = torch.cumsum(a.unsqueeze(2).expand(-1, -1, Q, -1).masked_fill(~strict, 0.0), dim=1)  # (b, Q(t), Q(s), H)
        causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()[None, :, :, None]
        decay = torch.exp(seg.masked_fill(~causal, float("-inf")))  # (b, Q, Q, H), 0 above the diagonal
        into = torch.exp(cum)  # (b, Q, H): decay of the entering state to t
        if keep:  # every token's state, then y from it
            V = u.unsqueeze(-1) * B[:, sl].unsqueeze(-2)  # (b, Q, H, P, n)
            St = torch.einsum("btsh,bshk->bthk", decay, V.flatten(3)).view(V.shape)  # (b, Q, H, P, n)
            St = St + into[..., None, None] * h.unsqueeze(1)
            ys.append(torch.einsum("bthpn,bthn->bthp", St, C[:, sl]))
            hs.append(St)
            h = St[:, -1]
        else:
            scores = torch.einsum("bthn,bshn->btsh", C[:, sl], B[:, sl]) * decay  # (b, Q, Q, H)
            y = torch.einsum("btsh,bshp->bthp", scores, u)  # (b, Q, H, P)
            ys.append(y + into[..., None] * torch.einsum("bhpn,bthn->bthp", h, C[:, sl]))
            last = decay[:, -1]  # (b, Q, H): decay from s to the chunk's end
            h = into[:, -1, :, None, None] * h + torch.einsum("bsh,bshp,bshn->bhpn", last, u, B[:, sl])
    return torch.cat(ys, dim=1), (torch.cat(hs, dim=1) if keep else None)


class Mamba2Block(nn.Module):
    """h ← h + mixer(RMSNorm(h)), the residual kept in float32 (HF ``residual_in_fp32``)."""

    #: The state entering a token (conv window, SSM state) has a fixed size and no position in it: a row
    #: can resume at any of its tokens (ROME's v* resumes each prompt at its subject's last token).
    fixed_state = True

    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.norm = RMSNorm(c.d_model, c.eps)
        self.mixer = Mamba2Mixer(c)

    def forward(self, x: torch.Tensor, hook: Optional[BlockHook] = None, state=None, pos0: int = 0, keep: bool = False):
        """x: (b, l, d) residual stream entering the block (tokens pos0..pos0+l-1). Returns (b, l, d), kept."""
        residual = x.float() if self.c.residual_in_fp32 else x
        o, kept = self.mixer(self.norm(x), hook, state, keep)  # (b, l, d)
        return residual + o.to(residual.dtype), kept

    def resume_state(self, kept, t: int, rows: torch.Tensor):
        """The state entering token t of the given rows, from this layer's kept per-token states."""
        return Mamba2Mixer.resume_state(kept, t, rows, self.c.d_conv)

    def forward_packed(self, x: torch.Tensor, j: int, pk) -> torch.Tensor:
        """The block on packed rows (``trace.Pack``): x (n, d) is the residual entering block j at the
        started positions, updated in place. The past of each row (conv window, SSM state of every head)
        comes from the corrupted run's cache of layer j; restores come from ``pk`` at the row's first
        position. ``ssm`` (y) feeds only the norm of its own position, so it is restored after the scan."""
        m, c = self.mixer, self.c
        n, R = x.shape[0], pk.rows_at[j]
        cache_xbc, Hc = pk.runs.kept[j]
        z, a = m.split_in(m.in_proj(self.norm(x)))  # (n, d_in), (n, e + H)
        xBC, dt = m.split_ssm_in(pk.patch("in_ssm", j, a.contiguous()))  # (n, e), (n, H)
        cv = kernels.conv_packed(xBC, cache_xbc, m.conv1d.weight, m.conv1d.bias, pk.pos_first, pk.pos_cache, pk.pos_token)
        cv = pk.patch("conv", j, cv)  # (n, e)
        A = -torch.exp(m.A_log.float())  # (H,)
        # The scan plus the D skip (Triton on CUDA: engine/ssd_kernels.py): y (n, d_in) in the run dtype.
        y = ssd_kernels.scan_packed(cv, m.delta(dt), A, m.D, Hc.reshape(-1, *Hc.shape[2:]), pk.h0_idx[:R],
                                    pk.row_off[:R], pk.row_len[:R], pk.runs.num_tokens, c.nheads, c.ngroups, c.d_state)
        y = pk.patch("ssm", j, y)
        for k in range(c.nheads):  # per-head restores: head k's channels of the clean ssm
            p = pk.patches(HEAD_SITE.format(k), j)
            if p is not None:
                cols = slice(k * c.head_dim, (k + 1) * c.head_dim)
                y[p[1], cols] = pk.clean_rows("ssm")[p[2], cols].to(y.dtype)
        g = pk.patch("gate", j, F.silu(z).contiguous())  # (n, d_in)
        o = pk.patch("mixer", j, m.out_proj(m.norm(y, g)))  # (n, d)
        return x.add_(o)  # float32 residual += o, promoted in the add

    def forward_prepare(self, x: torch.Tensor, j: int, pp):
        """Block j on a prompt's clean and corrupted runs (``prepare.Prep``): x (rows·T, d), the corrupted
        rows first, the clean row last. The block's own forward on each (its chunked PyTorch scan on
        every device); the clean row's site values go to ``pp``. Returns the block's output
        (rows·T, d) and the corrupted rows' kept states (xBC (S, T, e), S (S, T, H, P, n))."""
        S, T = pp.samples, pp.num_tokens
        x3 = x.view(pp.rows, T, -1)
        y, kept = self(x3[:S], None, keep=True)
        record = pp.hook(j)  # the clean row's sites; a head's value is a slice of ssm's, not cached twice
        y_clean, _ = self(x3[S:], lambda site, v: v if site.startswith("ssm.h") else record(site, v))
        return torch.cat([y, y_clean]).reshape(x.shape), kept


class Mamba2Backbone(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.embeddings = nn.Embedding(c.vocab_size, c.d_model)
        self.layers = nn.ModuleList([Mamba2Block(c) for _ in range(c.n_layer)])
        self.norm_f = RMSNorm(c.d_model, c.eps)


class LM(HookedLM):
    """``Mamba2ForCausalLM``: embeddings → n_layer blocks → RMSNorm → (tied) unembedding."""

    SITES = SITES

    def __init__(self, c: Config):
        super().__init__()
        self.config = c
        self.CELL_SITES = {**SITES, **head_sites(c.nheads)}  # what a cell may restore (``trace.plan_cells``)
        self.backbone = Mamba2Backbone(c)
        self.lm_head = None if c.tie_embeddings else nn.Linear(c.d_model, c.vocab_size, bias=False)

    @property
    def layers(self) -> nn.ModuleList:
        return self.backbone.layers

    def residual_dtype(self) -> torch.dtype:
        """dtype of the residual stream (the block inputs and outputs)."""
        return torch.float32 if self.config.residual_in_fp32 else self.backbone.embeddings.weight.dtype

    def packed_bytes_per_position(self, dtype: torch.dtype, fused: bool, num_tokens: int) -> int:
        """Device bytes one packed position takes in the fast path (to size micro-batches): the residual
        row and one block's temporaries; without the Triton scan (``fused`` false) also the PyTorch
        scan's float32 (H, P, n) update and state."""
        c = self.config
        b = torch.finfo(dtype).bits // 8
        per = residual_bytes(c, b) * c.d_model + 4 * c.d_model * 2  # residual + RMSNorm temporaries
        per += b * (2 * c.d_inner + 2 * c.conv_dim + c.nheads + 2 * c.d_inner + c.d_model)  # in_proj, conv, y, g, o
        per += 4 * (3 * c.d_inner + c.nheads)  # y, gated norm (float32); Δ
        fused = fused and kernels.use_triton(self.backbone.embeddings.weight, c.d_state, kernel="ssd")
        if not fused:  # the PyTorch scan: x, B and C by head in float32; ΔxB, the step's state and its copy
            per += 4 * (c.d_inner + 2 * c.nheads * c.d_state) + 3 * 4 * c.d_inner * c.d_state
        per += c.d_conv * c.conv_dim * 4  # conv windows
        return per

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.backbone.embeddings(input_ids)  # (b, l, d)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Final RMSNorm and unembedding: (..., d) residual → (..., V) float32 logits."""
        w = self.backbone.embeddings.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(self.backbone.norm_f(h), w).float()  # (..., V)


def residual_bytes(c: Config, dtype_bytes: int) -> int:
    """Bytes per element of the residual stream (float32 under ``residual_in_fp32``)."""
    return 4 if c.residual_in_fp32 else dtype_bytes


def kept_state_bytes_per_token(c: Config, dtype_bytes: int) -> int:
    """Bytes per layer, token and row of the kept corrupted-run state (conv input xBC + fp32 SSM state of every head)."""
    return c.conv_dim * dtype_bytes + c.nheads * c.head_dim * c.d_state * 4


def _claims_config(cfg: dict) -> bool:
    """The original state-spaces Mamba-2 config (no model_type; ``ssm_cfg.layer == "Mamba2"``)."""
    ssm = cfg.get("ssm_cfg")
    return {"d_model", "n_layer"} <= set(cfg) and isinstance(ssm, dict) and ssm.get("layer") == "Mamba2"


#: What the rest of the engine knows about Mamba-2 (``engine.architecture``).
ARCHITECTURE = Architecture(
    model_type="mamba2", config=Config, lm=LM, rename_keys=rename_keys, ignorable_key=ignorable_key, sites=SITES,
    sever_paths=("none", "ssm", "gate", "mixer", "in_ssm", "conv"),
    default_sever_paths=("none", "ssm", "gate", "mixer"),
    edit_targets={
        "W_o": EditTarget("backbone.layers.{layer}.mixer.out_proj", lambda c: (0, c.d_model),
                          "GatedRMSNorm(y, g) (d_inner)", "o (d_model)"),
        "W_a": EditTarget("backbone.layers.{layer}.mixer.in_proj", lambda c: (c.d_inner, 2 * c.d_inner),
                          "norm(h) (d_model)", "x = in_proj(·)[d_inner:2·d_inner], the x rows of xBC (before the conv)"),
        "W_g": EditTarget("backbone.layers.{layer}.mixer.in_proj", lambda c: (0, c.d_inner),
                          "norm(h) (d_model)", "z = in_proj(·)[:d_inner] (before SiLU)"),
    },
    knockout="mean_ablation_in_ssm",
    residual_bytes=residual_bytes, kept_state_bytes_per_token=kept_state_bytes_per_token, claims_config=_claims_config,
    embedding_key="backbone.embeddings.weight",
)
