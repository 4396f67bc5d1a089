"""long-file: one architecture, as mamba2.py: config parsing, the model, its packed fast path and prepare.

Mamba (S6) language model with named intervention sites, in plain PyTorch.

long-file: the block's three call shapes (forward, packed rows, prepare) share their maths and sit together.

The maths is that of Hugging Face ``MambaForCausalLM`` (its slow reference path) and of mamba-minimal
(johnma2006/mamba-minimal, the implementation the paper's code uses); module and parameter names match
the checkpoint keys, so loading is a rename of the original state-spaces embedding name plus a strict
load. See ``shared/reference/paper-methods.md`` §1 and §8.1.

References:
    Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (2023), Algorithm 2.
    Sen Sharma, Atkinson & Bau, "Locating and Editing Factual Associations in Mamba" (2024): the
    names a (W_a·norm(h)), g (SiLU(W_g·norm(h))), s (after the scan, with the D skip) and o.

Glossary of dimension letters:
    b: batch rows (prompt copies: clean, noise samples, or cells being restored)
    l: tokens in this call (may be a suffix t..T-1 of the prompt when resuming from a cached state)
    d: hidden_size (d_model)
    d_in: intermediate_size = expand * d (the "2d" of the paper)
    n: state_size (N, 16)
    r: time_step_rank (dt_rank)
    k: conv_kernel (4)
    V: vocab_size

Precision follows HF's ``residual_in_fp32``: the residual stream and the RMSNorm are float32 whatever
the run dtype; the selective scan runs in float32 too (its state is a long product of decays).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels, scan_grad
from .architecture import (MAX_HIDDEN, MAX_INTERMEDIATE, MAX_LAYERS, MAX_SMALL, MAX_VOCAB, Architecture,
                           EditTarget, describe_value, config_bool, config_float, config_int, config_object)
from .errors import CheckpointError
from .sites import BLOCK, INPUT, OUTPUT, BlockHook, HookedLM, Site, call, site_table

#: The intervention sites of Mamba (design vocabulary). Width names a Config attribute.
SITES = site_table(
    Site("embed", INPUT, "d_model", "token embeddings, the input of layer 0"),
    Site("residual", OUTPUT, "d_model", "h: residual stream after block l", dtype="residual"),
    Site("in_ssm", BLOCK, "d_inner", "a = W_a·norm(h), the SSM branch of in_proj, before the conv"),
    Site("gate", BLOCK, "d_inner", "g = SiLU(W_g·norm(h)), the gate branch"),
    Site("conv", BLOCK, "d_inner", "c = SiLU(causal depthwise conv1d(a))"),
    Site("ssm", BLOCK, "d_inner", "s: selective-scan output incl. the D skip, before gating"),
    Site("mixer", BLOCK, "d_model", "o = out_proj(s * g), the block output added to the residual"),
)


@dataclass
class Config:
    """Mamba hyperparameters, read from an HF ``config.json`` or an original state-spaces one."""

    d_model: int
    n_layer: int
    vocab_size: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 0
    d_inner: int = 0
    eps: float = 1e-5
    residual_in_fp32: bool = True
    bias: bool = False
    conv_bias: bool = True
    tie_embeddings: bool = True
    max_positions: int = 0  # Mamba has no position limit

    def __post_init__(self):
        if not self.d_inner:
            self.d_inner = self.expand * self.d_model
        if self.d_inner > MAX_INTERMEDIATE:  # expand * hidden_size when config.json has no intermediate_size
            raise CheckpointError(f"config.json expand: the inner width {self.d_inner} exceeds {MAX_INTERMEDIATE}", field="expand")
        if not self.dt_rank:
            self.dt_rank = math.ceil(self.d_model / 16)

    @property
    def num_layers(self) -> int:
        return self.n_layer

    @property
    def hidden_size(self) -> int:
        return self.d_model

    @classmethod
    def from_hf(cls, cfg: dict) -> "Config":
        """Parse ``config.json``: HF ``MambaConfig`` names, or state-spaces' ``d_model``/``n_layer``/``ssm_cfg``;
        every value checked (``architecture.config_int`` ...: type, range), a bad one a CheckpointError."""
        if "d_model" in cfg and "hidden_size" not in cfg:  # original state-spaces config
            ssm = config_object(cfg, "ssm_cfg")
            d = _int(cfg, "d_model", high=MAX_HIDDEN)
            vocab = _int(cfg, "vocab_size", high=MAX_VOCAB)
            mult = _int(cfg, "pad_vocab_size_multiple", 8, high=MAX_SMALL)
            vocab += -vocab % mult  # state-spaces pads the embedding rows
            return cls(
                d_model=d, n_layer=_int(cfg, "n_layer", high=MAX_LAYERS), vocab_size=vocab,
                d_state=_int(ssm, "d_state", 16, high=MAX_SMALL), d_conv=_int(ssm, "d_conv", 4, high=MAX_SMALL),
                expand=_int(ssm, "expand", 2, high=MAX_SMALL), dt_rank=_rank(ssm, "dt_rank"),
                residual_in_fp32=config_bool(cfg, "residual_in_fp32", True), bias=config_bool(ssm, "bias", False),
                conv_bias=config_bool(ssm, "conv_bias", True), tie_embeddings=config_bool(cfg, "tie_embeddings", True),
            )
        act = cfg.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise CheckpointError(f"config.json hidden_act: expected 'silu' for Mamba, got {describe_value(act)}", field="hidden_act")
        d = _int(cfg, "hidden_size", high=MAX_HIDDEN)
        return cls(
            d_model=d, n_layer=_int(cfg, "num_hidden_layers", high=MAX_LAYERS),
            vocab_size=_int(cfg, "vocab_size", high=MAX_VOCAB),
            d_state=_int(cfg, "state_size", 16, high=MAX_SMALL), d_conv=_int(cfg, "conv_kernel", 4, high=MAX_SMALL),
            expand=_int(cfg, "expand", 2, high=MAX_SMALL), dt_rank=_rank(cfg, "time_step_rank"),
            d_inner=0 if cfg.get("intermediate_size") == 0 else _int(cfg, "intermediate_size", 0, high=MAX_INTERMEDIATE),
            eps=config_float(cfg, "layer_norm_epsilon", 1e-5, 0.0, 1.0, low_open=True),
            residual_in_fp32=config_bool(cfg, "residual_in_fp32", True),
            bias=config_bool(cfg, "use_bias", False), conv_bias=config_bool(cfg, "use_conv_bias", True),
            tie_embeddings=config_bool(cfg, "tie_word_embeddings", True),
        )


_int = functools.partial(config_int, model="Mamba")
_rank = lambda cfg, key: 0 if cfg.get(key) in (None, "auto") else _int(cfg, key)  # noqa: E731 (0: __post_init__'s auto)


def rename_keys(tensors: dict[str, torch.Tensor], config: Config) -> dict[str, torch.Tensor]:
    """Accept the original state-spaces name ``backbone.embedding.weight`` (HF: ``embeddings``)."""
    return {("backbone.embeddings.weight" if k == "backbone.embedding.weight" else k): v for k, v in tensors.items()}


def ignorable_key(key: str, config: Config) -> bool:
    """``lm_head.weight`` is a copy of the embeddings when they are tied."""
    return key == "lm_head.weight" and config.tie_embeddings


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise in float32 (HF ``MambaRMSNorm``), return the weight's dtype."""
        return kernels.rms_norm(x, self.weight, self.eps)


