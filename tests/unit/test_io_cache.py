from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from taxonomist.features.cache import FeatureCache
from taxonomist.io import ChunkedWriter, ResumeError, atomic_write, atomic_write_json, atomic_write_text


def test_cache_round_trip_and_reopen(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "fp1")
    feats = np.arange(12, dtype=np.float32).reshape(3, 4)
    cache.put(["a", "b", "c"], feats)
    assert "b" in cache and "z" not in cache
    again = FeatureCache(tmp_path, "fp1")
    np.testing.assert_array_equal(again.get(["c", "a"]), feats[[2, 0]])
    assert len(FeatureCache(tmp_path, "fp2")) == 0  # another backbone never sees these


def test_cache_ignores_half_written_shard(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "fp")
    np.save(cache.dir / "dead.feats.npy", np.zeros((1, 2), dtype=np.float32))  # keys never landed
    assert len(FeatureCache(tmp_path, "fp")) == 0


def test_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    atomic_write_text(target, "old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_json_writer_refuses_nan_and_keeps_the_old_file(tmp_path: Path) -> None:
    """Regression: a NaN score was written as ``NaN``, which is not JSON; strict readers refuse the file."""
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"score": None})
    with pytest.raises(ValueError, match="JSON compliant"):
        atomic_write_json(target, {"score": float("nan")}, indent=1)
    assert target.read_text() == '{"score": null}'


def test_chunked_writer_resumes_without_duplicates(tmp_path: Path) -> None:
    ids = [str(i) for i in range(10)]
    rows = pd.DataFrame({"id": ids, "path": [f"{i}.jpg" for i in ids]})
    writer = ChunkedWriter(tmp_path, rows, 4, {"m": 1})
    assert writer.pending() == [0, 1, 2]
    writer.write(0, {"rows": pd.DataFrame({"id": ids[:4]})})
    again = ChunkedWriter(tmp_path, rows, 4, {"m": 1})
    assert again.pending() == [1, 2]
    for k in again.pending():
        again.write(k, {"rows": pd.DataFrame({"id": [ids[r] for r in again.chunk_rows(k)]})})
    assert again.read("rows")["id"].tolist() == ids
    with pytest.raises(ResumeError, match="holds a finished job with m 1 then, 2 now; to start afresh"):
        ChunkedWriter(tmp_path, rows, 4, {"m": 2})


def test_chunked_writer_replaces_rows_of_a_finished_chunk_in_its_order(tmp_path: Path) -> None:
    rows = pd.DataFrame({"id": ["a", "b", "c"], "path": ["a.jpg", "b.jpg", "c.jpg"]})
    writer = ChunkedWriter(tmp_path, rows, 4, {"m": 1})
    writer.write(0, {"out": pd.DataFrame({"id": ["a", "c"]}), "errors": pd.DataFrame({"id": ["b", "c"]})})
    for _ in range(2):  # replacing again (a rerun after a crash halfway) gives the same parts
        writer.replace(0, {"out": pd.DataFrame({"id": ["b"]}), "errors": pd.DataFrame({"id": []})}, {"b"})
        assert writer.read("out")["id"].tolist() == ["a", "b", "c"]
        assert writer.read("errors")["id"].tolist() == ["c"]
        assert writer.pending() == []


def test_chunked_writer_refuses_other_rows_of_the_same_length(tmp_path: Path) -> None:
    """Regression: only the row count was compared, so a rerun on new rows returned the old parts."""
    rows = pd.DataFrame({"id": ["a", "b", "c"], "path": ["a.jpg", "b.jpg", "c.jpg"]})
    ChunkedWriter(tmp_path, rows, 4, {"m": 1}).write(0, {"rows": rows[["id"]]})
    with pytest.raises(ResumeError, match="holds a finished job with other input rows"):
        ChunkedWriter(tmp_path, rows.assign(id=["x", "y", "z"]), 4, {"m": 1})
    with pytest.raises(ResumeError, match="holds a finished job with other input rows"):  # other images
        ChunkedWriter(tmp_path, rows.assign(path=["c.jpg", "b.jpg", "a.jpg"]), 4, {"m": 1})
