"""The worker's lookahead (``Worker.serve``): a PreparePrompt that has already arrived behind a
RunCells runs while the grid's device work is queued, yet every reply is what the requests sent one
at a time get, in request order, each request's error its own; ``FACTSWEEP_LOOKAHEAD=0`` turns it
off. The real worker process, as ``test_worker.py`` drives it (its helpers are shared)."""

from __future__ import annotations

import pytest

from engine.framing import encode_frame
from engine.proto import engine_pb2 as pb
from test_worker import GOLDEN_DIR, INPUT_IDS, SUBJECT, SWAP_IDS, WorkerProcess, assert_error, hello

LOOKED_AHEAD = "looked ahead during request"


@pytest.fixture(scope="module")
def golden_dir():
    if not (GOLDEN_DIR / "mamba-tiny").is_dir():
        pytest.skip(f"golden checkpoints not found in {GOLDEN_DIR}; set GOLDEN_DIR")
    return GOLDEN_DIR


def start_worker(golden_dir, lookahead: bool) -> WorkerProcess:
    worker = WorkerProcess("--log-level", "debug", env={"FACTSWEEP_LOOKAHEAD": "1" if lookahead else "0"})
    assert worker.call(**hello()).WhichOneof("body") == "hello"
    loaded = worker.call(load_model=pb.LoadModel(model_id="m", path=str(golden_dir / "mamba-tiny")))
    assert loaded.WhichOneof("body") == "model", loaded
    return worker


@pytest.fixture(scope="module", params=[True, False], ids=["lookahead", "FACTSWEEP_LOOKAHEAD=0"])
def worker(request, golden_dir):
    w = start_worker(golden_dir, request.param)
    w.lookahead = request.param
    yield w
    w.stop()


def prepare(key: str, ids=INPUT_IDS, subject=SUBJECT, swap=SWAP_IDS) -> pb.PreparePrompt:
    return pb.PreparePrompt(model_id="m", prompt_key=key, input_ids=ids, subject_start=subject[0],
                            subject_end=subject[1], corruption=pb.Corruption(swap=pb.SwapCorruption(corrupted_ids=swap)))


def run_cells(key: str) -> pb.RunCells:
    sites = [pb.SITE_RESIDUAL, pb.SITE_MIXER, pb.SITE_SSM, pb.SITE_IN_SSM]
    cells = [pb.Cell(site=s, layer=layer, token=t, window=w)
             for s in sites for layer in range(4) for t in range(len(INPUT_IDS)) for w in (1, 3)]
    return pb.RunCells(model_id="m", prompt_key=key, cells=cells)


def send_together(worker: WorkerProcess, *requests: pb.EngineRequest) -> list:
    """Writes every request in one write (so the worker finds the next one already there), then reads
    one reply a request."""
    worker.send_raw(b"".join(encode_frame(r.SerializeToString()) for r in requests))
    return [worker.client.receive() for _ in requests]


def without_timing(reply: pb.EngineResponse) -> pb.EngineResponse:
    copy = pb.EngineResponse()
    copy.CopyFrom(reply)
    if copy.WhichOneof("body") == "cells":
        copy.cells.seconds = 0
    return copy


def evict(worker: WorkerProcess, *keys: str) -> None:
    assert worker.call(evict=pb.Evict(model_id="m", prompt_keys=list(keys))).WhichOneof("body") == "evicted"


def test_a_prepare_behind_run_cells_gets_the_replies_of_one_request_at_a_time(worker):
    assert worker.call(prepare_prompt=prepare("a")).WhichOneof("body") == "prompt"
    before = worker.call(stats=pb.StatsRequest()).stats
    together = send_together(worker, pb.EngineRequest(request_id=9001, run_cells=run_cells("a")),
                             pb.EngineRequest(request_id=9002, prepare_prompt=prepare("b", swap=[5, 7, 8, 99, 411, 8, 73])))
    assert [r.request_id for r in together] == [9001, 9002]
    assert [r.WhichOneof("body") for r in together] == ["cells", "prompt"], together
    assert together[1].prompt.cache_hit is False
    if worker.lookahead:  # the stderr reader thread may not have the line yet: wait for it
        worker.wait_for_stderr(LOOKED_AHEAD)
    else:
        assert LOOKED_AHEAD not in worker.stderr
    after = worker.call(stats=pb.StatsRequest()).stats
    n = len(run_cells("a").cells)
    assert (after.cells_run - before.cells_run, after.cache_misses - before.cache_misses) == (n, 1)
    assert list(after.cached_prompt_keys)[-2:] == ["a", "b"]  # "b" cached after "a" was used

    evict(worker, "b")
    one = [worker.call(run_cells=run_cells("a")),
           worker.call(prepare_prompt=prepare("b", swap=[5, 7, 8, 99, 411, 8, 73]))]
    for got, want in zip(together, one):
        got, want = without_timing(got), without_timing(want)
        got.request_id = want.request_id = 0
        assert got == want
    evict(worker, "a", "b")


