"""GPT-NeoX (Pythia) language model with named intervention sites, in plain PyTorch.

The maths is that of Hugging Face ``GPTNeoXForCausalLM`` (eager attention); module and parameter names
match the checkpoint keys, so loading is a strict load. See ``shared/reference/paper-methods.md`` §8.2.

References:
    Black et al., "GPT-NeoX-20B" (2022): parallel attention + MLP residual, partial rotary embeddings.
    Biderman et al., "Pythia" (2023). Su et al., "RoFormer" (2021) for rotary position embeddings.

Glossary of dimension letters:
    b: batch rows;  l: tokens in this call (a suffix t..T-1 of the prompt when resuming);
    p: tokens attended to (cached past + this call);  d: hidden_size;  H: attention heads;
    e: head size d / H;  r: rotary dims (rotary_pct * e);  f: intermediate_size;  V: vocab_size.

Residual form (``use_parallel_residual``):
    parallel:   h ← h + attn(LN1 h) + mlp(LN2 h)          (Pythia)
    sequential: h ← h + attn(LN1 h);  h ← h + mlp(LN2 h)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .architecture import (MAX_HIDDEN, MAX_INTERMEDIATE, MAX_LAYERS, MAX_POSITIONS, MAX_SMALL, MAX_VOCAB, Architecture,
                           EditTarget, config_bool, config_float, config_int, describe_value)
from .errors import CheckpointError
from .sites import BLOCK, INPUT, OUTPUT, BlockHook, HookedLM, Site, call, site_table

#: The intervention sites of GPT-NeoX (design vocabulary). Width names a Config attribute.
SITES = site_table(
    Site("embed", INPUT, "hidden_size", "token embeddings (embed_in), the input of layer 0"),
    Site("residual", OUTPUT, "hidden_size", "h: residual stream after block l", dtype="residual"),
    Site("attn", BLOCK, "hidden_size", "attention output (after dense), added to the residual"),
    Site("mlp", BLOCK, "hidden_size", "MLP output (after dense_4h_to_h), added to the residual"),
)

#: hidden_act → activation. "gelu" is the exact (erf) GELU of Pythia.
ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@dataclass
class Config:
    """GPT-NeoX hyperparameters from an HF ``config.json``."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    max_positions: int = 2048
    rotary_pct: float = 0.25
    rotary_base: float = 10000.0
    eps: float = 1e-5
    parallel_residual: bool = True
    attention_bias: bool = True
    hidden_act: str = "gelu"

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def rotary_dims(self) -> int:
        return int(self.head_size * self.rotary_pct)

    @classmethod
    def from_hf(cls, cfg: dict) -> "Config":
        """Parse HF ``GPTNeoXConfig``: rotary from ``rotary_pct``/``rotary_emb_base`` (transformers 4.x) or
        ``rope_parameters`` / ``rope_scaling`` (5.x); only unscaled ("default") rotary is supported."""
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        if not isinstance(rope, dict):
            raise CheckpointError(f"config.json rope_parameters: expected an object, got {describe_value(rope)}", field="rope_parameters")
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise CheckpointError(f"config.json rope_parameters.rope_type: expected 'default' (unscaled rotary), got "
                                  f"{describe_value(rope_type)}", field="rope_parameters")
        act = cfg.get("hidden_act", "gelu")
        if not isinstance(act, str) or act not in ACTIVATIONS:
            raise CheckpointError(f"config.json hidden_act: expected one of {sorted(ACTIVATIONS)}, got {describe_value(act)}", field="hidden_act")
        d, heads = _req(cfg, "hidden_size", MAX_HIDDEN), _req(cfg, "num_attention_heads", MAX_SMALL)
        if d % heads:
            raise CheckpointError(f"config.json: hidden_size {d} is not a multiple of num_attention_heads {heads}", field="num_attention_heads")
        pct_key = "partial_rotary_factor" if "partial_rotary_factor" in rope or "rotary_pct" not in cfg else "rotary_pct"
        base_key = "rope_theta" if "rope_theta" in rope else ("rotary_emb_base" if "rotary_emb_base" in cfg else "rope_theta")
        return cls(
            hidden_size=d, num_layers=_req(cfg, "num_hidden_layers", MAX_LAYERS), num_heads=heads,
            intermediate_size=4 * d if cfg.get("intermediate_size") in (None, 0) else _req(cfg, "intermediate_size", MAX_INTERMEDIATE),
            vocab_size=_req(cfg, "vocab_size", MAX_VOCAB), max_positions=config_int(cfg, "max_position_embeddings", 2048, high=MAX_POSITIONS),
            rotary_pct=config_float(rope if pct_key in rope else cfg, pct_key, 0.25, 0.0, 1.0),
            rotary_base=config_float(rope if base_key in rope else cfg, base_key, 10000.0, 0.0, 1e12, low_open=True),
            eps=config_float(cfg, "layer_norm_eps", 1e-5, 0.0, 1.0, low_open=True), hidden_act=act,
            parallel_residual=config_bool(cfg, "use_parallel_residual", True), attention_bias=config_bool(cfg, "attention_bias", True),
        )


