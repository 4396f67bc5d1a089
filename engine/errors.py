"""Typed engine errors. Each maps to an ``ErrorCode`` of ``proto/engine.proto`` and names the
field at fault, so the worker can answer with an error frame instead of dying."""

from __future__ import annotations


class EngineError(Exception):
    """Base class. ``code`` is the ErrorCode name suffix; ``field`` names the offending input."""

    code = "INTERNAL"

    def __init__(self, message: str, field: str = ""):
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidArgument(EngineError):
    code = "INVALID_ARGUMENT"  # a request value the engine cannot use (the field says which)


class NotFound(EngineError):
    code = "NOT_FOUND"  # a model, prompt or file that is not there


class ProtocolError(EngineError):
    code = "PROTOCOL"  # a frame or request that breaks the worker protocol


class VersionMismatch(EngineError):
    code = "VERSION_MISMATCH"  # a client of another protocol version


class NumericError(EngineError):
    code = "NUMERIC"  # NaN or inf in weights or outputs


class ResourceExhausted(EngineError):
    code = "RESOURCE_EXHAUSTED"  # more memory than the cache budget or the device has


class CheckpointError(InvalidArgument):
    """A checkpoint folder that cannot be loaded: missing/misshaped tensors, unknown model_type."""


class CheckpointPathError(CheckpointError):
    """A checkpoint file that may not be read: a shard name that is not a plain file name, a file (or a
    link) that resolves outside the checkpoint folder, or something that is not a regular file."""


class CheckpointFormatError(CheckpointError):
    """A checkpoint file whose content is not what its format says: a safetensors header that is too
    long, not a JSON object of objects, or with bad dtypes, shapes or offsets; an index or config.json
    that is not JSON. Its message never quotes the file's bytes."""
