"""The Ray engine against the local one on the tiny checkpoint: same rows and numbers, resume, bad inputs."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from taxonomist.data.catalog import read_generic
from taxonomist.io import ResumeError

if importlib.util.find_spec("ray") is None:
    MESSAGE = "ray is not installed: pip install 'taxonomist[ray]'"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(MESSAGE, pytrace=False)  # CI must run these, never skip them
    pytest.skip(MESSAGE, allow_module_level=True)

from taxonomist.inference.ray_engine import part_path, predict_with_ray, read_ray_output, read_rows

from .conftest import invoke, listing_config, make_catalog, tiny_sentence_encoder

pytestmark = pytest.mark.integration
KEY = ["id", "category", "attribute", "value"]


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    """One small local Ray for the module (2 CPUs: the machine may be busy), always shut down."""
    import ray

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def ckpt(tiny_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, config = tiny_run
    path = tmp_path_factory.mktemp("ray-run") / "ckpt"
    invoke("train", "-c", str(config), "-o", str(path), "-q", "--set", "train.epochs=10")
    return path


def local_outputs(ckpt: Path, catalog_csv: Path, out: Path, *args: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    invoke("predict", str(ckpt), "-o", str(out), "-q", "--data", str(catalog_csv), *args)
    long = pd.read_csv(out / "predictions_long.csv", dtype=str, keep_default_na=False)
    errors = pd.read_csv(out / "errors.csv", dtype=str, keep_default_na=False)
    return long.astype({"confidence": float}), errors


def run_ray(ckpt: Path, source, out: Path, **kwargs):
    return predict_with_ray(
        ckpt, source, out, batch_size=16, shard_rows=32, num_actors=1, progress=False, **kwargs
    )


def assert_same_predictions(ray_long: pd.DataFrame, local_long: pd.DataFrame) -> None:
    assert len(ray_long) == len(local_long)
    pd.testing.assert_frame_equal(ray_long[KEY], local_long[KEY])
    assert (ray_long["confidence"] - local_long["confidence"]).abs().max() <= 1e-6


def test_ray_matches_local_engine(ray_session: None, ckpt: Path, tiny_run: tuple[Path, Path], tmp_path: Path):
    catalog_csv, _ = tiny_run
    local_long, local_errors = local_outputs(ckpt, catalog_csv, tmp_path / "local")
    catalog = read_generic(catalog_csv, id_column="sku", category_column="type")
    summary = run_ray(ckpt, catalog, tmp_path / "ray")
    assert (summary.rows, summary.predicted, summary.errors, summary.resumed_chunks) == (120, 120, 0, 0)
    assert_same_predictions(read_ray_output(tmp_path / "ray"), local_long)
    assert read_ray_output(tmp_path / "ray", "errors").empty and local_errors.empty


def test_resume_recomputes_only_missing_shards(
    ray_session: None, ckpt: Path, tiny_run: tuple[Path, Path], tmp_path: Path
):
    catalog_csv, _ = tiny_run
    # The row-table input: a folder of Parquet shards with id, category and paths relative to it.
    inputs = tmp_path / "rows"
    inputs.mkdir()
    rows = pd.read_csv(catalog_csv, dtype=str).rename(columns={"sku": "id", "type": "category"})
    rows["path"] = [os.path.relpath(catalog_csv.parent / "images" / f"{i}.jpg", inputs) for i in rows["id"]]
    rows.iloc[:70][["id", "category", "path"]].to_parquet(inputs / "rows-0.parquet")
    rows.iloc[70:][["id", "category", "path"]].to_parquet(inputs / "rows-1.parquet")
    out = tmp_path / "ray"
    run_ray(ckpt, inputs, out)
    first = read_ray_output(out)
    parts = {k: part_path(out, "predictions", k) for k in range(4)}
    mtimes = {k: p.stat().st_mtime_ns for k, p in parts.items()}
    # A crash while shard 2 was written: its errors part exists, a temporary file lies around, no predictions.
    parts[2].unlink()
    (parts[2].parent / ".part-00002.parquet.dead.tmp").write_bytes(b"half a file")
    with pytest.raises(FileNotFoundError, match="1 of 4 shards not written"):
        read_ray_output(out)

    summary = run_ray(ckpt, inputs, out)
    with pytest.raises(ResumeError, match="holds a finished job with shard_rows 32 then, 16 now"):
        predict_with_ray(ckpt, inputs, out, shard_rows=16, progress=False)
    # Regression: the runtime was not part of the job, so a resume mixed shards of two numerics.
    with pytest.raises(ResumeError, match="numerics 'auto fp32' then, 'openvino bf16' now"):
        run_ray(ckpt, inputs, out, runtime="openvino", precision="bf16")
    assert summary.resumed_chunks == 3 and summary.rows == 120
    assert {k for k, p in parts.items() if p.stat().st_mtime_ns != mtimes[k]} == {2}
    again = read_ray_output(out)
    assert not again.duplicated(["id", "attribute"]).any()
    pd.testing.assert_frame_equal(again, first)


def test_resumes_after_the_job_is_killed_9(
    ray_session: None, ckpt: Path, tiny_run: tuple[Path, Path], tmp_path: Path
):
    """A real crash: every process of a running `predict --engine ray` (driver, its local Ray, the
    actors) gets SIGKILL once a few shards have landed; the rerun keeps those and writes the rest."""
    catalog_csv, _ = tiny_run
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    args = ["--engine", "ray", "--num-actors", "1", "--set", "predict.chunk_size=4"]
    args += ["--data", str(catalog_csv)]
    invoke("predict", str(ckpt), "-o", str(clean), "-q", *args)
    cmd = [sys.executable, "-m", "taxonomist.cli", "predict", str(ckpt), "-o", str(crashed), "-q", *args]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "killed-job.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    parts = crashed / "predictions"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if len(list(parts.glob("part-*.parquet"))) >= 3:
                break
            time.sleep(0.01)
    finally:
        kill_tree(proc)
    tail = log.read_text(errors="replace")[-3000:]
    assert proc.returncode == -signal.SIGKILL, f"the job ended before it could be killed:\n{tail}"
    landed = len(list(parts.glob("part-*.parquet")))
    assert 3 <= landed < 30
    with pytest.raises(FileNotFoundError, match="shards not written"):
        read_ray_output(crashed)

    invoke("predict", str(ckpt), "-o", str(crashed), "-q", *args)
    summary = json.loads((crashed / "summary.json").read_text())
    # A shard is done once its predictions part landed (written after its errors part): exactly those.
    assert summary["resumed_chunks"] == landed and summary["rows"] == 120
    again = read_ray_output(crashed)
    assert not again.duplicated(["id", "attribute"]).any()
    pd.testing.assert_frame_equal(again, read_ray_output(clean))


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and all its descendants, and wait until they are gone. Its process group is not
    enough: Ray starts its workers outside the job's group, so an actor outlived a killpg and landed
    the shard it was writing after the test had counted the parts."""
    import psutil

    gone = (psutil.NoSuchProcess, psutil.ZombieProcess)
    tree: list[psutil.Process] = []
    with contextlib.suppress(*gone):
        tree = [psutil.Process(proc.pid)]
    for p in tree:  # grows while it is walked: frozen first, so nothing forks or writes meanwhile
        with contextlib.suppress(*gone):
            p.suspend()
            tree += [c for c in p.children() if c not in tree]
    for p in tree:
        with contextlib.suppress(*gone):
            p.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()  # the job itself is reaped here, so that its return code is kept
    psutil.wait_procs(tree[1:], timeout=60)