def _req(cfg: dict, key: str, high: int) -> int:
    return config_int(cfg, key, high=high, model="GPT-NeoX")  # a required dimension: an integer in [1, high]


def rename_keys(tensors: dict[str, torch.Tensor], config: Config) -> dict[str, torch.Tensor]:
    return tensors


# Buffers that older transformers saved into Pythia checkpoints and recompute on load.
_BUFFER_SUFFIXES = (".attention.bias", ".attention.masked_bias", ".attention.rotary_emb.inv_freq")


def ignorable_key(key: str, config: Config) -> bool:
    return key.endswith(_BUFFER_SUFFIXES)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and returned in the input's dtype (CUDA kernels accumulate in
    float32 for half inputs anyway; PyTorch 1.13's CPU kernel has no float16 at all)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:  # the CUDA kernel already accumulates half inputs in float32: one pass, not three
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


#: SDPA backend of the packed attention on CUDA ("flash", "efficient", "cudnn", or "math": the einsum
#: path below); FACTSWEEP_ATTENTION overrides it (bench/engine.py compares them).
ATTENTION = os.environ.get("FACTSWEEP_ATTENTION", "flash")


def causal_mask(l: int, p: int, device) -> torch.Tensor:
    """(l, p) bool: query i (position p − l + i) sees the keys at positions ≤ its own."""
    return torch.ones(l, p, dtype=torch.bool, device=device).tril(diagonal=p - l)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
           empty_reads_zero: bool = False) -> torch.Tensor:
    """The attention maths of this model, written once: q (b, l, H, e), k and v (b, p, H, e), ``allowed``
    a bool mask broadcastable to the scores (b, H, l, p). Scores in the run dtype, softmax in float32.
    ``empty_reads_zero``: a query with no allowed key reads nothing (zeros), not a uniform mix.
    Returns (b, l, H, e)."""
    scores = torch.einsum("blhe,bphe->bhlp", q, k) / math.sqrt(q.shape[-1])  # (b, H, l, p)
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores.float(), dim=-1)  # (b, H, l, p)
    if empty_reads_zero:
        probs = probs.masked_fill(~allowed.any(dim=-1, keepdim=True), 0.0)
    return torch.einsum("bhlp,bphe->blhe", probs.to(v.dtype), v)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of rows padded to T tokens by absolute position: (R, T, H, e) each → (R, T, H, e).
    On CUDA PyTorch's fused kernel; elsewhere :func:`attend`."""
    backend = ATTENTION if q.is_cuda and hasattr(F, "scaled_dot_product_attention") else "math"
    if backend != "math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        order = {"flash": [SDPBackend.FLASH_ATTENTION], "efficient": [SDPBackend.EFFICIENT_ATTENTION],
                 "cudnn": [SDPBackend.CUDNN_ATTENTION]}[backend] + [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]  # float32: no flash
        with sdpa_kernel(order):
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return out.transpose(1, 2)
    T = q.shape[1]
    return attend(q, k, v, causal_mask(T, T, q.device))


