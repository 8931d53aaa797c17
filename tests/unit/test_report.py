"""Evaluation reports from known rows: baseline, per-class scores, confused pairs, confident errors, and a
self-contained page whose every image is inlined."""

from __future__ import annotations

import base64
import dataclasses
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from taxonomist.data.catalog import Catalog
from taxonomist.inference.evaluate import Evaluation, scored_rows, write_evaluation
from taxonomist.metrics import attribute_score, majority_predictions
from taxonomist.report.evaluation import (
    confident_errors,
    confused_pairs,
    per_class_scores,
    write_evaluation_report,
)
from taxonomist.report.plots import class_counts_png, confusion_png

BY_CATEGORY = {"shirts": ["color", "sleeve"], "shoes": ["color"]}
# id, category, color label, sleeve label, predicted color, predicted sleeve, confidence
ROWS = [
    ("s1", "shirts", "red", "long", "red", "long", 0.9),
    ("s2", "shirts", "red", "short", "blue", "short", 0.95),
    ("s3", "shirts", "blue", "short", "blue", "long", 0.6),
    ("s4", "shirts", "red", None, "red", "long", 0.7),
    ("h1", "shoes", "black", None, "black", None, 0.8),
    ("h2", "shoes", "white", None, "black", None, 0.55),
]


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    images = tmp_path / "images"
    images.mkdir()
    for k, row in enumerate(ROWS):
        if row[0] != "h2":  # h2's image is missing: its card says so instead of a broken image
            Image.new("RGB", (40, 30), (40 * k, 100, 200)).save(images / f"{row[0]}.jpg")
    frame = pd.DataFrame([r[:4] for r in ROWS], columns=["id", "category", "color", "sleeve"]).astype(object)
    frame = frame.where(frame.notna(), None)
    frame["text"] = [f"title of {r[0]}" for r in ROWS]
    return Catalog(frame, ["color", "sleeve"], tmp_path, "images/{id}.jpg", BY_CATEGORY, source="toy.csv")


@pytest.fixture
def evaluation(catalog: Catalog) -> Evaluation:
    predicted = pd.DataFrame(
        [(r[0], r[1], r[4], r[5]) for r in ROWS], columns=["id", "category", "color", "sleeve"]
    )
    confidence = {a: pd.Series([r[6] for r in ROWS]).to_numpy() for a in ("color", "sleeve")}
    before = {a: c * 0.9 + 0.1 for a, c in confidence.items()}
    frame = catalog.frame
    reference = frame.iloc[:3]
    return Evaluation(
        attribute_score(frame, predicted, BY_CATEGORY),
        split="val",
        rows=scored_rows(catalog, predicted, confidence, before),
        baseline=attribute_score(frame, majority_predictions(reference, frame, BY_CATEGORY), BY_CATEGORY),
        baseline_source="the other 3 rows",
        temperatures={"color": 1.5, "sleeve": 0.8},
    )


def test_majority_baseline_counts_the_reference_rows() -> None:
    reference = pd.DataFrame(
        {"id": ["a", "b", "c", "d"], "category": ["x", "x", "x", "y"], "color": ["red", "blue", "red", None]}
    )
    rows = pd.DataFrame({"id": ["1", "2"], "category": ["x", "y"]})
    got = majority_predictions(reference, rows, {"x": ["color"], "y": ["color"]})
    assert got["color"].tolist() == ["red", None]  # y has no labelled reference row: no guess


def test_scored_rows_one_per_label(evaluation: Evaluation) -> None:
    rows = evaluation.rows
    # 6 colour labels + 3 sleeve labels (s4 has none; shoes have no sleeve)
    assert len(rows) == 9
    s2 = rows[(rows["id"] == "s2") & (rows["attribute"] == "color")].iloc[0]
    assert (s2["label"], s2["predicted"], bool(s2["correct"]), s2["title"]) == (
        "red",
        "blue",
        False,
        "title of s2",
    )
    assert s2["path"].endswith("images/s2.jpg")


def test_tables(evaluation: Evaluation) -> None:
    rows = evaluation.rows
    per_class = per_class_scores(rows).set_index(["attribute", "value"])
    # color red: 3 labels, 2 predicted red (s1, s4), both right → precision 1, recall 2/3
    assert per_class.loc[("color", "red"), "precision"] == pytest.approx(1.0)
    assert per_class.loc[("color", "red"), "recall"] == pytest.approx(2 / 3)
    assert per_class.loc[("color", "red"), "support"] == 3
    pairs = confused_pairs(rows)
    assert set(map(tuple, pairs[["attribute", "label", "predicted", "count"]].values.tolist())) == {
        ("color", "red", "blue", 1),
        ("color", "white", "black", 1),
        ("sleeve", "short", "long", 1),
    }
    errors = confident_errors(rows)
    assert [(e["id"], e["attribute"]) for e in errors] == [("s2", "color"), ("s3", "sleeve"), ("h2", "color")]
    assert errors[0]["thumbnail"].startswith("data:image/jpeg;base64,")
    assert errors[2]["thumbnail"] is None


