"""inspect_catalog on a hand-built catalog whose every number is known, plus the real Meesho labels."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import multiprocessing
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from rich.console import Console

from taxonomist.data.catalog import Catalog, read_meesho
from taxonomist.data.schema import Schema
from taxonomist.report import images as images_module
from taxonomist.report.inspection import InspectReport, inspect_catalog

# id, category, color, sleeve, size, image: a colour to draw, "copy:<id>" (same bytes), "corrupt", "missing"
ROWS = [
    ("s1", "shirts", "red", "long", None, (200, 0, 0)),
    ("s2", "shirts", "red", "short", None, (0, 200, 0)),
    ("s3", "shirts", "blue", "short", None, "copy:s2"),  # same picture as s2, different colour label
    ("s4", "shirts", "red", None, None, (0, 0, 200)),
    ("s5", "shirts", None, "long", None, "corrupt"),
    ("s6", "shirts", "green", "long", None, "missing"),
    ("h1", "shoes", "black", None, "42", (10, 10, 10)),
    ("h2", "shoes", "black", None, None, "copy:h1"),  # same picture, labels agree (size just missing)
    ("h3", "shoes", "black", None, "43", (90, 90, 90)),
    ("h4", "shoes", "white", None, "42", (250, 250, 250)),
]
BY_CATEGORY = {"shirts": ["color", "sleeve"], "shoes": ["color", "size"]}


def _catalog(root: Path) -> Catalog:
    images = root / "images"
    images.mkdir(parents=True)
    for item_id, *_, image in ROWS:
        path = images / f"{item_id}.jpg"
        if isinstance(image, tuple):
            Image.new("RGB", (16, 12), image).save(path, format="JPEG")
        elif image.startswith("copy:"):
            shutil.copyfile(images / f"{image[5:]}.jpg", path)
        elif image == "corrupt":
            path.write_bytes(b"this is not a jpeg at all")
    frame = pd.DataFrame([r[:5] for r in ROWS], columns=["id", "category", "color", "sleeve", "size"])
    frame = frame.astype(object).where(frame.notna(), None)
    return Catalog(frame, ["color", "sleeve", "size"], root, "images/{id}.jpg", BY_CATEGORY, source="toy.csv")


SCHEMA = Schema(
    {
        "shirts": {"color": ["red", "blue"], "sleeve": ["long", "short"]},  # no "green"
        "shoes": {"color": ["black", "white"], "size": ["42", "43"]},
    }
)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    return _catalog(tmp_path_factory.mktemp("catalog"))


@pytest.fixture(scope="module")
def report(catalog: Catalog) -> InspectReport:
    return inspect_catalog(catalog, schema=SCHEMA, num_workers=2, progress=False)


def _pair(frame: pd.DataFrame, category: str, attribute: str) -> pd.DataFrame:
    return frame[(frame["category"] == category) & (frame["attribute"] == attribute)]


def test_rows_and_missing_rates(report: InspectReport) -> None:
    assert report.rows == 10
    assert report.rows_per_category == {"shirts": 6, "shoes": 4}
    assert report.duplicate_ids == 0
    got = {(r.category, r.attribute): (r.rows, r.missing) for r in report.missing.itertuples()}
    # Only each category's own attributes: shirts have no "size" row, shoes no "sleeve" row.
    assert got == {
        ("shirts", "color"): (6, 1),
        ("shirts", "sleeve"): (6, 1),
        ("shoes", "color"): (4, 0),
        ("shoes", "size"): (4, 1),
    }
    rates = report.missing.set_index(["category", "attribute"])["missing_rate"]
    assert rates[("shirts", "color")] == pytest.approx(1 / 6)
    assert rates[("shoes", "size")] == pytest.approx(0.25)
    assert rates[("shoes", "color")] == 0.0


def test_class_counts_and_imbalance(report: InspectReport) -> None:
    counts = {(r.category, r.attribute, r.value): r.count for r in report.class_counts.itertuples()}
    assert counts == {
        ("shirts", "color", "red"): 3,
        ("shirts", "color", "blue"): 1,
        ("shirts", "color", "green"): 1,
        ("shirts", "sleeve", "long"): 3,
        ("shirts", "sleeve", "short"): 2,
        ("shoes", "color", "black"): 3,
        ("shoes", "color", "white"): 1,
        ("shoes", "size", "42"): 2,
        ("shoes", "size", "43"): 1,
    }
    # Most frequent first within each pair, and shares sum to one.
    assert _pair(report.class_counts, "shirts", "color")["value"].iloc[0] == "red"
    assert _pair(report.class_counts, "shirts", "color")["share"].sum() == pytest.approx(1.0)

    row = _pair(report.imbalance, "shirts", "color").iloc[0]
    assert (row.labelled, row.classes, row.largest_value, row.largest, row.smallest) == (5, 3, "red", 3, 1)
    assert row.imbalance_ratio == pytest.approx(3.0)
    h = -(0.6 * math.log(0.6) + 2 * 0.2 * math.log(0.2))
    assert row.normalised_entropy == pytest.approx(h / math.log(3))
    shoes = _pair(report.imbalance, "shoes", "color").iloc[0]
    assert shoes.imbalance_ratio == pytest.approx(3.0)
    assert shoes.normalised_entropy == pytest.approx(
        -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    )


def test_out_of_schema_value(report: InspectReport) -> None:
    assert report.out_of_schema.to_dict("records") == [
        {"category": "shirts", "attribute": "color", "value": "green", "count": 1, "reason": "unknown value"}
    ]


def test_out_of_schema_unknown_category_and_attribute(catalog: Catalog) -> None:
    schema = Schema({"shirts": {"color": ["red", "blue", "green"]}})
    oos = inspect_catalog(catalog, schema=schema, check_images=False, progress=False).out_of_schema
    reasons = {(r.category, r.attribute, r.value): r.reason for r in oos.itertuples()}
    assert reasons[("shirts", "sleeve", "long")] == "unknown attribute"
    assert reasons[("shoes", "size", "42")] == "unknown category"
    assert ("shirts", "color", "green") not in reasons


def test_duplicate_images_and_label_conflicts(report: InspectReport) -> None:
    groups = {frozenset(g["ids"]): g for g in report.duplicate_group_list()}
    assert set(groups) == {frozenset({"s2", "s3"}), frozenset({"h1", "h2"})}
    assert groups[frozenset({"s2", "s3"})]["conflicting"] == ["color"]
    assert groups[frozenset({"h1", "h2"})]["label_conflict"] is False  # a missing label is not a conflict
    assert (report.duplicate_groups, report.conflicting_groups, report.redundant_images) == (2, 1, 2)


def test_an_attribute_name_holding_the_separator_stays_one_name(tmp_path: Path) -> None:
    """Regression: conflicting attributes were joined with ";" and split again, so "size;fit" came back as
    ['size', 'fit']. The CSV keeps ``a;b`` for plain names and quotes only a name holding the separator."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", (16, 12), (200, 0, 0)).save(tmp_path / "images" / "a1.jpg", format="JPEG")
    shutil.copyfile(tmp_path / "images" / "a1.jpg", tmp_path / "images" / "a2.jpg")
    frame = pd.DataFrame(
        {"id": ["a1", "a2"], "category": "tops", "color": ["red", "blue"], "size;fit": ["S", "M"]}
    )
    attributes = ["color", "size;fit"]
    catalog = Catalog(frame, attributes, tmp_path, "images/{id}.jpg", {"tops": attributes}, source="toy.csv")
    report = inspect_catalog(catalog, num_workers=1, progress=False)
    assert [g["conflicting"] for g in report.duplicate_group_list()] == [["color", "size;fit"]]
    index = report.save(tmp_path / "out")
    assert pd.read_csv(index.parent / "duplicates.csv")["conflicting"].tolist() == ['color;"size;fit"'] * 2
    data = json.loads((index.parent / "report.json").read_text(encoding="utf-8"))
    assert data["duplicate_groups"][0]["conflicting"] == ["color", "size;fit"]


