"""long-file: the whole boundary to an untrusted folder in one module, so every read goes through one opener.

Reading a checkpoint folder's files without trusting them: the safetensors reader and writer, the
sharded index, ``pytorch_model.bin`` (only with ``allow_pickle``) and ``config.json``.

The safetensors reader is our own: Debian's Python has no ``safetensors`` package, and the format is
small (8-byte little-endian header length, a JSON header of ``{name: {dtype, shape, data_offsets}}``,
then raw little-endian tensor bytes). Files are memory-mapped copy-on-write, so a tensor costs memory
only once it is cast/copied to the run dtype and device.

The folder is not trusted (issue 15). Every file read lies inside it: a sharded index names its
shards by plain file names, and a file's real path (links resolved) must lie inside the folder's real
path, so a link to another file of the folder is followed and a link out of it is refused. A
safetensors header is at most ``MAX_HEADER_BYTES``, checked before it is read; it must be a JSON
object of tensor objects whose dtypes, shapes and offsets are consistent and tile the data section.
No message quotes a file's bytes, a header length or a file size (names from a parsed header are
quoted, cut to ``MAX_QUOTED_CHARS``).
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import stat
import struct
import sys
from dataclasses import dataclass
from typing import Optional

import torch

from .architecture import describe_value
from .errors import CheckpointError, CheckpointFormatError, CheckpointPathError, InvalidArgument, NotFound

# safetensors dtype tag -> torch dtype (the ones Hugging Face checkpoints of these models use).
_ST_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I64": torch.int64,
}
_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8}
_ITEMSIZE_OF = {_ST_DTYPES[k]: v for k, v in _ITEMSIZE.items()}

#: The longest safetensors header read (4 MiB). Real headers are ~100 bytes a tensor: the golden and
#: shipped models' are 4-9 KB, a 2.8b model's ~60 KB; 4 MiB is ~40,000 tensors in one file. Parsing
#: the JSON costs ~15-20x its size in Python objects, so the worst case is ~80 MB, not the ~1.7 GB a
#: 100 MB header cost. A longer one is refused before a byte of it is read.
MAX_HEADER_BYTES = 4 * 1024 * 1024
#: The longest config.json or model.safetensors.index.json read (real ones: a few KB / ~100 KB).
MAX_JSON_BYTES = 4 * 1024 * 1024
#: The highest tensor rank accepted (these models use 0-3).
MAX_RANK = 8
#: Names from a checkpoint's metadata are quoted in messages cut to this many characters.
MAX_QUOTED_CHARS = 120


def _quoted(value) -> str:
    """A name from a checkpoint's own metadata (tensor name, dtype tag, shard name) for an error message:
    ASCII repr, cut to ``MAX_QUOTED_CHARS``; a non-string shows only its type."""
    if not isinstance(value, str):
        return describe_value(value)
    text = ascii(value)
    return text if len(text) <= MAX_QUOTED_CHARS else text[:MAX_QUOTED_CHARS] + "...'"


class _JsonRefused(ValueError):
    """A JSON value this reader refuses (its message holds no file content)."""


def _bounded_int(text: str) -> int:
    if len(text) > 20:  # > 2**64: no shape, offset or config dimension is this long
        raise _JsonRefused("an integer longer than 20 digits")
    return int(text)


def _no_constant(name: str):
    raise _JsonRefused("NaN or Infinity")


def _infinity(name: str) -> float:
    """``Infinity`` / ``-Infinity`` as floats; NaN stays refused."""
    if name == "NaN":
        raise _JsonRefused("NaN")
    return float(name)


def _unique_keys(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise _JsonRefused("a key that appears twice in one object")
        out[k] = v
    return out


def _parse_json(raw: bytes, label: str, what: str, unique: bool = True, infinity: bool = False):
    """``raw`` as JSON (``unique``: a key twice in an object is refused; ``infinity``: the non-standard
    ``Infinity`` / ``-Infinity`` are read as floats, NaN is refused either way); errors are
    CheckpointFormatErrors that quote none of ``raw``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointFormatError(f"{label}: {what} is not UTF-8 text", field="path") from None
    try:
        return json.loads(text, parse_int=_bounded_int, parse_constant=_infinity if infinity else _no_constant,
                          object_pairs_hook=_unique_keys if unique else None)
    except json.JSONDecodeError as e:
        raise CheckpointFormatError(f"{label}: {what} is not valid JSON (line {e.lineno}, column {e.colno})",
                                    field="path") from None
    except _JsonRefused as e:
        raise CheckpointFormatError(f"{label}: {what} holds {e}", field="path") from None
    except (ValueError, RecursionError):
        raise CheckpointFormatError(f"{label}: {what} is not valid JSON (or is nested too deeply)",
                                    field="path") from None


