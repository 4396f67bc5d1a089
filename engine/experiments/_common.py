"""Helpers shared by the experiment kinds: validating JSON params with errors that name the field
(``params.<name>``), and running the block stack from a given layer.

Experiments reach models and prepared prompts through ``Engine``'s public methods
(``checkpoint``, ``prepared``, ``prompt_inputs``).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from ..errors import InvalidArgument
from ..sites import bind


# -- params -----------------------------------------------------------------------------------

def bad(field: str, expected: str, got: Any, fix: str = "") -> InvalidArgument:
    """An InvalidArgument naming ``params.<field>``, what was expected, what came in and the fix."""
    shown = repr(got)
    if len(shown) > 120:
        shown = shown[:117] + "..."
    msg = f"params.{field}: expected {expected}, got {shown}"
    return InvalidArgument(msg + (f"; {fix}" if fix else ""), field=f"params.{field}")


def check_keys(params: dict, allowed: tuple, where: str = "") -> None:
    """Unknown keys are refused (a typo would otherwise silently run the defaults)."""
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        name = f"{where}.{unknown[0]}" if where else unknown[0]
        raise bad(name, f"one of the keys {list(allowed)}", unknown[0], "remove or rename it")


def as_int(value: Any, field: str, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    """An integer (bools refused) within [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise bad(field, "an integer" + _range(lo, hi), value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise bad(field, "an integer" + _range(lo, hi), value)
    return value


def _range(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f" in {lo}..{hi}"
    if lo is not None:
        return f" >= {lo}"
    return ""


def as_float(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(field, "a finite number", value)
    return float(value)


def as_list(value: Any, field: str, nonempty: bool = True) -> list:
    if not isinstance(value, list):
        raise bad(field, "a JSON array", value)
    if nonempty and not value:
        raise bad(field, "a non-empty JSON array", value)
    return value


def as_ids(value: Any, field: str, vocab_size: int, max_positions: int = 0, name_token: bool = True) -> list:
    """A non-empty list of token ids in [0, vocab_size), within the model's positions. A bad token's
    error names ``field[i]`` (``name_token``) or the whole list ``field``."""
    if not isinstance(value, list):
        raise bad(field, "a non-empty array of token ids", value)
    if not value:
        raise bad(field, "at least one token id", value)
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < vocab_size:
            raise bad(f"{field}[{i}]" if name_token else field, f"token ids of the model's vocabulary, 0..{vocab_size - 1}",
                      v, "was the text tokenized with this model's tokenizer?")
    if max_positions and len(value) > max_positions:
        raise bad(field, f"at most {max_positions} tokens (max_position_embeddings)", f"{len(value)} tokens",
                  "shorten the prompt")
    return list(value)


# -- running the model from a layer -----------------------------------------------------------

def embed(model, ids: torch.Tensor) -> torch.Tensor:
    """The residual stream entering block 0 for token ids (b, T): (b, T, d) in the residual dtype,
    what the model's own forward starts from."""
    return model.embed(ids).to(model.residual_dtype())


def input_of_layer(model, clean: dict, layer: int) -> torch.Tensor:
    """The clean residual stream entering block ``layer`` (layer = L: the final norm's input) for all
    tokens, (1, T, d) in the residual dtype, from a prompt's recorded clean values."""
    x = clean["embed"] if layer == 0 else clean["residual"][layer - 1][None]
    return x.to(model.residual_dtype())


def run_layers(model, x: torch.Tensor, start: int, hook=None, layer_fn=None, end: Optional[int] = None) -> torch.Tensor:
    """Blocks ``start..end-1`` (end: L) on the residual stream ``x`` (b, T, d); ``hook(site, layer,
    value)`` is bound per block as in the model's own forward. ``layer_fn(j, layer, x, block_hook)``
    replaces a block's call where given (returns the block output, or None to run the block as is).
    Returns the output of block end-1 (b, T, d); with end = L the last block's, before the final norm."""
    for j in range(start, len(model.layers) if end is None else end):
        layer = model.layers[j]
        y = layer_fn(j, layer, x, bind(hook, j)) if layer_fn is not None else None
        x = y if y is not None else layer(x, bind(hook, j))[0]
    return x


def answer_probs(model, final: torch.Tensor, answer_id: int) -> torch.Tensor:
    """p(answer) at the last token for each row of the last block's output (b, T, d) → (b,)."""
    logits = model.head(final[:, -1])  # (b, V)
    return torch.softmax(logits.float(), dim=-1)[:, answer_id]
