"""The worker packs small RunCells that have arrived together (``Worker._start_pack``, issue 14): the
agent streams each shard's PreparePrompt and RunCells behind the running one, and grids under
``--pack-below`` cells run in one pass over the layers. Every reply must be what the request sent
alone gets (exactly, on the CPU), in request order, each error its own request's. The real worker
process, driven as ``test_lookahead.py`` drives it."""

from __future__ import annotations

import pytest

from engine.proto import engine_pb2 as pb
from test_lookahead import golden_dir, prepare, run_cells, send_together, without_timing  # noqa: F401 (fixture)
from test_worker import WorkerProcess, assert_error, hello

PACKED = "small grids ran packed in"
OTHER_SWAPS = ([5, 7, 8, 99, 411, 8, 73], [5, 9, 10, 99, 411, 8, 73], [5, 11, 12, 99, 411, 8, 73])


def start(golden_dir, *args: str) -> WorkerProcess:
    worker = WorkerProcess("--log-level", "debug", *args)
    assert worker.call(**hello()).WhichOneof("body") == "hello"
    loaded = worker.call(load_model=pb.LoadModel(model_id="m", path=str(golden_dir / "mamba-tiny")))
    assert loaded.WhichOneof("body") == "model", loaded
    return worker


def shards(keys, cells=None, bad=None) -> list:
    """The agent's stream for one shard a key: PreparePrompt, RunCells, Stats (it asks after each)."""
    out, rid = [], 100
    for key, swap in zip(keys, OTHER_SWAPS):
        rc = run_cells(key) if cells is None else cells(key)
        if key == bad:
            rc.cells[3].layer = 99
        out += [pb.EngineRequest(request_id=rid, prepare_prompt=prepare(key, swap=swap)),
                pb.EngineRequest(request_id=rid + 1, run_cells=rc),
                pb.EngineRequest(request_id=rid + 2, stats=pb.StatsRequest())]
        rid += 3
    return out


def one_at_a_time(worker: WorkerProcess, requests: list) -> list:
    return [send_together(worker, r)[0] for r in requests]


def finish(worker: WorkerProcess) -> None:
    """Closes stdin so the worker logs its counts and exits 0."""
    worker.close_stdin()
    assert worker.wait() == 0, worker.stderr


def comparable(reply):
    copy = without_timing(reply)
    if copy.WhichOneof("body") == "stats":  # counters differ between the two workers' histories
        return "stats"
    return copy


@pytest.fixture(scope="module")
def alone(golden_dir):
    worker = start(golden_dir, "--pack-below", "0")
    yield worker
    worker.stop()


def test_small_grids_sent_together_run_in_one_pass_and_answer_as_alone(golden_dir, alone):
    requests = shards(["a", "b", "c"])
    want = one_at_a_time(alone, requests)
    worker = start(golden_dir)
    try:
        got = send_together(worker, *requests)
        assert [r.request_id for r in got] == [r.request_id for r in requests]
        assert [comparable(r) for r in got] == [comparable(r) for r in want]
        # the last Stats counts every packed cell once
        assert got[-1].stats.cells_run == 3 * len(run_cells("a").cells)
        assert all(r.cells.seconds > 0 for r in got if r.WhichOneof("body") == "cells")
        finish(worker)
    finally:
        worker.stop()
    worker.wait_for_stderr(f"3 {PACKED} 1 passes")


def test_an_invalid_grid_in_a_pack_gets_its_own_error_and_the_others_their_values(golden_dir, alone):
    requests = shards(["d", "e", "f"], bad="e")
    want = one_at_a_time(alone, requests)
    worker = start(golden_dir)
    try:
        got = send_together(worker, *requests)
        assert_error(got[4], pb.ERROR_CODE_INVALID_ARGUMENT, request_id=104)
        assert_error(want[4], pb.ERROR_CODE_INVALID_ARGUMENT, request_id=104)
        assert got[4].error.field == want[4].error.field
        for i in (0, 1, 3, 6, 7):
            assert comparable(got[i]) == comparable(want[i]), i
        finish(worker)
    finally:
        worker.stop()
    worker.wait_for_stderr("running them one at a time")


def test_grids_at_or_over_pack_below_are_not_packed(golden_dir):
    n = len(run_cells("g").cells)
    worker = start(golden_dir, "--pack-below", str(n))
    try:
        got = send_together(worker, *shards(["g", "h"]))
        assert [r.WhichOneof("body") for r in got] == ["prompt", "cells", "stats"] * 2
        finish(worker)
    finally:
        worker.stop()
    worker.wait_for_stderr("exit 0")
    assert PACKED not in worker.stderr
