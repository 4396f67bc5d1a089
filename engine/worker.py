"""Engine worker: serves the engine protocol of ``proto/engine.proto`` on stdin/stdout.
(long-file: the session loop with its lookahead, the dispatch and the handlers are one state machine
over one stream; the command line is the small rest.)

The node agent starts one worker per GPU (``python3 -m engine --device cuda:0``) and talks
length-prefixed frames (``engine.framing``): ``EngineRequest`` in, exactly one ``EngineResponse``
out per request, echoing its ``request_id``. The worker only translates frames to calls of
``engine.runtime.Engine`` (contract: ``engine/API.md``) and ``engine.errors`` to ``EngineError``
frames; see ``engine/README.md`` ("Worker protocol") for the session rules and exit codes.
``engine/wire.py`` holds the message ↔ engine value conversions; this file the session loop,
the dispatch and the command line.

Why the stdio juggling in ``_claim_stdio``: frames own the real stdout. A stray ``print`` or a C
library writing to fd 1 would corrupt the stream, so the worker keeps a private duplicate of fd 1
for frames and points fd 1 and ``sys.stdout`` at stderr.

torch is imported lazily (at the first successful Hello), so the process is ready to read frames
without paying torch's import time, and a misconfigured caller gets a version error fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import json
import time
from typing import BinaryIO, Callable, Dict, Optional, Tuple

import engine as engine_pkg
from engine import errors
from engine.framing import (
    DEFAULT_MAX_FRAME_BYTES,
    FrameReader,
    FrameTooLarge,
    TruncatedFrame,
    write_message,
)
from engine.proto import engine_pb2 as pb
from engine.wire import (SITE_NAMES, cells_from_pb, corruption_from_pb, describe_device, error_response,
                         site_value, to_pb)  # SITE_NAMES: re-exported for callers of engine.worker
from google.protobuf.message import DecodeError

log = logging.getLogger("engine.worker")

EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug in the worker loop itself (logged with its traceback)
EXIT_USAGE = 2  # bad command line (argparse)
EXIT_STREAM = 3  # the input stream cannot be resynchronised: oversized length prefix, truncated frame
EXIT_PEER_GONE = 4  # stdout closed: responses can no longer be delivered


# Bodies accepted before a successful Hello: the handshake itself, and Shutdown so a supervisor
# can always stop a worker cleanly.
_BEFORE_HELLO = ("hello", "shutdown")

# A packed pass holds at most this many cells and grids: a 4,096-cell grid alone keeps an H200
# 91–94% busy, and four 1,024-cell grids already reach the rate of sixteen (bench/RESULTS.md, issue 14).
_PACK_CELLS = 4096
_PACK_PROMPTS = 16
# Grids of fewer cells are packed by default. A packed pass runs its prompts' prepares before it, where
# unpacked each prepare hides behind the grid before it; through the whole system on an H200 packing
# gained at 128 cells (mamba-2.8b 1.34x, pythia-2.8b 1.08x) and lost at 512 (pythia 0.85x) and at
# 1,536, pythia's paper grid (0.88x) (bench/RESULTS.md, "Where packing pays").
DEFAULT_PACK_BELOW = 512

_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")


class _Terminate(BaseException):
    """Raised by the signal handler, only while the worker waits for a request."""


class _Deferred:
    """A handler's answer whose device work is queued but not waited for (RunCells): ``finish()``
    waits for it and returns the response body. Between the two the worker may look ahead."""

    def __init__(self, field: str, finish: Callable, busy: Callable[[], bool] = lambda: False):
        self.field = field
        self.finish = finish
        self.busy = busy  # whether its device work is still running (the lookahead waits for a frame meanwhile)


# Stats requests the lookahead may take on its way to a PreparePrompt (see Worker._look_ahead).
_LOOKAHEAD_STATS = 4


def lookahead_enabled() -> bool:
    """``FACTSWEEP_LOOKAHEAD=0`` turns the worker's lookahead off (see ``Worker.serve``)."""
    return os.environ.get("FACTSWEEP_LOOKAHEAD", "1") != "0"