def test_report_is_self_contained(evaluation: Evaluation, tmp_path: Path) -> None:
    out = tmp_path / "report"
    write_evaluation(evaluation, out)
    page_path = write_evaluation_report(evaluation, out, model="toy")
    page = page_path.read_text(encoding="utf-8")
    images = re.findall(r'<img src="([^"]+)"', page)
    assert images and all(src.startswith("data:image/") for src in images)
    for name in ("confusion_color.png", "confusion_sleeve.png", "reliability.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert base64.b64encode(data).decode() in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for text in ("title of s2", "before temperature", "after temperature", "majority", "Most confused"):
        assert text in page
    assert len(pd.read_csv(out / "predictions.csv")) == 9
    assert {"scores_category.csv", "per_class.csv", "confused_pairs.csv", "evaluation.md"} <= {
        p.name for p in out.iterdir()
    }


def test_reliability_legend_ece_is_that_of_the_points_drawn(monkeypatch: pytest.MonkeyPatch) -> None:
    """The diagrams were drawn on 10 bins and the ECE in their legends counted on 15: on a model whose
    gap changes sign the legend read 0.064 where the points drawn give 0.054."""
    from taxonomist.report import evaluation as report_module

    drawn = {}
    monkeypatch.setattr(
        report_module, "reliability_png", lambda curves, eces: drawn.update(eces=eces, c=curves)
    )
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.3, 1, 500)
    rows = pd.DataFrame(
        {"attribute": "a", "confidence": confidence, "correct": rng.random(500) < confidence}
    ).assign(confidence_before=confidence)
    report_module._calibration(rows, {})
    points = drawn["c"]["a"]["model confidence"].query("count > 0")
    gap = (points["accuracy"] - points["confidence"]).abs()
    assert drawn["eces"]["a"]["model confidence"] == pytest.approx((gap * points["count"]).sum() / 500)


def test_error_thumbnails_show_the_image_as_the_model_saw_it(tmp_path: Path) -> None:
    """The cards drew a phone photo sideways (its EXIF orientation ignored) and a transparent product on
    black, where the model reads it upright and on white."""
    from taxonomist.report.render import thumbnail_uri

    def thumbnail(path: Path) -> Image.Image:
        return Image.open(io.BytesIO(base64.b64decode(thumbnail_uri(path).split(",", 1)[1])))

    photo = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = photo.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    photo.save(tmp_path / "photo.jpg", exif=exif)
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert thumbnail(tmp_path / "photo.jpg").size == (20, 40)
    assert thumbnail(tmp_path / "clear.png").getpixel((5, 5)) == (255, 255, 255)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    assert thumbnail_uri(tmp_path / "broken.jpg") is None and thumbnail_uri(tmp_path / "none.jpg") is None


def test_report_of_a_file_without_a_scored_label(catalog: Catalog, tmp_path: Path) -> None:
    """Evaluating a file whose rows carry no label the model scores (e.g. an unlabelled test file) gives
    no scored rows: the page used to crash with KeyError 'predicted' instead of saying so."""
    unlabelled = dataclasses.replace(catalog, frame=catalog.frame.assign(color=None, sleeve=None))
    predicted = unlabelled.frame[["id", "category"]].assign(color="red", sleeve="long")
    confidence = {a: pd.Series([0.9] * len(ROWS)).to_numpy() for a in ("color", "sleeve")}
    rows = scored_rows(unlabelled, predicted, confidence)
    assert rows.empty
    evaluation = Evaluation(attribute_score(unlabelled.frame, predicted, BY_CATEGORY), rows=rows)
    page = write_evaluation_report(evaluation, tmp_path).read_text(encoding="utf-8")
    assert "<b>0</b>labels scored" in page and "no confidences to assess" in page
    assert confused_pairs(rows).empty and confident_errors(rows) == []


