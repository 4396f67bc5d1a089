"""Corruptions: how the corrupted run's input embeddings are made from the clean prompt.

* ``noise`` (ROME, ``experiments/causal_trace.py``): ``samples`` copies of the prompt, Gaussian noise
  of ``scale × std`` added to the subject tokens' embeddings. ``std`` is given, or computed as ROME's
  ``collect_embedding_std`` does (scalar std over all elements of the subject tokens' embeddings, here
  those of this prompt). The noise is drawn with ``numpy.random.RandomState(seed).randn`` as ROME
  does (ROME seeds 1), on the host, so a seed gives the same noise on every device. An explicit
  ``(samples, T, d)`` tensor replaces all of that and is added as is.
* ``swap`` (romba): the corrupted prompt's token ids, same length as the clean prompt (the caller
  aligns the subjects' last tokens). One corrupted row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch

from .errors import InvalidArgument
from .kernels import host_to_device


@dataclass
class NoiseSpec:
    """ROME's Gaussian embedding noise. ``explicit`` (samples, T, d) overrides scale/std/seed."""

    scale: float = 3.0
    std: Optional[float] = None
    samples: int = 10
    seed: int = 0
    explicit: Optional[torch.Tensor] = None


@dataclass
class SwapSpec:
    """Subject swap: the corrupted prompt's token ids (same length as the clean prompt)."""

    corrupted_ids: list


Corruption = Union[NoiseSpec, SwapSpec]


def validate_ids(ids, vocab_size: int, field: str, max_positions: int = 0) -> list:
    """Token ids as a list of ints in [0, vocab_size), non-empty and within the model's positions."""
    try:
        ids = [int(i) for i in ids]
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"{field}: expected a list of integer token ids ({e})", field=field) from e
    if not ids:
        raise InvalidArgument(f"{field}: expected at least one token id, got an empty list", field=field)
    bad = [(i, v) for i, v in enumerate(ids) if not 0 <= v < vocab_size]
    if bad:
        i, v = bad[0]
        raise InvalidArgument(
            f"{field}[{i}] = {v} is outside the model's vocabulary [0, {vocab_size}); was the prompt "
            f"tokenized with this model's tokenizer?",
            field=field,
        )
    if max_positions and len(ids) > max_positions:
        raise InvalidArgument(
            f"{field}: {len(ids)} tokens, but the model allows at most {max_positions} "
            f"(max_position_embeddings); shorten the prompt",
            field=field,
        )
    return ids


def corrupted_embeddings(model, ids: torch.Tensor, subject: tuple, spec: Corruption) -> torch.Tensor:
    """The corrupted run's input embeddings (S, T, d) for clean ids (T,) and subject span [b, e)."""
    T = ids.shape[0]
    clean = model.embed(ids[None])  # (1, T, d)
    d = clean.shape[-1]
    if isinstance(spec, SwapSpec):
        cids = validate_ids(spec.corrupted_ids, model.config.vocab_size, "corrupted_ids")
        if len(cids) != T:
            raise InvalidArgument(
                f"corrupted_ids: expected {T} token ids (the clean prompt's length, subjects aligned on "
                f"their last token), got {len(cids)}; pad or choose a swap subject of the same token length",
                field="corrupted_ids",
            )
        return model.embed(host_to_device(torch.tensor(cids, dtype=torch.long), ids.device)[None])  # (1, T, d)
    if not isinstance(spec, NoiseSpec):
        raise InvalidArgument(f"corruption: expected NoiseSpec or SwapSpec, got {type(spec).__name__}", field="corruption")
    if spec.explicit is not None:
        noise = torch.as_tensor(spec.explicit)
        if noise.dim() != 3 or noise.shape[0] < 1 or tuple(noise.shape[1:]) != (T, d):
            raise InvalidArgument(
                f"explicit_noise: expected shape (samples, {T}, {d}) (samples ≥ 1, prompt tokens, hidden size), "
                f"got {tuple(noise.shape)}",
                field="explicit_noise",
            )
        if not bool(torch.isfinite(noise).all()):
            raise InvalidArgument("explicit_noise: contains NaN or inf", field="explicit_noise")
        return clean + host_to_device(noise.to(clean.dtype), clean.device)  # (S, T, d)
    b, e = subject
    samples = spec.samples or 10
    if samples < 1:
        raise InvalidArgument(f"samples: expected ≥ 1 noised copies, got {spec.samples}", field="samples")
    if not (math.isfinite(spec.scale) and spec.scale >= 0):
        raise InvalidArgument(f"scale: expected a finite number ≥ 0, got {spec.scale}", field="scale")
    if spec.std is not None and not (math.isfinite(spec.std) and spec.std >= 0):
        raise InvalidArgument(f"std: expected a finite number ≥ 0 (or none to compute it), got {spec.std}", field="std")
    std = spec.std if spec.std else clean[0, b:e].float().std()  # ROME: scalar std of the subject embeddings
    draw = np.random.RandomState(spec.seed % 2**32).randn(samples, e - b, d)  # ROME's prng(...)
    noise = host_to_device(torch.from_numpy(draw).float(), clean.device) * (spec.scale * std)  # (S, e-b, d)
    x = clean.expand(samples, T, d).clone()  # (S, T, d)
    x[:, b:e] += noise.to(x.dtype)
    return x
