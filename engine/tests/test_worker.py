"""The engine worker as the node agent sees it: the real ``python3 -m engine`` process, spoken to in
length-prefixed frames over its stdin/stdout.

Model tests load ``$GOLDEN_DIR/{mamba-tiny,neox-tiny}`` (default ``../shared/golden`` next to the
repository) and are skipped with a reason when that folder is absent. Results are compared with the
same ``Engine`` called in-process, so what is tested is the protocol translation, not the maths
(the engine's own tests and the golden check cover that).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.framing import HEADER, WorkerClient, encode_frame
from engine.proto import engine_pb2 as pb

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = Path(os.environ.get("GOLDEN_DIR", REPO_ROOT.parent / "shared" / "golden"))
HANG_GUARD_S = 60  # only to turn a hang into a failure; never a speed assertion

# A prompt of 7 tokens with the subject at [1, 3); the swap replaces the subject tokens.
INPUT_IDS = [5, 17, 230, 99, 411, 8, 73]
SUBJECT = (1, 3)
SWAP_IDS = [5, 600, 601, 99, 411, 8, 73]
NOISE_SAMPLES = 3

# Test double for faults the real engine cannot be made to show on demand: an Engine whose
# load_model writes to stdout in every way a library can (print, raw fd 1, a warning) and can be
# slowed down, and whose stats raises a plain RuntimeError. Everything else is the real worker.
INSTRUMENTED_WORKER = r"""
import os, sys, time, warnings
import engine.runtime as runtime
real_load_model = runtime.Engine.load_model
def noisy_load_model(self, *args, **kwargs):
    print("stray print from the engine")
    sys.stdout.flush()
    os.write(1, b"stray bytes on fd 1\n")
    warnings.warn("stray library warning")
    time.sleep(float(os.environ.get("FAULT_LOAD_DELAY_S", "0")))
    return real_load_model(self, *args, **kwargs)
def failing_stats(self):
    raise RuntimeError("injected fault: stats exploded")
runtime.Engine.load_model = noisy_load_model
runtime.Engine.stats = failing_stats
from engine.worker import main
sys.exit(main(sys.argv[1:]))
"""


class _TimedReader:
    """Reads the worker's stdout fd directly, failing instead of hanging if nothing comes."""

    def __init__(self, fd: int):
        self.fd = fd
        self.received = bytearray()

    def read(self, n: int) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], HANG_GUARD_S)
        if not ready:
            raise TimeoutError(f"engine worker sent nothing for {HANG_GUARD_S} s")
        data = os.read(self.fd, n)
        self.received += data
        return data

    def read_to_eof(self) -> bytes:
        rest = bytearray()
        while True:
            chunk = self.read(65536)
            if not chunk:
                return bytes(rest)
            rest += chunk


