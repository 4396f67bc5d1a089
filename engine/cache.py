"""Per-prompt cache of the clean and corrupted runs, under a byte budget with LRU eviction.

What one prompt holds (``PromptRuns``), and why:

* ``clean[site]``: the clean run's value of every site at every (layer, token), ``(L, T, width)``
  (``embed``: ``(1, T, d)``). A cell restores ``clean[site][layer, token]``.
* ``stream``: the corrupted run's residual stream entering every layer and the final norm,
  ``(L+1, S, T, d)`` for S corrupted rows (noise samples, or 1 for swap). A cell that starts at layer
  j reads its input there; rows of a batch that start later copy it layer by layer.
* ``kept[j]``: the corrupted run's per-token recurrent state of layer j, each ``(S, T, ...)``: Mamba
  the conv input a ``(S, T, d_in)`` and the SSM state ``(S, T, d_in, n)`` (float32); GPT-NeoX the
  rotated keys and values ``(S, T, H, e)``. A cell at token t resumes from the entries at t−1.

:func:`prompt_cache_bytes` gives the same figure from a config without allocating anything.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import torch

from .architectures import get as architecture_of
from .errors import ResourceExhausted

_BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2, torch.float64: 8}


@dataclass
class PromptRuns:
    """The cached runs of one prepared prompt (all tensors on the model's device)."""

    answer_id: int
    clean_argmax: int
    p_clean: float
    p_corrupt: float
    logit_clean: float
    logit_corrupt: float
    num_tokens: int
    num_samples: int
    clean: dict
    stream: torch.Tensor
    kept: list
    nbytes: int = 0
    # Runs of several prompts packed into one pass (engine/packed.py): the samples each prompt has
    # (0: num_samples, one prompt), and each prompt's answer id on the device.
    cell_samples: int = 0
    answers: Optional[torch.Tensor] = None

    def __post_init__(self):
        self.nbytes = tensor_bytes([self.clean, self.stream, self.kept])
        self.cell_samples = self.cell_samples or self.num_samples


def tensor_bytes(obj) -> int:
    """Bytes of every tensor in a nest of dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def prompt_cache_bytes(model_type: str, config, num_tokens: int, samples: int = 1, dtype: torch.dtype = torch.float32) -> int:
    """Bytes :class:`PromptRuns` holds for one prompt of ``num_tokens`` tokens and ``samples``
    corrupted rows (1 for swap, the noise samples otherwise), computed from the config alone.

    ``config`` is a ``mamba.Config`` / ``gpt_neox.Config`` (or anything with their attributes)."""
    return architecture_of(model_type).prompt_cache_bytes(config, num_tokens, samples, _BYTES[dtype])


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class PromptCache:
    """LRU map ``(model_id, prompt_key) → PromptRuns`` holding at most ``budget_bytes``."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = int(budget_bytes)
        self._entries: "OrderedDict[tuple, PromptRuns]" = OrderedDict()
        self.stats = CacheStats()

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def keys(self) -> list:
        return list(self._entries)

    def get(self, key: tuple) -> Optional[PromptRuns]:
        """The entry (now most recently used), counting a hit or a miss."""
        entry = self._entries.get(key)
        if entry is None:
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return entry

    def __contains__(self, key: tuple) -> bool:
        return key in self._entries

    def put(self, key: tuple, entry: PromptRuns) -> list:
        """Insert, evicting least recently used entries until it fits. Returns the evicted keys.
        An entry larger than the whole budget is refused (nothing is evicted for it)."""
        if entry.nbytes > self.budget_bytes:
            raise ResourceExhausted(
                f"prompt {key[1]!r} needs {entry.nbytes} cache bytes, more than the whole cache budget "
                f"({self.budget_bytes} bytes); raise cache_budget_bytes or use fewer noise samples",
                field="cache_budget_bytes",
            )
        self._entries.pop(key, None)
        evicted = []
        while self._entries and self.nbytes + entry.nbytes > self.budget_bytes:
            old, _ = self._entries.popitem(last=False)
            evicted.append(old)
            self.stats.evictions += 1
        self._entries[key] = entry
        return evicted

    def remove(self, key: tuple) -> bool:
        """Drop one entry (an explicit evict); True if it was there."""
        if self._entries.pop(key, None) is None:
            return False
        self.stats.evictions += 1
        return True

    def set_budget(self, budget_bytes: int) -> list:
        """Change the budget, evicting LRU entries that no longer fit."""
        self.budget_bytes = int(budget_bytes)
        evicted = []
        while self._entries and self.nbytes > self.budget_bytes:
            old, _ = self._entries.popitem(last=False)
            evicted.append(old)
            self.stats.evictions += 1
        return evicted
