"""Issue 15: the checkpoint reader does not trust its folder. One test (or parametrized group) a finding:
shard names that leave the folder, links out of it, bad safetensors offsets, shapes and headers, an
oversized header, absurd config.json dimensions; each refused with a typed error (INVALID_ARGUMENT
over the worker protocol, never INTERNAL) whose message quotes no byte of the file."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.checkpoint_files import MAX_HEADER_BYTES, read_safetensors, save_safetensors
from engine.errors import CheckpointError, CheckpointFormatError, CheckpointPathError, NotFound
from engine.testing import mamba_config, neox_config, random_state, write_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRET = b"root:x:0:0:SECRET-hunter2:/root:/bin/bash\n" * 40  # stands in for a file outside the folder


# ---- helpers ---------------------------------------------------------------------------------------


def write_raw_safetensors(path, header, data: bytes = b"", raw_header: bytes = None) -> str:
    """A safetensors file with exactly the given header (dict/list, or raw bytes) and data section."""
    head = raw_header if raw_header is not None else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        f.write(data)
    return str(path)


def sharded_folder(tmp_path, name="sharded", model="gpt_neox"):
    """A valid two-shard checkpoint folder: (folder, cfg, state, weight_map)."""
    cfg = neox_config() if model == "gpt_neox" else mamba_config()
    state = random_state(cfg)
    folder = tmp_path / name
    folder.mkdir()
    json.dump(cfg, open(folder / "config.json", "w"))
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for fname, keys in halves.items():
        save_safetensors(folder / fname, {k: state[k] for k in keys})
    weight_map = {k: f for f, ks in halves.items() for k in ks}
    write_index(folder, weight_map)
    return folder, cfg, state, weight_map


def write_index(folder, weight_map):
    json.dump({"metadata": {}, "weight_map": weight_map}, open(Path(folder) / "model.safetensors.index.json", "w"))


def assert_no_file_bytes(message: str, content: bytes, tmp_path=None, numbers: bool = True):
    """``message`` (less the test's own folder names) quotes nothing of ``content``: no 6-byte run of it,
    not (``numbers``) its first 8 bytes read as the header length nor its size."""
    if tmp_path is not None:
        message = message.replace(str(tmp_path), "<tmp>")
    text = content.decode("latin-1")
    for i in range(0, len(text) - 6):
        assert text[i:i + 6] not in message, f"message quotes the file: {message!r}"
    if numbers:
        for n in ([struct.unpack("<Q", content[:8])[0]] if len(content) >= 8 else []) + [len(content)]:
            assert not re.search(rf"(?<![0-9]){n}(?![0-9])", message), f"message gives {n}: {message!r}"


# ---- shard names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["ABSOLUTE", "../outside.safetensors", "sub/../model-00001-of-00002.safetensors",
                                 "sub/inner.safetensors", "..", ".", "", "./model-00001-of-00002.safetensors"])
def test_a_shard_name_that_is_absolute_or_leaves_the_folder_is_refused(tmp_path, bad):
    folder, cfg, state, weight_map = sharded_folder(tmp_path)
    outside = write_checkpoint(tmp_path / "elsewhere", cfg, state)  # a valid file the index must not reach
    save_safetensors(tmp_path / "outside.safetensors", {})
    (folder / "sub").mkdir()
    save_safetensors(folder / "sub" / "inner.safetensors", {})
    name = os.path.join(outside, "model.safetensors") if bad == "ABSOLUTE" else bad
    key = sorted(weight_map)[0]
    write_index(folder, dict(weight_map, **{key: name}))
    with pytest.raises(CheckpointPathError) as e:
        load_checkpoint(str(folder))
    assert e.value.field == "path" and e.value.code == "INVALID_ARGUMENT"
    assert "plain file name" in str(e.value)


def test_an_index_that_is_not_a_weight_map_of_strings_is_a_format_error(tmp_path):
    folder, _, _, weight_map = sharded_folder(tmp_path)
    for doc in ([1, 2], {"weight_map": [1]}, {"weight_map": {"a": 3}}, {"nothing": {}}):
        json.dump(doc, open(folder / "model.safetensors.index.json", "w"))
        with pytest.raises(CheckpointFormatError):
            load_checkpoint(str(folder))


# ---- /etc/passwd and other files outside -------------------------------------------------------------


def test_an_index_pointing_at_etc_passwd_is_refused_without_its_bytes_in_the_message(tmp_path):
    folder, _, _, weight_map = sharded_folder(tmp_path)
    key = sorted(weight_map)[0]
    passwd = "/etc/passwd"
    content = open(passwd, "rb").read() if os.path.isfile(passwd) else b""
    # 1. by absolute name
    write_index(folder, dict(weight_map, **{key: passwd}))
    with pytest.raises(CheckpointPathError) as e:
        load_checkpoint(str(folder))
    assert_no_file_bytes(str(e.value), content, tmp_path)
    # 2. through a link in the folder
    os.symlink(passwd, folder / "passwd.safetensors")
    write_index(folder, dict(weight_map, **{key: "passwd.safetensors"}))
    with pytest.raises(CheckpointPathError) as e:
        load_checkpoint(str(folder))
    assert "outside the checkpoint folder" in str(e.value)
    assert_no_file_bytes(str(e.value), content, tmp_path)


def test_a_text_file_inside_the_folder_named_as_a_shard_is_refused_without_its_bytes(tmp_path):
    folder, _, _, weight_map = sharded_folder(tmp_path)
    key = sorted(weight_map)[0]
    for i, content in enumerate([SECRET, b"\x10\x00\x00\x00\x00\x00\x00\x00" + SECRET[:16],  # a "header" of 16 bytes
                                 b"\x10\x00\x00\x00\x00\x00\x00\x00\xff\xfe" + SECRET[:14], b"abc"]):
        name = f"notes-{'abcd'[i]}.txt"  # no digit in the name: the message is searched for numbers
        (folder / name).write_bytes(content)
        write_index(folder, dict(weight_map, **{key: name}))
        with pytest.raises(CheckpointFormatError) as e:
            load_checkpoint(str(folder))
        assert e.value.field == "path"
        assert_no_file_bytes(str(e.value), content, tmp_path)


# ---- links ------------------------------------------------------------------------------------------


def test_a_link_out_of_the_folder_is_refused_for_weights_shards_and_config(tmp_path):
    cfg = neox_config()
    good = write_checkpoint(tmp_path / "good", cfg, random_state(cfg))
    # model.safetensors -> another folder's (valid) weights
    linked = tmp_path / "linked"
    linked.mkdir()
    json.dump(cfg, open(linked / "config.json", "w"))
    os.symlink(os.path.join(good, "model.safetensors"), linked / "model.safetensors")
    with pytest.raises(CheckpointPathError) as e:
        load_checkpoint(str(linked))
    assert "outside the checkpoint folder" in str(e.value) and e.value.field == "path"
    # a relative link climbing out counts the same
    os.unlink(linked / "model.safetensors")
    os.symlink("../good/model.safetensors", linked / "model.safetensors")
    with pytest.raises(CheckpointPathError):
        load_checkpoint(str(linked))
    # a dangling link out of the folder: refused as outside, not "not found" (no probing of paths)
    os.unlink(linked / "model.safetensors")
    os.symlink(str(tmp_path / "nothing-here"), linked / "model.safetensors")
    with pytest.raises(CheckpointPathError):
        load_checkpoint(str(linked))
    # config.json -> outside
    cfg_link = tmp_path / "cfglink"
    cfg_link.mkdir()
    os.symlink(os.path.join(good, "config.json"), cfg_link / "config.json")
    save_safetensors(cfg_link / "model.safetensors", random_state(cfg))
    with pytest.raises(CheckpointPathError):
        load_checkpoint(str(cfg_link))
    # a shard -> outside
    folder, _, _, weight_map = sharded_folder(tmp_path)
    shard = sorted(set(weight_map.values()))[0]
    os.replace(folder / shard, tmp_path / shard)
    os.symlink(tmp_path / shard, folder / shard)
    with pytest.raises(CheckpointPathError):
        load_checkpoint(str(folder))


def test_links_inside_the_folder_and_a_linked_folder_load(tmp_path):
    cfg = neox_config()
    state = random_state(cfg)
    folder = Path(write_checkpoint(tmp_path / "m", cfg, state, filename="weights-v2.safetensors"))
    (folder / "blobs").mkdir()
    os.replace(folder / "weights-v2.safetensors", folder / "blobs" / "w.safetensors")
    os.symlink("blobs/w.safetensors", folder / "model.safetensors")  # relative, inside the folder
    ids = torch.tensor([[5, 17, 33, 2]])
    ref = load_checkpoint(write_checkpoint(tmp_path / "ref", cfg, state)).model(ids)[0]
    assert torch.equal(load_checkpoint(str(folder)).model(ids)[0], ref)
    os.symlink(folder, tmp_path / "alias")  # the folder itself named through a link
    assert torch.equal(load_checkpoint(str(tmp_path / "alias")).model(ids)[0], ref)


def test_a_fifo_or_folder_named_as_weights_is_refused_without_blocking(tmp_path):
    cfg = neox_config()
    folder = tmp_path / "m"
    folder.mkdir()
    json.dump(cfg, open(folder / "config.json", "w"))
    os.mkfifo(folder / "model.safetensors")  # opening a FIFO for reading would wait for a writer forever
    t0 = time.monotonic()
    with pytest.raises(CheckpointPathError) as e:
        load_checkpoint(str(folder))
    assert time.monotonic() - t0 < 5 and "regular file" in str(e.value)
    os.unlink(folder / "model.safetensors")
    os.mkdir(folder / "model.safetensors")
    with pytest.raises(CheckpointPathError):
        load_checkpoint(str(folder))


# ---- offsets ----------------------------------------------------------------------------------------

F32_2x2 = {"dtype": "F32", "shape": [2, 2]}


@pytest.mark.parametrize("case,entries,data_len", [
    ("negative start", {"a": dict(F32_2x2, data_offsets=[-8, 8])}, 16),
    ("negative end", {"a": dict(F32_2x2, data_offsets=[0, -16])}, 16),
    ("end before start", {"a": dict(F32_2x2, data_offsets=[16, 0])}, 16),
    ("past the data", {"a": dict(F32_2x2, data_offsets=[16, 32])}, 16),
    ("far past the data", {"a": dict(F32_2x2, data_offsets=[2**62, 2**62 + 16])}, 16),
    ("overlap", {"a": dict(F32_2x2, data_offsets=[0, 16]), "b": dict(F32_2x2, data_offsets=[8, 24])}, 24),
    ("same bytes twice", {"a": dict(F32_2x2, data_offsets=[0, 16]), "b": dict(F32_2x2, data_offsets=[0, 16])}, 16),
    ("size not numel x itemsize", {"a": dict(F32_2x2, data_offsets=[0, 12])}, 12),
    ("bf16 size of an f32 tensor", {"a": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 16]}}, 16),
    ("a gap", {"a": dict(F32_2x2, data_offsets=[8, 24])}, 24),
    ("trailing bytes", {"a": dict(F32_2x2, data_offsets=[0, 16])}, 32),
    ("three offsets", {"a": dict(F32_2x2, data_offsets=[0, 8, 16])}, 16),
    ("float offsets", {"a": dict(F32_2x2, data_offsets=[0.0, 16.0])}, 16),
    ("no offsets", {"a": F32_2x2}, 16),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_data_offsets_are_refused(tmp_path, case, entries, data_len):
    path = write_raw_safetensors(tmp_path / "x.safetensors", entries, SECRET[:data_len])
    with pytest.raises(CheckpointFormatError) as e:
        read_safetensors(path)
    assert e.value.field == "path" and e.value.code == "INVALID_ARGUMENT"
    assert_no_file_bytes(str(e.value), SECRET[:data_len], tmp_path, numbers=False)  # offsets are the header's


def test_good_offsets_in_any_order_and_empty_tensors_still_read(tmp_path):
    a, b = torch.arange(4.0).view(2, 2), torch.arange(3, dtype=torch.int64)
    data = b.numpy().tobytes() + a.numpy().tobytes()
    header = {"__metadata__": {"format": "pt"}, "a": dict(F32_2x2, data_offsets=[24, 40]),
              "b": {"dtype": "I64", "shape": [3], "data_offsets": [0, 24]},
              "e": {"dtype": "F32", "shape": [0, 5], "data_offsets": [24, 24]},
              "s": {"dtype": "F64", "shape": [], "data_offsets": [40, 48]}}
    got = read_safetensors(write_raw_safetensors(tmp_path / "x.safetensors", header,
                                                 data + torch.tensor(2.5, dtype=torch.float64).numpy().tobytes()))
    assert torch.equal(got["a"], a) and torch.equal(got["b"], b) and got["e"].shape == (0, 5) and got["s"].item() == 2.5


# ---- header structure and shapes ---------------------------------------------------------------------


@pytest.mark.parametrize("case,raw", [
    ("a list", b"[1, 2, 3]"),
    ("a string", b'"tensor"'),
    ("a number", b"12345678"),
    ("an entry that is a list", json.dumps({"a": [1, 2]}).encode()),
    ("an entry that is a number", json.dumps({"a": 7}).encode()),
    ("metadata that is a list", json.dumps({"__metadata__": [1]}).encode()),
    ("negative dimension", json.dumps({"a": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 0]}}).encode()),
    ("float dimension", json.dumps({"a": {"dtype": "F32", "shape": [2.0, 2], "data_offsets": [0, 16]}}).encode()),
    ("string dimension", json.dumps({"a": {"dtype": "F32", "shape": ["2", 2], "data_offsets": [0, 16]}}).encode()),
    ("boolean dimension", json.dumps({"a": {"dtype": "F32", "shape": [True, 4], "data_offsets": [0, 16]}}).encode()),
    ("shape not a list", json.dumps({"a": {"dtype": "F32", "shape": 4, "data_offsets": [0, 16]}}).encode()),
    ("rank 9", json.dumps({"a": {"dtype": "F32", "shape": [1] * 9, "data_offsets": [0, 4]}}).encode()),
    ("huge dimension", b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 16]}}'),
    ("unknown dtype", json.dumps({"a": {"dtype": "I4", "shape": [2], "data_offsets": [0, 1]}}).encode()),
    ("dtype not a string", json.dumps({"a": {"dtype": ["F32"], "shape": [4], "data_offsets": [0, 16]}}).encode()),
    ("a name twice", b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, '
                     b'"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}'),
    ("NaN", b'{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 16]}}'),
    ("not JSON", b"{'a': 1}"),
    ("not UTF-8", b'{"\xff\xfe": {}}'),
    ("deeply nested", b"[" * 100_000 + b"]" * 100_000),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_malformed_header_is_a_typed_error(tmp_path, case, raw):
    path = write_raw_safetensors(tmp_path / "x.safetensors", None, b"\0" * 16, raw_header=raw)
    with pytest.raises(CheckpointFormatError) as e:
        read_safetensors(path)
    assert e.value.code == "INVALID_ARGUMENT" and e.value.field == "path"
    assert len(str(e.value)) < 600
    if case == "not UTF-8":
        assert "\\xff" not in str(e.value) and "0xff" not in str(e.value)


def test_a_malformed_header_in_a_folder_is_an_invalid_argument_when_loading(tmp_path):
    cfg = neox_config()
    folder = tmp_path / "m"
    folder.mkdir()
    json.dump(cfg, open(folder / "config.json", "w"))
    write_raw_safetensors(folder / "model.safetensors", [{"dtype": "F32"}])
    with pytest.raises(CheckpointFormatError):
        load_checkpoint(str(folder))


# ---- header size -------------------------------------------------------------------------------------


def test_a_header_declaring_100_mb_is_refused_before_it_is_read(tmp_path):
    n = 100 * 1024 * 1024
    big = tmp_path / "big.safetensors"
    with open(big, "wb") as f:  # a sparse file that really is 100 MB long: the length alone must refuse it
        f.write(struct.pack("<Q", n))
        f.write(b"{")
        f.truncate(8 + n + 16)
    small = write_raw_safetensors(tmp_path / "small.safetensors", None, raw_header=b"{}")  # length past the end
    with open(small, "r+b") as f:
        f.write(struct.pack("<Q", n))
    for path in (big, small):
        tracemalloc.start()
        t0 = time.monotonic()
        try:
            with pytest.raises(CheckpointFormatError) as e:
                read_safetensors(str(path))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1024 * 1024, f"{peak} bytes traced while refusing a 100 MB header"
        assert time.monotonic() - t0 < 2
        msg = str(e.value).replace(str(tmp_path), "<tmp>")
        for number in (n, os.path.getsize(path)):  # neither the declared length nor the file size
            assert not re.search(rf"(?<![0-9]){number}(?![0-9])", msg), msg
    assert str(MAX_HEADER_BYTES) in str(e.value) or "past the end" in str(e.value)


def test_a_header_just_under_the_limit_is_read(tmp_path):
    padding = MAX_HEADER_BYTES - 200
    raw = json.dumps({"__metadata__": {"pad": "x" * padding}, "a": dict(F32_2x2, data_offsets=[0, 16])}).encode()
    assert len(raw) <= MAX_HEADER_BYTES
    got = read_safetensors(write_raw_safetensors(tmp_path / "x.safetensors", None, torch.ones(4).numpy().tobytes(), raw))
    assert torch.equal(got["a"], torch.ones(2, 2))


def test_an_oversized_config_or_index_is_refused_without_reading_it_all(tmp_path):
    cfg = neox_config()
    folder = Path(write_checkpoint(tmp_path / "m", cfg, random_state(cfg)))
    with open(folder / "config.json", "w") as f:
        f.write(json.dumps(cfg)[:-1] + ', "pad": "' + "x" * (5 * 1024 * 1024) + '"}')
    with pytest.raises(CheckpointFormatError) as e:
        load_checkpoint(str(folder))
    assert "limit" in str(e.value)


# ---- config.json ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model,overrides,field", [
    ("gpt_neox", {"hidden_size": 10**9}, "hidden_size"),
    ("gpt_neox", {"num_hidden_layers": 10**6}, "num_hidden_layers"),
    ("gpt_neox", {"vocab_size": 10**12}, "vocab_size"),
    ("gpt_neox", {"intermediate_size": 10**8}, "intermediate_size"),
    ("gpt_neox", {"num_attention_heads": 0}, "num_attention_heads"),  # was a ZeroDivisionError (INTERNAL)
    ("gpt_neox", {"hidden_size": "16"}, "hidden_size"),
    ("gpt_neox", {"hidden_size": True}, "hidden_size"),
    ("gpt_neox", {"hidden_size": -16}, "hidden_size"),
    ("gpt_neox", {"hidden_size": 16.5}, "hidden_size"),
    ("gpt_neox", {"max_position_embeddings": [32]}, "max_position_embeddings"),
    ("gpt_neox", {"rotary_pct": "half"}, "rotary_pct"),
    ("gpt_neox", {"layer_norm_eps": -1}, "layer_norm_eps"),
    ("gpt_neox", {"rope_scaling": "linear"}, "rope_parameters"),
    ("gpt_neox", {"use_parallel_residual": "false"}, "use_parallel_residual"),
    ("gpt_neox", {"model_type": ["gpt_neox"]}, "model_type"),
    ("mamba", {"hidden_size": 0}, "hidden_size"),
    ("mamba", {"state_size": 10**6}, "state_size"),
    ("mamba", {"time_step_rank": "big"}, "time_step_rank"),
    ("mamba", {"intermediate_size": None, "expand": 1000, "hidden_size": 60000}, "expand"),
    ("mamba", {"num_hidden_layers": None}, "num_hidden_layers"),
])
def test_bad_config_dimensions_are_refused_naming_the_field(tmp_path, model, overrides, field):
    cfg = neox_config() if model == "gpt_neox" else mamba_config()
    state = random_state(cfg)
    cfg.update(overrides)
    cfg = {k: v for k, v in cfg.items() if v is not None}  # None: the key absent
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(write_checkpoint(tmp_path / "m", cfg, state))
    assert e.value.field == field and e.value.code == "INVALID_ARGUMENT", str(e.value)


@pytest.mark.parametrize("model,overrides,field", [
    ("gpt_neox", {"vocab_size": 50304}, "vocab_size"),
    ("gpt_neox", {"hidden_size": 64, "num_attention_heads": 2}, "hidden_size"),
    ("mamba", {"vocab_size": 65536}, "vocab_size"),
    ("mamba", {"hidden_size": 32, "intermediate_size": 64}, "hidden_size"),
])
def test_config_sizes_that_do_not_match_the_embedding_are_named(tmp_path, model, overrides, field):
    cfg = neox_config() if model == "gpt_neox" else mamba_config()
    state = random_state(cfg)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(write_checkpoint(tmp_path / "m", dict(cfg, **overrides), state))
    assert e.value.field == field and "embedding" in str(e.value) and "[64, 16]" in str(e.value)


ABSURD_CONFIGS = r"""
import json, os, resource, sys, time
from engine.checkpoint import load_checkpoint
from engine.errors import CheckpointError
from engine.testing import neox_config, mamba_config, random_state, write_checkpoint
root = sys.argv[1]
cases = [
    # every field within its limit, the embedding matching: only the tensor shapes can tell (~34 GB of fp32)
    ("neox_layers", neox_config(num_hidden_layers=1024, intermediate_size=262144), "gpt_neox.layers.4."),
    ("mamba_wide", mamba_config(num_hidden_layers=1024, intermediate_size=262144, state_size=1024), "backbone.layers.4."),
    # limits and the embedding: refused before the model is even built on the meta device
    ("neox_vocab", neox_config(vocab_size=1 << 20, hidden_size=65536, num_attention_heads=1024), "vocab_size"),
    ("neox_huge", neox_config(hidden_size=10**7), "hidden_size"),
]
small = {"neox": neox_config(), "mamba": mamba_config()}
out = {}
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for name, cfg, field in cases:
    state = random_state(small[name.split("_")[0]])
    path = write_checkpoint(os.path.join(root, name), cfg, state)
    t0 = time.monotonic()
    try:
        load_checkpoint(path)
        out[name] = {"error": None}
    except CheckpointError as e:
        out[name] = {"error": type(e).__name__, "field": e.field, "s": time.monotonic() - t0}
out["rss_growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps(out))
"""


def test_absurd_config_dimensions_are_refused_before_any_large_allocation(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-c", ABSURD_CONFIGS, str(tmp_path)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = out.pop("rss_growth_mb")
    fields = {"neox_layers": "gpt_neox.layers.4.", "mamba_wide": "backbone.layers.4.",  # the first missing tensor
              "neox_vocab": "vocab_size", "neox_huge": "hidden_size"}
    for name, got in out.items():
        assert got["error"] == "CheckpointError", (name, got)
        assert got["field"].startswith(fields[name]), (name, got)
        assert got["s"] < 30, (name, got)
    assert growth < 300, f"peak RSS grew by {growth:.0f} MB while refusing configs of tens of GB"


# ---- over the worker protocol -------------------------------------------------------------------------


def test_the_worker_answers_invalid_argument_not_internal_for_hostile_checkpoints(tmp_path):
    from engine import PROTOCOL_VERSION
    from engine.framing import WorkerClient
    from engine.proto import engine_pb2 as pb

    folder, cfg, state, weight_map = sharded_folder(tmp_path, "abs")
    write_index(folder, dict(weight_map, **{sorted(weight_map)[0]: "/etc/passwd"}))
    linked = tmp_path / "linked"
    linked.mkdir()
    json.dump(cfg, open(linked / "config.json", "w"))
    os.symlink("/etc/passwd", linked / "model.safetensors")
    listed = tmp_path / "list"
    listed.mkdir()
    json.dump(cfg, open(listed / "config.json", "w"))
    write_raw_safetensors(listed / "model.safetensors", [1, 2])
    absurd = write_checkpoint(tmp_path / "absurd", dict(cfg, num_attention_heads=0), state)
    secret = tmp_path / "secret"
    secret.mkdir()
    json.dump(cfg, open(secret / "config.json", "w"))
    (secret / "model.safetensors").write_bytes(SECRET)

    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "engine"], cwd=REPO_ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        client = WorkerClient(proc.stdin, proc.stdout)
        assert client.call(hello=pb.Hello(protocol_version=PROTOCOL_VERSION)).WhichOneof("body") == "hello"
        for path in (folder, linked, listed, absurd, secret):
            r = client.call(load_model=pb.LoadModel(model_id="m", path=str(path)))
            assert r.WhichOneof("body") == "error", path
            assert r.error.code == pb.ERROR_CODE_INVALID_ARGUMENT, (path, r.error)
            assert_no_file_bytes(r.error.message, SECRET, tmp_path)
            if os.path.isfile("/etc/passwd"):
                assert "root:" not in r.error.message
        assert client.call(shutdown=pb.Shutdown()).WhichOneof("body") == "shutdown"
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
