"""ROME's forward passes over the edited model: the edit target and a hook on it, padded batches,
next-token log-probabilities and top-k sampling (used by the algorithm and the evaluation)."""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ... import scan_grad
from .._common import embed

#: Decode-step CUDA graphs kept per model (``_sample_states``), by batch rows and top-k (LRU); a
#: graph decodes at least DECODE_MIN_ROWS rows (a power of two), the rest padding.
DECODE_GRAPHS = 4
DECODE_MIN_ROWS = 4
_DECODE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

@dataclass
class Target:
    """The edited Linear and which of its output rows the edit owns."""

    matrix: str
    layer: int
    module: torch.nn.Linear
    name: str
    rows: Tuple[int, int]  # [start, end) rows of weight (= output features) that change

    @property
    def value_slice(self) -> slice:
        return slice(*self.rows)


def target_of(architecture, model, matrix: str, layer: int) -> Target:
    """The Target of ``matrix`` at ``layer`` (params already validated), from the model type's table
    (``Architecture.edit_targets``)."""
    t = architecture.edit_targets[matrix]
    name = t.module_name(layer)
    return Target(matrix, layer, model.get_submodule(name), name, t.rows(model.config))


class Tap:
    """Forward hook on the target Linear: reads its input (key) and output rows (value) at chosen
    (row, position) pairs, and adds a delta to the output rows there (differentiably)."""

    def __init__(self, target: Target):
        self.target = target
        self.at: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # where to read
        self.add: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None  # where and what to add
        self.keys: Optional[torch.Tensor] = None
        self.values: Optional[torch.Tensor] = None

    def __call__(self, module, inputs, output):
        if self.at is not None:
            b, p = self.at
            self.keys = inputs[0][b, p].float()
            self.values = output[b, p][..., self.target.value_slice].float()
        if self.add is not None:
            b, p, delta = self.add
            lo, hi = self.target.rows
            full = F.pad(delta, (lo, output.shape[-1] - hi)).to(output.dtype)  # (out,)
            output = output.index_put((b, p), full.expand(b.shape[0], -1), accumulate=True)
        return output

    @contextmanager
    def attached(self):
        handle = self.target.module.register_forward_hook(self)
        try:
            yield self
        finally:
            handle.remove()


def pad(seqs: Sequence[Sequence[int]], device, pad_id: int = 0) -> torch.Tensor:
    """Right-padded (b, T) ids; causal models never look right, so padding needs no mask."""
    T = max(len(s) for s in seqs)
    out = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
    return out.to(device)


def log_probs_at(model, h: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """log-softmax of the next-token logits at (b, p) pairs of the final residual h: (n, V)."""
    return torch.log_softmax(model.head(h[b, p]), dim=-1)


def idx(values, device) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.long, device=device)