def _read_bounded(f, limit: int, label: str, what: str) -> bytes:
    """The whole of a small file (config.json, an index); refused beyond ``limit`` bytes, reading at most
    one byte more."""
    raw = f.read(limit + 1)
    if len(raw) > limit:
        raise CheckpointFormatError(f"{label}: {what} is longer than the {limit}-byte limit", field="path")
    return raw


def _plain_name(name, label: str) -> str:
    """A shard name of a sharded index: a plain file name of the checkpoint folder (no folder part, no
    ``..``, not absolute), so an index cannot name files elsewhere."""
    ok = (isinstance(name, str) and name not in ("", ".", "..") and not os.path.isabs(name)
          and not any(c in name for c in ("/", "\\", "\0")) and name == os.path.basename(name))
    if not ok:
        raise CheckpointPathError(
            f"{label}: weight_map names the shard {_quoted(name)}; expected a plain file name in the checkpoint "
            "folder (no '/', no '..', not an absolute path)",
            field="path",
        )
    return name


def _open_regular(real: str, shown: str, expect=None):
    """Open ``real`` read-only: a regular file (never a FIFO or device, whose open or read could block or
    never end), its last component not followed if it is a link, and, given ``expect`` (an
    ``os.stat_result``), the very file that was stat'ed (a swap between the check and the open is
    refused)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        raise NotFound(f"{shown} not found", field="path") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CheckpointPathError(f"{shown}: became a symbolic link while being opened", field="path") from None
        raise NotFound(f"cannot open {shown}: {e.strerror}", field="path") from None
    f = os.fdopen(fd, "rb")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (expect is not None and (st.st_dev, st.st_ino) != (expect.st_dev, expect.st_ino)):
        f.close()
        raise CheckpointPathError(f"{shown}: not a regular file (or replaced while being opened)", field="path")
    return f


def _open_checked(real: str, shown: str):
    """Opens ``real`` (an already resolved path) after checking it is a regular file: a FIFO or a
    device is refused before it is opened, so it cannot block."""
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise NotFound(f"{shown} not found", field="path") from None
    except OSError as e:
        raise NotFound(f"cannot open {shown}: {e.strerror}", field="path") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointPathError(f"{shown}: not a regular file", field="path")
    return _open_regular(real, shown, expect=st)


def _open_in_folder(folder: str, name: str):
    """Open ``folder/name`` for reading. Its real path (every link resolved) must lie inside the folder's
    real path: a link to another file of the folder (or of a subfolder) is followed, since it reaches
    nothing the caller did not already name; a link out of the folder is refused before anything there
    is stat'ed or opened (so the refusal tells nothing about the target). Returns the file object."""
    shown = os.path.join(folder, name)
    root = os.path.realpath(folder)
    real = os.path.realpath(shown)
    if real == root or os.path.commonpath([root, real]) != root:
        raise CheckpointPathError(
            f"{shown}: resolves to a path outside the checkpoint folder; links out of the folder are not followed "
            "(copy the file into the folder)",
            field="path",
        )
    return _open_checked(real, shown)


# ---- safetensors ----------------------------------------------------------------------------------


@dataclass
class _Entry:
    name: str
    dtype: torch.dtype
    shape: list
    start: int
    end: int


def _int_list(value, max_len: int) -> Optional[list]:
    """``value`` if it is a list of at most ``max_len`` non-negative ints (bools excluded), else None."""
    if not isinstance(value, list) or len(value) > max_len:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return None
    return value


