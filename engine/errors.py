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
    code = "INVALID_ARGUMENT"


class NotFound(EngineError):
    code = "NOT_FOUND"


class ProtocolError(EngineError):
    code = "PROTOCOL"


class VersionMismatch(EngineError):
    code = "VERSION_MISMATCH"


class NumericError(EngineError):
    """NaN or inf in weights or outputs."""

    code = "NUMERIC"


class ResourceExhausted(EngineError):
    code = "RESOURCE_EXHAUSTED"


class CheckpointError(InvalidArgument):
    """A checkpoint folder that cannot be loaded: missing/misshaped tensors, unknown model_type."""