class Worker:
    """One protocol session over a pair of binary streams. ``serve()`` returns the exit code."""

    def __init__(self, options: argparse.Namespace, frames_in: BinaryIO, frames_out: BinaryIO):
        self.options = options
        self._in = FrameReader(frames_in, options.max_frame_bytes)
        self._out = frames_out
        self._lookahead = lookahead_enabled()
        self.grids = 0  # RunCells requests begun, and how many of them had the next PreparePrompt run behind them
        self.looked_ahead = 0
        self.packs = 0  # passes that ran several small RunCells together, and how many RunCells they held
        self.packed_grids = 0
        self._engine = None
        self._greeted = False
        self._hidden_size: Dict[str, int] = {}  # model_id -> d, to shape explicit noise
        self._idle = False
        self._stop_requested = False
        self._handlers: Dict[str, Callable] = {
            "hello": self._hello,
            "load_model": self._load_model,
            "prepare_prompt": self._prepare_prompt,
            "run_cells": self._run_cells,
            "evict": self._evict,
            "stats": self._stats,
            "shutdown": self._shutdown,
            "run_experiment": self._run_experiment,
        }

    # -- lifecycle ---------------------------------------------------------------------------

    def on_signal(self, signum, _frame) -> None:
        """SIGTERM/SIGINT: finish the request in progress, then exit 0; if idle, exit now."""
        self._stop_requested = True
        if self._idle:
            raise _Terminate(signum)

    def serve(self) -> int:
        """Reads and answers requests until EOF, Shutdown, a signal or an unrecoverable stream.

        Lookahead: a RunCells request's grid is queued on the device without waiting for it; if the
        next frame has already arrived and is a PreparePrompt, that prepare runs now (its kernel
        launches, host-bound, overlap the grid's device time), then the RunCells is finished and
        answered, then the PreparePrompt. Replies keep request order and each request's outcome is
        its own; off with ``FACTSWEEP_LOOKAHEAD=0``, and never once a signal asked the worker to stop."""
        while True:
            try:
                self._idle = True
                if self._stop_requested:  # checked after _idle is set, so no signal is missed
                    log.info("stopping on signal after the last request")
                    return EXIT_OK
                payload = self._in.read_frame()
                self._idle = False
            except _Terminate:
                log.info("stopping on signal while idle")
                return EXIT_OK
            except FrameTooLarge as exc:
                self._idle = False
                log.error("%s; exiting: the stream cannot be resynchronised", exc)
                self._try_send(error_response(0, exc))
                return EXIT_STREAM
            except TruncatedFrame as exc:
                self._idle = False
                log.error("%s; exiting: the client closed stdin mid-frame", exc)
                self._try_send(error_response(0, exc))
                return EXIT_STREAM
            if payload is None:
                log.info("stdin closed; exiting")
                return EXIT_OK
            answers, grid, behind = self._start_pack(payload)
            if behind:  # the next prepare was already taken behind this grid
                self.grids += 1
                ahead = []
            else:
                ahead = self._look_ahead(grid)
            responses = [answer() for answer in answers] + [answer() for answer in ahead]
            for response, stop in responses:
                try:
                    write_message(self._out, response)
                except OSError as exc:  # BrokenPipeError included
                    log.error("cannot write the response to request %d (%s); exiting", response.request_id, exc)
                    return EXIT_PEER_GONE
                if stop:
                    log.info("shutdown requested; exiting")
                    return EXIT_OK

    def _look_ahead(self, started) -> list:
        """While ``started``'s device work runs: take the next requests if they have already arrived
        whole, up to and including a PreparePrompt, which runs now; Stats requests before it (the agent
        asks after every shard, so one often sits between a grid and the next prepare) are taken too and
        answered after the grid, before the prepare's reply, their snapshot then including what that
        prepare cached. Returns thunks giving the taken requests' replies in request order (empty: nothing
        consumed; anything else stops the lookahead, left to the main loop)."""
        if not isinstance(started[1], _Deferred):
            return []
        self.grids += 1
        if not self._lookahead or self._stop_requested:
            return []
        taken: list = []
        while len(taken) <= _LOOKAHEAD_STATS:
            # The agent writes the next shard's PreparePrompt right behind this RunCells, so it is often
            # here already; if not, wait for it while the grid still runs (a frame arriving after the
            # grid is done gains nothing from going first).
            payload = self._in.ready_frame()
            while payload is None and started[1].busy() and not self._stop_requested:
                payload = self._in.ready_frame(wait=0.002)
            if payload is None:
                break
            try:
                request = pb.EngineRequest.FromString(payload)
            except DecodeError:
                break  # the main loop answers it as usual
            kind = request.WhichOneof("body")
            if kind == "stats" and self._greeted:
                self._in.read_frame()  # the same frame, now consumed; answered after the grid
                taken.append(lambda payload=payload, request=request: self.finish_payload(self.start_payload(payload, request)))
                continue
            if kind != "prepare_prompt":
                break
            self._in.read_frame()
            self.looked_ahead += 1
            log.debug("request %d prepare_prompt looked ahead during request %d", request.request_id, started[0])
            done = self.finish_payload(self.start_payload(payload, request))
            taken.append(lambda done=done: done)
            break
        return taken

    def _small_run_cells(self, request, model_id: str, room: int) -> bool:
        """Whether ``request`` is a RunCells that may join a pack on ``model_id`` with ``room`` cells left."""
        if request.WhichOneof("body") != "run_cells":
            return False
        rc = request.run_cells
        n = len(rc.cells)
        return rc.model_id == model_id and not rc.slow_path and 0 < n < self.options.pack_below and n <= room

    def _start_pack(self, payload: bytes) -> tuple:
        """Starts the request of ``payload``; a small RunCells is packed with the small RunCells of the
        same model behind it that have already arrived (issue 14: a grid under ``--pack-below`` cells
        leaves the GPU waiting on kernel launches; ``Engine.run_cells_packed_launch`` runs several
        prompts' cells in one pass). Frames are taken while they are PreparePrompt, Stats or such
        RunCells, up to ``_PACK_CELLS`` cells and ``_PACK_PROMPTS`` grids. The prepares before the last
        grid run first, then the grids in one launch, then the prepares after it (behind the running
        pass, as the lookahead does). Returns (thunks giving every taken request's reply in request
        order, the started grid to look ahead behind, whether a prepare already ran behind it). Each reply
        is what the request sent alone gets (within float32 rounding on CUDA); if the packed launch fails,
        each RunCells runs alone, so an error is its own request's."""
        first = None
        if self._greeted and self.options.pack_below > 0 and not self._stop_requested:
            try:
                first = pb.EngineRequest.FromString(payload)
            except DecodeError:
                first = None
        if first is None or not self._small_run_cells(first, first.run_cells.model_id, _PACK_CELLS):
            started = self.start_payload(payload, first)
            return [lambda: self.finish_payload(started)], started, False
        model_id = first.run_cells.model_id
        taken, room, grids = [(payload, first)], _PACK_CELLS - len(first.run_cells.cells), 1
        while grids < _PACK_PROMPTS:
            nxt = self._in.ready_frame()
            if nxt is None:
                break
            try:
                request = pb.EngineRequest.FromString(nxt)
            except DecodeError:
                break  # the main loop answers it as usual
            kind = request.WhichOneof("body")
            if kind == "run_cells" and self._small_run_cells(request, model_id, room):
                room -= len(request.run_cells.cells)
                grids += 1
            elif not (kind == "stats" or (kind == "prepare_prompt" and request.prepare_prompt.model_id == model_id)):
                break
            self._in.read_frame()
            taken.append((nxt, request))
        last = max(i for i, (_, r) in enumerate(taken) if r.WhichOneof("body") == "run_cells")
        replies: dict = {}
        for i, (p, request) in enumerate(taken[:last]):  # the prepares the grids need
            if request.WhichOneof("body") == "prepare_prompt":
                replies[i] = self.finish_payload(self.start_payload(p, request))
        at = [i for i in range(last + 1) if taken[i][1].WhichOneof("body") == "run_cells"]
        started = self._launch_pack(model_id, [taken[i] for i in at])
        for i, s in zip(at, started):
            replies[i] = s
        if grids > 1:
            self.packs += 1
            self.packed_grids += grids
        answers = []
        for i, (p, request) in enumerate(taken[:last + 1]):
            if i not in replies:  # a Stats: answered in its place, after the grids before it
                answers.append(lambda p=p, r=request: self.finish_payload(self.start_payload(p, r)))
            elif len(replies[i]) == 5:  # a started grid
                answers.append(lambda s=replies[i]: self.finish_payload(s))
            else:
                answers.append(lambda r=replies[i]: r)
        # Frames taken after the last grid follow the lookahead's rules (a prepare runs behind the pass
        # unless FACTSWEEP_LOOKAHEAD=0; a Stats is answered after it).
        behind = False
        for p, request in taken[last + 1:]:
            if request.WhichOneof("body") == "prepare_prompt":
                behind = True
                if self._lookahead:
                    self.looked_ahead += 1
                    log.debug("request %d prepare_prompt looked ahead during request %d", request.request_id, started[-1][0])
                    done = self.finish_payload(self.start_payload(p, request))
                    answers.append(lambda done=done: done)
                    continue
            answers.append(lambda p=p, r=request: self.finish_payload(self.start_payload(p, r)))
        return answers, started[-1], behind

    def _launch_pack(self, model_id: str, grids: list) -> list:
        """Started RunCells tuples (as :meth:`start_payload` gives them) for ``grids`` [(payload, request)],
        launched as one pass when there are several; any failure of the packed launch runs each alone."""
        if len(grids) > 1:
            t0 = time.perf_counter()
            try:
                specs = [(r.run_cells.prompt_key, cells_from_pb(r.run_cells.cells)) for _, r in grids]
                pending = self._engine.run_cells_packed_launch(model_id, specs)
                if [len(x) for x in pending] != [len(c) for _, c in specs]:
                    raise errors.EngineError("packed launch returned a result count unlike its cells")
            except Exception as exc:  # each request then gets its own outcome
                log.info("packed launch of %d grids failed (%s); running them one at a time", len(grids), exc)
            else:
                total = sum(len(x) for x in pending)
                return [(r.request_id, self._cells_answer(r.run_cells.prompt_key, x, len(x) / total), False, "run_cells", t0)
                        for (_, r), x in zip(grids, pending)]
        return [self.start_payload(p, r) for p, r in grids]

    @staticmethod
    def _cells_answer(prompt_key: str, pending, share: float = 1.0) -> _Deferred:
        """The deferred CellResults of a launched grid; ``share``: its cells' part of a packed pass, so
        each reply's ``seconds`` is its part of the pass's time."""
        def finish():  # packed: one float64 array of each measure, not a message a cell
            values = pending.array()
            return pb.CellResults(prompt_key=prompt_key, seconds=pending.seconds * share,
                                  p=values[:, 0].tolist(), logit=values[:, 1].tolist())

        return _Deferred("cells", finish, pending.busy)

    def _try_send(self, response) -> None:
        try:
            write_message(self._out, response)
        except OSError as exc:
            log.error("could not send the error frame either: %s", exc)

    # -- dispatch ----------------------------------------------------------------------------

    def handle_payload(self, payload: bytes) -> Tuple["pb.EngineResponse", bool]:
        """Decodes one request and answers it. Returns the response and whether to stop after it.
        Never raises for a bad request: every failure becomes an error response."""
        return self.finish_payload(self.start_payload(payload))

    def start_payload(self, payload: bytes, request: Optional["pb.EngineRequest"] = None) -> tuple:
        """Decodes one request (unless the caller already did: ``request``) and runs its handler:
        (request_id, the response or a ``_Deferred`` whose device work is queued, whether to stop after
        it, kind, start time). Never raises for a bad request: every failure becomes an error response."""
        try:
            request = request if request is not None else pb.EngineRequest.FromString(payload)
        except DecodeError as exc:
            return 0, error_response(0, errors.ProtocolError(
                f"frame of {len(payload)} bytes is not a valid EngineRequest ({exc}); expected a "
                "serialized factsweep.engine.v1.EngineRequest after each 4-byte length prefix",
                field="frame",
            )), False, None, None
        request_id = request.request_id
        kind = request.WhichOneof("body")
        if kind is None:
            return request_id, error_response(request_id, errors.ProtocolError(
                f"request {request_id} has no body, or a body this worker (protocol version "
                f"{engine_pkg.PROTOCOL_VERSION}) does not know; expected one of "
                f"{', '.join(self._handlers)}",
                field="body",
            )), False, None, None
        if not self._greeted and kind not in _BEFORE_HELLO:
            return request_id, error_response(request_id, errors.ProtocolError(
                f"request {request_id} is {kind} before a successful Hello; send "
                f"Hello(protocol_version={engine_pkg.PROTOCOL_VERSION}) first",
                field="body",
            )), False, None, None
        started = time.perf_counter()
        log.debug("request %d %s started", request_id, kind)
        try:
            field, body = self._handlers[kind](getattr(request, kind))
        except Exception as exc:
            return request_id, self._failed(request_id, kind, exc), False, kind, started
        if isinstance(body, _Deferred):
            return request_id, body, False, kind, started
        return request_id, pb.EngineResponse(request_id=request_id, **{field: body}), kind == "shutdown", kind, started

    def finish_payload(self, started: tuple) -> Tuple["pb.EngineResponse", bool]:
        """The response of a request begun by :meth:`start_payload` (waiting for its device work)."""
        request_id, answer, stop, kind, t0 = started
        if isinstance(answer, _Deferred):
            try:
                answer = pb.EngineResponse(request_id=request_id, **{answer.field: answer.finish()})
            except Exception as exc:
                answer = self._failed(request_id, kind, exc)
        if kind is not None and answer.WhichOneof("body") != "error":
            log.debug("request %d %s done in %.3f s", request_id, kind, time.perf_counter() - t0)
        return answer, stop

    @staticmethod
    def _failed(request_id: int, kind: str, exc: Exception) -> "pb.EngineResponse":
        if isinstance(exc, errors.EngineError):
            log.warning("request %d %s failed: %s: %s (field %r)", request_id, kind,
                        type(exc).__name__, exc, exc.field)
        else:  # the worker must survive any engine failure
            log.exception("request %d %s failed with an unexpected error", request_id, kind, exc_info=exc)
        return error_response(request_id, exc)

    # -- handlers: each returns (response body field, message) --------------------------------

    def _hello(self, req):
        if req.protocol_version != engine_pkg.PROTOCOL_VERSION:
            raise errors.VersionMismatch(
                f"protocol version mismatch: the client speaks version {req.protocol_version}, this "
                f"worker (engine {engine_pkg.__version__}) speaks version "
                f"{engine_pkg.PROTOCOL_VERSION}; run a node agent and an engine of the same release",
                field="protocol_version",
            )
        import torch  # deferred: see the module docstring

        device, memory = describe_device(torch, self.options.device)
        if self._engine is None:
            from engine.runtime import Engine

            self._engine = Engine(cache_budget_bytes=self.options.cache_budget_bytes)
        self._greeted = True
        return "hello", pb.HelloReply(
            protocol_version=engine_pkg.PROTOCOL_VERSION,
            engine_version=engine_pkg.__version__,
            torch_version=str(torch.__version__),
            device=device,
            device_memory_bytes=memory,
        )

    def _load_model(self, req):
        info = self._engine.load_model(
            req.model_id,
            req.path,
            dtype=req.dtype or "float32",
            device=req.device or self.options.device,
            allow_pickle=req.allow_pickle,
            cache_budget_bytes=req.cache_budget_bytes or None,  # 0: keep the worker's budget
        )
        self._hidden_size[req.model_id] = int(info.hidden_size)
        return "model", to_pb(pb.ModelInfo, info, sites=[site_value(s) for s in info.sites])

    def _prepare_prompt(self, req):
        info = self._engine.prepare_prompt(
            req.model_id,
            req.prompt_key,
            list(req.input_ids),
            (req.subject_start, req.subject_end),
            corruption_from_pb(req, self._hidden_size),
            answer_id=req.answer_id if req.HasField("answer_id") else None,
        )
        return "prompt", to_pb(pb.PromptInfo, info)

    def _run_cells(self, req):
        cells = cells_from_pb(req.cells)
        pending = self._engine.run_cells_launch(req.model_id, req.prompt_key, cells, slow_path=req.slow_path)
        if len(pending) != len(cells):
            raise errors.EngineError(f"engine returned {len(pending)} results for {len(cells)} cells")

        return "cells", self._cells_answer(req.prompt_key, pending)

    def _evict(self, req):
        if not req.prompt_keys and not req.all:
            raise errors.InvalidArgument(
                "Evict names no prompt_keys and all is false; list prompt_keys or set all=true",
                field="prompt_keys",
            )
        count, cache_bytes = self._engine.evict(req.model_id, list(req.prompt_keys) or None, all=req.all)
        return "evicted", pb.Evicted(count=int(count), cache_bytes=int(cache_bytes))

    def _stats(self, _req):
        return "stats", to_pb(pb.Stats, self._engine.stats())

    def _shutdown(self, _req):
        return "shutdown", pb.ShutdownAck()

    def _run_experiment(self, req):
        from engine import experiments

        try:
            params = json.loads(req.params_json) if req.params_json else {}
        except ValueError as exc:
            raise errors.InvalidArgument(f"params_json is not valid JSON ({exc})", field="params_json") from exc
        if not isinstance(params, dict):
            raise errors.InvalidArgument(f"params_json must be a JSON object, got {type(params).__name__}", field="params_json")
        started = time.perf_counter()
        result = experiments.run(self._engine, req.model_id, req.kind, req.prompt_key, params)
        return "experiment", pb.ExperimentResult(kind=req.kind, result_json=json.dumps(result),
                                                 seconds=time.perf_counter() - started)