def test_taxonomy_report_siblings_and_worst_errors(tmp_path: Path) -> None:
    from taxonomist.metrics.taxonomy import taxonomy_report
    from taxonomist.report.taxonomy import sibling_confusions, write_taxonomy_report

    levels = ["group", "module"]
    truth = pd.DataFrame(
        {
            "title": ["red shirt", "blue shirt", "black boot", "tan boot"],
            "group": ["Clothing", "Clothing", "Shoes", "Shoes"],
            "module": ["Shirts", "Shirts", "Boots", "Boots"],
        }
    )
    pred = pd.DataFrame(
        {
            "group": ["Clothing", "Clothing", "Clothing", "Shoes"],
            "module": ["Shirts", "Tees", "Tees", "Sandals"],
            "group_confidence": [0.9, 0.9, 0.6, 0.8],
            "module_confidence": [0.9, 0.7, 0.5, 0.95],
        }
    )
    reports = {"heads": taxonomy_report(truth, pred, levels, brand=None)}
    page = write_taxonomy_report(truth, pred.assign(method="heads"), reports, levels, tmp_path, model="toy")
    rows = pd.read_csv(tmp_path / "predictions.csv")
    assert rows["path_correct"].tolist() == [True, False, False, False]
    siblings = sibling_confusions(rows, levels)
    # The boot filed under Clothing is a top-level confusion; "Tees" for a shirt and "Sandals" for a
    # boot had the right parent.
    assert set(map(tuple, siblings[["level", "parent", "true", "predicted"]].values.tolist())) == {
        ("group", "(root)", "Shoes", "Clothing"),
        ("module", "Clothing", "Shirts", "Tees"),
        ("module", "Shoes", "Boots", "Sandals"),
    }
    html = page.read_text(encoding="utf-8")
    assert html.index("tan boot") < html.index("blue shirt")  # surest error first
    assert 'src="data:image/png;base64,' in html and "https://" not in html


@pytest.mark.parametrize("values", [["$", "$$", "$$$"], ["under $10", "$10_$20"], ["$5-$10", "$10-$20"]])
def test_figures_draw_dollar_values_as_text(values: list[str]) -> None:
    """Price tiers are labels, not mathtext: "$" / "$$" used to raise in matplotlib's parser."""
    truth = values * 3
    predicted = values[1:] + values[:1] + values * 2
    assert confusion_png("price [$]", truth, predicted).startswith(b"\x89PNG")
    counts = pd.DataFrame({"attribute": "price", "value": values, "count": [5, 3, 1][: len(values)]})
    assert class_counts_png("$ deals", ["price"], counts, {"price": 0.0}, 9).startswith(b"\x89PNG")


def test_missing_rates_never_round_to_none_or_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """1 label in 400 rows drew "100% missing" beside its bar, and 1 gap in 400 "0%" in the heatmap."""
    from taxonomist.report import plots

    drawn = []
    monkeypatch.setattr(plots, "png", lambda fig: drawn.append(fig) or b"")
    counts = pd.DataFrame({"attribute": ["a", "b"], "value": ["x", "y"], "count": [1, 399]})
    plots.class_counts_png("c", ["a", "b"], counts, {"a": 399 / 400, "b": 1 / 400}, 400)
    assert [ax.get_title() for ax in drawn[0].axes] == [
        "a (1 classes, >99% missing)",
        "b (1 classes, <1% missing)",
    ]
    missing = pd.DataFrame({"category": "c", "attribute": ["a", "b"], "missing_rate": [399 / 400, 1 / 400]})
    plots.missing_heatmap_png(missing, ["c"])
    assert [t.get_text() for t in drawn[1].axes[0].texts] == [">99%", "<1%"]
    plots.class_counts_png("empty", ["a"], counts.iloc[:0], {"a": float("nan")}, 0)  # not "nan% missing"
    assert drawn[2].axes[0].get_title() == "a (0 classes, no rows)"


def test_interval_note_warns_when_a_category_has_too_few_rows_to_resample() -> None:
    """A category's rows are resampled within it, so one with a single row never varies: the interval
    then looks far tighter than its pairs' coin flips are."""
    from taxonomist.metrics.bootstrap import bootstrap_scores

    truth = pd.DataFrame(
        {"id": [str(i) for i in range(12)], "category": ["shirts"] * 10 + ["hats", "socks"], "color": "red"}
    )
    predicted = truth.assign(color=["red", "blue"] * 5 + ["red", "blue"])
    mapping = {"shirts": ["color"], "hats": ["color"], "socks": ["color"]}
    interval = bootstrap_scores(truth, {"m": predicted}, mapping, resamples=50).interval("m")
    evaluation = Evaluation(attribute_score(truth, predicted, mapping), interval=interval)
    assert evaluation.interval_note.endswith(
        "; categories with fewer than 5 rows (hats: 1, socks: 1) keep nearly the same rows in every "
        "resample, so the interval understates how much their pairs could move"
    )
    big = truth.assign(category="shirts")
    evaluation = Evaluation(attribute_score(big, predicted, {"shirts": ["color"]}), interval=interval)
    assert evaluation.interval_note.endswith("within each category")
