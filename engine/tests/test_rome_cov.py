"""The cluster's covariance path (issue 17 item 2): C merged from partial second moments of corpus
slices (each written to a file with ``moment_path``, as a covariance shard does) equals C computed
in one go, and an edit given that C as ``covariance_file`` equals the edit that computed C itself;
a file of the wrong size or hash is refused, naming the field."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from engine import experiments
from engine.errors import InvalidArgument
from engine.runtime import Engine

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS = 300  # sequences: enough for a full-rank W_o key covariance (256) of the tiny Mamba
HP = {"context_template_length_params": [[5, 2]], "v_num_grad_steps": 4}


@pytest.fixture(scope="module")
def eng():
    e = Engine()
    e.load_model("mamba", str(REPO_ROOT / "models" / "mamba-facts"))
    return e


def merged(eng, corpus, parts, tmp_path, matrix="W_o", layer=3):
    """C from `parts` covariance shards over contiguous slices, merged as the coordinator does
    (float64 sum of the float32 moments over the summed token counts); (C float32, tokens)."""
    total, tokens = None, 0
    for i in range(parts):
        sl = corpus[i * len(corpus) // parts:(i + 1) * len(corpus) // parts]
        path = tmp_path / f"part{i}.f32"
        r = experiments.run(eng, "mamba", "edit", f"cov{i}",
                            {"matrix": matrix, "layer": layer, "corpus": sl, "cov_only": True, "moment_path": str(path)})
        blob = path.read_bytes()
        assert r["moment_sha256"] == hashlib.sha256(blob).hexdigest()
        m = np.frombuffer(blob, dtype=np.float32).astype(np.float64).reshape(r["covariance"]["dim"], -1)
        total = m if total is None else total + m
        tokens += r["covariance"]["tokens"]
    return (total / tokens).astype(np.float32), tokens


def write_c(tmp_path, C, tokens):
    blob = C.tobytes()
    path = tmp_path / "C.f32"
    path.write_bytes(blob)
    return {"path": str(path), "sha256": hashlib.sha256(blob).hexdigest(), "dim": C.shape[0], "tokens": tokens}


def test_C_merged_from_partial_moments_equals_C_computed_in_one_go(eng, fixture, tmp_path):
    corpus = fixture["corpus"][:CORPUS]
    C3, tokens = merged(eng, corpus, 3, tmp_path)
    one = experiments.run(eng, "mamba", "edit", "all", {"matrix": "W_o", "layer": 3, "corpus": corpus, "cov_only": True,
                                                      "return_moment": True})
    assert tokens == one["covariance"]["tokens"] == sum(len(s) for s in corpus)
    whole = np.frombuffer(base64.b64decode(one["moment_b64"]), dtype=np.float32).astype(np.float64).reshape(C3.shape)
    whole /= tokens
    # float32 sums in another order: agree to float32 rounding of the largest entries
    assert np.abs(C3 - whole).max() <= 1e-5 * np.abs(whole).max()


def test_an_edit_with_the_merged_C_as_covariance_file_equals_the_edit_that_computes_C(eng, fixture, tmp_path):
    corpus = fixture["corpus"][:CORPUS]
    C, tokens = merged(eng, corpus, 2, tmp_path, layer=2)
    params = dict(fixture["cases"][4]["params"], matrix="W_o", layer=2, corpus=corpus, bos_id=fixture["bos_id"],
                  generation=None, hparams=dict(HP, cov_ridge=0.01))
    computed = experiments.run(eng, "mamba", "edit", "case", params)
    fetched = experiments.run(eng, "mamba", "edit", "case", dict(params, covariance_file=write_c(tmp_path, C, tokens)))
    assert fetched["covariance"]["fetched"] is True and fetched["covariance"]["tokens"] == tokens
    assert computed["covariance"]["tokens"] == tokens
    for m in ("ES", "PS", "NS", "EM", "PM", "NM"):
        assert fetched["post"][m] == pytest.approx(computed["post"][m], rel=1e-4, abs=1e-6), m
    assert fetched["update"]["norm"] == pytest.approx(computed["update"]["norm"], rel=1e-3)
    assert fetched["restored"] is True


@pytest.mark.parametrize("change,field", [
    (lambda spec: dict(spec, sha256="0" * 64), "params.covariance_file.sha256"),
    (lambda spec: dict(spec, dim=spec["dim"] - 1), "params.covariance_file.dim"),
    (lambda spec: dict(spec, path=spec["path"] + ".missing"), "params.covariance_file.path"),
    (lambda spec: dict(spec, sha256="xyz"), "params.covariance_file.sha256"),
])
def test_a_covariance_file_that_does_not_match_is_refused_naming_the_field(eng, fixture, tmp_path, change, field):
    dim = 256
    C = np.eye(dim, dtype=np.float32)
    spec = change(write_c(tmp_path, C, 10))
    params = dict(fixture["cases"][0]["params"], matrix="W_o", layer=2, bos_id=fixture["bos_id"], generation=None,
                  hparams=dict(HP), covariance_file=spec)
    with pytest.raises(Exception) as e:
        experiments.run(eng, "mamba", "edit", "bad", params)
    assert field in str(e.value)


def test_a_truncated_covariance_file_is_refused(eng, fixture, tmp_path):
    spec = write_c(tmp_path, np.eye(256, dtype=np.float32), 10)
    blob = Path(spec["path"]).read_bytes()[:-4]
    Path(spec["path"]).write_bytes(blob)
    params = dict(fixture["cases"][0]["params"], matrix="W_o", layer=2, bos_id=fixture["bos_id"], generation=None,
                  hparams=dict(HP), covariance_file=dict(spec, sha256=hashlib.sha256(blob).hexdigest()))
    with pytest.raises(InvalidArgument, match="params.covariance_file.path: 262140 bytes"):
        experiments.run(eng, "mamba", "edit", "bad", params)


def test_corpus_slice_of_a_corpus_file_is_the_moment_of_those_sequences_and_a_bad_slice_is_named(eng, fixture, tmp_path):
    corpus = fixture["corpus"][:20]
    path = tmp_path / "corpus.json"
    path.write_text(json.dumps(corpus))
    base = {"matrix": "W_a", "layer": 1, "cov_only": True, "return_moment": True}
    sliced = experiments.run(eng, "mamba", "edit", "s", dict(base, corpus_path=str(path), corpus_slice=[5, 12]))
    inline = experiments.run(eng, "mamba", "edit", "i", dict(base, corpus=corpus[5:12]))
    assert sliced["covariance"]["tokens"] == sum(len(s) for s in corpus[5:12])
    assert inline["covariance"]["cached"] is True  # the same sequences: the same C (its moment rebuilt as C · tokens)
    got, want = (np.frombuffer(base64.b64decode(r["moment_b64"]), dtype=np.float32) for r in (sliced, inline))
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    for bad in ([5, 5], [0, 21], [-1, 3], "0:3"):
        with pytest.raises(InvalidArgument, match="params.corpus_slice"):
            experiments.run(eng, "mamba", "edit", "b", dict(base, corpus_path=str(path), corpus_slice=bad))
