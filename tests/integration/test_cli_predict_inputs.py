"""``predict`` and ``evaluate`` on inputs other than the training run's: every row is predicted or
reported, user configs and flag values mean what was typed, bad inputs end as one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from taxonomist.cli.main import main

from .conftest import invoke

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(tiny_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(catalog, checkpoint) of a model of both categories, trained briefly: tests only read it."""
    catalog, config = tiny_run
    ckpt = tmp_path_factory.mktemp("run") / "ckpt"
    invoke("train", "-c", str(config), "-o", str(ckpt), "-q", "--set", "train.epochs=3")
    return catalog, ckpt


@pytest.fixture(scope="module")
def tops_only(tiny_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(catalog, checkpoint) of a model trained on Tops alone, whose saved config carries training-only
    row settings: a category filter, a minimum row count, a row limit, a remap and a text column."""
    catalog, config = tiny_run
    titled = catalog.parent / "titled.csv"
    pd.read_csv(catalog, dtype=str).assign(title="Acme product").to_csv(titled, index=False)
    ckpt = tmp_path_factory.mktemp("tops") / "ckpt"
    settings = [
        f"catalog.path={titled}",
        "catalog.categories=[Tops]",
        "catalog.min_rows_per_category=20",
        "catalog.limit=50",
        "catalog.remaps={Tops: {fit: fit}}",
        "catalog.text_column=title",
        "train.epochs=3",
    ]
    invoke("train", "-c", str(config), "-o", str(ckpt), "-q", *[a for s in settings for a in ("--set", s)])
    return catalog, ckpt


def new_rows(catalog: Path, path: Path, n: int = 12, **extra: str) -> Path:
    """The first ``n`` rows of the synthetic catalog (Tops and Bags alternate), without labels or titles."""
    rows = pd.read_csv(catalog, dtype=str)[["sku", "type"]].head(n).assign(**extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(path, index=False)
    return path


def test_every_row_is_predicted_or_reported(tops_only: tuple[Path, Path], tmp_path: Path) -> None:
    """Regression: the saved config's category filter dropped the Bags rows without a word, and its
    remap and text column failed on a file that has neither the category nor the column."""
    catalog, ckpt = tops_only
    data = new_rows(catalog, tmp_path / "new.csv", n=12)
    out = tmp_path / "pred"
    image_root = f"catalog.image_root={catalog.parent}"
    summary = json.loads(
        invoke("predict", str(ckpt), "-o", str(out), "--data", str(data), "-q", "--set", image_root)
    )
    assert (summary["rows"], summary["predicted"], summary["errors"]) == (12, 6, 6)
    wide = pd.read_csv(out / "predictions.csv", dtype=str)
    errors = pd.read_csv(out / "errors.csv", dtype=str)
    assert set(wide["Category"]) == {"Tops"}
    assert set(errors["reason"]) == {"unknown-category"}
    assert sorted([*wide["id"], *errors["id"]]) == sorted(pd.read_csv(data, dtype=str)["sku"])


@pytest.mark.parametrize("stray", ["category", "id", "text"])
def test_stray_columns_named_like_renamed_ones_are_ignored(
    trained: tuple[Path, Path], tmp_path: Path, stray: str
) -> None:
    """Regression: an extra ``category`` column crashed with "Grouper for 'category' not 1-dimensional"."""
    catalog, ckpt = trained
    data = new_rows(catalog, tmp_path / "new.csv", n=4, **{stray: "something else"})
    out = tmp_path / "pred"
    image_root = f"catalog.image_root={catalog.parent}"
    invoke("predict", str(ckpt), "-o", str(out), "--data", str(data), "-q", "--set", image_root)
    wide = pd.read_csv(out / "predictions.csv", dtype=str)
    errors = pd.read_csv(out / "errors.csv", dtype=str)
    assert wide["id"].tolist() == ["1000", "1001", "1002", "1003"] and errors.empty


def test_user_config_layers_on_the_saved_one(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """Regression: ``--config`` replaced the saved config, so the run's id/category columns were lost."""
    catalog, ckpt = trained
    data = new_rows(catalog, tmp_path / "new.csv", n=10)
    user = tmp_path / "user.yaml"
    user.write_text(f"predict:\n  chunk_size: 3\ncatalog:\n  image_root: {catalog.parent}\n")
    out = tmp_path / "pred"
    invoke("predict", str(ckpt), "-c", str(user), "-o", str(out), "--data", str(data), "-q")
    assert json.loads((out / "manifest.json").read_text())["chunk_size"] == 3
    assert len(pd.read_csv(out / "predictions.csv")) == 10


def test_flag_values_are_taken_as_typed(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """Regression: flags went through YAML, so ``--placeholder 0``/``null``/``?`` were refused, text after
    `` #`` was cut off (``N/A #tbd`` became ``N/A``, ``hash #1/items.csv`` became ``hash``)."""
    catalog, ckpt = trained
    data = new_rows(catalog, tmp_path / "hash #1" / "items.csv", n=2)
    image_root = f"catalog.image_root={catalog.parent}"
    for k, placeholder in enumerate(["0", "null", "?", "-", "N/A #tbd"]):
        out = tmp_path / f"pred{k}"
        args = ["--min-confidence", "1", "--placeholder", placeholder, "--data", str(data)]
        invoke("predict", str(ckpt), "-o", str(out), "-q", "--set", image_root, *args)
        long = pd.read_csv(out / "predictions_long.csv", dtype=str, keep_default_na=False)
        unsure = long["confidence"].astype(float) < 1
        assert unsure.any() and set(long.loc[unsure, "value"]) == {placeholder}


def test_evaluate_skips_and_reports_unknown_categories(tops_only: tuple[Path, Path], tmp_path: Path) -> None:
    """Regression: labelled rows of a category the model does not know ended in a SchemaError after
    every image had been embedded."""
    _, ckpt = tops_only
    out = tmp_path / "eval"
    reset = ["--set", "catalog.categories=[]", "--set", "catalog.limit=null"]
    output = invoke("evaluate", str(ckpt), "--split", "all", "--output", str(out), "-q", *reset)
    assert "skipped 60 rows of categories this model does not know (Bags: 60)" in " ".join(output.split())
    evaluation = json.loads((out / "evaluation.json").read_text())
    unknown = evaluation["unknown_category"]
    assert unknown["rows"] == 60 and unknown["categories"] == {"Bags": 60}
    assert unknown["examples"] == ["1001", "1003", "1005", "1007", "1009"]
    assert {r["category"] for r in evaluation["per_category"]} == {"Tops"}
    assert "skipped 60 rows" in (out / "evaluation.md").read_text()


def test_resume_conflict_is_one_line_not_a_traceback(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """Through ``python -m taxonomist.cli``: a ResumeError (another job's output folder) is a user error."""
    catalog, ckpt = trained
    out = tmp_path / "pred"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"n_rows": 1, "settings": {}}))
    data = new_rows(catalog, tmp_path / "new.csv", n=2)
    cmd = [sys.executable, "-m", "taxonomist.cli", "predict", str(ckpt), "-o", str(out), "-q"]
    cmd += ["--data", str(data), "--set", f"catalog.image_root={catalog.parent}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {out} holds a partial job (not finished) with rows 1 then, 2 now")
    assert f"rm -r {out}" in line
    assert "Traceback" not in proc.stdout + proc.stderr