class MambaMixer(nn.Module):
    """in_proj → (a: causal conv → SiLU → selective scan (+D skip)) ⊙ SiLU(z) → out_proj."""

    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.in_proj = nn.Linear(c.d_model, 2 * c.d_inner, bias=c.bias)
        # Kept as a Conv1d for the checkpoint names; forward pads by hand to resume from a cached window.
        self.conv1d = nn.Conv1d(c.d_inner, c.d_inner, c.d_conv, groups=c.d_inner, bias=c.conv_bias, padding=c.d_conv - 1)
        self.x_proj = nn.Linear(c.d_inner, c.dt_rank + 2 * c.d_state, bias=False)
        self.dt_proj = nn.Linear(c.dt_rank, c.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.zeros(c.d_inner, c.d_state))
        self.D = nn.Parameter(torch.ones(c.d_inner))
        self.out_proj = nn.Linear(c.d_inner, c.d_model, bias=c.bias)
        self._A, self._A_key = None, None

    def neg_A(self) -> torch.Tensor:
        """A = −exp(A_log) in float32 (d_in, n), computed again only when A_log changed (in place, or
        moved): two launches a layer fewer in the packed passes."""
        key = (self.A_log._version, self.A_log.data_ptr(), self.A_log.device)
        if self._A_key != key:
            self._A, self._A_key = -torch.exp(self.A_log.float()), key
        return self._A

    def forward(self, u: torch.Tensor, hook: Optional[BlockHook] = None, state=None, keep: bool = False):
        """u: (b, l, d) normed block input. state: (conv_past (b, k-1, d_in), H (b, d_in, n)) of the token
        before u's first, or None at token 0. Returns o (b, l, d) and, if keep, (a (b, l, d_in),
        H (b, l, d_in, n)): every token's conv input and SSM state, from which any later call resumes."""
        b, l, _ = u.shape
        xz = self.in_proj(u)  # (b, l, 2*d_in)
        a, z = xz.chunk(2, dim=-1)  # (b, l, d_in) each
        a = call(hook, "in_ssm", a)
        g = call(hook, "gate", F.silu(z))  # (b, l, d_in)

        k = self.c.d_conv
        past = state[0] if state is not None else a.new_zeros(b, k - 1, self.c.d_inner)
        window = torch.cat([past.to(a.dtype), a], dim=1)  # (b, k-1+l, d_in)
        c = F.conv1d(window.transpose(1, 2), self.conv1d.weight, self.conv1d.bias, groups=self.c.d_inner)  # (b, d_in, l)
        c = call(hook, "conv", F.silu(c.transpose(1, 2)))  # (b, l, d_in)

        h0 = state[1] if state is not None else None
        s, states = self.ssm(c, h0, keep)  # (b, l, d_in), (b, l, d_in, n) or None
        s = call(hook, "ssm", s)
        o = call(hook, "mixer", self.out_proj(s * g))  # (b, l, d)
        return o, ((a, states) if keep else None)

    def ssm(self, c: torch.Tensor, h0: Optional[torch.Tensor], keep: bool):
        """Input-dependent Δ, B, C (the "selective" part), then the scan. c: (b, l, d_in)."""
        r, n = self.c.dt_rank, self.c.d_state
        A = -torch.exp(self.A_log.float())  # (d_in, n)
        x_dbl = self.x_proj(c)  # (b, l, r + 2n)
        delta, B, C = x_dbl.split([r, n, n], dim=-1)  # (b, l, r), (b, l, n), (b, l, n)
        delta = F.softplus(self.dt_proj(delta))  # (b, l, d_in)
        y, states = selective_scan(c.float(), delta.float(), A, B.float(), C.float(), h0, keep)  # (b, l, d_in)
        y = y + c.float() * self.D.float()  # D skip
        return y.to(c.dtype), states

    @staticmethod
    def resume_state(kept, t: int, rows: torch.Tensor, d_conv: int):
        """State entering token t for the given rows of kept per-token (a (S, T, d_in), H (S, T, d_in, n)):
        (conv_past (b, k-1, d_in), H (b, d_in, n)), zeros before the first token."""
        a, H = kept
        past = a[rows, max(0, t - d_conv + 1):t]  # (b, <=k-1, d_in)
        if past.shape[1] < d_conv - 1:
            past = torch.cat([past.new_zeros(past.shape[0], d_conv - 1 - past.shape[1], past.shape[2]), past], 1)
        h = H[rows, t - 1] if t > 0 else H.new_zeros(rows.shape[0], H.shape[2], H.shape[3])  # (b, d_in, n)
        return past, h


