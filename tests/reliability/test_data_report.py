"""Nothing dropped silently (issue 16): every row, cell, category and attribute that ``train`` leaves out,
and every suspicious label string, is in ``data_report.json`` and the printed summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from taxonomist.cli.main import app
from taxonomist.config import ConfigError, load_config
from taxonomist.data.catalog import CatalogError
from taxonomist.data.prepare import prepare_catalog

pytestmark = pytest.mark.timeout(300)

COLORS = {"Black": (10, 10, 10), "White": (245, 245, 245), "Red": (200, 30, 30)}


def write_catalog(root: Path, rows: list[dict]) -> Path:
    """``rows`` (category, color, fit) as a CSV with one small image per row, coloured by its label."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for i, row in enumerate(rows):
        rgb = COLORS.get(str(row.get("color", "")).strip().title(), (120, 120, 120))
        pixels = np.clip(np.array(rgb) + rng.integers(-9, 9, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{i}.png")
        records.append({"sku": i, **row})
    path = root / "catalog.csv"
    pd.DataFrame(records).to_csv(path, index=False)
    return path


def config(root: Path, catalog: Path, **catalog_settings: object) -> Path:
    raw = {
        "catalog": {
            "path": str(catalog),
            "id_column": "sku",
            "category_column": "type",
            "attributes": ["color", "fit"],
            "image_template": "images/{id}.png",
            "min_rows_per_category": 0,
            **catalog_settings,
        },
        "backbone": {"name": "efficientnet-lite0", "pretrained": False, "size": 32},
        "embed": {"batch_size": 16, "num_workers": 0, "cache_dir": str(root / "cache")},
        "heads": {"hidden": [8], "category_dim": 2, "dropout": 0.0},
        "train": {"epochs": 2, "batch_size": 32, "dev_fraction": 0.2, "test_fraction": 0.2, "patience": 2},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def tops(n: int, colors=("Black", "White", "Red"), fit="slim") -> list[dict]:
    return [{"type": "Tops", "color": colors[i % len(colors)], "fit": fit} for i in range(n)]


def report_of(root: Path, rows: list[dict], **catalog_settings: object) -> dict:
    """The data report of the data step with these rows and catalog settings."""
    cfg = load_config(config(root, write_catalog(root, rows), **catalog_settings))
    return prepare_catalog(cfg).report.to_dict()


def test_train_writes_the_report_beside_the_checkpoint_and_prints_it(tmp_path: Path) -> None:
    rows = tops(40) + [{"type": "Hats", "color": "Red", "fit": "slim"}] * 3
    cfg = config(tmp_path, write_catalog(tmp_path, rows), min_rows_per_category=10)
    result = CliRunner().invoke(app, ["train", "-c", str(cfg), "-o", str(tmp_path / "run"), "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["rows_read"] == 43 and report["rows_kept"] == 40
    assert report["dropped_rows"]["category_under_min_rows"] == {"Hats": 3}
    assert "category_under_min_rows" in result.output and "Hats: 3" in result.output
    assert "43 read" in result.output


def test_categories_under_min_rows_are_reported(tmp_path: Path) -> None:
    rows = tops(30) + [{"type": "Hats", "color": "Red", "fit": "slim"}] * 4
    report = report_of(tmp_path, rows, min_rows_per_category=10)
    assert report["dropped_rows"]["category_under_min_rows"] == {"Hats": 4}
    assert report["rows_read"] == 34 and report["rows_kept"] == 30


def test_labels_outside_a_supplied_schema_are_counted(tmp_path: Path) -> None:
    rows = tops(30)
    rows[0]["color"] = rows[1]["color"] = "Mauve"
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"Tops": {"color": list(COLORS), "fit": ["slim"]}}))
    report = report_of(tmp_path, rows, schema=str(schema))
    assert report["masked_cells"]["outside_schema"] == {"color": 2}


def test_all_missing_attribute_and_label_less_category_are_reported(tmp_path: Path) -> None:
    rows = tops(30, fit=None) + [{"type": "Footwear", "color": None, "fit": None}] * 12
    report = report_of(tmp_path, rows)
    assert report["left_out_categories"] == {"Footwear": "no row of it has a label"}
    assert report["dropped_rows"]["category_without_labels"] == {"Footwear": 12}
    assert report["left_out_attributes"] == {"(every category)": {"fit": "no row has a label"}}


def test_null_like_tokens_and_case_variants_are_flagged(tmp_path: Path) -> None:
    rows = tops(30)
    for i, value in enumerate(["nan", "None", "N/A", "BLACK", " Black "]):
        rows[i]["color"] = value
    report = report_of(tmp_path, rows)
    flagged = {(r["kind"], r["value"]) for r in report["suspicious_labels"]}
    assert {("null_like", "nan"), ("null_like", "None"), ("null_like", "N/A")} <= flagged
    assert {("case_or_whitespace_variant", "BLACK"), ("case_or_whitespace_variant", " Black ")} <= flagged


def test_category_whitespace_folds_and_case_variants_are_flagged(tmp_path: Path) -> None:
    """Regression: "Tops", "Tops " and "tops" became three categories, each with a third of the rows,
    and the data report said nothing (it flagged such variants in label values only)."""
    rows = tops(30)
    for i, spelling in enumerate(["Tops ", " Tops", "Tops\t", "tops", "tops"]):
        rows[i]["type"] = spelling
    cfg = load_config(config(tmp_path, write_catalog(tmp_path, rows)))
    data = prepare_catalog(cfg)
    assert data.catalog.frame["category"].value_counts().to_dict() == {"Tops": 28, "tops": 2}
    [flag] = [r for r in data.report.to_dict()["suspicious_labels"] if r["attribute"] == "category"]
    assert (flag["kind"], flag["value"], flag["rows"]) == ("case_or_whitespace_variant", "tops", 2)
    assert "case variant of 'Tops'" in flag["action"]


def test_null_like_tokens_and_variants_are_cleaned_when_asked(tmp_path: Path) -> None:
    rows = tops(30)
    for i, value in enumerate(["nan", "None", "N/A", "BLACK", " Black "]):
        rows[i]["color"] = value
    cfg = load_config(
        config(
            tmp_path,
            write_catalog(tmp_path, rows),
            null_like_as_missing=True,
            normalize_label_variants=True,
        )
    )
    data = prepare_catalog(cfg)
    assert set(data.schema.allowed("Tops", "color")) == set(COLORS)
    assert data.report.masked_cells["null_like"] == {"color": 3}


def test_a_5000_character_label_is_flagged(tmp_path: Path) -> None:
    rows = tops(30)
    rows[0]["color"] = "x" * 5000
    report = report_of(tmp_path, rows)
    (long,) = [r for r in report["suspicious_labels"] if r["kind"] == "over_long"]
    assert long["attribute"] == "color" and "5000 characters" in long["value"] and long["rows"] == 1


def test_values_seen_only_in_dev_are_reported_and_not_in_the_schema(tmp_path: Path) -> None:
    rows = tops(40)
    cfg = load_config(config(tmp_path, write_catalog(tmp_path, rows)))
    dev_row = int(prepare_catalog(cfg).part("dev")["id"].iloc[0])
    rows[dev_row]["color"] = "Teal"
    cfg = load_config(config(tmp_path, write_catalog(tmp_path, rows)))
    data = prepare_catalog(cfg)
    assert data.report.unseen_in_training == {"dev": {"color": {"Teal": 1}}}
    assert "Teal" not in data.schema.allowed("Tops", "color")


def test_inspect_shows_the_same_report(tmp_path: Path) -> None:
    rows = tops(30) + [{"type": "Hats", "color": "Red", "fit": "slim"}] * 3
    rows[0]["color"] = "N/A"
    cfg = config(tmp_path, write_catalog(tmp_path, rows), min_rows_per_category=10)
    out = tmp_path / "inspect"
    result = CliRunner().invoke(app, ["inspect", "-c", str(cfg), "-o", str(out), "--no-images", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "data_report.json").read_text())
    assert report["dropped_rows"]["category_under_min_rows"] == {"Hats": 3}
    assert [r["value"] for r in report["suspicious_labels"]] == ["N/A"]
    assert "suspicious label (null_like) color='N/A'" in result.output


def test_a_dev_part_that_rounds_to_empty_names_its_setting(tmp_path: Path) -> None:
    """Regression: dev_fraction 0.01 on 30 rows ended in "torch.cat(): expected a non-empty list"."""
    cfg = load_config(config(tmp_path, write_catalog(tmp_path, tops(30))), ["train.dev_fraction=0.01"])
    with pytest.raises(
        ConfigError, match=r"train.dev_fraction=0.01 gives no category a dev row \(Tops: 30\)"
    ):
        prepare_catalog(cfg)


def test_a_policy_that_empties_a_category_says_so(tmp_path: Path) -> None:
    """Regression: drop removed every Tops training row (each lacked a label) and training failed with a
    bare KeyError: 'Tops'."""
    gaps = [{**row, "fit": None} if i % 2 else {**row, "color": None} for i, row in enumerate(tops(30))]
    rows = gaps + [{"type": "Bags", "color": "Red", "fit": "slim"} for _ in range(30)]
    cfg = load_config(config(tmp_path, write_catalog(tmp_path, rows)), ["missing_labels.policy=drop"])
    with pytest.raises(CatalogError, match=r"policy=drop left no training row of \['Tops'\]"):
        prepare_catalog(cfg)