def test_bad_images_and_unknown_categories_are_reported(
    ray_session: None, ckpt: Path, tiny_run: tuple[Path, Path], tmp_path: Path
):
    catalog_csv, _ = tiny_run
    data = tmp_path / "data"
    shutil.copytree(catalog_csv.parent, data)  # the shared catalog stays intact for other tests
    (data / "images" / "1003.jpg").write_bytes(b"not a jpeg")
    (data / "images" / "1004.jpg").unlink()
    table = pd.read_csv(data / "catalog.csv", dtype=str)
    table.loc[len(table)] = {"sku": "9999", "type": "Shoes"}
    table.to_csv(data / "catalog.csv", index=False)

    local_long, local_errors = local_outputs(ckpt, data / "catalog.csv", tmp_path / "local")
    catalog = read_generic(data / "catalog.csv", id_column="sku", category_column="type")
    summary = run_ray(ckpt, catalog, tmp_path / "ray")
    assert (summary.rows, summary.predicted, summary.errors) == (121, 118, 3)
    assert_same_predictions(read_ray_output(tmp_path / "ray"), local_long)
    errors = read_ray_output(tmp_path / "ray", "errors").sort_values("id", ignore_index=True)
    assert dict(zip(errors["id"], errors["reason"], strict=True)) == {
        "1003": "corrupt",
        "1004": "missing",
        "9999": "unknown-category",
    }
    # The local errors.csv also gives each row's line in the input file; Ray shards do not know it.
    local_errors = local_errors.drop(columns="line").sort_values("id", ignore_index=True)
    pd.testing.assert_frame_equal(errors, local_errors)