def selective_scan(u, delta, A, B, C, h0=None, keep=False):
    """h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t (ZOH for A, Euler for B);  y_t = h_t · C_t.

    u, delta: (b, l, d_in); A: (d_in, n); B, C: (b, l, n); h0: (b, d_in, n) or None (zeros).
    Returns y (b, l, d_in) and, if keep, every h_t (b, l, d_in, n). In ``scan_grad.fused()``: Triton."""
    if scan_grad.applies(u, A, h0):
        return scan_grad.selective_scan(u, delta, A, B, C, h0, keep)
    b, l, d_in = u.shape
    dA = torch.exp(delta.unsqueeze(-1) * A)  # (b, l, d_in, n)
    dBu = delta.unsqueeze(-1) * B.unsqueeze(2) * u.unsqueeze(-1)  # (b, l, d_in, n)
    h = h0 if h0 is not None else u.new_zeros(b, d_in, A.shape[1])  # (b, d_in, n)
    ys, hs = [], []
    # unbind, not dA[:, i]: under autograd (ROME's v*) each indexed slice's backward writes a zero tensor
    # the size of the whole sequence, O(l²) memory traffic that was most of a v* step; unbind's is one stack
    for dA_i, dBu_i, C_i in zip(dA.unbind(1), dBu.unbind(1), C.unbind(1)):
        h = dA_i * h + dBu_i  # (b, d_in, n)
        ys.append(torch.matmul(h, C_i.unsqueeze(-1)).squeeze(-1))  # (b, d_in)
        if keep:
            hs.append(h)
    y = torch.stack(ys, dim=1)  # (b, l, d_in)
    return y, (torch.stack(hs, dim=1) if keep else None)


