"""Load a local Hugging Face checkpoint folder into our own model code (``mamba.py``, ``gpt_neox.py``).

A folder holds ``config.json`` and the weights as ``model.safetensors``, a sharded
``model.safetensors.index.json`` (+ its shards), or, only when ``allow_pickle`` is set,
``pytorch_model.bin`` (a pickle: loading it can execute code, so it is refused by default).

Loading is strict, as nanoGPT/mamba-minimal load: every parameter of the model must be present with
the expected shape, every tensor of the file must be used (apart from a few known buffers that
transformers recomputes), and no weight may hold NaN or inf after the cast to the run dtype.

The safetensors reader is our own: Debian's Python has no ``safetensors`` package, and the format is
small (8-byte little-endian header length, a JSON header of ``{name: {dtype, shape, data_offsets}}``,
then raw little-endian tensor bytes). Files are memory-mapped copy-on-write, so a tensor costs memory
only once it is cast/copied to the run dtype and device.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import struct
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .architectures import get as architecture_of, model_type_of
from .errors import CheckpointError, InvalidArgument, NotFound, NumericError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# safetensors dtype tag -> torch dtype (the ones Hugging Face checkpoints of these models use).
_ST_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I64": torch.int64,
}

MAX_HEADER_BYTES = 100 * 1024 * 1024


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


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """Read every tensor of one ``.safetensors`` file (memory-mapped; CPU tensors in the file's dtype)."""
    if sys.byteorder != "little":
        raise CheckpointError("safetensors data is little-endian; this host is big-endian", field="path")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise NotFound(f"cannot open {path}: {e.strerror}", field="path") from e
    with f:
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)", field="path")
        (n,) = struct.unpack("<Q", head)
        size = os.fstat(f.fileno()).st_size
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise CheckpointError(f"{path}: not a safetensors file (header length {n}, file {size} bytes)", field="path")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise CheckpointError(f"{path}: safetensors header is not JSON: {e}", field="path") from e
        # ACCESS_COPY: writable for torch.frombuffer, never written back to disk.
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size > 8 + n else None
    base = 8 + n
    out: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = _ST_DTYPES.get(info.get("dtype"))
        if dt is None:
            raise CheckpointError(
                f"{path}: tensor {name!r} has dtype {info.get('dtype')!r}; supported: {sorted(_ST_DTYPES)}",
                field="path",
            )
        shape = list(info["shape"])
        start, end = info["data_offsets"]
        count = 1
        for s in shape:
            count *= s
        itemsize = torch.empty((), dtype=dt).element_size()
        if end - start != count * itemsize or base + end > size:
            raise CheckpointError(
                f"{path}: tensor {name!r} of shape {shape} {info['dtype']} needs {count * itemsize} bytes, "
                f"header gives offsets {start}..{end} (file {size} bytes)",
                field="path",
            )
        if count == 0:
            out[name] = torch.empty(shape, dtype=dt)
        else:
            out[name] = torch.frombuffer(mm, dtype=dt, count=count, offset=base + start).view(shape)
    return out