class Attention(nn.Module):
    """Causal multi-head self-attention with rotary embeddings on the first r dims of q and k."""

    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.query_key_value = nn.Linear(c.hidden_size, 3 * c.hidden_size, bias=c.attention_bias)
        self.dense = nn.Linear(c.hidden_size, c.hidden_size, bias=c.attention_bias)

    def cos_sin(self, pos0: int, l: int, device, dtype) -> tuple:
        """cos and sin (l, r) of positions pos0..pos0+l-1, computed in float32, in the run dtype."""
        r = self.c.rotary_dims
        inv_freq = 1.0 / (self.c.rotary_base ** (torch.arange(0, r, 2, device=device, dtype=torch.float32) / r))  # (r/2,)
        pos = torch.arange(pos0, pos0 + l, device=device, dtype=torch.float32)  # (l,)
        freqs = torch.outer(pos, inv_freq)  # (l, r/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (l, r)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def rotary(self, x: torch.Tensor, pos0: int) -> torch.Tensor:
        """Rotate the first r dims of x (b, l, H, e) by positions pos0..pos0+l-1."""
        r = self.c.rotary_dims
        cos, sin = (t[None, :, None, :] for t in self.cos_sin(pos0, x.shape[1], x.device, x.dtype))  # (1, l, 1, r)
        x_rot, x_pass = x[..., :r], x[..., r:]
        return torch.cat([x_rot * cos + kernels.rotate_half(x_rot) * sin, x_pass], dim=-1)  # (b, l, H, e)

    def forward_packed(self, x: torch.Tensor, j: int, pk) -> torch.Tensor:
        """Attention of packed rows (``trace.Pack``): x (n, d) normed input at the started positions of
        layer j. Each row's queries attend to the cached corrupted keys/values of its earlier tokens and
        to its own new ones, laid out in rows padded to T tokens by absolute position. Returns (n, d)."""
        n = x.shape[0]
        H, e, r = self.c.num_heads, self.c.head_size, self.c.rotary_dims
        R, T = pk.rows_at[j], pk.runs.num_tokens
        qkv = self.query_key_value(x).view(n, H, 3, e)  # per head [q | k | v]
        if "rotary" not in pk.memo:  # cos/sin tables of tokens 0..T-1
            pk.memo["rotary"] = self.cos_sin(0, T, x.device, x.dtype)
        kc, vc = pk.runs.kept[j]  # (S, T, H, e)
        rows = pk.row_sample[:R]
        kp, vp = kc[rows].view(R * T, H, e), vc[rows].view(R * T, H, e)  # each row's cached past (copies)
        qp = x.new_zeros(R * T, H, e)
        kernels.rotary_scatter(qkv, *pk.memo["rotary"], pk.pos_token, pk.pad_pos, qp, kp, vp, r)
        out = _attend(qp.view(R, T, H, e), kp.view(R, T, H, e), vp.view(R, T, H, e))  # (R, T, H, e)
        return self.dense(out[pk.pos_row[:n], pk.pos_token[:n]].view(n, H * e))  # (n, d): one gather

    def forward_prepare(self, x: torch.Tensor, pp) -> tuple:
        """Attention of whole rows of T tokens from token 0 (``prepare.Prep``: a prompt's clean and
        corrupted runs at once): x (rows·T, d) normed input. The fast path's kernels: q and k rotated
        and written out in one pass (``kernels.rotary_scatter``, the rows being already padded to T),
        then its causal attention. Returns (rows·T, d) and the rotated keys and values (rows·T, H, e)."""
        n = x.shape[0]
        H, e, r, T = self.c.num_heads, self.c.head_size, self.c.rotary_dims, pp.num_tokens
        qkv = self.query_key_value(x).view(n, H, 3, e)
        if "rotary" not in pp.memo:
            pp.memo["rotary"] = self.cos_sin(0, T, x.device, x.dtype)
            place = torch.arange(n, device=x.device)
            pp.memo["place"] = (place % T, place)  # each position's token, and where it goes: itself
        q, k, v = (x.new_empty(n, H, e) for _ in range(3))
        kernels.rotary_scatter(qkv, *pp.memo["rotary"], *pp.memo["place"], q, k, v, r)
        R = n // T
        out = _attend(q.view(R, T, H, e), k.view(R, T, H, e), v.view(R, T, H, e))  # (R, T, H, e)
        return self.dense(out.reshape(n, H * e)), (k, v)

    def project(self, x: torch.Tensor, pos0: int = 0) -> tuple:
        """q, k, v (b, l, H, e) of x (b, l, d) normed input at tokens pos0.., q and k rotated."""
        b, l, _ = x.shape
        H, e = self.c.num_heads, self.c.head_size
        qkv = self.query_key_value(x).view(b, l, H, 3 * e)  # (b, l, H, 3e)
        q, k, v = qkv.split(e, dim=-1)  # (b, l, H, e) each
        return self.rotary(q, pos0), self.rotary(k, pos0), v

    def forward(self, x: torch.Tensor, past=None, pos0: int = 0, keep: bool = False):
        """x: (b, l, d) normed input for tokens pos0.. ; past: (k, v) (b, pos0, H, e) of earlier tokens.
        Returns (b, l, d) and, if keep, this call's rotated keys and values (b, l, H, e)."""
        b, l, _ = x.shape
        q, k, v = self.project(x, pos0)
        kept = (k, v) if keep else None
        if past is not None:
            k = torch.cat([past[0].to(k.dtype), k], dim=1)  # (b, p, H, e)
            v = torch.cat([past[1].to(v.dtype), v], dim=1)
        out = attend(q, k, v, causal_mask(l, k.shape[1], x.device)).reshape(b, l, -1)  # (b, l, d)
        return self.dense(out), kept

    def forward_last_query(self, x: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        """The output (after ``dense``) of the last token's query only, over x (b, T, d) normed input from
        token 0, with its attention to the keys in ``blocked`` (b, T) cut (attention knockout; a query
        with every key blocked reads nothing). Returns (b, d)."""
        q, k, v = self.project(x, 0)
        allowed = ~blocked[:, None, None, :]  # (b, 1, 1, T): the last query sees every unblocked key
        out = attend(q[:, -1:], k, v, allowed, empty_reads_zero=True)  # (b, 1, H, e)
        return self.dense(out.reshape(x.shape[0], -1))


class MLP(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(c.hidden_size, c.intermediate_size)
        self.dense_4h_to_h = nn.Linear(c.intermediate_size, c.hidden_size)
        self.act = ACTIVATIONS[c.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))  # (b, l, f) → (b, l, d)


class Layer(nn.Module):
    """One GPT-NeoX block, parallel or sequential residual."""

    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.input_layernorm = LayerNorm(c.hidden_size, eps=c.eps)
        self.post_attention_layernorm = LayerNorm(c.hidden_size, eps=c.eps)
        self.attention = Attention(c)
        self.mlp = MLP(c)

    def forward(self, x: torch.Tensor, hook: Optional[BlockHook] = None, state=None, pos0: int = 0, keep: bool = False):
        """x: (b, l, d) residual stream entering the block at tokens pos0..; state: cached (k, v) of
        tokens < pos0 or None. Returns (b, l, d) and, if keep, this call's (k, v)."""
        a, kept = self.attention(self.input_layernorm(x), state, pos0, keep)
        a = call(hook, "attn", a)  # (b, l, d)
        if self.c.parallel_residual:
            m = call(hook, "mlp", self.mlp(self.post_attention_layernorm(x)))
            return m + a + x, kept  # HF's order of additions
        h = a + x
        m = call(hook, "mlp", self.mlp(self.post_attention_layernorm(h)))
        return m + h, kept

    def resume_state(self, kept, t: int, rows: torch.Tensor):
        """Keys and values of tokens < t of the given rows, from this layer's kept per-token (k, v) (S, T, H, e)."""
        return (kept[0][rows, :t], kept[1][rows, :t]) if t > 0 else None

    def forward_prepare(self, x: torch.Tensor, j: int, pp):
        """Block j on a prompt's clean and corrupted runs at once (``prepare.Prep``): x (rows·T, d) whole
        rows of T tokens, the corrupted rows first and the clean row last; the clean row's site values
        go to ``pp``. Returns (rows·T, d) and the corrupted rows' rotated keys and values (S, T, H, e)."""
        S, T, H, e = pp.samples, pp.num_tokens, self.c.num_heads, self.c.head_size
        a, (k, v) = self.attention.forward_prepare(self.input_layernorm(x), pp)
        pp.record("attn", j, a)
        if self.c.parallel_residual:
            m = self.mlp(self.post_attention_layernorm(x))
            pp.record("mlp", j, m)
            y = m + a + x  # HF's order of additions
        else:
            h = a + x
            m = self.mlp(self.post_attention_layernorm(h))
            pp.record("mlp", j, m)
            y = m + h
        return y, (k[:S * T].view(S, T, H, e), v[:S * T].view(S, T, H, e))  # views: the caller stacks them

    def forward_packed(self, x: torch.Tensor, j: int, pk) -> torch.Tensor:
        """The block on packed rows (``trace.Pack``): x (n, d) residual entering block j, updated in place."""
        a = pk.patch("attn", j, self.attention.forward_packed(self.input_layernorm(x), j, pk))  # (n, d)
        if self.c.parallel_residual:
            m = pk.patch("mlp", j, self.mlp(self.post_attention_layernorm(x)))
            return x.copy_(m.add_(a).add_(x))  # HF's order of additions: (m + a) + x
        h = a + x
        m = pk.patch("mlp", j, self.mlp(self.post_attention_layernorm(h)))
        return x.copy_(m + h)


class GPTNeoXModel(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.embed_in = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList([Layer(c) for _ in range(c.num_layers)])
        self.final_layer_norm = LayerNorm(c.hidden_size, eps=c.eps)


class LM(HookedLM):
    """``GPTNeoXForCausalLM``: embed_in → layers → final LayerNorm → untied embed_out."""

    SITES = SITES

    def __init__(self, c: Config):
        super().__init__()
        self.config = c
        self.gpt_neox = GPTNeoXModel(c)
        self.embed_out = nn.Linear(c.hidden_size, c.vocab_size, bias=False)

    @property
    def layers(self) -> nn.ModuleList:
        return self.gpt_neox.layers

    def residual_dtype(self) -> torch.dtype:
        return self.gpt_neox.embed_in.weight.dtype

    def packed_bytes_per_position(self, dtype: torch.dtype, fused: bool, num_tokens: int) -> int:
        """Device bytes one packed position takes in the fast path (to size micro-batches): the residual,
        one block's temporaries, and its row's share of the keys/values/queries padded to T tokens
        and the attention scores (rows hold ≥ 1 position; counted for 3 padded tokens a position)."""
        c = self.config
        b = torch.finfo(dtype).bits // 8
        d, f = c.hidden_size, c.intermediate_size
        per = b * (d + 2 * d + 3 * d + 2 * d + 2 * f + 3 * d) + 4 * 2 * d  # x, norms, qkv, rotary, mlp, outputs
        per += 3 * (3 * d * b + c.num_heads * num_tokens * 4 * 2)  # padded q/k/v, scores and probs
        return per

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.gpt_neox.embed_in(input_ids)  # (b, l, d)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm and unembedding: (..., d) → (..., V) float32 logits."""
        return self.embed_out(self.gpt_neox.final_layer_norm(h)).float()


def residual_bytes(c: Config, dtype_bytes: int) -> int:
    """Bytes per element of the residual stream (the run dtype)."""
    return dtype_bytes


def kept_state_bytes_per_token(c: Config, dtype_bytes: int) -> int:
    """Bytes per layer, token and row of the kept corrupted-run state (rotated key + value)."""
    return 2 * c.hidden_size * dtype_bytes


#: What the rest of the engine knows about GPT-NeoX (``engine.architecture``).
ARCHITECTURE = Architecture(
    model_type="gpt_neox", config=Config, lm=LM, rename_keys=rename_keys, ignorable_key=ignorable_key, sites=SITES,
    sever_paths=("none", "attn", "mlp"),
    default_sever_paths=("none", "attn", "mlp"),
    edit_targets={
        "dense_4h_to_h": EditTarget("gpt_neox.layers.{layer}.mlp.dense_4h_to_h", lambda c: (0, c.hidden_size),
                                    "GELU(dense_h_to_4h(LN2 h))", "mlp output (incl. bias)"),
    },
    knockout="attention_knockout",
    residual_bytes=residual_bytes, kept_state_bytes_per_token=kept_state_bytes_per_token,
    embedding_key="gpt_neox.embed_in.weight",
)