@contextmanager
def frozen(model):
    """No parameter needs a gradient while δ is optimised (saves a model's worth of gradients);
    the flags are restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def sample(model, prompts: List[List[int]], new_tokens: int, top_k: int, gen: torch.Generator, start=None) -> List[List[int]]:
    """Top-k sampling (ROME's generate_fast: softmax, keep the k best, renormalise, draw) of
    ``new_tokens`` tokens after each prompt; returns prompt + sampled ids. Prompts of one length
    run their prompt pass together; then each step decodes one token from the layers' kept states
    (Mamba: conv window and SSM state; NeoX: keys and values). Models whose state does not grow with
    the tokens (their blocks have ``next_state``: Mamba) decode every prompt in one batch, and draw
    each step for all rows at once (in prompt-length order); the others decode one length at a time.
    Draws on the host with ``gen``, so a seed gives the same samples on every device. ``start``
    (fixed-state models): (final residual at each prompt's last token (n, d), per-layer states entering
    the next token), rows in ``decode_order(prompts)``, from a pass the caller ran anyway (the
    evaluation's): the prompt passes are skipped."""
    device = next(model.parameters()).device
    out = [list(p) for p in prompts]
    groups: dict = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    if new_tokens <= 0:
        return out
    with torch.no_grad():
        if decodes_from_states(model):
            _sample_states(model, out, [(T, groups[T]) for T in sorted(groups)], new_tokens, top_k, gen, device, start)
            return out
        if start is not None:
            raise ValueError("sample(start=...) needs a model whose blocks decode from a fixed-size state")
        for T, members in sorted(groups.items()):
            rows = idx(range(len(members)), device)
            h = embed(model, pad([prompts[i] for i in members], device))
            kept = []
            for layer in model.layers:
                h, k = layer(h, keep=True)
                kept.append(k)
            for step in range(new_tokens):
                new = _draw(model, h[:, -1], top_k, gen)
                for i, x in zip(members, new.tolist()):
                    out[i].append(x)
                if step == new_tokens - 1:
                    break
                t = T + step  # position of the token just drawn
                h = embed(model, new[:, None].to(device))
                for li, layer in enumerate(model.layers):
                    h, k = layer(h, state=layer.resume_state(kept[li], t, rows), pos0=t, keep=True)
                    kept[li] = tuple(torch.cat([a, b], dim=1) for a, b in zip(kept[li], k))
    return out


def _draw(model, last: torch.Tensor, top_k: int, gen: torch.Generator) -> torch.Tensor:
    """One top-k draw per row from the final residual at the last token (b, d): (b,) ids on the host."""
    return _pick(*_top(model, last, top_k), gen)


def _top(model, last: torch.Tensor, top_k: int):
    top = torch.topk(torch.softmax(model.head(last), dim=-1), top_k, dim=-1)
    return top.values, top.indices


def _pick(values: torch.Tensor, indices: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    probs = (values / values.sum(-1, keepdim=True)).double().cpu()
    pick = torch.multinomial(probs, 1, generator=gen).squeeze(1)
    return indices.cpu().gather(1, pick[:, None]).squeeze(1)


def use_cuda_graphs(device) -> bool:
    """CUDA graphs for ROME's repeated fixed-shape steps (decoding, v*): on CUDA unless
    ``FACTSWEEP_NO_CUDA_GRAPH=1``. A step replays as one launch, where eagerly it is ~35 launches a
    layer, a host cost far over the GPU's work at mamba-2.8b (a decode step reads the weights once: 2.5 ms)."""
    return torch.device(device).type == "cuda" and os.environ.get("FACTSWEEP_NO_CUDA_GRAPH", "") in ("", "0")


def decodes_from_states(model) -> bool:
    """Every block decodes from a fixed-size state (``next_state``: Mamba): ``sample`` decodes all rows
    together, and can start from states a caller's pass kept (``start``)."""
    return all(hasattr(layer, "next_state") for layer in model.layers)


def decode_order(prompts: Sequence[Sequence[int]]) -> List[int]:
    """The order of ``sample``'s rows for fixed-state models (by prompt length, then index): each step
    draws for all rows at once from one host generator, so the order decides which draw a row gets."""
    groups: dict = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    return [i for T in sorted(groups) for i in groups[T]]


def states_at(layer, kept, rows: Sequence[int], ts: Sequence[int], device) -> tuple:
    """The block's state entering token ts[i] of batch row rows[i], for each i, from its kept
    per-token states (``resume_state``, one call per distinct token)."""
    groups: dict = {}
    for i, t in enumerate(ts):
        groups.setdefault(t, []).append(i)
    order = [i for members in groups.values() for i in members]
    parts = [layer.resume_state(kept, t, idx([rows[i] for i in members], device)) for t, members in groups.items()]
    back = idx(sorted(range(len(order)), key=order.__getitem__), device)  # entry i's place in the concatenation
    return tuple(torch.cat(p, 0)[back].contiguous() for p in zip(*parts))


def _sample_states(model, out: List[List[int]], groups, new_tokens: int, top_k: int, gen, device, start=None) -> None:
    """``sample`` for models with a fixed-size state: a prompt pass per length (or the caller's
    ``start``), then every row decodes together from (conv window, SSM state) per layer; on CUDA each
    decode step is one graph replay."""
    order = [i for _, members in groups for i in members]
    if start is None:
        lasts, states = [], [[] for _ in model.layers]
        for T, members in groups:
            h = embed(model, pad([out[i] for i in members], device))
            rows = idx(range(len(members)), device)
            for li, layer in enumerate(model.layers):
                h, k = layer(h, keep=True)
                states[li].append(layer.resume_state(k, T, rows))
            lasts.append(h[:, -1])
        last = torch.cat(lasts, 0)
        state = [tuple(torch.cat(parts, 0).contiguous() for parts in zip(*per)) for per in states]
    else:
        last, state = start

    def step(ids, state):
        """Embed the drawn tokens, every block from its state: the top-k of the next token, new states."""
        h = embed(model, ids)
        new = []
        for li, layer in enumerate(model.layers):
            h, k = layer(h, state=state[li], keep=True)
            new.append(layer.next_state(state[li], k))
        return _top(model, h[:, -1], top_k), new

    top = _top(model, last, top_k)
    graph = None
    n = len(order)
    if use_cuda_graphs(device) and new_tokens > 2:
        # rows padded to a power of two (copies of row 0, never drawn from): one graph serves batches
        # of similar size (cases with more or fewer generation prompts). Not one bucket for all: 16 rows
        # for the evaluations' 3 rows ran 0.05-0.1 s slower an edit at mamba-2.8b (one H200 run each way)
        rows = max(DECODE_MIN_ROWS, 1 << (n - 1).bit_length())
        graph, ids, g_state, g_top = _decode_graph(model, step, state, rows, top_k, device)
        for (past, hs), (past_n, hs_n) in zip(g_state, state):  # this call's start in the graph's inputs
            past[:n].copy_(past_n)
            past[n:].copy_(past_n[:1].expand(rows - n, *past_n.shape[1:]))
            hs[:n].copy_(hs_n)
            hs[n:].copy_(hs_n[:1].expand(rows - n, *hs_n.shape[1:]))
    for s in range(new_tokens):
        new = _pick(*top, gen)
        for i, x in zip(order, new.tolist()):
            out[i].append(x)
        if s == new_tokens - 1:
            break
        if graph is not None:
            ids[:n].copy_(new[:, None])
            graph.replay()
            top = (g_top[0][:n], g_top[1][:n])
        else:
            top, state = step(new[:, None].to(device), state)


def weights_id(model) -> int:
    """Where the model's weights live: a cache of work on them (a captured graph reads them by address)
    is void once they move. Their values change only inside an edit, which restores them bit for bit."""
    return hash(tuple(p.data_ptr() for p in model.parameters()))


def _decode_graph(model, step, state, rows: int, top_k: int, device):
    """(graph, ids, state, top) of one decode step captured for ``rows`` rows, from the per-model
    cache: later calls (the post-edit evaluation after the pre-edit one, every further edit) copy their
    start into the captured inputs and replay, where each call used to capture its own (a warm-up step,
    the capture and its instantiation: about as long as 20 replays at mamba-2.8b). Edits change weights
    in place, and the graph reads them at each replay, so it decodes the model as it is then."""
    key = (weights_id(model), rows, top_k, torch.backends.cuda.matmul.allow_tf32, torch.is_autocast_enabled(),
           scan_grad.enabled(), os.environ.get("FACTSWEEP_NO_TRITON", ""))
    cache = _DECODE.setdefault(model, OrderedDict())
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    ids = torch.zeros(rows, 1, dtype=torch.long, device=device)
    g_state = [tuple(t[:1].expand(rows, *t.shape[1:]).contiguous() for t in s) for s in state]  # filled by the caller
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):  # warm-up off the capture: kernels compiled, workspaces made
        step(ids, g_state)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_top, g_new = step(ids, g_state)
        for (past, hs), (past_n, hs_n) in zip(g_state, g_new):  # the next step starts from the new states
            past.copy_(past_n)
            hs.copy_(hs_n)
    cache[key] = (graph, ids, g_state, g_top)
    while len(cache) > DECODE_GRAPHS:
        cache.popitem(last=False)
    return cache[key]
