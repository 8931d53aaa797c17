"""The VLM commands end to end from the CLI, offline: random model → train → evaluate → predict."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("trl")
pytest.importorskip("xgrammar")


from taxonomist.data.chat import validate_llamafactory
from taxonomist.inference.vlm import VLMPredictor
from taxonomist.models.vlm import read_metadata
from tests.conftest import require_dataset, solid_colour_images

from .conftest import invoke

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("catalog")
    colours = solid_colour_images(root / "images", range(12), (56, 48))
    rows = [
        {
            "id": i,
            "kind": "Tops" if i < 6 else "Bags",
            "colour": c,
            "title": f"Acme {c} item {i}" * (i % 4 > 0),
        }
        for i, c in enumerate(colours)
    ]  # a quarter of the listings have no title
    (root / "images" / "11.jpg").write_bytes(b"truncated")  # one bad image: reported, never fatal
    pd.DataFrame(rows).to_csv(root / "catalog.csv", index=False)
    config = root / "vlm.yaml"
    config.write_text(
        f"""
task: attributes
catalog:
  path: {root / "catalog.csv"}
  category_column: kind
  attributes: [colour]
  text_columns: [title]
  min_rows_per_category: 1
model:
  max_pixels: 12544
train:
  max_steps: 1
  batch_size: 2
  grad_accumulation: 1
  dev_fraction: 0.34
  group_duplicate_images: false  # the solid-colour images repeat on purpose
  save_steps: 1
generate:
  batch_size: 4
  chunk_size: 4
""",
        encoding="utf-8",
    )
    return config


def test_random_model_train_evaluate_predict(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "random"
    invoke("vlm", "random-model", "-c", str(config), "-o", str(model))
    invoke("vlm", "export", "-c", str(config), "-o", str(tmp_path / "lf"))
    assert set(validate_llamafactory(tmp_path / "lf")) == {"taxonomist", "taxonomist_val"}

    run = tmp_path / "run"
    invoke("vlm", "train", "-c", str(config), "-o", str(run), "--model", str(model), "-q")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 1 and (run / "merged").is_dir()
    # Trained with listing titles in the prompt: both folders say so, so predict asks the same way.
    for folder in ("adapter", "merged"):
        assert "{title}" in read_metadata(run / folder)["prompt"]["title"]

    # The top-level commands recognise a VLM run folder and use its saved config and split.
    out = invoke("evaluate", str(run), "--output", str(tmp_path / "eval"), "--report", "-q")
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert evaluation["task"] == "attributes" and evaluation["valid_fraction"] == 1.0
    assert 0.0 <= evaluation["score"] <= 1.0 and evaluation["baseline_score"] is not None
    # Tables and a Markdown summary instead of the raw JSON, and the same report as a heads checkpoint's.
    assert "valid outputs 100.0%" in out and '"pairs"' not in out
    assert "Valid outputs: 100.0%" in (tmp_path / "eval" / "evaluation.md").read_text()
    assert "reliability.png" in (tmp_path / "eval" / "report.html").read_text()

    out = tmp_path / "pred"
    # Regression: predict read the catalog without its text column, so listings were asked untitled.
    asked = []
    predict_file = VLMPredictor.predict_file

    def spy(self, *args, titles=None, **kwargs):
        asked.append(titles)
        return predict_file(self, *args, titles=titles, **kwargs)

    monkeypatch.setattr(VLMPredictor, "predict_file", spy)
    invoke("predict", str(run), "-o", str(out), "-q")
    catalog_titles = pd.read_csv(config.parent / "catalog.csv", keep_default_na=False)["title"]
    assert asked == [catalog_titles.tolist()]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == 12 and summary["errors"] == 1
    long = pd.read_csv(out / "predictions_long.csv")
    assert len(long) == 11 and set(long["value"]) <= {"red", "blue"}
    assert pd.read_csv(out / "errors.csv")["id"].tolist() == [11]

    # Self-consistency DPO from the SFT run, on its training split as the unlabeled pool; then resume.
    improved = tmp_path / "improve"
    args = [
        "--set",
        "improve.rounds=1",
        "--set",
        "improve.samples_per_item=3",
        "--set",
        "improve.max_steps=1",
    ]
    invoke("vlm", "improve", str(run), "-o", str(improved), *args, "--set", "improve.temperature=1.5", "-q")
    progress = json.loads((improved / "progress.json").read_text())
    assert [r["round"] for r in progress["rounds"]] == [0, 1]
    stats = json.loads((improved / "round-1" / "stats.json").read_text())
    assert stats["items_sampled"] == 6  # the training part: per category 6 rows - 2 dev - 1 test
    invoke("vlm", "improve", str(run), "-o", str(improved), *args, "--set", "improve.temperature=1.5", "-q")
    assert json.loads((improved / "progress.json").read_text())["rounds"] == progress["rounds"]


def test_captions_through_the_same_commands(config: Path, tmp_path: Path) -> None:
    require_dataset("coco-mini-captions")
    caption_config = tmp_path / "captions.yaml"
    caption_config.write_text(
        config.read_text(encoding="utf-8").replace("task: attributes", "task: caption")
        + "captions:\n  dataset: coco\n  path: '{data_dir}/coco-mini-captions'\n  limit: 6\n",
        encoding="utf-8",
    )
    model = tmp_path / "random"
    invoke("vlm", "random-model", "-c", str(caption_config), "-o", str(model))
    run = tmp_path / "run"
    invoke("vlm", "train", "-c", str(caption_config), "-o", str(run), "--model", str(model), "-q")
    invoke(
        "evaluate", str(run), "--output", str(tmp_path / "eval"), "--set", "generate.max_new_tokens=8", "-q"
    )
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert evaluation["task"] == "caption" and evaluation["n"] >= 1
    assert {"bleu4", "rouge_l", "cider", "fgd"} <= set(evaluation)
    # Regression: a one-image validation split (captions.limit=1) failed in FGD's covariance.
    one = ["--set", "captions.limit=1", "--set", "generate.max_new_tokens=8", "-q"]
    invoke("evaluate", str(run), "--output", str(tmp_path / "eval1"), *one)
    single = json.loads((tmp_path / "eval1" / "evaluation.json").read_text())
    assert single["n"] == 1 and single["fgd"] is None and single["bleu4"] is not None
    out = tmp_path / "pred"
    invoke("predict", str(run), "-o", str(out), "--set", "generate.max_new_tokens=8", "-q")
    captions = pd.read_csv(out / "captions.csv", keep_default_na=False)
    assert len(captions) == 11  # the catalog's 12 rows less its one unreadable image