def _check_header(header, label: str, data_len: int) -> list:
    """The tensors a parsed safetensors header declares, each checked: a JSON object of objects; dtype
    one of ``_ST_DTYPES``; shape a list of at most ``MAX_RANK`` non-negative ints; data_offsets two
    non-negative ints with start <= end <= data length and end - start = numel x itemsize; and, as the
    format requires, the tensors tile the data section exactly (by offset: no overlap, no gap, no
    trailing bytes)."""
    if not isinstance(header, dict):
        raise CheckpointFormatError(f"{label}: the safetensors header is not a JSON object", field="path")
    meta = header.get("__metadata__")
    if meta is not None and not isinstance(meta, dict):
        raise CheckpointFormatError(f"{label}: the safetensors __metadata__ is not a JSON object", field="path")
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        where = f"{label}: tensor {_quoted(name)}"
        if not isinstance(info, dict):
            raise CheckpointFormatError(f"{where}: expected an object with dtype, shape and data_offsets",
                                        field="path")
        tag = info.get("dtype")
        dt = _ST_DTYPES.get(tag) if isinstance(tag, str) else None
        if dt is None:
            raise CheckpointFormatError(f"{where} has dtype {_quoted(tag)}; supported: {sorted(_ST_DTYPES)}",
                                        field="path")
        shape = _int_list(info.get("shape"), MAX_RANK)
        if shape is None:
            raise CheckpointFormatError(
                f"{where}: shape must be a list of at most {MAX_RANK} non-negative integers", field="path")
        offsets = _int_list(info.get("data_offsets"), 2)
        if offsets is None or len(offsets) != 2:
            raise CheckpointFormatError(
                f"{where}: data_offsets must be two non-negative integers [start, end]", field="path")
        start, end = offsets
        if not start <= end <= data_len:
            raise CheckpointFormatError(
                f"{where}: data_offsets [{start}, {end}] do not lie within the file's data section", field="path")
        count = 1
        for d in shape:
            count *= d
        nbytes = count * _ITEMSIZE[tag]
        if end - start != nbytes:
            raise CheckpointFormatError(
                f"{where} of shape {shape} {tag} needs {nbytes} bytes, but data_offsets [{start}, {end}] "
                f"span {end - start}", field="path")
        entries.append(_Entry(name, dt, shape, start, end))
    at, prev = 0, None
    for e in sorted(entries, key=lambda e: (e.start, e.end)):
        if e.start < at:
            raise CheckpointFormatError(
                f"{label}: tensors {_quoted(prev.name)} and {_quoted(e.name)} overlap in the data section",
                field="path")
        if e.start > at:
            raise CheckpointFormatError(
                f"{label}: the data section has bytes before tensor {_quoted(e.name)} that no tensor uses",
                field="path")
        at, prev = e.end, e
    if at != data_len:
        raise CheckpointFormatError(f"{label}: the data section has bytes after the last tensor that no tensor uses",
                                    field="path")
    return entries


def _read_safetensors_file(f, label: str) -> dict[str, torch.Tensor]:
    """The tensors of the open safetensors file ``f`` (``label`` names it in errors). The header length is
    checked against ``MAX_HEADER_BYTES`` and the file size before the header is read; no error message
    quotes the file's bytes, its header length or its size."""
    if sys.byteorder != "little":
        raise CheckpointError("safetensors data is little-endian; this host is big-endian", field="path")
    size = os.fstat(f.fileno()).st_size
    head = f.read(8)
    if len(head) != 8:
        raise CheckpointFormatError(f"{label}: not a safetensors file (shorter than 8 bytes)", field="path")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_BYTES:
        raise CheckpointFormatError(
            f"{label}: not a safetensors file, or its header is longer than the {MAX_HEADER_BYTES}-byte limit",
            field="path")
    if 8 + n > size:
        raise CheckpointFormatError(
            f"{label}: not a safetensors file, or truncated (the header length runs past the end of the file)",
            field="path")
    raw = f.read(n)
    if len(raw) != n:
        raise CheckpointFormatError(f"{label}: the file ended inside its safetensors header", field="path")
    header = _parse_json(raw, label, "the safetensors header")
    del raw
    entries = _check_header(header, label, size - 8 - n)
    # ACCESS_COPY: writable for torch.frombuffer, never written back to disk.
    mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) if size > 8 + n else None
    base = 8 + n
    out: dict[str, torch.Tensor] = {}
    for e in entries:
        count = (e.end - e.start) // _ITEMSIZE_OF[e.dtype]
        if count == 0:
            out[e.name] = torch.empty(e.shape, dtype=e.dtype)
        else:
            out[e.name] = torch.frombuffer(mm, dtype=e.dtype, count=count, offset=base + e.start).view(e.shape)
    return out


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """Read every tensor of one ``.safetensors`` file (memory-mapped; CPU tensors in the file's dtype).
    ``path`` itself may be a link (the caller named it); it must reach a regular file. Inside a
    checkpoint folder, ``read_weights`` also keeps every file within the folder."""
    shown = str(path)
    real = os.path.realpath(shown)
    with _open_checked(real, shown) as f:
        return _read_safetensors_file(f, shown)


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