class WorkerProcess:
    """A real worker subprocess with its stderr collected by a thread."""

    def __init__(self, *args: str, script: str | None = None, env: dict | None = None):
        command = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "engine", *args]
        pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        full_env = dict(os.environ, PYTHONPATH=pythonpath, **(env or {}))
        self.proc = subprocess.Popen(
            command, cwd=REPO_ROOT, env=full_env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.stdout = _TimedReader(self.proc.stdout.fileno())
        self.client = WorkerClient(self.proc.stdin, self.stdout)
        self._stderr = bytearray()
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()

    def _drain_stderr(self):
        for line in iter(self.proc.stderr.readline, b""):
            self._stderr += line

    @property
    def stderr(self) -> str:
        return self._stderr.decode(errors="replace")

    def wait_for_stderr(self, text: str) -> None:
        deadline = time.monotonic() + HANG_GUARD_S
        while text not in self.stderr:
            assert time.monotonic() < deadline, f"{text!r} never appeared on stderr:\n{self.stderr}"
            time.sleep(0.02)

    def call(self, **body):
        return self.client.call(**body)

    def send_raw(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        self.proc.stdin.close()

    def wait(self) -> int:
        try:
            code = self.proc.wait(timeout=HANG_GUARD_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self._stderr_thread.join(timeout=HANG_GUARD_S)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass


def hello(version: int = engine.PROTOCOL_VERSION):
    return {"hello": pb.Hello(protocol_version=version)}


def assert_error(response, code: int, field: str | None = None, request_id: int | None = None):
    assert response.WhichOneof("body") == "error", f"expected an error, got {response}"
    assert response.error.code == code, (pb.ErrorCode.Name(response.error.code), response.error.message)
    if field is not None:
        assert response.error.field == field, response.error
    if request_id is not None:
        assert response.request_id == request_id
    assert response.error.message


@pytest.fixture
def bare_worker():
    """A fresh worker that has not been greeted (torch is not even imported)."""
    worker = WorkerProcess()
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def golden_dir() -> Path:
    if not (GOLDEN_DIR / "mamba-tiny").is_dir() or not (GOLDEN_DIR / "neox-tiny").is_dir():
        pytest.skip(f"golden checkpoints not found in {GOLDEN_DIR}; set GOLDEN_DIR to a folder laid out "
                    "like ../shared/golden (mamba-tiny/, neox-tiny/)")
    return GOLDEN_DIR


@pytest.fixture(scope="module")
def session():
    """One greeted worker shared by the model tests (starting torch once keeps the suite short)."""
    worker = WorkerProcess("--log-level", "debug")
    reply = worker.call(**hello())
    assert reply.WhichOneof("body") == "hello", reply
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def models(session, golden_dir):
    """Both golden models loaded in the shared worker; returns model_id -> ModelInfo."""
    infos = {}
    for model_id in ("mamba-tiny", "neox-tiny"):
        reply = session.call(load_model=pb.LoadModel(model_id=model_id, path=str(golden_dir / model_id)))
        assert reply.WhichOneof("body") == "model", reply
        infos[model_id] = reply.model
    return infos


@pytest.fixture(scope="module")
def reference(golden_dir):
    """The same models in an in-process Engine: what the worker's answers must equal."""
    from engine.runtime import Engine

    eng = Engine()
    for model_id in ("mamba-tiny", "neox-tiny"):
        eng.load_model(model_id, str(golden_dir / model_id))
    return eng


def explicit_noise(d: int) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((NOISE_SAMPLES, len(INPUT_IDS), d)).astype(np.float32)


def corruption_pb(kind: str, d: int):
    if kind == "swap":
        return pb.Corruption(swap=pb.SwapCorruption(corrupted_ids=SWAP_IDS))
    if kind == "noise":
        return pb.Corruption(noise=pb.NoiseCorruption(scale=3.0, samples=4, seed=11))
    return pb.Corruption(noise=pb.NoiseCorruption(explicit_noise=explicit_noise(d).astype("<f4").tobytes()))


def corruption_spec(kind: str, d: int):
    import torch
    from engine.runtime import NoiseSpec, SwapSpec

    if kind == "swap":
        return SwapSpec(corrupted_ids=SWAP_IDS)
    if kind == "noise":
        return NoiseSpec(scale=3.0, samples=4, seed=11)
    return NoiseSpec(samples=NOISE_SAMPLES, explicit=torch.from_numpy(explicit_noise(d)))


def grid(sites):
    """Every site at a few (layer, token, window) points, including the window's edges."""
    return [(site, layer, token, window)
            for site in sites for layer in (0, 2, 3) for token in (0, 2, 6) for window in (1, 3)]


# -- handshake and lifecycle (no model needed) ---------------------------------------------------

def test_hello_reports_engine_torch_and_device(session):
    import torch

    reply = session.call(**hello())
    assert reply.hello.protocol_version == engine.PROTOCOL_VERSION
    assert reply.hello.engine_version == engine.__version__
    assert reply.hello.torch_version == str(torch.__version__)
    assert reply.hello.device == "cpu"
    assert reply.hello.device_memory_bytes == 0


def test_hello_of_another_protocol_version_is_refused_naming_both_versions(bare_worker):
    reply = bare_worker.call(**hello(engine.PROTOCOL_VERSION + 41))
    assert_error(reply, pb.ERROR_CODE_VERSION_MISMATCH, field="protocol_version")
    assert str(engine.PROTOCOL_VERSION + 41) in reply.error.message
    assert f"speaks version {engine.PROTOCOL_VERSION}" in reply.error.message
    # still not greeted: work is refused until a matching Hello
    refused = bare_worker.call(stats=pb.StatsRequest())
    assert_error(refused, pb.ERROR_CODE_PROTOCOL, field="body")


def test_requests_before_hello_are_refused_with_a_protocol_error(bare_worker):
    reply = bare_worker.call(load_model=pb.LoadModel(model_id="m", path="/nowhere"))
    assert_error(reply, pb.ERROR_CODE_PROTOCOL, field="body", request_id=1)
    assert "before a successful Hello" in reply.error.message
    assert f"Hello(protocol_version={engine.PROTOCOL_VERSION})" in reply.error.message


def test_shutdown_is_acknowledged_then_the_worker_exits_0(bare_worker):
    reply = bare_worker.call(shutdown=pb.Shutdown())
    assert reply.WhichOneof("body") == "shutdown"
    assert bare_worker.stdout.read_to_eof() == b""
    assert bare_worker.wait() == 0


def test_end_of_stdin_exits_0(bare_worker):
    bare_worker.close_stdin()
    assert bare_worker.wait() == 0
    assert "stdin closed" in bare_worker.stderr


def test_sigterm_while_idle_exits_0(bare_worker):
    bare_worker.wait_for_stderr("ready")
    bare_worker.proc.send_signal(signal.SIGTERM)
    assert bare_worker.wait() == 0
    assert "stopping on signal" in bare_worker.stderr


# -- malformed input ---------------------------------------------------------------------------

def test_undecodable_bytes_get_a_protocol_error_with_request_id_0_and_the_worker_goes_on(bare_worker):
    bare_worker.send_raw(encode_frame(b"\x0a\xff\xff\xff\xff\xff\xff"))  # field 1, broken varint length
    reply = bare_worker.client.receive()
    assert_error(reply, pb.ERROR_CODE_PROTOCOL, field="frame", request_id=0)
    assert "not a valid EngineRequest" in reply.error.message
    after = bare_worker.call(**hello(99))
    assert_error(after, pb.ERROR_CODE_VERSION_MISMATCH)


def test_a_request_with_an_unknown_body_gets_a_protocol_error_with_its_request_id(bare_worker):
    unknown_field_99 = b"\x9a\x06\x02\x08\x01"  # tag (99 << 3 | 2) as a varint, 2 bytes of payload
    bare_worker.send_raw(encode_frame(pb.EngineRequest(request_id=9).SerializeToString() + unknown_field_99))
    reply = bare_worker.client.receive()
    assert_error(reply, pb.ERROR_CODE_PROTOCOL, field="body", request_id=9)
    assert "hello, load_model" in reply.error.message
    bare_worker.send_raw(encode_frame(pb.EngineRequest(request_id=10).SerializeToString()))
    assert_error(bare_worker.client.receive(), pb.ERROR_CODE_PROTOCOL, field="body", request_id=10)


def test_an_oversized_length_prefix_gets_an_error_then_a_nonzero_exit():
    worker = WorkerProcess("--max-frame-bytes", "1024")
    try:
        worker.send_raw(HEADER.pack(1025) + b"x" * 16)
        reply = worker.client.receive()
        assert_error(reply, pb.ERROR_CODE_PROTOCOL, field="frame.length", request_id=0)
        assert "1025" in reply.error.message and "1024" in reply.error.message
        assert worker.wait() == 3
        assert "cannot be resynchronised" in worker.stderr
    finally:
        worker.stop()


def test_a_frame_truncated_by_end_of_stdin_exits_nonzero_with_a_message(bare_worker):
    bare_worker.send_raw(HEADER.pack(10) + b"abc")
    bare_worker.close_stdin()
    assert bare_worker.wait() == 3
    assert "got 3 of 10 bytes" in bare_worker.stderr


# -- models over the wire ------------------------------------------------------------------------

def test_load_model_reports_the_architecture_and_its_sites(models):
    mamba, neox = models["mamba-tiny"], models["neox-tiny"]
    assert (mamba.model_type, mamba.num_layers, mamba.hidden_size) == ("mamba", 4, 64)
    assert (neox.model_type, neox.num_layers, neox.max_positions) == ("gpt_neox", 4, 128)
    assert {pb.Site.Name(s) for s in mamba.sites} == {
        "SITE_EMBED", "SITE_RESIDUAL", "SITE_MIXER", "SITE_SSM", "SITE_GATE", "SITE_CONV", "SITE_IN_SSM"}
    assert {pb.Site.Name(s) for s in neox.sites} == {"SITE_EMBED", "SITE_RESIDUAL", "SITE_ATTN", "SITE_MLP"}


@pytest.mark.parametrize("model_id", ["mamba-tiny", "neox-tiny"])
@pytest.mark.parametrize("kind", ["swap", "noise", "explicit_noise"])
def test_cells_over_the_wire_equal_the_engine_called_in_process(session, models, reference, model_id, kind):
    from engine.runtime import CellSpec

    from engine.worker import SITE_NAMES

    info = models[model_id]
    key = f"{model_id}/{kind}"
    prepared = session.call(prepare_prompt=pb.PreparePrompt(
        model_id=model_id, prompt_key=key, input_ids=INPUT_IDS,
        subject_start=SUBJECT[0], subject_end=SUBJECT[1], corruption=corruption_pb(kind, info.hidden_size)))
    assert prepared.WhichOneof("body") == "prompt", prepared
    expected = reference.prepare_prompt(model_id, key, INPUT_IDS, SUBJECT, corruption_spec(kind, info.hidden_size))
    got = prepared.prompt
    assert (got.prompt_key, got.num_tokens, got.answer_id, got.clean_argmax) == (
        key, len(INPUT_IDS), expected.answer_id, expected.clean_argmax)
    assert (got.p_clean, got.p_corrupt, got.logit_clean, got.logit_corrupt) == (
        expected.p_clean, expected.p_corrupt, expected.logit_clean, expected.logit_corrupt)

    points = grid([SITE_NAMES[s] for s in info.sites])
    cells = [pb.Cell(site=pb.Site.Value(f"SITE_{site.upper()}"), layer=layer, token=token, window=window)
             for site, layer, token, window in points]
    specs = [CellSpec(site=site, layer=layer, token=token, window=window) for site, layer, token, window in points]
    for slow_path in (False, True):
        reply = session.call(run_cells=pb.RunCells(model_id=model_id, prompt_key=key, cells=cells, slow_path=slow_path))
        assert reply.WhichOneof("body") == "cells", reply
        assert reply.cells.prompt_key == key
        want = reference.run_cells(model_id, key, specs, slow_path=slow_path)
        # packed arrays, bit for bit the engine's values (float64 of the run's float32 results)
        assert len(reply.cells.p) == len(reply.cells.logit) == len(cells)
        assert list(zip(reply.cells.p, reply.cells.logit)) == [(float(p), float(l)) for p, l in want]


def test_answer_id_given_in_the_request_is_the_one_measured(session, models, reference):
    reply = session.call(prepare_prompt=pb.PreparePrompt(
        model_id="neox-tiny", prompt_key="neox/answer", input_ids=INPUT_IDS, subject_start=1, subject_end=3,
        corruption=corruption_pb("swap", 64), answer_id=0))
    expected = reference.prepare_prompt("neox-tiny", "neox/answer", INPUT_IDS, SUBJECT,
                                        corruption_spec("swap", 64), answer_id=0)
    assert reply.prompt.answer_id == 0
    assert (reply.prompt.p_clean, reply.prompt.p_corrupt) == (expected.p_clean, expected.p_corrupt)


def test_stats_and_evict_follow_the_prompt_cache(session, models):
    key = "mamba/evict-me"
    session.call(prepare_prompt=pb.PreparePrompt(
        model_id="mamba-tiny", prompt_key=key, input_ids=INPUT_IDS, subject_start=1, subject_end=3,
        corruption=corruption_pb("swap", 64)))
    before = session.call(stats=pb.StatsRequest()).stats
    assert key in before.cached_prompt_keys and before.cache_bytes > 0
    evicted = session.call(evict=pb.Evict(model_id="mamba-tiny", prompt_keys=[key])).evicted
    assert evicted.count == 1
    after = session.call(stats=pb.StatsRequest()).stats
    assert key not in after.cached_prompt_keys
    assert after.cache_bytes == evicted.cache_bytes < before.cache_bytes
    gone = session.call(run_cells=pb.RunCells(model_id="mamba-tiny", prompt_key=key,
                                              cells=[pb.Cell(site=pb.SITE_RESIDUAL, layer=0, token=0)]))
    assert_error(gone, pb.ERROR_CODE_NOT_FOUND)


def test_evict_naming_nothing_is_refused(session, models):
    reply = session.call(evict=pb.Evict(model_id="mamba-tiny"))
    assert_error(reply, pb.ERROR_CODE_INVALID_ARGUMENT, field="prompt_keys")


# -- engine errors become error frames and the worker keeps serving --------------------------------

def test_unknown_model_gets_not_found_and_the_next_request_is_answered(session, models):
    reply = session.call(prepare_prompt=pb.PreparePrompt(
        model_id="no-such-model", prompt_key="k", input_ids=INPUT_IDS, subject_start=1, subject_end=3,
        corruption=corruption_pb("swap", 64)))
    assert_error(reply, pb.ERROR_CODE_NOT_FOUND)
    assert "no-such-model" in reply.error.message
    assert session.call(stats=pb.StatsRequest()).WhichOneof("body") == "stats"


def test_missing_checkpoint_folder_is_an_error_reply(session, golden_dir):
    reply = session.call(load_model=pb.LoadModel(model_id="ghost", path=str(golden_dir / "no-such-folder")))
    assert reply.WhichOneof("body") == "error"
    assert "no-such-folder" in reply.error.message


def test_running_an_unprepared_prompt_key_gets_not_found(session, models):
    reply = session.call(run_cells=pb.RunCells(model_id="mamba-tiny", prompt_key="never-prepared",
                                               cells=[pb.Cell(site=pb.SITE_RESIDUAL, layer=0, token=0)]))
    assert_error(reply, pb.ERROR_CODE_NOT_FOUND)
    assert "never-prepared" in reply.error.message


def test_a_site_the_architecture_lacks_is_an_invalid_argument(session, models):
    session.call(prepare_prompt=pb.PreparePrompt(
        model_id="neox-tiny", prompt_key="neox/site", input_ids=INPUT_IDS, subject_start=1, subject_end=3,
        corruption=corruption_pb("swap", 64)))
    reply = session.call(run_cells=pb.RunCells(model_id="neox-tiny", prompt_key="neox/site",
                                               cells=[pb.Cell(site=pb.SITE_SSM, layer=0, token=0)]))
    assert_error(reply, pb.ERROR_CODE_INVALID_ARGUMENT)
    assert "ssm" in reply.error.message
    unset = session.call(run_cells=pb.RunCells(model_id="neox-tiny", prompt_key="neox/site",
                                               cells=[pb.Cell(layer=0, token=0)]))
    assert_error(unset, pb.ERROR_CODE_INVALID_ARGUMENT, field="cells[0].site")


def test_explicit_noise_of_the_wrong_size_names_the_expected_shape(session, models):
    reply = session.call(prepare_prompt=pb.PreparePrompt(
        model_id="mamba-tiny", prompt_key="mamba/bad-noise", input_ids=INPUT_IDS, subject_start=1, subject_end=3,
        corruption=pb.Corruption(noise=pb.NoiseCorruption(samples=2, explicit_noise=b"\0" * 4 * 100))))
    assert_error(reply, pb.ERROR_CODE_INVALID_ARGUMENT, field="corruption.noise.explicit_noise")
    assert "2 × 7 × 64" in reply.error.message and "400 bytes" in reply.error.message


def test_a_prompt_without_corruption_is_an_invalid_argument(session, models):
    reply = session.call(prepare_prompt=pb.PreparePrompt(
        model_id="mamba-tiny", prompt_key="mamba/none", input_ids=INPUT_IDS, subject_start=1, subject_end=3))
    assert_error(reply, pb.ERROR_CODE_INVALID_ARGUMENT, field="corruption")


def test_malformed_frames_mid_session_do_not_disturb_the_loaded_models(session, models):
    session.send_raw(encode_frame(b"\x0a\xff\xff\xff\xff\xff\xff"))
    assert_error(session.client.receive(), pb.ERROR_CODE_PROTOCOL, request_id=0)
    session.send_raw(encode_frame(pb.EngineRequest(request_id=77).SerializeToString()))
    assert_error(session.client.receive(), pb.ERROR_CODE_PROTOCOL, request_id=77)
    stats = session.call(stats=pb.StatsRequest())
    assert stats.WhichOneof("body") == "stats"


# -- faults only a test double can cause ----------------------------------------------------------

def test_stdout_carries_only_frames_even_when_the_engine_prints(golden_dir):
    worker = WorkerProcess(script=INSTRUMENTED_WORKER)
    try:
        assert worker.call(**hello()).WhichOneof("body") == "hello"
        loaded = worker.call(load_model=pb.LoadModel(model_id="m", path=str(golden_dir / "mamba-tiny")))
        assert loaded.WhichOneof("body") == "model", loaded
        assert worker.call(shutdown=pb.Shutdown()).WhichOneof("body") == "shutdown"
        assert worker.stdout.read_to_eof() == b""  # nothing but the three frames came out
        assert worker.wait() == 0
        for stray in ("stray print from the engine", "stray bytes on fd 1", "stray library warning"):
            assert stray in worker.stderr
    finally:
        worker.stop()


def test_an_unexpected_exception_becomes_internal_and_the_worker_keeps_serving(golden_dir):
    worker = WorkerProcess(script=INSTRUMENTED_WORKER)
    try:
        assert worker.call(**hello()).WhichOneof("body") == "hello"
        reply = worker.call(stats=pb.StatsRequest())
        assert_error(reply, pb.ERROR_CODE_INTERNAL, field="", request_id=2)
        assert reply.error.message == "RuntimeError: injected fault: stats exploded"
        worker.wait_for_stderr("Traceback")  # the drain thread may not have read it yet
        loaded = worker.call(load_model=pb.LoadModel(model_id="m", path=str(golden_dir / "mamba-tiny")))
        assert loaded.WhichOneof("body") == "model"
    finally:
        worker.stop()


def test_sigterm_during_a_request_finishes_it_then_exits_0(golden_dir):
    worker = WorkerProcess("--log-level", "debug", script=INSTRUMENTED_WORKER, env={"FAULT_LOAD_DELAY_S": "1"})
    try:
        assert worker.call(**hello()).WhichOneof("body") == "hello"
        request_id = worker.client.send(load_model=pb.LoadModel(model_id="m", path=str(golden_dir / "mamba-tiny")))
        worker.wait_for_stderr(f"request {request_id} load_model started")
        worker.proc.send_signal(signal.SIGTERM)
        reply = worker.client.receive()
        assert reply.request_id == request_id and reply.WhichOneof("body") == "model", reply
        assert worker.wait() == 0
        assert "stopping on signal after the last request" in worker.stderr
    finally:
        worker.stop()
