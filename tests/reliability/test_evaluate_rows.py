"""``evaluate``: rows it cannot score as predicted are rows of errors.csv with line and reason, the
score comes with and without unreadable images, and no training-only row filter applies to --data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from .conftest import Tiny, read_errors, write_rows


def _evaluate(cli, tiny: Tiny, data: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    args = ("--data", data, "--images", tiny.images, "--output", out, "-q", *extra)
    return cli("evaluate", tiny.checkpoint, *args)


def test_unreadable_images_and_unknown_categories_are_listed_and_scored_both_ways(
    cli, tiny: Tiny, tmp_path: Path
) -> None:
    rows = tiny.rows(12)
    rows.loc[2, "sku"] = "no-such-image"  # line 4
    rows.loc[5, "type"] = "Shoes"  # line 7
    data = write_rows(tmp_path / "labelled.csv", rows)
    code, stdout, err = _evaluate(cli, tiny, data, tmp_path / "eval")
    assert code == 0, err
    errors = read_errors(tmp_path / "eval")
    assert errors[["id", "line", "reason"]].values.tolist() == [
        ["no-such-image", "4", "missing"],
        [rows.at[5, "sku"], "7", "unknown-category"],
    ]
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert evaluation["rows"] == 12 and evaluation["errors"]["reasons"] == {
        "missing": 1,
        "unknown-category": 1,
    }
    assert evaluation["score_without_unreadable"] >= evaluation["score"]
    assert "2 of 12 rows not scored as predicted" in " ".join(stdout.split())


def test_a_header_only_file_is_a_one_line_error(cli, tiny: Tiny, tmp_path: Path) -> None:
    """Regression: exit 0 and a score of nan."""
    data = write_rows(tmp_path / "empty.csv", tiny.rows(0))
    code, _, err = _evaluate(cli, tiny, data, tmp_path / "eval")
    assert code == 2
    assert err.strip().splitlines() == [f"error: {data}: nothing to evaluate (it has no rows)"]


def test_the_training_minimum_rows_filter_does_not_apply(cli, tiny: Tiny, tmp_path: Path) -> None:
    """Regression: categories under training's min_rows_per_category vanished from the evaluation."""
    data = write_rows(tmp_path / "few.csv", tiny.rows(6))
    code, _, err = _evaluate(cli, tiny, data, tmp_path / "eval", "--set", "catalog.min_rows_per_category=500")
    assert code == 0, err
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert {r["category"]: r["n_rows"] for r in evaluation["per_category"]} == {"Bags": 3, "Tops": 3}
    assert evaluation["errors"]["rows"] == 0


def test_repeated_and_blank_ids_are_listed_and_the_rest_scored(cli, tiny: Tiny, tmp_path: Path) -> None:
    rows = tiny.rows(8)
    rows = pd.concat([rows, rows.iloc[[0]]], ignore_index=True)  # line 10 repeats line 2
    rows.loc[3, "sku"] = ""  # line 5
    data = write_rows(tmp_path / "labelled.csv", rows)
    code, _, err = _evaluate(cli, tiny, data, tmp_path / "eval")
    assert code == 0, err
    assert read_errors(tmp_path / "eval")[["line", "reason"]].values.tolist() == [
        ["5", "blank-id"],
        ["10", "duplicate-id"],
    ]
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert sum(r["n_rows"] for r in evaluation["per_category"]) == 7


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_image_is_listed_not_a_hang(cli, tiny: Tiny, tmp_path: Path) -> None:
    rows = tiny.rows(6)
    tiny.image_folder(tmp_path / "images", rows["sku"], fifos=[rows.at[0, "sku"]])
    data = write_rows(tmp_path / "labelled.csv", rows)
    code, _, err = cli("evaluate", tiny.checkpoint, "--data", data, "--output", tmp_path / "eval", "-q")
    assert code == 0, err
    errors = read_errors(tmp_path / "eval")
    assert errors[["line", "reason", "detail"]].values.tolist() == [["2", "unreadable", "not a regular file"]]


def test_test_split_still_matches_training(cli, tiny: Tiny, tmp_path: Path) -> None:
    """The default split (test) reads the run's catalog with its own filters and data step, so it is
    the part training held out."""
    code, _, err = cli("evaluate", tiny.checkpoint, "--output", tmp_path / "eval", "-q")
    assert code == 0, err
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    trained = json.loads((tiny.checkpoint / "metrics.json").read_text())["test_score"]
    assert evaluation["score"] == pytest.approx(trained, abs=1e-6) and evaluation["errors"]["rows"] == 0


def test_a_row_of_an_unknown_category_leaves_the_majority_baseline_as_it_was(
    cli, tiny: Tiny, tmp_path: Path
) -> None:
    """Regression: with --split all, the one Shoes row was "the other 1 rows" the majority classes were
    counted on: no Bags or Tops label there, so the baseline scored 0."""
    rows = tiny.rows(12)
    known = write_rows(tmp_path / "known.csv", rows)
    code, _, err = _evaluate(cli, tiny, known, tmp_path / "known", "--split", "all")
    assert code == 0, err
    rows.loc[12] = {**rows.loc[0].to_dict(), "sku": "shoe-1", "type": "Shoes"}
    with_unknown = write_rows(tmp_path / "with_unknown.csv", rows)
    code, _, err = _evaluate(cli, tiny, with_unknown, tmp_path / "unknown", "--split", "all")
    assert code == 0, err
    expected, got = (json.loads((tmp_path / d / "evaluation.json").read_text()) for d in ("known", "unknown"))
    assert got["unknown_category"]["rows"] == 1
    assert got["baseline_score"] == expected["baseline_score"] > 0
    assert "(the same 12 rows)" in (tmp_path / "unknown" / "evaluation.md").read_text()
