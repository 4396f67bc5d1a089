"""Per-head cells on the wire: ``Cell.head`` through the real ``python -m engine`` worker.

A cell with ``head = k`` on ``SITE_SSM`` of a Mamba-2 model is the engine's per-head site ``ssm.h<k>``
(head k's channels of y restored); a cell without ``head`` is the whole site, as before the field
existed. The worker's numbers are compared with the same engine called in-process with the per-head
site names, so what is tested is the protocol translation; the per-head maths is tested in
``test_mamba2_fast_path.py``. Bad heads are refused naming the cell and the field, and the worker
keeps serving.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.proto import engine_pb2 as pb
from engine.runtime import CellSpec, Engine, SwapSpec
from engine.testing import worker_session, write_random_checkpoint

IDS = [5, 17, 33, 2, 41, 9, 60]  # 7 tokens, subject [1, 3)
SWAP = [5, 50, 12, 2, 41, 9, 60]
SUBJECT = (1, 3)
HEADS = 4  # engine.testing.mamba2_config: 4 heads of 8
LAYERS = 4


@pytest.fixture(scope="module")
def mamba2(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("m2"), "mamba2", seed=5)


def _prepare(client, key="p"):
    reply = client.call(prepare_prompt=pb.PreparePrompt(
        model_id="m", prompt_key=key, input_ids=IDS, subject_start=SUBJECT[0], subject_end=SUBJECT[1],
        corruption=pb.Corruption(swap=pb.SwapCorruption(corrupted_ids=SWAP))))
    assert reply.WhichOneof("body") == "prompt", reply


def _error(reply) -> pb.EngineError:
    assert reply.WhichOneof("body") == "error", reply
    return reply.error


def test_per_head_cells_over_the_protocol_equal_the_engine_alone_and_a_cell_without_head_is_the_whole_site(mamba2):
    # Whole-site ssm cells (no head: a message as written before the field existed) and every head, mixed
    # in one request, windows 1 and 3, every layer and token.
    wire, local = [], []
    for w in (1, 3):
        for layer in range(LAYERS):
            for t in range(len(IDS)):
                wire.append(pb.Cell(site=pb.SITE_SSM, layer=layer, token=t, window=w))
                local.append(CellSpec("ssm", layer, t, w))
                for k in range(HEADS):
                    wire.append(pb.Cell(site=pb.SITE_SSM, layer=layer, token=t, window=w, head=k))
                    local.append(CellSpec(f"ssm.h{k}", layer, t, w))
    with worker_session(mamba2) as client:
        _prepare(client)
        reply = client.call(run_cells=pb.RunCells(model_id="m", prompt_key="p", cells=wire))
        assert reply.WhichOneof("body") == "cells", reply
        got = np.stack([np.array(reply.cells.p), np.array(reply.cells.logit)], axis=1)

    eng = Engine()
    eng.load_model("m", mamba2)
    eng.prepare_prompt("m", "p", IDS, SUBJECT, SwapSpec(SWAP))
    want = np.array(eng.run_cells("m", "p", local))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # The head field reached the engine: a head's restore is not the whole site's, and heads differ.
    whole, heads = got[0::HEADS + 1, 1], got.reshape(-1, HEADS + 1, 2)[:, 1:, 1]
    assert np.abs(heads - whole[:, None]).max() > 1e-3
    assert np.abs(heads[:, 0] - heads[:, 1]).max() > 1e-3


def test_a_head_outside_the_model_or_on_a_site_without_heads_is_refused_naming_the_field(mamba2, tmp_path):
    neox = write_random_checkpoint(tmp_path / "neox", "gpt_neox")
    mamba = write_random_checkpoint(tmp_path / "mamba", "mamba")
    with worker_session(mamba2) as client:
        _prepare(client)
        ok = pb.Cell(site=pb.SITE_SSM, layer=0, token=0, window=1, head=HEADS - 1)

        def run(cell, model="m", key="p"):
            return client.call(run_cells=pb.RunCells(model_id=model, prompt_key=key, cells=[ok, cell]))

        err = _error(run(pb.Cell(site=pb.SITE_SSM, layer=1, token=2, window=1, head=HEADS)))
        assert err.code == pb.ERROR_CODE_INVALID_ARGUMENT and err.field == "head"
        assert err.message == f"cells[1].head: expected 0..{HEADS - 1} (this mamba2 model has {HEADS} heads), got {HEADS}"

        err = _error(run(pb.Cell(site=pb.SITE_MIXER, layer=1, token=2, window=1, head=0)))
        assert err.code == pb.ERROR_CODE_INVALID_ARGUMENT and err.field == "cells[1].head"
        assert "site mixer, which has no per-head restores" in err.message and "SITE_SSM" in err.message

        # Mamba (1) has an ssm site but no heads.
        assert client.call(load_model=pb.LoadModel(model_id="m1", path=mamba)).WhichOneof("body") == "model"
        assert client.call(prepare_prompt=pb.PreparePrompt(
            model_id="m1", prompt_key="q", input_ids=IDS, subject_start=1, subject_end=3,
            corruption=pb.Corruption(swap=pb.SwapCorruption(corrupted_ids=SWAP)))).WhichOneof("body") == "prompt"
        err = _error(client.call(run_cells=pb.RunCells(model_id="m1", prompt_key="q", cells=[
            pb.Cell(site=pb.SITE_SSM, layer=0, token=0, window=1, head=0)])))
        assert err.field == "head" and "mamba models have no per-head ssm restores" in err.message

        # GPT-NeoX has no ssm at all: the site is what is wrong.
        assert client.call(load_model=pb.LoadModel(model_id="nx", path=neox)).WhichOneof("body") == "model"
        assert client.call(prepare_prompt=pb.PreparePrompt(
            model_id="nx", prompt_key="r", input_ids=IDS, subject_start=1, subject_end=3,
            corruption=pb.Corruption(swap=pb.SwapCorruption(corrupted_ids=SWAP)))).WhichOneof("body") == "prompt"
        err = _error(client.call(run_cells=pb.RunCells(model_id="nx", prompt_key="r", cells=[
            pb.Cell(site=pb.SITE_SSM, layer=0, token=0, window=1, head=0)])))
        assert err.field == "site" and "unknown site 'ssm' for gpt_neox" in err.message

        # Still serving, and the valid per-head cell alone runs.
        reply = client.call(run_cells=pb.RunCells(model_id="m", prompt_key="p", cells=[ok]))
        assert reply.WhichOneof("body") == "cells" and len(reply.cells.p) == 1