class MambaBlock(nn.Module):
    """h ← h + mixer(RMSNorm(h)), the residual kept in float32 (HF ``residual_in_fp32``)."""

    #: The state entering a token (conv window, SSM state) has a fixed size and no position in it: a row
    #: can resume at any of its tokens (ROME's v* resumes each prompt at its subject's last token).
    fixed_state = True

    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.norm = RMSNorm(c.d_model, c.eps)
        self.mixer = MambaMixer(c)

    def forward(self, x: torch.Tensor, hook: Optional[BlockHook] = None, state=None, pos0: int = 0, keep: bool = False):
        """x: (b, l, d) residual stream entering the block (tokens pos0..pos0+l-1). Returns (b, l, d), kept."""
        residual = x.float() if self.c.residual_in_fp32 else x
        o, kept = self.mixer(self.norm(x), hook, state, keep)  # (b, l, d)
        return residual + o.to(residual.dtype), kept

    def resume_state(self, kept, t: int, rows: torch.Tensor):
        """The state entering token t of the given rows, from this layer's kept per-token states."""
        return MambaMixer.resume_state(kept, t, rows, self.c.d_conv)

    def next_state(self, state, kept):
        """(conv_past, H) after a call begun in ``state`` that kept ``kept``: a fixed-size decode state."""
        window = torch.cat([state[0].to(kept[0].dtype), kept[0]], dim=1)
        return window[:, window.shape[1] - (self.c.d_conv - 1):], kept[1][:, -1]

    def forward_packed(self, x: torch.Tensor, j: int, pk) -> torch.Tensor:
        """The block on packed rows (``trace.Pack``): x (n, d) is the residual entering block j at the
        started positions, updated in place. The past of each row (conv window, SSM state) comes from
        the corrupted run's cache of layer j; restores come from ``pk``."""
        m, c = self.mixer, self.c
        n, d_in = x.shape[0], c.d_inner
        R = pk.rows_at[j]
        cache_a, H = pk.runs.kept[j]
        xz = m.in_proj(self.norm(x))  # (n, 2 d_in)
        a, z = xz[:, :d_in], xz[:, d_in:]
        a = pk.patch("in_ssm", j, a)
        cv = kernels.conv_packed(a, cache_a, m.conv1d.weight, m.conv1d.bias, pk.pos_first, pk.pos_cache, pk.pos_token)
        cv = pk.patch("conv", j, cv)
        delta, B, C = m.x_proj(cv).split([c.dt_rank, c.d_state, c.d_state], dim=-1)
        dt = m.dt_proj(delta)  # (n, d_in), softplus inside the scan
        ssm_src, gate_src = pk.row_src("ssm", j, R), pk.row_src("gate", j, R)
        sg = kernels.scan_packed(
            cv, dt, B, C, z, m.neg_A(), m.D, H.reshape(-1, d_in, c.d_state), pk.h0_idx[:R],
            pk.row_off[:R], pk.row_len[:R], ssm_src, None if ssm_src is None else pk.clean_rows("ssm"),
            gate_src, None if gate_src is None else pk.clean_rows("gate"))
        o = pk.patch("mixer", j, m.out_proj(sg))  # (n, d)
        return x.add_(o)  # float32 residual += o, promoted in the add


    def forward_prepare(self, x: torch.Tensor, j: int, pp):
        """Block j on a prompt's clean and corrupted runs at once (``prepare.Prep``): x (rows·T, d) the
        residual entering it, whole rows of T tokens (the corrupted rows first, the clean row last).
        On CUDA the same maths as :meth:`forward` through the fast path's Triton kernels
        (``kernels.conv_rows`` / ``scan_rows``: no per-token loop); the clean row's site values go to ``pp``.
        Returns the block's output (rows·T, d) and the kept states of the corrupted rows:
        (a (S, T, d_in), H (S, T, d_in, n)), as :meth:`forward` with ``keep`` (possibly views: the
        caller stacks every layer's into one tensor)."""
        m, c = self.mixer, self.c
        d_in, S, T = c.d_inner, pp.samples, pp.num_tokens
        if not kernels.use_triton(x, c.d_state):
            # PyTorch: the block's own forward (its per-step scan is the kernels' PyTorch path too), on
            # the corrupted rows and the clean row as the reference batches them: the same op shapes
            # and layouts, so the cache is bit-equal to the reference's in every dtype (x_proj of the
            # conv's transposed output takes another CPU kernel, rounding bf16 otherwise, when batched).
            x3 = x.view(pp.rows, T, -1)
            y, (a, H) = self(x3[:S], None, keep=True)
            y_clean, _ = self(x3[S:], pp.hook(j))
            return torch.cat([y, y_clean]).reshape(x.shape), (a, H)
        residual = x.float() if c.residual_in_fp32 else x
        xz = m.in_proj(self.norm(x))  # (n, 2 d_in)
        a, z = xz[:, :d_in], xz[:, d_in:]
        g = F.silu(z)
        if "rows" not in pp.memo:
            pp.memo["rows"] = kernels.rows_index(pp.rows, T, x.device)
        cv = kernels.conv_rows(a, m.conv1d.weight, m.conv1d.bias, T, pp.memo["rows"])
        delta, B, C = m.x_proj(cv).split([c.dt_rank, c.d_state, c.d_state], dim=-1)
        dt = m.dt_proj(delta)  # softplus inside the scan
        s, H = kernels.scan_rows(cv, dt, B, C, m.neg_A(), m.D, pp.rows, T, S, pp.memo["rows"])
        o = m.out_proj(s * g)  # (n, d)
        for site, value in (("in_ssm", a), ("gate", g), ("conv", cv), ("ssm", s), ("mixer", o)):
            pp.record(site, j, value)
        return residual + o, (a[:S * T].view(S, T, d_in), H)  # float32 residual += o, promoted in the add