def test_the_summary_gives_error_reasons_and_no_rate_for_a_run_with_nothing_to_do(
    ray_session: None, ckpt: Path, tiny_run: tuple[Path, Path], tmp_path: Path
):
    """Regression: predict_with_ray's summary had no error reasons (the local engine's has them), and a
    rerun that predicted nothing gave 0.0 rows/s where the local engine gives None."""
    catalog_csv, _ = tiny_run
    data = tmp_path / "data"
    shutil.copytree(catalog_csv.parent, data)
    (data / "images" / "1004.jpg").rename(data / "1004.jpg")
    catalog = read_generic(data / "catalog.csv", id_column="sku", category_column="type")
    first = run_ray(ckpt, catalog, tmp_path / "ray")
    assert first.error_reasons == {"missing": 1} and first.images_per_s
    (data / "1004.jpg").rename(data / "images" / "1004.jpg")
    fixed = run_ray(ckpt, catalog, tmp_path / "ray")
    assert (fixed.errors, fixed.error_reasons, fixed.recovered_rows) == (0, {}, 1) and fixed.images_per_s
    again = run_ray(ckpt, catalog, tmp_path / "ray")
    assert again.images_per_s is None
    assert json.loads((tmp_path / "ray" / "summary.json").read_text())["images_per_s"] is None


