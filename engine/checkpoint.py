"""Load a local Hugging Face checkpoint folder into our own model code (``mamba.py``, ``gpt_neox.py``).

A folder holds ``config.json`` and the weights as ``model.safetensors``, a sharded
``model.safetensors.index.json`` (+ its shards), or, only when ``allow_pickle`` is set,
``pytorch_model.bin`` (a pickle: loading it can execute code, so it is refused by default).

Loading is strict, as nanoGPT/mamba-minimal load: every parameter of the model must be present with
the expected shape, every tensor of the file must be used (apart from a few known buffers that
transformers recomputes), and no weight may hold NaN or inf after the cast to the run dtype.

The folder is not trusted (issue 15): its files are read by ``checkpoint_files.py`` (paths inside
the folder, bounded and checked safetensors headers). config.json's dimensions are checked (type, range: ``architecture.MAX_*``) and compared with the
embedding tensor and with every tensor's shape *before* the model's memory is allocated. Every
refusal is a ``CheckpointError`` (INVALID_ARGUMENT) or ``NotFound`` naming the field; no message
quotes a file's bytes, a header length or a file size (names from a parsed header are quoted, cut).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .architecture import describe_value
from .architectures import get as architecture_of, model_type_of
from .checkpoint_files import MAX_QUOTED_CHARS, _quoted, read_config, read_weights
from .errors import CheckpointError, CheckpointFormatError, InvalidArgument, NumericError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

@dataclass
class Checkpoint:
    """A loaded model: the ``nn.Module``, its parsed config and where it lives."""

    model_type: str
    config: object
    model: nn.Module
    dtype: torch.dtype
    device: torch.device
    path: str

    @property
    def architecture(self):
        """The model type's table (``engine.architecture.Architecture``)."""
        return architecture_of(self.model_type)