def test_labels_outside_the_schema_are_counted_not_scored_as_wrong(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    """Regression: a ``fit`` label on Bags rows (a pair the model's schema lacks) was left out of the
    score without a word, while the report's label counts, per-class F1 and predictions.csv read it as
    an error."""
    catalog, ckpt = trained
    rows = pd.read_csv(catalog, dtype=str).head(12)
    rows.loc[rows["type"] == "Bags", "fit"] = "tall"
    data = tmp_path / "labelled.csv"
    rows.to_csv(data, index=False)
    out = tmp_path / "eval"
    output = invoke(
        "evaluate", str(ckpt), "--data", str(data), "--images", str(catalog.parent), "--output", str(out)
    )
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["unscored_labels"] == {"Bags / fit": 6}
    scored = pd.read_csv(out / "predictions.csv", dtype=str)
    assert not ((scored["category"] == "Bags") & (scored["attribute"] == "fit")).any()
    assert len(scored) == sum(p["n"] for p in evaluation["pairs"])
    note = "left out 6 labels of attributes this model does not predict for their category (Bags / fit: 6)"
    assert note in " ".join(output.split())
    assert note in (out / "evaluation.md").read_text()


def test_evaluate_without_readable_images_exits_2(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: with --images at an empty folder, evaluate printed score 0.0000 and exited 0, which a
    CI job records as a result; predict fails such a job with status 2."""
    catalog, ckpt = trained
    out = tmp_path / "eval"
    empty = tmp_path / "nothing"
    empty.mkdir()
    args = ["evaluate", str(ckpt), "--data", str(catalog), "--images", str(empty), "--output", str(out), "-q"]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    message = " ".join(capsys.readouterr().err.split())
    assert message.startswith(
        "error: the images of 120 of the 120 scored rows could not be read (missing: 120), all of them"
    )
    assert "point --images at the folder" in message
    assert (out / "evaluation.json").is_file() and (out / "errors.csv").is_file()  # written first
