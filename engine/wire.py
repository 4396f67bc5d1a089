"""Conversions between the worker protocol's messages (``proto/engine.proto``) and ``engine.runtime``
values: site enums, corruptions, cells, result objects and error frames. ``worker.py`` uses them to
translate each request; nothing here reads or writes frames.
"""

from __future__ import annotations

from typing import Dict, Tuple

from engine import errors
from engine.proto import engine_pb2 as pb

SITE_NAMES: Dict[int, str] = {
    number: name[len("SITE_"):].lower() for name, number in pb.Site.items() if number != pb.SITE_UNSPECIFIED
}
"""Site enum value -> design vocabulary name ("residual", "mixer", ...); derived from the proto so
the two cannot drift."""
SITE_VALUES: Dict[str, int] = {name: number for number, name in SITE_NAMES.items()}


def site_value(name: str) -> int:
    """Vocabulary name -> ``Site`` enum value."""
    try:
        return SITE_VALUES[name]
    except KeyError:
        raise errors.EngineError(
            f"engine reported site {name!r}, which proto/engine.proto's Site enum does not name "
            f"(known: {', '.join(SITE_VALUES)})"
        ) from None


def error_response(request_id: int, exc: BaseException) -> "pb.EngineResponse":
    """Builds the ``EngineError`` frame for an exception: engine errors keep their code and field,
    memory exhaustion becomes RESOURCE_EXHAUSTED, anything else INTERNAL with the exception text."""
    if isinstance(exc, errors.EngineError):
        try:
            code = pb.ErrorCode.Value("ERROR_CODE_" + exc.code)
        except ValueError:
            code = pb.ERROR_CODE_INTERNAL
        message, field = str(exc), exc.field
    elif isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        code, message, field = pb.ERROR_CODE_RESOURCE_EXHAUSTED, f"{type(exc).__name__}: {exc}", ""
    else:
        code, message, field = pb.ERROR_CODE_INTERNAL, f"{type(exc).__name__}: {exc}", ""
    return pb.EngineResponse(
        request_id=request_id, error=pb.EngineError(code=code, message=message, field=field)
    )


def _is_repeated(field) -> bool:
    # protobuf 7 (GPU machine) removed FieldDescriptor.label for the is_repeated property;
    # Debian's 3.21/4.21 only have label.
    flag = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag() if callable(flag) else flag)
    return field.label == field.LABEL_REPEATED


def to_pb(message_type, source, **overrides):
    """Copies the attributes of an engine result object named like ``message_type``'s fields,
    coercing numbers (engine values may be numpy/torch scalars)."""
    values = {}
    for field in message_type.DESCRIPTOR.fields:
        if field.name in overrides:
            values[field.name] = overrides[field.name]
            continue
        value = getattr(source, field.name)
        if _is_repeated(field):
            values[field.name] = list(value)
        elif field.type in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
            values[field.name] = float(value)
        elif field.type == field.TYPE_BOOL:
            values[field.name] = bool(value)
        elif field.type == field.TYPE_STRING:
            values[field.name] = str(value)
        else:
            values[field.name] = int(value)
    return message_type(**values)


def corruption_from_pb(req, hidden_size: Dict[str, int]):
    """``PreparePrompt.corruption`` → ``SwapSpec`` / ``NoiseSpec`` (proto3 zeros mean the defaults).
    ``hidden_size``: model_id → d of the loaded models, to shape explicit noise."""
    from engine.runtime import NoiseSpec, SwapSpec

    kind = req.corruption.WhichOneof("kind")
    if kind == "swap":
        return SwapSpec(corrupted_ids=list(req.corruption.swap.corrupted_ids))
    if kind == "noise":
        noise = req.corruption.noise
        explicit = explicit_noise(req, hidden_size) if noise.explicit_noise else None
        return NoiseSpec(
            scale=noise.scale or 3.0,  # proto3 cannot tell unset from 0; 0 noise is meaningless
            std=noise.std or None,  # 0: computed over the subject tokens' embeddings (ROME)
            samples=explicit.shape[0] if explicit is not None else (noise.samples or 10),
            seed=noise.seed,
            explicit=explicit,
        )
    raise errors.InvalidArgument("corruption is missing: set corruption.noise or corruption.swap", field="corruption")