def save_safetensors(path: str, tensors: dict, metadata: Optional[dict] = None) -> None:
    """Write tensors in the safetensors format (the inverse of :func:`read_safetensors`; used to make
    test checkpoints and to convert pickles)."""
    tags = {v: k for k, v in _ST_DTYPES.items()}
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    blobs, offset = [], 0
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        if t.dtype not in tags:
            raise InvalidArgument(f"tensor {name}: dtype {t.dtype} cannot be saved; supported: {sorted(tags.values())}", field=name)
        raw = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()
        header[name] = {"dtype": tags[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format aligns the data start to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for raw in blobs:
            f.write(raw)


def read_weights(path: str, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder: single safetensors file, sharded index, or (opt-in) pickle."""
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    pickled = os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(single):
        return read_safetensors(single)
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{index}: expected JSON with a 'weight_map' object ({e})", field="path") from e
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(read_safetensors(os.path.join(path, shard)))
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise CheckpointError(f"{index}: tensors listed in weight_map but absent from the shards: {missing[:10]}", field="path")
        return tensors
    if os.path.isfile(pickled):
        if not allow_pickle:
            raise CheckpointError(
                f"{pickled} is a pickle, and loading a pickle can execute arbitrary code; convert it to "
                "model.safetensors, or set allow_pickle if you trust its source",
                field="allow_pickle",
            )
        state = torch.load(pickled, map_location="cpu")
        return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    raise NotFound(
        f"{path}: no weights found; expected model.safetensors, model.safetensors.index.json "
        "or (with allow_pickle) pytorch_model.bin",
        field="path",
    )


def read_config(path: str) -> dict:
    """The parsed ``config.json`` of a checkpoint folder."""
    if not os.path.isdir(path):
        raise NotFound(f"checkpoint folder {path!r} does not exist", field="path")
    cfg_path = os.path.join(path, "config.json")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except FileNotFoundError as e:
        raise NotFound(f"{cfg_path} not found: a checkpoint folder needs config.json", field="path") from e
    except ValueError as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {e}", field="path") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object", field="path")
    return cfg


def load_state_strict(model: nn.Module, tensors: dict[str, torch.Tensor], ignorable: Callable[[str], bool],
                      dtype: torch.dtype, device: torch.device) -> None:
    """Copy ``tensors`` into ``model``'s parameters: every parameter present and of its shape, no unknown
    tensor, every value finite after the cast to ``dtype``. Errors name the tensor and both shapes."""
    expected = {k: v for k, v in model.state_dict(keep_vars=True).items()}
    missing = [k for k in expected if k not in tensors]
    if missing:
        shapes = ", ".join(f"{k} {list(expected[k].shape)}" for k in missing[:8])
        raise CheckpointError(
            f"checkpoint lacks {len(missing)} tensor(s) the model needs: {shapes}"
            + (" ..." if len(missing) > 8 else ""),
            field=missing[0],
        )
    unexpected = [k for k in tensors if k not in expected and not ignorable(k)]
    if unexpected:
        raise CheckpointError(
            f"checkpoint has {len(unexpected)} tensor(s) the model does not use: {unexpected[:8]}"
            + (" ..." if len(unexpected) > 8 else "") + "; is config.json for these weights?",
            field=unexpected[0],
        )
    for name, param in expected.items():
        src = tensors[name]
        if tuple(src.shape) != tuple(param.shape):
            raise CheckpointError(
                f"tensor {name}: expected shape {list(param.shape)} (from config.json), found {list(src.shape)}",
                field=name,
            )
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
    model_type_of(cfg)
    return build_checkpoint(cfg, read_weights(path, allow_pickle), dtype=dtype, device=device, path=path)


def build_checkpoint(cfg: dict, tensors: dict, dtype: str = "float32", device: str = "cpu", path: str = "<memory>") -> Checkpoint:
    """One of our models from a parsed ``config.json`` and its tensors (checkpoint key names), with the
    same strict checks as a folder load. Benchmarks use it to run the weights of a ``transformers``
    model without writing them to disk."""
    tdtype = parse_dtype(dtype)
    tdevice = parse_device(device)
    _check_dtype_runs(tdtype, tdevice)
    mt = model_type_of(cfg)
    arch = architecture_of(mt)
    config = arch.config.from_hf(cfg)
    tensors = arch.rename_keys(tensors, config)
    # PyTorch >= 2.0 builds the module on the meta device (no random init of billions of weights);
    # 1.13 (CI, tiny models) builds it on the CPU.
    with torch.device("meta") if hasattr(torch, "get_default_device") else _NoContext():
        model = arch.lm(config)
    if any(p.is_meta for p in model.parameters()):
        model = model.to_empty(device=tdevice)
    load_state_strict(model, tensors, lambda k: arch.ignorable_key(k, config), tdtype, tdevice)
    model.to(tdevice).eval()
    return Checkpoint(model_type=mt, config=config, model=model, dtype=tdtype, device=tdevice, path=path)


class _NoContext:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False
