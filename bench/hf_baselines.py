"""Baselines for the engine benchmark: causal tracing with forward hooks on Hugging Face `transformers`.

Two ways researchers trace today, implemented on the same weights the engine runs:

* naive: one forward per cell on a [clean, corrupted] batch, the hook copying the clean row's value
  into the corrupted row (ROME's ``trace_with_patch``, romba's patcher);
* batched hooks: the clean run once, then many cells per forward, each row patched at its own
  (layer, token) from the cached clean values (what nnsight / pyvene users write).

Sites: ``residual`` (block output), ``mixer`` (Mamba mixer output o), ``ssm`` (s, the scan output
incl. the D skip, before gating), ``gate`` (g = SiLU(z)); NeoX ``attn`` and ``mlp``. In the
``transformers`` slow Mamba path the mixer's ``act`` module is called twice per forward: first on
the conv output, then on the gate; the second call is g. s is never a module output, so it is
patched at ``out_proj``'s input, y = s ⊙ g, as y[t] = s_clean[t] ⊙ g[t]; s_clean is read by running
each clean mixer once more with g forced to 1.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass
class Cell:
    site: str
    layer: int
    token: int
    window: int


def window_layers(layer: int, window: int, num_layers: int) -> range:
    """ROME's window: range(max(0, l - w//2), min(L, l - (-w//2)))."""
    w = max(1, window)
    return range(max(0, layer - w // 2), min(num_layers, layer - (-w // 2)))


def _layers(model):
    return model.backbone.layers if hasattr(model, "backbone") else model.gpt_neox.layers


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _replace_first(out, new):
    return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new


class _GateCounter:
    """Tells the gate call of a Mamba mixer's shared ``act`` module from the conv call."""

    def __init__(self):
        self.calls = 0


def _on_gate(mixer, handles: list, fn) -> None:
    """Hooks the gate call of ``mixer``'s shared ``act`` module (its second call in a forward; the
    first is the conv's): ``fn(g)`` runs on the gate output, and a tensor it returns replaces it."""
    counter = _GateCounter()
    handles.append(mixer.register_forward_pre_hook(lambda m, a: setattr(counter, "calls", 0)))

    def hook(m, a, o):
        counter.calls += 1
        return fn(o) if counter.calls == 2 else None

    handles.append(mixer.act.register_forward_hook(hook))


@contextlib.contextmanager
def _hooks(handles):
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def clean_values(model, input_ids: torch.Tensor, sites: list[str]) -> dict[str, list[torch.Tensor]]:
    """Per site and layer, the clean run's value at every token, shaped (T, width)."""
    layers = _layers(model)
    out: dict[str, list] = {s: [None] * len(layers) for s in sites}
    handles = []
    mixer_inputs: list = [None] * len(layers)
    for i, layer in enumerate(layers):
        if "residual" in sites:
            handles.append(layer.register_forward_hook(lambda m, a, o, i=i: out["residual"].__setitem__(i, _first(o)[0].clone())))
        if hasattr(layer, "mixer"):
            mixer = layer.mixer
            if "mixer" in sites:
                handles.append(mixer.register_forward_hook(lambda m, a, o, i=i: out["mixer"].__setitem__(i, _first(o)[0].clone())))
            if "ssm" in sites:
                handles.append(mixer.register_forward_pre_hook(lambda m, a, i=i: mixer_inputs.__setitem__(i, a[0].clone())))
            if "gate" in sites:
                _on_gate(mixer, handles, lambda g, i=i: out["gate"].__setitem__(i, g[0].transpose(0, 1).clone()))  # (D, T) -> (T, D)
        else:
            if "attn" in sites:
                handles.append(layer.attention.register_forward_hook(lambda m, a, o, i=i: out["attn"].__setitem__(i, _first(o)[0].clone())))
            if "mlp" in sites:
                handles.append(layer.mlp.register_forward_hook(lambda m, a, o, i=i: out["mlp"].__setitem__(i, _first(o)[0].clone())))
    with _hooks(handles):
        model(input_ids[None])
    if "ssm" in sites:
        for i, layer in enumerate(layers):
            out["ssm"][i] = _ssm_of(layer.mixer, mixer_inputs[i])[0]
    return out


def _ssm_of(mixer, normed: torch.Tensor) -> torch.Tensor:
    """s of one mixer on its (normed) input: the out_proj input with the gate forced to 1."""
    counter = _GateCounter()
    captured = {}

    def ones_gate(m, a, o):
        counter.calls += 1
        return torch.ones_like(o) if counter.calls == 2 else o

    h1 = mixer.act.register_forward_hook(ones_gate)
    h2 = mixer.out_proj.register_forward_pre_hook(lambda m, a: captured.__setitem__("y", a[0].clone()))
    with _hooks([h1, h2]):
        mixer(normed)
    return captured["y"]  # (B, T, D)


def _patch_hooks(model, plan: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]], clean: dict):
    """Installs hooks that, for each (site, layer), overwrite rows[k] at tokens[k] with the clean value."""
    layers = _layers(model)
    handles = []
    for (site, li), (rows, toks) in plan.items():
        layer = layers[li]
        value = clean[site][li][toks]  # (n, width), gathered once per plan

        if site == "residual":
            def hook(m, a, o, rows=rows, toks=toks, value=value):
                h = _first(o).clone()
                h[rows, toks] = value.to(h.dtype)
                return _replace_first(o, h)
            handles.append(layer.register_forward_hook(hook))
        elif site in ("mixer", "attn", "mlp"):
            module = {"mixer": getattr(layer, "mixer", None), "attn": getattr(layer, "attention", None), "mlp": getattr(layer, "mlp", None)}[site]

            def hook(m, a, o, rows=rows, toks=toks, value=value):
                h = _first(o).clone()
                h[rows, toks] = value.to(h.dtype)
                return _replace_first(o, h)
            handles.append(module.register_forward_hook(hook))
        elif site == "gate":
            def patch(o, rows=rows, toks=toks, value=value):
                g = o.clone()  # (B, D, T)
                g[rows, :, toks] = value.to(g.dtype)
                return g
            _on_gate(layer.mixer, handles, patch)
        elif site == "ssm":
            gates = {}
            _on_gate(layer.mixer, handles, lambda o, gates=gates: gates.__setitem__("g", o))

            def pre(m, a, rows=rows, toks=toks, value=value, gates=gates):
                y = a[0].clone()  # (B, T, D) = s * g
                y[rows, toks] = (value * gates["g"][rows, :, toks]).to(y.dtype)
                return (y,) + tuple(a[1:])
            handles.append(layer.mixer.out_proj.register_forward_pre_hook(pre))
        else:
            raise ValueError(f"unknown site {site!r}")
    return handles