# ---- a checkpoint folder --------------------------------------------------------------------------


def read_weights(path: str, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder: single safetensors file, sharded index, or (opt-in) pickle.
    Every file read lies inside the folder (``_open_in_folder``); a sharded index names its shards by
    plain file names."""
    path = str(path)
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    pickled = os.path.join(path, "pytorch_model.bin")
    # lexists: a link counts as present, so a link out of the folder is refused, not skipped
    if os.path.lexists(single):
        with _open_in_folder(path, "model.safetensors") as f:
            return _read_safetensors_file(f, single)
    if os.path.lexists(index):
        with _open_in_folder(path, "model.safetensors.index.json") as f:
            raw = _read_bounded(f, MAX_JSON_BYTES, index, "the index")
        doc = _parse_json(raw, index, "the index")
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointFormatError(
                f"{index}: expected a JSON object whose 'weight_map' maps tensor names to shard file names",
                field="path")
        shards = sorted({_plain_name(v, index) for v in weight_map.values()})
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            with _open_in_folder(path, shard) as f:
                part = _read_safetensors_file(f, os.path.join(path, shard))
            twice = sorted(set(part) & set(tensors))
            if twice:
                raise CheckpointFormatError(
                    f"{index}: tensor {_quoted(twice[0])} is in more than one shard ({_quoted(shard)} among them)",
                    field="path")
            tensors.update(part)
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise CheckpointError(
                f"{index}: tensors listed in weight_map but absent from the shards: "
                f"{', '.join(_quoted(m) for m in missing[:10])}", field="path")
        return tensors
    if os.path.lexists(pickled):
        if not allow_pickle:
            raise CheckpointError(
                f"{pickled} is a pickle, and loading a pickle can execute arbitrary code; convert it to "
                "model.safetensors, or set allow_pickle if you trust its source",
                field="allow_pickle",
            )
        with _open_in_folder(path, "pytorch_model.bin") as f:
            state = torch.load(f, map_location="cpu")
        if not isinstance(state, dict):
            raise CheckpointFormatError(f"{pickled}: expected a state dict (a dict of tensors)", field="path")
        return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    raise NotFound(
        f"{path}: no weights found; expected model.safetensors, model.safetensors.index.json "
        "or (with allow_pickle) pytorch_model.bin",
        field="path",
    )


def read_config(path: str) -> dict:
    """The parsed ``config.json`` of a checkpoint folder (at most ``MAX_JSON_BYTES``, inside the folder)."""
    path = str(path)
    if not os.path.isdir(path):
        raise NotFound(f"checkpoint folder {path!r} does not exist", field="path")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.lexists(cfg_path):
        raise NotFound(f"{cfg_path} not found: a checkpoint folder needs config.json", field="path")
    with _open_in_folder(path, "config.json") as f:
        raw = _read_bounded(f, MAX_JSON_BYTES, cfg_path, "config.json")
    # transformers 4.x writes Mamba-2's time_step_limit as [0.0, Infinity] (5.x: {"__float__": "Infinity"});
    # each model's parser checks its values' ranges, finite where a value must be.
    cfg = _parse_json(raw, cfg_path, "config.json", unique=False, infinity=True)
    if not isinstance(cfg, dict):
        raise CheckpointFormatError(f"{cfg_path}: expected a JSON object", field="path")
    return cfg
