"""The memory an engine worker needs for a sweep, from ``config.json`` alone (nothing allocated).

``sweepctl plan`` asks this module, so that its figure is the engine's own arithmetic rather than a
second copy of it in TypeScript::

    echo '{"path": "m/", "dtype": "bfloat16", "samples": 1, "tokens": [12, 15]}' | python -m engine.estimate

prints one JSON object (byte counts):

- ``weights``: the model's parameters at the run dtype (the model built on the meta device);
- ``prompt_cache_max`` / ``prompt_cache_total``: what the cache holds for the longest prompt and for
  every prompt (``cache.prompt_cache_bytes``: clean sites, corrupted streams, kept states);
- ``batch_min``: the smallest micro-batch of the fast path, one cell of the longest prompt (``samples``
  rows of its tokens, at ``packed_bytes_per_position``), with the fused GPU kernels (``gpu``) and
  with the PyTorch path that CPUs run (``cpu``);
- ``minimum``: weights + the largest prompt's runs + the smallest batch, per device kind: below it a
  worker cannot run the sweep's longest prompt. Above it, the engine gives half of what is free to
  its prompt cache (LRU) and sizes micro-batches from the rest.
"""

from __future__ import annotations

import json
import sys

from .architectures import get as architecture_of
from .cache import _BYTES
from .checkpoint import _model_type, _on_meta, _parse_config, parse_dtype
from .checkpoint_files import read_config
from .errors import EngineError, InvalidArgument

#: Prompts one request may list (a sweep's prompts are capped far lower by the planner).
MAX_PROMPTS = 1_000_000
#: Longest prompt, in tokens, the estimate accepts.
MAX_TOKENS = 1_000_000


def _positive_int(value, field: str, cap: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= cap:
        raise InvalidArgument(f"{field}: expected an integer in 1..{cap}, got {value!r}", field=field)
    return value


def worker_memory(path: str, dtype: str, tokens: list, samples: int = 1) -> dict:
    """Byte counts of a worker running prompts of ``tokens`` tokens each (see the module docstring)."""
    if not isinstance(tokens, list) or not 0 < len(tokens) <= MAX_PROMPTS:
        raise InvalidArgument(f"tokens: expected a list of 1..{MAX_PROMPTS} prompt lengths", field="tokens")
    tokens = [_positive_int(t, "tokens", MAX_TOKENS) for t in tokens]
    samples = _positive_int(samples, "samples", 4096)
    tdtype = parse_dtype(dtype)
    b = _BYTES[tdtype]
    cfg = read_config(path)
    arch = architecture_of(_model_type(cfg))
    config = _parse_config(arch, cfg)
    with _on_meta():
        model = arch.lm(config)
    weights = sum(p.numel() for p in model.parameters()) * b  # parameters() yields a tied tensor once
    per_prompt = {t: arch.prompt_cache_bytes(config, t, samples, b) for t in set(tokens)}
    longest = max(tokens)
    batch = {kind: model.packed_bytes_per_position(tdtype, fused, longest) * longest * samples
             for kind, fused in (("gpu", True), ("cpu", False))}
    return {
        "model_type": arch.model_type,
        "dtype": dtype or "float32",
        "weights": weights,
        "prompt_cache_max": per_prompt[longest],
        "prompt_cache_total": sum(per_prompt[t] for t in tokens),
        "longest_prompt_tokens": longest,
        "batch_min": batch,
        "minimum": {kind: weights + per_prompt[longest] + batch[kind] for kind in batch},
    }


def main() -> int:
    try:
        req = json.loads(sys.stdin.read(64 << 20))
        if not isinstance(req, dict) or not isinstance(req.get("path"), str):
            raise InvalidArgument("expected a JSON object with path, dtype, samples and tokens", field="path")
        out = worker_memory(req["path"], str(req.get("dtype") or "float32"), req.get("tokens"), req.get("samples", 1))
    except (EngineError, ValueError) as e:
        sys.stderr.write(f"engine.estimate: {e}\n")
        return 2
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
