"""factsweep engine: PyTorch models with named intervention sites, cached activation patching.

Run as a worker with ``python3 -m engine`` (length-prefixed protobuf on stdin/stdout, logs on stderr).
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 3  # 3: Cell.head (per-head restores); keep in sync with proto/src/index.ts