class MambaBackbone(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.embeddings = nn.Embedding(c.vocab_size, c.d_model)
        self.layers = nn.ModuleList([MambaBlock(c) for _ in range(c.n_layer)])
        self.norm_f = RMSNorm(c.d_model, c.eps)


class LM(HookedLM):
    """``MambaForCausalLM``: embeddings → n_layer blocks → RMSNorm → tied unembedding."""

    SITES = SITES

    def __init__(self, c: Config):
        super().__init__()
        self.config = c
        self.backbone = MambaBackbone(c)
        self.lm_head = None if c.tie_embeddings else nn.Linear(c.d_model, c.vocab_size, bias=False)

    @property
    def layers(self) -> nn.ModuleList:
        return self.backbone.layers

    def residual_dtype(self) -> torch.dtype:
        """dtype of the residual stream (the block inputs and outputs)."""
        return torch.float32 if self.config.residual_in_fp32 else self.backbone.embeddings.weight.dtype

    def packed_bytes_per_position(self, dtype: torch.dtype, fused: bool, num_tokens: int) -> int:
        """Device bytes one packed position takes in the fast path (to size micro-batches): the residual
        row plus one block's temporaries; without the fused kernels the PyTorch scan also holds
        exp(ΔA) and ΔBu (float32) and its per-step copies, and the conv its windows."""
        c = self.config
        b = torch.finfo(dtype).bits // 8
        per = residual_bytes(c, b) * c.d_model + 4 * c.d_model * 2  # residual + RMSNorm temporaries
        per += b * (2 * c.d_inner + 3 * c.d_inner + c.dt_rank + 2 * c.d_state + c.d_model)  # xz, c, dt, s·g, x_dbl, o
        if not fused:
            per += 4 * c.d_inner * c.d_state * 4 + 6 * c.d_inner * 4  # scan
            per += c.d_conv * c.d_inner * 4  # conv windows
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
    """Bytes per layer, token and row of the kept corrupted-run state (conv input a + fp32 SSM state)."""
    return c.d_inner * dtype_bytes + c.d_inner * c.d_state * 4


def _claims_config(cfg: dict) -> bool:
    """The original state-spaces config (no model_type; ``d_model``/``n_layer``/``ssm_cfg``), unless its
    ``ssm_cfg.layer`` names another block (``"Mamba2"``: ``mamba2.py``)."""
    ssm = cfg.get("ssm_cfg")
    layer = ssm.get("layer", "Mamba1") if isinstance(ssm, dict) else "Mamba1"
    return {"d_model", "n_layer"} <= set(cfg) and "ssm_cfg" in cfg and layer == "Mamba1"


#: What the rest of the engine knows about Mamba (``engine.architecture``).
ARCHITECTURE = Architecture(
    model_type="mamba", config=Config, lm=LM, rename_keys=rename_keys, ignorable_key=ignorable_key, sites=SITES,
    sever_paths=("none", "ssm", "gate", "mixer", "in_ssm", "conv"),
    default_sever_paths=("none", "ssm", "gate", "mixer"),
    edit_targets={
        "W_o": EditTarget("backbone.layers.{layer}.mixer.out_proj", lambda c: (0, c.d_model),
                          "s ⊗ g (d_inner)", "o (d_model)"),
        "W_a": EditTarget("backbone.layers.{layer}.mixer.in_proj", lambda c: (0, c.d_inner),
                          "norm(h) (d_model)", "a = in_proj(·)[:d_inner]"),
        "W_g": EditTarget("backbone.layers.{layer}.mixer.in_proj", lambda c: (c.d_inner, 2 * c.d_inner),
                          "norm(h) (d_model)", "z = in_proj(·)[d_inner:] (before SiLU)"),
    },
    knockout="mean_ablation_in_ssm",
    residual_bytes=residual_bytes, kept_state_bytes_per_token=kept_state_bytes_per_token, claims_config=_claims_config,
    embedding_key="backbone.embeddings.weight",
)