def parse_dtype(dtype: str) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` / ``"float16"`` (empty means float32) to a torch dtype."""
    name = dtype or "float32"
    if name not in DTYPES:
        raise InvalidArgument(
            f"dtype: expected one of {sorted(DTYPES)}, got {dtype!r}", field="dtype"
        )
    return DTYPES[name]


def parse_device(device: str) -> torch.device:
    """``"cpu"`` or ``"cuda:N"`` (empty means cpu); a CUDA device must exist."""
    name = device or "cpu"
    if name == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not m:
        raise InvalidArgument(f"device: expected 'cpu' or 'cuda:N', got {device!r}", field="device")
    index = int(m.group(1) or 0)
    if not torch.cuda.is_available():
        raise InvalidArgument(
            f"device: {device!r} requested but CUDA is not available in this PyTorch "
            f"({torch.__version__}); use 'cpu'",
            field="device",
        )
    if index >= torch.cuda.device_count():
        raise InvalidArgument(
            f"device: {device!r} does not exist; this machine has {torch.cuda.device_count()} "
            f"CUDA device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})",
            field="device",
        )
    return torch.device("cuda", index)


def _check_dtype_runs(dtype: torch.dtype, device: torch.device) -> None:
    """Refuse a dtype this PyTorch cannot multiply on this device (1.13 has no float16 matmul on CPU)."""
    try:
        a = torch.ones(2, 2, dtype=dtype, device=device)
        F.linear(a, a)
    except RuntimeError as e:
        raise InvalidArgument(
            f"dtype: {dtype} matrix products are not implemented on {device} by PyTorch {torch.__version__} "
            f"({e}); use float32 or bfloat16 there",
            field="dtype",
        ) from e


# ---- untrusted input: names, files, JSON ----------------------------------------------------------


def _model_type(cfg: dict) -> str:
    """``model_type_of`` with a non-string ``model_type`` refused (it would be an unhashable dict key)."""
    if not isinstance(cfg, dict):
        raise CheckpointFormatError("config.json: expected a JSON object", field="path")
    mt = cfg.get("model_type")
    if mt is not None and not isinstance(mt, str):
        raise CheckpointError(f"config.json model_type: expected a string, got {describe_value(mt)}",
                              field="model_type")
    return model_type_of(cfg)


def _parse_config(arch, cfg: dict):
    """``arch.config.from_hf(cfg)``; the model files check each value (``architecture.config_int`` ...), and
    anything they miss is still a CheckpointError naming config.json, never an INTERNAL error."""
    try:
        return arch.config.from_hf(cfg)
    except CheckpointError:
        raise
    except (TypeError, ValueError, ArithmeticError, AttributeError, KeyError) as e:
        raise CheckpointError(f"config.json: a value has the wrong type or range for a {arch.model_type} config "
                              f"({type(e).__name__})", field="path") from None


def check_tensors(expected: dict, tensors: dict[str, torch.Tensor], ignorable: Callable[[str], bool]) -> None:
    """Compare checkpoint ``tensors`` with the model's ``expected`` ``{name: shape}``: every one present
    and of its shape, none unknown (apart from ``ignorable``). Errors name the tensor and both shapes.
    Needs only shapes, so it runs before the model's memory is allocated."""
    missing = [k for k in expected if k not in tensors]
    if missing:
        shapes = ", ".join(f"{k} {list(expected[k])}" for k in missing[:8])
        raise CheckpointError(
            f"checkpoint lacks {len(missing)} tensor(s) the model needs: {shapes}"
            + (" ..." if len(missing) > 8 else ""),
            field=missing[0],
        )
    unexpected = [k for k in tensors if k not in expected and not ignorable(k)]
    if unexpected:
        raise CheckpointError(
            f"checkpoint has {len(unexpected)} tensor(s) the model does not use: "
            f"[{', '.join(_quoted(k) for k in unexpected[:8])}]"
            + (" ..." if len(unexpected) > 8 else "") + "; is config.json for these weights?",
            field=unexpected[0][:MAX_QUOTED_CHARS],
        )
    for name, shape in expected.items():
        src = tensors[name]
        if tuple(src.shape) != tuple(shape):
            raise CheckpointError(
                f"tensor {name}: expected shape {list(shape)} (from config.json), found {list(src.shape)}",
                field=name,
            )


def _check_embedding(arch, config, tensors: dict, cfg: dict) -> None:
    """config.json's vocab_size and hidden size against the embedding tensor's shape, named by field."""
    key = arch.embedding_key
    t = tensors.get(key) if key else None
    if t is None:
        return  # check_tensors names it as missing
    want, got = (config.vocab_size, config.hidden_size), tuple(t.shape)
    if got == want:
        return
    hidden_key = "hidden_size" if "hidden_size" in cfg or "d_model" not in cfg else "d_model"
    field = hidden_key if len(got) == 2 and got[0] == want[0] else "vocab_size"
    raise CheckpointError(
        f"config.json vocab_size {want[0]} and {hidden_key} {want[1]} do not match the embedding tensor {key} "
        f"of shape {list(got)}; is config.json for these weights?",
        field=field,
    )


def load_state_strict(model: nn.Module, tensors: dict[str, torch.Tensor], ignorable: Callable[[str], bool],
                      dtype: torch.dtype, device: torch.device) -> None:
    """Copy ``tensors`` into ``model``'s parameters: every parameter present and of its shape, no unknown
    tensor, every value finite after the cast to ``dtype``. Errors name the tensor and both shapes."""
    expected = {k: v for k, v in model.state_dict(keep_vars=True).items()}
    check_tensors({k: tuple(v.shape) for k, v in expected.items()}, tensors, ignorable)
    for name, param in expected.items():
        src = tensors[name]
        # copy=True: never keep a view of the memory-mapped file as a weight
        value = src.to(device=device, dtype=dtype if param.dtype.is_floating_point else param.dtype, copy=True)
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise NumericError(
                f"tensor {name}: {bad} NaN/inf value(s) in the weights (after the cast to {dtype})",
                field=name,
            )
        with torch.no_grad():
            param.data = value


def load_checkpoint(path: str, dtype: str = "float32", device: str = "cpu", allow_pickle: bool = False) -> Checkpoint:
    """Load a Hugging Face checkpoint folder (``mamba`` or ``gpt_neox``) as one of our models, in eval mode."""
    tdtype = parse_dtype(dtype)
    tdevice = parse_device(device)
    _check_dtype_runs(tdtype, tdevice)  # before reading gigabytes of weights
    cfg = read_config(path)
    _parse_config(architecture_of(_model_type(cfg)), cfg)  # config.json's values, before any weight is read
    return build_checkpoint(cfg, read_weights(path, allow_pickle), dtype=dtype, device=device, path=path)


def build_checkpoint(cfg: dict, tensors: dict, dtype: str = "float32", device: str = "cpu", path: str = "<memory>") -> Checkpoint:
    """One of our models from a parsed ``config.json`` and its tensors (checkpoint key names), with the
    same strict checks as a folder load. Benchmarks use it to run the weights of a ``transformers``
    model without writing them to disk.

    Order: config values (types, ranges), the embedding tensor against vocab_size/hidden_size, then the
    model built on the meta device (no memory) and every tensor's shape checked against it; only then
    is the model's memory allocated (as much as the checkpoint's tensors hold) and filled."""
    tdtype = parse_dtype(dtype)
    tdevice = parse_device(device)
    _check_dtype_runs(tdtype, tdevice)
    mt = _model_type(cfg)
    arch = architecture_of(mt)
    config = _parse_config(arch, cfg)
    tensors = arch.rename_keys(tensors, config)
    _check_embedding(arch, config, tensors, cfg)
    ignorable = lambda k: arch.ignorable_key(k, config)  # noqa: E731
    with _on_meta():
        model = arch.lm(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    check_tensors(shapes, tensors, ignorable)  # before a byte of the model is allocated
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        model = model.to_empty(device=tdevice)
    load_state_strict(model, tensors, ignorable, tdtype, tdevice)
    model.to(tdevice).eval()
    return Checkpoint(model_type=mt, config=config, model=model, dtype=tdtype, device=tdevice, path=path)


def _on_meta():
    """A context in which modules are built on the meta device (shapes, no memory): ``torch.device``
    on PyTorch >= 2.0; on 1.13 a TorchFunctionMode that sends the tensor factories there."""
    if hasattr(torch, "get_default_device"):
        return torch.device("meta")
    return _MetaFactories()


try:  # PyTorch 1.13 (CI); 2.x uses torch.device("meta")
    from torch.overrides import TorchFunctionMode as _Mode
except ImportError:  # pragma: no cover
    _Mode = object


class _MetaFactories(_Mode):
    """PyTorch 1.13: tensor factories called without a device build on the meta device (what the
    ``torch.device`` context manager of 2.x does)."""

    _FACTORIES = {getattr(torch, n) for n in ("empty", "zeros", "ones", "full", "rand", "randn", "randint",
                                              "arange", "eye", "linspace", "tensor", "empty_strided")}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self._FACTORIES and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)
