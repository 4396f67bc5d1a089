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