def explicit_noise(req, hidden_size: Dict[str, int]):
    """Decodes ``explicit_noise`` (float32 little-endian, (samples, T, d)) into a tensor."""
    import numpy as np
    import torch

    field = "corruption.noise.explicit_noise"
    data = req.corruption.noise.explicit_noise
    if req.model_id not in hidden_size:
        raise errors.NotFound(
            f"model_id {req.model_id!r} is not loaded (loaded: {sorted(hidden_size) or 'none'}); "
            "send LoadModel first",
            field="model_id",
        )
    d = hidden_size[req.model_id]
    t = len(req.input_ids)
    samples = req.corruption.noise.samples
    if t == 0:
        raise errors.InvalidArgument("input_ids is empty; expected the prompt's token ids", field="input_ids")
    values, rest = divmod(len(data), 4)
    row = t * d
    if rest or values % row or values == 0 or (samples and values != samples * row):
        expected = f"{samples} × {t} × {d} = {samples * row}" if samples else f"S × {t} × {d} (a multiple of {row})"
        raise errors.InvalidArgument(
            f"{field} holds {len(data)} bytes; expected float32 little-endian values of shape "
            f"(samples, T, d) = {expected} values, with T = len(input_ids) and d = the model's "
            "hidden size",
            field=field,
        )
    array = np.frombuffer(data, dtype="<f4").reshape(values // row, t, d)
    return torch.from_numpy(array.astype(np.float32))  # native order, writable copy


HEAD_SITES = ("ssm",)
"""Sites a cell may restore one head of (``Cell.head``): Mamba-2's ``ssm``, the engine's ``ssm.h<k>``."""


def cells_from_pb(cells) -> list:
    """``RunCells.cells`` → ``CellSpec``s; an unset or unknown site is named by its index. A cell with
    ``head`` set becomes the engine's per-head site ``<site>.h<head>`` (``mamba2.HEAD_SITE``); whether the
    model has that head is checked against the model when the cells are planned (``trace.plan_cells``)."""
    from engine.runtime import CellSpec

    out = []
    for i, cell in enumerate(cells):
        name = SITE_NAMES.get(cell.site)
        if name is None:
            raise errors.InvalidArgument(
                f"cells[{i}].site is {cell.site} ({'unset' if cell.site == 0 else 'unknown'}); "
                f"expected one of {', '.join(f'SITE_{n.upper()}' for n in SITE_VALUES)}",
                field=f"cells[{i}].site",
            )
        if cell.HasField("head"):
            if name not in HEAD_SITES:
                raise errors.InvalidArgument(
                    f"cells[{i}].head is {cell.head} on site {name}, which has no per-head restores; expected "
                    f"head unset, or site {' / '.join(f'SITE_{n.upper()}' for n in HEAD_SITES)} (Mamba-2)",
                    field=f"cells[{i}].head",
                )
            name = f"{name}.h{cell.head}"
        out.append(CellSpec(site=name, layer=cell.layer, token=cell.token, window=cell.window or 1))
    return out


def describe_device(torch, device: str) -> Tuple[str, int]:
    """The worker's device as reported in HelloReply, and its total memory (0 for cpu)."""
    if device == "cpu":
        return "cpu", 0
    if not torch.cuda.is_available():
        raise errors.InvalidArgument(
            f"this worker was started with --device {device}, but torch {torch.__version__} sees no "
            "CUDA device; start it with --device cpu or on a GPU host",
            field="--device",
        )
    index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise errors.InvalidArgument(
            f"--device {device} names GPU {index}, but only {count} CUDA device(s) are visible "
            f"(cuda:0 .. cuda:{count - 1})",
            field="--device",
        )
    return f"cuda:{index}", int(torch.cuda.get_device_properties(index).total_memory)