def test_a_stats_between_run_cells_and_the_next_prepare_does_not_stop_the_lookahead(worker):
    """The agent asks for Stats after every shard, so one often sits between a grid and the next
    shard's PreparePrompt: the prepare still runs during the grid; the replies keep request order, and
    the Stats snapshot is taken after the grid (its cells counted) and includes what the prepare cached."""
    assert worker.call(prepare_prompt=prepare("s1")).WhichOneof("body") == "prompt"
    before = worker.call(stats=pb.StatsRequest()).stats
    marker = f"request 9302 prepare_prompt {LOOKED_AHEAD} 9300"
    together = send_together(worker, pb.EngineRequest(request_id=9300, run_cells=run_cells("s1")),
                             pb.EngineRequest(request_id=9301, stats=pb.StatsRequest()),
                             pb.EngineRequest(request_id=9302, prepare_prompt=prepare("s2", swap=[5, 7, 8, 99, 411, 8, 73])))
    assert [(r.request_id, r.WhichOneof("body")) for r in together] == [(9300, "cells"), (9301, "stats"), (9302, "prompt")]
    stats = together[1].stats
    assert stats.cells_run - before.cells_run == len(run_cells("s1").cells)
    if worker.lookahead:
        worker.wait_for_stderr(marker)
        assert "s2" in stats.cached_prompt_keys
    else:
        assert marker not in worker.stderr and "s2" not in stats.cached_prompt_keys
    evict(worker, "s1", "s2")


def test_an_invalid_prepare_behind_run_cells_gets_its_error_and_the_cells_are_intact(worker):
    assert worker.call(prepare_prompt=prepare("c")).WhichOneof("body") == "prompt"
    want = worker.call(run_cells=run_cells("c"))
    together = send_together(worker, pb.EngineRequest(request_id=9101, run_cells=run_cells("c")),
                             pb.EngineRequest(request_id=9102, prepare_prompt=prepare("d", subject=(5, 9))))
    assert [r.request_id for r in together] == [9101, 9102]
    assert without_timing(together[0]).cells == without_timing(want).cells
    assert_error(together[1], pb.ERROR_CODE_INVALID_ARGUMENT, field="subject", request_id=9102)
    # the worker goes on: the next request is answered
    assert worker.call(stats=pb.StatsRequest()).WhichOneof("body") == "stats"
    evict(worker, "c")


def test_a_failing_run_cells_before_a_prepare_leaves_the_prepare_answered(worker):
    together = send_together(worker, pb.EngineRequest(request_id=9201, run_cells=run_cells("never-prepared")),
                             pb.EngineRequest(request_id=9202, prepare_prompt=prepare("e")))
    assert_error(together[0], pb.ERROR_CODE_NOT_FOUND, field="prompt_key", request_id=9201)
    assert together[1].request_id == 9202 and together[1].WhichOneof("body") == "prompt", together[1]
    evict(worker, "e")


def test_run_cells_then_prepare_then_shutdown_in_one_write_answers_all_then_exits_0(golden_dir):
    worker = start_worker(golden_dir, True)
    try:
        assert worker.call(prepare_prompt=prepare("a")).WhichOneof("body") == "prompt"
        replies = send_together(worker, pb.EngineRequest(request_id=7, run_cells=run_cells("a")),
                                pb.EngineRequest(request_id=8, prepare_prompt=prepare("b")),
                                pb.EngineRequest(request_id=9, shutdown=pb.Shutdown()))
        assert [(r.request_id, r.WhichOneof("body")) for r in replies] == [(7, "cells"), (8, "prompt"), (9, "shutdown")]
        assert worker.wait() == 0
        worker.wait_for_stderr(LOOKED_AHEAD)
        # at exit the worker says how often the pipelining worked: here for the one grid it ran
        worker.wait_for_stderr("the next prompt's prepare ran behind 1 of 1 grids")
    finally:
        worker.stop()


def test_run_cells_then_prepare_then_end_of_stdin_answers_both_then_exits_0(golden_dir):
    worker = start_worker(golden_dir, True)
    try:
        assert worker.call(prepare_prompt=prepare("a")).WhichOneof("body") == "prompt"
        worker.send_raw(encode_frame(pb.EngineRequest(request_id=7, run_cells=run_cells("a")).SerializeToString())
                        + encode_frame(pb.EngineRequest(request_id=8, prepare_prompt=prepare("b")).SerializeToString()))
        worker.close_stdin()
        replies = [worker.client.receive(), worker.client.receive()]
        assert [(r.request_id, r.WhichOneof("body")) for r in replies] == [(7, "cells"), (8, "prompt")]
        assert worker.wait() == 0
    finally:
        worker.stop()


def test_ready_frame_waits_for_a_frame_that_arrives_within_its_wait():
    """What the lookahead relies on while a grid runs: ``ready_frame(wait=…)`` returns a frame that
    arrives (here in two pieces) within the wait, and ``None`` without consuming anything otherwise."""
    import os
    import threading
    import time

    from engine.framing import FrameReader

    r, w = os.pipe()
    try:
        reader = FrameReader(os.fdopen(r, "rb", buffering=0))
        frame = encode_frame(b"next request")
        assert reader.ready_frame() is None and reader.ready_frame(wait=0.01) is None

        def write_later():
            time.sleep(0.05)
            os.write(w, frame[:3])
            time.sleep(0.05)
            os.write(w, frame[3:])

        writer = threading.Thread(target=write_later)
        writer.start()
        assert reader.ready_frame(wait=5.0) == b"next request"
        writer.join()
        assert reader.read_frame() == b"next request"  # not consumed by ready_frame
        assert reader.ready_frame(wait=0.01) is None
    finally:
        os.close(w)
