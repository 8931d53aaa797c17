"""The shared data step: cleaning, train/dev/test, policy on training rows, schema from training rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from taxonomist.config import RunConfig
from taxonomist.data.catalog import CATEGORY, ID, Catalog, CatalogError
from taxonomist.data.prepare import (
    DataReport,
    clean_labels,
    image_groups,
    prepare,
    prepare_catalog,
)
from taxonomist.data.schema import Schema


def catalog(rows: list[dict], attributes=("color", "size"), by_category=None, **kw) -> Catalog:
    frame = pd.DataFrame(rows)
    frame.insert(0, ID, [str(i) for i in range(len(frame))])
    for a in attributes:
        if a not in frame.columns:
            frame[a] = None
    frame = frame.astype(object).where(frame.notna(), None)
    return Catalog(frame, list(attributes), attributes_by_category=by_category or {}, source="t.csv", **kw)


def colors(n: int, category: str = "Tops", values=("red", "blue")) -> list[dict]:
    return [{CATEGORY: category, "color": values[i % len(values)], "size": "M"} for i in range(n)]


def test_parts_are_disjoint_seeded_and_the_policy_only_touches_training_rows():
    rows = colors(100)
    for r in rows[::3]:
        r["size"] = None
    data = prepare(catalog(rows), dev_fraction=0.2, test_fraction=0.1, seed=1, policy="dynamic-fill")
    ids = {name: set(data.part(name)[ID]) for name in ("train", "dev", "test")}
    assert len(ids["train"]) == 70 and len(ids["dev"]) == 20 and len(ids["test"]) == 10
    assert not (ids["train"] & ids["dev"]) and not (ids["dev"] & ids["test"])
    assert data.train["size"].notna().all(), "the policy fills training rows"
    assert data.part("dev")["size"].isna().any(), "dev keeps its true gaps"
    again = prepare(catalog(rows), dev_fraction=0.2, test_fraction=0.1, seed=1, policy="dynamic-fill")
    assert (again.split.test == data.split.test).all()
    assert data.report.split["ids"]["test"] == again.report.split["ids"]["test"]
    assert data.report.parts == {"train": 70, "dev": 20, "test": 10}


def test_schema_comes_from_training_rows_and_dev_only_values_are_reported():
    rows = colors(40)
    data = prepare(catalog(rows), dev_fraction=0.25, test_fraction=0.0, seed=0, group_duplicate_images=False)
    dev_id = data.part("dev")[ID].iloc[0]
    rows[int(dev_id)]["color"] = "mauve"
    data = prepare(catalog(rows), dev_fraction=0.25, test_fraction=0.0, seed=0, group_duplicate_images=False)
    assert "mauve" not in data.schema.allowed("Tops", "color")
    assert data.report.unseen_in_training == {"dev": {"color": {"mauve": 1}}}


def test_null_like_tokens_and_case_variants_are_flagged_and_cleaned_when_asked():
    frame = pd.DataFrame(
        {
            "color": ["Black"] * 5 + ["BLACK", " Black ", "nan", "None", "N/A", "NA", "x" * 5000],
            CATEGORY: "Tops",
        }
    )
    kept, found, masked = clean_labels(frame, ["color"])
    kinds = {(f["kind"], f["value"] if f["kind"] != "over_long" else "long") for f in found}
    assert ("null_like", "nan") in kinds and ("null_like", "None") in kinds and ("null_like", "N/A") in kinds
    assert ("null_like", "NA") not in kinds, "NA is a brand, not a missing value"
    assert ("case_or_whitespace_variant", "BLACK") in kinds and ("over_long", "long") in kinds
    assert kept["color"].equals(frame["color"]) and masked == {}
    cleaned, _, masked = clean_labels(frame, ["color"], null_like_as_missing=True, normalize_variants=True)
    assert cleaned["color"].tolist()[:7] == ["Black"] * 7
    assert cleaned["color"].isna().tolist()[7:] == [True, True, True, False, False]
    assert masked == {"color": 3}


def test_a_supplied_schema_drops_unknown_categories_and_counts_outside_labels():
    rows = colors(20) + colors(5, "Shoes")
    rows[0]["color"] = "green"
    schema = Schema({"Tops": {"color": ["red", "blue"], "size": ["M"]}})
    data = prepare(catalog(rows), schema=schema, test_fraction=0.0, group_duplicate_images=False)
    assert data.report.dropped_rows["category_not_in_schema"] == {"Shoes": 5}
    assert data.report.masked_cells["outside_schema"] == {"color": 1}
    assert set(data.catalog.frame[CATEGORY]) == {"Tops"}


def test_label_less_categories_and_attributes_leave_the_schema_with_a_reason():
    rows = colors(20) + [{CATEGORY: "Bags", "color": None, "size": None}] * 10
    for r in rows[:20]:
        r["size"] = None
    by_category = {"Tops": ["color", "size"], "Bags": ["color", "size"]}
    data = prepare(catalog(rows, by_category=by_category), group_duplicate_images=False)
    assert data.report.left_out_categories == {"Bags": "no row of it has a label"}
    assert data.report.dropped_rows["category_without_labels"] == {"Bags": 10}
    assert data.report.left_out_attributes["Tops"] == {"size": "no training row has a label for it"}
    assert data.schema.attributes_of("Tops") == ["color"]


def test_identical_images_never_straddle_parts(tmp_path):
    rng = np.random.default_rng(0)
    rows = colors(60)
    for i in range(60):
        pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) if i % 3 else np.zeros((8, 8, 3), np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    cat = catalog(rows, image_root=tmp_path, image_template="{id}.png")
    groups = image_groups(cat)
    assert groups.iloc[0] == groups.iloc[3] and groups.iloc[1] != groups.iloc[2]
    data = prepare(cat, dev_fraction=0.2, test_fraction=0.2, seed=0)
    part = np.empty(60, dtype=object)
    for name in ("train", "dev", "test"):
        part[getattr(data.split, name)] = name
    assert len(set(part[::3])) == 1, "the 20 copies of one image share a part"
    assert data.report.split["duplicate_image_rows"] == 20


def test_report_round_trips_through_json_and_lists_notes():
    rows = colors(30) + colors(3, "Shoes")
    cat = catalog(rows, dropped_categories={"Hats": 4})
    report = prepare(cat, group_duplicate_images=False).report
    again = DataReport.from_dict(json.loads(report.to_json()))
    assert again == report
    assert report.rows_read == 37
    assert any("category_under_min_rows" in line and "Hats: 4" in line for line in report.notes())


def test_prepare_catalog_reports_rows_beyond_the_limit(tmp_path):
    path = tmp_path / "c.csv"
    pd.DataFrame({"id": range(50), "masterCategory": "Tops", "color": "red"}).to_csv(path, index=False)
    cfg = RunConfig()
    cfg.catalog.path, cfg.catalog.attributes, cfg.catalog.limit = str(path), ["color"], 30
    cfg.catalog.min_rows_per_category = 0
    data = prepare_catalog(cfg)
    assert data.report.rows_read == 50 and data.report.dropped_rows["beyond_catalog_limit"] == {"Tops": 20}
    assert len(data.catalog) == 30


@pytest.mark.parametrize("name", ["validation", "val"])
def test_unknown_part_names_fail(name):
    data = prepare(catalog(colors(10)), group_duplicate_images=False)
    with pytest.raises(ValueError, match="unknown part"):
        data.part(name)


def test_a_catalog_without_any_label_fails_naming_why():
    rows = [{CATEGORY: "Bags", "color": None, "size": None}] * 5
    with pytest.raises(CatalogError, match=r"no rows left to split.*Bags: no row of it has a label"):
        prepare(catalog(rows), group_duplicate_images=False)