def test_unreadable_images(report: InspectReport) -> None:
    got = dict(zip(report.unreadable["id"], report.unreadable["reason"], strict=True))
    assert got == {"s5": "corrupt", "s6": "missing"}
    assert report.unreadable_by_reason() == {"corrupt": 1, "missing": 1}
    assert report.unreadable.set_index("id").loc["s6", "path"].endswith("images/s6.jpg")
    # Unreadable files never form duplicate groups, even when their bytes match.
    assert not set(report.duplicates["id"]) & {"s5", "s6"}


def test_in_process_with_progress_matches_workers(catalog: Catalog, report: InspectReport) -> None:
    console_report = inspect_catalog(catalog, schema=SCHEMA, num_workers=1, progress=True)
    pd.testing.assert_frame_equal(console_report.duplicates, report.duplicates)
    pd.testing.assert_frame_equal(console_report.unreadable, report.unreadable)


def test_spawned_workers_match_in_process(catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    # The spawn path is what macOS, Windows and Jupyter get; its workers must import and agree.
    monkeypatch.setattr(images_module, "_mp_context", lambda: multiprocessing.get_context("spawn"))
    paths = [str(p) for p in catalog.image_paths()]
    spawned = images_module.check_image_files(paths, num_workers=2, progress=False)
    assert spawned == images_module.check_image_files(paths, num_workers=0, progress=False)


def test_print_renders_every_section(report: InspectReport) -> None:
    buf = io.StringIO()
    report.print(Console(file=buf, width=200), top=1)
    text = buf.getvalue()
    for needle in ("Rows per category", "Worst missing rates", "Most imbalanced", "green", "corrupt", "more"):
        assert needle in text


def test_save_writes_linked_files(report: InspectReport, tmp_path: Path) -> None:
    index = report.save(tmp_path / "out")
    assert index == tmp_path / "out" / "index.html"
    page = index.read_text(encoding="utf-8")
    # Self-contained: every figure is inlined, and the same PNG is also written beside the page.
    inlined = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    names = {"missing_heatmap.png", "class_counts_shirts.png", "class_counts_shoes.png"}
    assert len(inlined) == len(names) and not re.findall(r'<img src="(?!data:)', page)
    assert {base64.b64decode(b) for b in inlined} == {(index.parent / n).read_bytes() for n in names}
    for name in names:
        assert (index.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in page and "https://" not in page
    for name in ("missing", "class_counts", "unreadable", "duplicates", "out_of_schema"):
        assert (index.parent / f"{name}.csv").is_file()
    assert set(pd.read_csv(index.parent / "unreadable.csv")["reason"]) == {"corrupt", "missing"}
    data = json.loads((index.parent / "report.json").read_text(encoding="utf-8"))
    assert data["rows_per_category"] == {"shirts": 6, "shoes": 4}
    assert data["images"]["duplicate_groups"] == 2
    assert data["images"]["conflicting_groups"] == 1
    assert data["out_of_schema"][0]["value"] == "green"
    assert not list(index.parent.glob("*.tmp")) and not list(index.parent.glob(".*"))


def test_listing_text_coverage_repeats_and_what_it_names(catalog: Catalog, tmp_path: Path) -> None:
    """Issue 18: before training listing heads, how much text there is and what it says of each label."""
    from taxonomist.data.catalog import TEXT

    titles = {
        "s1": "Acme Red Long Sleeve Shirt",  # names red (its label)
        "s2": "Acme Navy Blue Shirt",  # "Navy Blue" is no value here, so it names blue: not its label red
        "s3": "Acme Navy Blue Shirt",  # same title as s2, labels differ (colour, sleeve)
        "s4": "",  # no text
        "s5": "red or blue shirt",  # names two values: neither is read
        "s6": "Shirt",
        "h1": "Black shoe size 42",  # names black and 42, both its labels
        "h2": "Black shoe size 42",  # same title, labels agree (size missing: a gap, not a conflict)
        "h3": "shoe",
        "h4": "WHITE shoe, size 43",  # case-folded; 43 is not its label 42
    }
    frame = catalog.frame.assign(**{TEXT: catalog.frame["id"].map(titles)})
    listing = dataclasses.replace(catalog, frame=frame)
    report = inspect_catalog(listing, check_images=False, progress=False)
    text = report.text.set_index("category")
    assert text.loc["shirts", ["rows", "with_text", "repeated_rows", "repeated_conflicting"]].tolist() == [
        6,
        5,
        2,
        2,
    ]
    assert text.loc["shoes", ["rows", "with_text", "repeated_rows", "repeated_conflicting"]].tolist() == [
        4,
        4,
        2,
        0,
    ]
    assert text.loc["shirts", "text_share"] == pytest.approx(5 / 6)
    assert text.loc["shirts", "median_words"] == 4 and text.loc["shoes", "median_words"] == 4

    names = report.text_names.set_index(["category", "attribute"])
    # shirts colour: labelled rows with text s1 s2 s3 s6 (s5 unlabelled): s1 names red, s2 and s3 blue.
    assert names.loc[("shirts", "color"), ["labelled", "names_one", "agrees"]].tolist() == [4, 3, 2]
    assert names.loc[("shirts", "sleeve"), ["labelled", "names_one", "agrees"]].tolist() == [5, 1, 1]
    assert names.loc[("shoes", "size"), ["labelled", "names_one", "agrees"]].tolist() == [3, 2, 1]
    assert names.loc[("shoes", "size"), "agree_rate"] == pytest.approx(0.5)
    # The disagreements themselves, as label cells to review, spelled as the catalog spells its values.
    conflicts = report.text_conflicts.set_index(["id", "attribute"])
    assert sorted(conflicts.index) == [("h4", "size"), ("s2", "color")]
    assert conflicts.loc[("s2", "color"), ["category", "label", "text_names"]].tolist() == [
        "shirts",
        "red",
        "blue",
    ]
    assert conflicts.loc[("h4", "size"), ["label", "text_names", "text"]].tolist() == [
        "42",
        "43",
        titles["h4"],
    ]

    buf = io.StringIO()
    report.print(Console(file=buf, width=200))
    assert "Listing text" in buf.getvalue() and "What the text names" in buf.getvalue()
    index = report.save(tmp_path / "out")
    assert 'id="text"' in index.read_text(encoding="utf-8")
    assert len(pd.read_csv(index.parent / "text_names.csv")) == 4
    assert len(pd.read_csv(index.parent / "text_conflicts.csv")) == 2
    assert "The 2 label cells behind" in index.read_text(encoding="utf-8")
    assert "text_conflicts.csv" in buf.getvalue()
    data = json.loads((index.parent / "report.json").read_text(encoding="utf-8"))
    assert data["text"][0]["category"] == "shirts" and data["text_conflicts"] == 2


def test_no_text_section_without_text(report: InspectReport, tmp_path: Path) -> None:
    assert report.text is None and report.text_names is None and report.text_conflicts is None
    buf = io.StringIO()
    report.print(Console(file=buf, width=200))
    assert "Listing text" not in buf.getvalue()
    assert json.loads((report.save(tmp_path) / ".." / "report.json").resolve().read_text())["text"] is None


def test_real_meesho_labels(meesho_dir: Path) -> None:
    catalog = read_meesho(meesho_dir)
    report = inspect_catalog(catalog, schema=catalog.infer_schema(), check_images=False, progress=False)
    assert report.rows == 70_213
    assert report.rows_per_category["Sarees"] == 18_346
    assert report.rows_per_category["Men Tshirts"] == 7_267
    assert len(report.missing) == sum(len(a) for a in catalog.attributes_by_category.values())
    assert report.out_of_schema.empty  # an inferred schema allows every label it was inferred from
    assert report.class_counts.groupby(["category", "attribute"])["count"].sum().sum() == int(
        (1 - report.missing["missing_rate"]).mul(report.missing["rows"]).round().sum()
    )
    assert not report.images_checked and report.unreadable.empty


def test_a_longer_value_is_read_before_the_shorter_one_inside_it() -> None:
    from taxonomist.report.inspection import _named_value

    texts = pd.Series(["Navy Blue tee", "blue tee", "Bluetooth speaker", "navy blue and blue", "red or blue"])
    named = _named_value(texts, ["Blue", "Navy Blue", "Red"]).tolist()
    assert named[0] == "navy blue" and named[1] == "blue" and pd.isna(named[2])
    assert pd.isna(named[3]) and pd.isna(named[4])  # two values named: neither is read


def test_save_with_a_category_name_too_long_for_a_file_name(tmp_path: Path) -> None:
    """A 300-character category named a 300-character figure file, which the filesystem refused."""
    long_a, long_b = "Women Tops & Tunics " * 15, "Women Tops & Tunics " * 15 + "plus"
    frame = pd.DataFrame({"id": ["1", "2"], "category": [long_a, long_b], "color": ["red", "blue"]})
    by_category = {long_a: ["color"], long_b: ["color"]}
    catalog = Catalog(frame, ["color"], tmp_path, "images/{id}.jpg", by_category, source="long.csv")
    report = inspect_catalog(catalog, check_images=False, progress=False)
    out = report.save(tmp_path / "out").parent
    files = json.loads((out / "report.json").read_text(encoding="utf-8"))["files"]["class_count_plots"]
    assert set(files) == {long_a, long_b} and len(set(files.values())) == 2  # still one file each
    for name in files.values():
        assert len(name) < 128 and (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_page_says_which_rows_were_set_aside(tmp_path: Path) -> None:
    """The terminal said "2 rows set aside (...): rejected.csv"; the page said nothing of them."""
    from taxonomist.data.catalog import read_generic

    (tmp_path / "data.csv").write_text("id,cat,color\n1,Tops,red\n2,Tops,blue\n2,Tops,red\n3,,red\n")
    catalog = read_generic(
        tmp_path / "data.csv", category_column="cat", attributes=["color"], bad_rows="report"
    )
    report = inspect_catalog(catalog, check_images=False, progress=False)
    note = "2 rows set aside (blank-category: 1, duplicate-id: 1): rejected.csv"
    assert note in report.save(tmp_path / "out").read_text(encoding="utf-8")
    buf = io.StringIO()
    report.print(Console(file=buf, width=200))
    assert note in buf.getvalue()