@pytest.fixture(scope="module")
def listing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, catalog) of listing heads that can predict without the image: titles name the colour;
    the catalog has a missing image and a blank title."""
    root = tmp_path_factory.mktemp("ray-listing")
    catalog = make_catalog(root / "data", titles=True)
    cfg = listing_config(catalog, root / "cache", {"image_dropout": 0.2}, epochs=10)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    invoke("train", "-c", str(config), "-o", str(root / "ckpt"), "-q")
    frame = pd.read_csv(catalog, dtype=str)
    frame.loc[0, "sku"], frame.loc[1, "title"] = "missing-image", None
    frame.to_csv(catalog.parent / "rows.csv", index=False)
    return root / "ckpt", catalog.parent / "rows.csv"


def test_listing_heads_on_ray_read_titles_and_fill_in_missing_images(
    ray_session: None, listing: tuple[Path, Path], tmp_path: Path
):
    """Issue 18: the Ray engine predicts what the local one does from image + title, and with
    predict.allow_missing_image the row without an image too (still reported); a resume keeps the setting."""
    ckpt, rows = listing
    fill = ["--set", "predict.allow_missing_image=true"]
    local_long, local_errors = local_outputs(ckpt, rows, tmp_path / "local", *fill)
    assert "missing-image" in set(local_long["id"])
    args = ["predict", str(ckpt), "-q", "--data", str(rows), "--engine", "ray", "--num-actors", "1", *fill]
    invoke(*args, "-o", str(tmp_path / "ray"))
    assert_same_predictions(read_ray_output(tmp_path / "ray"), local_long)
    errors = pd.read_csv(tmp_path / "ray" / "errors.csv", dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(errors, local_errors)
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert (summary["rows"], summary["predicted"], summary["errors"]) == (120, 120, 1)
    local = json.loads((tmp_path / "local" / "summary.json").read_text())
    assert (
        summary["predicted_by_inputs"]
        == local["predicted_by_inputs"]
        == {"image + text": 118, "image": 1, "text": 1}
    )
    catalog = read_generic(
        rows, id_column="sku", category_column="type", labels=False, text_columns=["title"]
    )
    with pytest.raises(ResumeError, match="allow_missing_image True then, False now"):
        predict_with_ray(ckpt, catalog, tmp_path / "ray", shard_rows=16, progress=False)


@pytest.mark.parametrize(
    ("ids", "categories", "message"),
    [
        (["1000", "1000", "1002"], ["Tops"] * 3, r"2 rows of the row table have an id another row has too"),
        (["1000", " ", "1002"], ["Tops"] * 3, r"1 rows of the row table have a blank id or category"),
        (["1000", "1001", "1002"], ["Tops", "", "Tops"], r"have a blank id or category"),
    ],
)
def test_a_row_table_with_bad_ids_is_refused_by_name(
    tmp_path: Path, ids: list[str], categories: list[str], message: str
) -> None:
    """Regression: a repeated id was predicted twice from two images and a blank id was predicted; the
    summary counted neither right."""
    table = tmp_path / "rows.csv"
    pd.DataFrame({"id": ids, "category": categories, "path": ["a.jpg", "b.jpg", "c.jpg"]}).to_csv(
        table, index=False
    )
    with pytest.raises(ValueError, match=message):
        read_rows(table)


def test_a_row_table_folds_category_whitespace_as_a_catalog_does(tmp_path: Path) -> None:
    table = tmp_path / "rows.csv"
    pd.DataFrame({"id": ["1", "2"], "category": ["Tops ", " Tops"], "path": ["a.jpg", "b.jpg"]}).to_csv(
        table, index=False
    )
    rows, note = read_rows(table)
    assert rows["category"].tolist() == ["Tops", "Tops"] and note is None


@pytest.fixture(scope="module")
def two_columns(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, catalog) of listing heads that learned from ``title | description`` (a tiny sentence
    encoder keeps it quick)."""
    root = tmp_path_factory.mktemp("ray-columns")
    catalog = make_catalog(root / "data", titles=True)
    frame = pd.read_csv(catalog, dtype=str)
    frame["description"] = [
        f"{t.split()[1].lower()} cotton" if i % 3 else None for i, t in enumerate(frame["title"])
    ]
    frame.to_csv(catalog, index=False)
    encoder = tiny_sentence_encoder(root / "encoder", [*frame["title"], "red blue green cotton"])
    cfg = listing_config(catalog, root / "cache", {"encoder": str(encoder), "max_length": 32}, epochs=3)
    cfg["catalog"]["text_columns"] = ["title", "description"]
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    invoke("train", "-c", str(root / "config.yaml"), "-o", str(root / "ckpt"), "-q")
    return root / "ckpt", catalog


def row_table(catalog: Path, folder: Path, *columns: str) -> pd.DataFrame:
    """The catalog's rows as a row table (id, category, path relative to ``folder``) with ``columns``."""
    rows = pd.read_csv(catalog, dtype=str).rename(columns={"sku": "id", "type": "category"})
    rows["path"] = [os.path.relpath(catalog.parent / "images" / f"{i}.jpg", folder) for i in rows["id"]]
    return rows[["id", "category", "path", *columns]]