def _plan(cells: list[Cell], num_layers: int, device) -> dict:
    per: dict[tuple[str, int], tuple[list, list]] = {}
    for row, c in enumerate(cells):
        for li in window_layers(c.layer, c.window, num_layers):
            rows, toks = per.setdefault((c.site, li), ([], []))
            rows.append(row)
            toks.append(c.token)
    return {k: (torch.tensor(r, device=device), torch.tensor(t, device=device)) for k, (r, t) in per.items()}


@torch.no_grad()
def batched_hooks(model, corrupted: torch.Tensor, clean: dict, cells: list[Cell], answer: int, batch: int = 256) -> torch.Tensor:
    """p(answer) per cell, `batch` rows per forward, each row patched at its own (layer, token).
    corrupted: token ids (S, T) for swap (S = 1), or input embeddings (S, T, d) for noise; the S
    noised copies of one cell share it and their mean is returned."""
    num_layers = len(_layers(model))
    S = corrupted.shape[0]
    out = []
    per = max(1, batch // S)
    for start in range(0, len(cells), per):
        chunk = cells[start:start + per]
        rows_cells = [c for c in chunk for _ in range(S)]
        handles = _patch_hooks(model, _plan(rows_cells, num_layers, corrupted.device), clean)
        with _hooks(handles):
            if corrupted.is_floating_point():
                logits = model(inputs_embeds=corrupted.repeat(len(chunk), 1, 1)).logits[:, -1].float()
            else:
                logits = model(corrupted.repeat(len(chunk), 1)).logits[:, -1].float()
        p = torch.softmax(logits, -1)[:, answer].view(len(chunk), S).mean(1)
        out.append(p)
    return torch.cat(out)


@torch.no_grad()
def naive(model, clean_ids: torch.Tensor, corrupted_ids: torch.Tensor, cells: list[Cell], answer: int,
          embed_noise: torch.Tensor | None = None) -> torch.Tensor:
    """p(answer) per cell, one forward per cell on [clean, corrupted...], recomputing the clean run
    each time as ROME does; the hook copies row 0's value into the other rows."""
    num_layers = len(_layers(model))
    out = []
    S = corrupted_ids.shape[0]
    ids = torch.cat([clean_ids[None], corrupted_ids])
    for c in cells:
        clean = None

        def copy_row0(h, t):
            h = h.clone()
            h[1:, t] = h[0, t]
            return h

        handles = []
        layers = _layers(model)
        for li in window_layers(c.layer, c.window, num_layers):
            layer = layers[li]
            if c.site == "residual":
                handles.append(layer.register_forward_hook(lambda m, a, o, t=c.token: _replace_first(o, copy_row0(_first(o), t))))
            elif c.site in ("mixer", "attn", "mlp"):
                mod = {"mixer": getattr(layer, "mixer", None), "attn": getattr(layer, "attention", None), "mlp": getattr(layer, "mlp", None)}[c.site]
                handles.append(mod.register_forward_hook(lambda m, a, o, t=c.token: _replace_first(o, copy_row0(_first(o), t))))
            elif c.site == "gate":
                def copy_gate(o, t=c.token):
                    g = o.clone()
                    g[1:, :, t] = g[0, :, t]
                    return g
                _on_gate(layer.mixer, handles, copy_gate)
            elif c.site == "ssm":
                gates = {}
                _on_gate(layer.mixer, handles, lambda o, gates=gates: gates.__setitem__("g", o))

                def pre(m, a, t=c.token, gates=gates):
                    y = a[0].clone()
                    g = gates["g"][:, :, t].to(y.dtype)  # (B, D)
                    s0 = y[0, t] / g[0]  # naive users divide back; exact unless g underflows
                    y[1:, t] = s0 * g[1:]
                    return (y,) + tuple(a[1:])
                handles.append(layer.mixer.out_proj.register_forward_pre_hook(pre))
        if embed_noise is not None:
            emb = model.get_input_embeddings()
            handles.append(emb.register_forward_hook(lambda m, a, o: o + embed_noise.to(o.dtype)))
        with _hooks(handles):
            logits = model(ids).logits[1:, -1].float()
        out.append(torch.softmax(logits, -1)[:, answer].mean())
        del clean
    return torch.stack(out)
