"""``evaluate --data``: what the score leaves out is said, and an evaluation that saw no image fails."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from taxonomist.cli.main import main

from .conftest import invoke

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(tiny_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(catalog, checkpoint): in the tiny catalog ``fit`` applies to Tops only."""
    catalog, config = tiny_run
    ckpt = tmp_path_factory.mktemp("run") / "ckpt"
    invoke("train", "-c", str(config), "-o", str(ckpt), "-q", "--set", "train.epochs=3")
    return catalog, ckpt


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