def _claim_stdio() -> Tuple[BinaryIO, BinaryIO]:
    """Takes private duplicates of fds 0 and 1 for frames, then points fd 1 / ``sys.stdout`` at
    stderr and fd 0 / ``sys.stdin`` at /dev/null, so no other code can touch the protocol stream."""
    sys.stdout.flush()
    frames_in = os.fdopen(os.dup(0), "rb", buffering=0)  # unbuffered: FrameReader reads the fd itself
    frames_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdout = sys.stderr
    sys.stdin = open(os.devnull, "r")
    return frames_in, frames_out


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _device(text: str) -> str:
    if not _DEVICE_RE.match(text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def parse_args(argv=None) -> argparse.Namespace:
    """Command line of ``python3 -m engine``."""
    parser = argparse.ArgumentParser(
        prog="python3 -m engine",
        description="factsweep engine worker: length-prefixed protobuf (proto/engine.proto) on "
        "stdin/stdout, logs on stderr.",
    )
    parser.add_argument("--device", type=_device, default="cpu",
                        help="device reported in HelloReply and used by LoadModel when it names none (default cpu)")
    parser.add_argument("--cache-budget-bytes", type=_non_negative_int, default=None,
                        help="byte budget of the prompt cache, shared by all models (default: the engine's)")
    parser.add_argument("--max-frame-bytes", type=_positive_int, default=DEFAULT_MAX_FRAME_BYTES,
                        help=f"largest request frame accepted; a longer length prefix ends the worker "
                        f"(default {DEFAULT_MAX_FRAME_BYTES})")
    parser.add_argument("--pack-below", type=_non_negative_int, default=os.environ.get("FACTSWEEP_PACK_BELOW", str(DEFAULT_PACK_BELOW)),
                        help="RunCells of fewer cells that have arrived together run in one pass "
                        f"(up to {_PACK_CELLS} cells, {_PACK_PROMPTS} prompts); 0: never (default: "
                        f"$FACTSWEEP_PACK_BELOW, else {DEFAULT_PACK_BELOW})")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="stderr log level (default info)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Entry point: returns the process exit code (see the EXIT_* constants)."""
    options = parse_args(argv)
    # Triton's compiled kernels in the agent's folder (before anything imports Triton; the same rule
    # as engine.kernels.use_kernel_cache), so a restarted worker loads them instead of compiling.
    kernel_cache = os.environ.get("FACTSWEEP_KERNEL_CACHE", "")
    if kernel_cache and not os.environ.get("TRITON_CACHE_DIR"):
        os.environ["TRITON_CACHE_DIR"] = os.path.abspath(kernel_cache)
    logging.basicConfig(
        stream=sys.stderr,
        level=options.log_level.upper(),
        format="%(asctime)s engine-worker[%(process)d] %(levelname)s %(message)s",
    )
    logging.captureWarnings(True)
    frames_in, frames_out = _claim_stdio()
    worker = Worker(options, frames_in, frames_out)
    signal.signal(signal.SIGTERM, worker.on_signal)
    signal.signal(signal.SIGINT, worker.on_signal)
    log.info("engine worker %s (protocol %d) ready on %s", engine_pkg.__version__,
             engine_pkg.PROTOCOL_VERSION, options.device)
    try:
        code = worker.serve()
    except Exception:
        log.exception("engine worker failed")
        code = EXIT_INTERNAL
    if worker.grids:  # how often a prepare ran behind a grid (the agent's pipelining at work)
        log.info("the next prompt's prepare ran behind %d of %d grids", worker.looked_ahead, worker.grids)
    if worker.packs:
        log.info("%d small grids ran packed in %d passes", worker.packed_grids, worker.packs)
    log.info("exit %d", code)
    return code