def test_a_row_table_is_read_from_the_text_columns_of_the_checkpoint(
    ray_session: None, two_columns: tuple[Path, Path], tmp_path: Path
):
    """Regression: a row table kept only a 'text' column, so one with the catalog's title and description
    was predicted from images alone, silently; its columns are now joined as training joined them."""
    ckpt, catalog = two_columns
    local_long, _ = local_outputs(ckpt, catalog, tmp_path / "local")
    local = json.loads((tmp_path / "local" / "summary.json").read_text())
    row_table(catalog, tmp_path, "title", "description").to_parquet(tmp_path / "rows.parquet")
    summary = run_ray(ckpt, tmp_path / "rows.parquet", tmp_path / "ray")
    assert_same_predictions(read_ray_output(tmp_path / "ray"), local_long)
    assert (
        summary.predicted_by_inputs
        == local["predicted_by_inputs"]
        == {"image + text": 120, "image": 0, "text": 0}
    )
    assert summary.text_note is None and "text_note" not in local
    # Shards lacking a column read it as blank, and the summary says so.
    shards = tmp_path / "shards"
    shards.mkdir()
    table = row_table(catalog, shards, "title", "description")
    table.iloc[:16].to_parquet(shards / "rows-0.parquet")
    table.iloc[16:32].drop(columns="description").to_parquet(shards / "rows-1.parquet")
    summary = run_ray(ckpt, shards, tmp_path / "ray-shards")
    assert summary.text_note == (
        f"{shards}: no text column 'description' (absent from 1 of 2 files): those rows read it as blank"
    )
    ray_long = read_ray_output(tmp_path / "ray-shards")
    whole = table["id"][:16]  # the first file's rows have both columns, as the local engine read them
    assert_same_predictions(
        ray_long[ray_long["id"].isin(whole)], local_long[local_long["id"].isin(whole)].reset_index(drop=True)
    )
    json_note = json.loads((tmp_path / "ray-shards" / "summary.json").read_text())["text_note"]
    assert json_note == summary.text_note


def test_a_text_column_is_refused_for_a_model_of_several_text_columns(
    two_columns: tuple[Path, Path], tmp_path: Path
):
    """A title alone in 'text' is not what the model learned from, as Predictor.predict refuses it."""
    ckpt, catalog = two_columns
    row_table(catalog, tmp_path, "title").rename(columns={"title": "text"}).to_csv(
        tmp_path / "rows.csv", index=False
    )
    with pytest.raises(
        ValueError, match=r"rows.csv: a 'text' column, but .* columns \['title', 'description'\], joined"
    ):
        run_ray(ckpt, tmp_path / "rows.csv", tmp_path / "ray")
    assert not (tmp_path / "ray").exists()


@pytest.mark.parametrize(
    ("text_columns", "columns", "texts", "note"),
    [
        (None, ["title", "text"], None, None),  # image-only heads read no text
        ([], ["text"], ["listing text", ""], None),  # a checkpoint recording no columns reads 'text' whole
        ([], [], ["", ""], "no text column 'text': every listing is predicted from its image"),
        (["title"], ["text"], ["listing text", ""], None),
        (["title"], ["title", "text"], ["Acme Red top", ""], None),  # the named column, normalised
        (
            ["title", "description"],
            ["title", "text"],
            ["Acme Red top", ""],
            "no text column 'description': the listing text is read from ['title'] alone",
        ),
        (
            ["title", "description"],
            [],
            ["", ""],
            "no text column 'title', 'description': every listing is predicted from its image",
        ),
    ],
)
def test_a_row_table_reads_the_listing_text_the_checkpoint_learned_from(
    tmp_path: Path,
    text_columns: list[str] | None,
    columns: list[str],
    texts: list[str] | None,
    note: str | None,
) -> None:
    table = pd.DataFrame(
        {
            "id": ["1", "2"],
            "category": ["Tops"] * 2,
            "path": ["a.jpg", "b.jpg"],
            "title": ["Acme  Red top", None],
            "text": ["listing text", None],
        }
    )
    table[["id", "category", "path", *columns]].to_parquet(tmp_path / "rows.parquet")
    rows, got = read_rows(tmp_path / "rows.parquet", text_columns)
    if texts is None:
        assert "text" not in rows.columns
    else:
        assert rows["text"].tolist() == texts
    assert got == (f"{tmp_path / 'rows.parquet'}: {note}" if note else None)
