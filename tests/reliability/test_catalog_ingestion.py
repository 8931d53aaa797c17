"""Catalog ingestion, by property: every row of any file is either read (id and category as written,
its line known) or set aside with its line and reason, exactly once. And ``inspect`` reports bad rows
instead of refusing the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taxonomist.data.catalog import Catalog, CatalogError, read_generic, read_table
from taxonomist.data.images import ImageLoadError, content_hash
from taxonomist.features.embed import hash_images

from .conftest import Tiny, write_rows

# Ids as sellers type them: leading zeros, spaces inside, unicode, numbers that look like floats.
ID_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters='"\r\n'),
    min_size=0,
    max_size=8,
)
IDS = st.one_of(ID_TEXT, st.sampled_from(["", " ", "007", "1.0", "NA", "nan", "None", "1e3"]))
CATEGORIES = st.sampled_from(["Tops", "Bags", "", "  ", "NA"])


def _strip_blank(value: str) -> bool:
    return value.strip() == ""


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(IDS, CATEGORIES, st.sampled_from(["red", "", "N/A"])), max_size=25))
def test_every_row_is_read_or_set_aside_once(tmp_path: Path, rows: list[tuple[str, str, str]]) -> None:
    path = tmp_path / "catalog.csv"
    frame = pd.DataFrame(rows, columns=["sku", "type", "color"])
    frame.to_csv(path, index=False)
    catalog = read_generic(
        path, id_column="sku", category_column="type", attributes=["color"], bad_rows="report"
    )
    seen: dict[str, int] = {}
    expected_kept, expected_rejected = [], []
    for k, (item_id, category, _) in enumerate(rows):
        line = k + 2
        if _strip_blank(item_id):
            expected_rejected.append((line, "blank-id"))
        elif _strip_blank(category):
            expected_rejected.append((line, "blank-category"))
        elif item_id in seen:
            expected_rejected.append((line, "duplicate-id"))
        else:
            expected_kept.append((line, item_id, category))
            seen[item_id] = line
    kept = list(zip(catalog.lines, catalog.frame["id"], catalog.frame["category"], strict=True))
    assert kept == expected_kept
    assert list(zip(catalog.rejected["line"], catalog.rejected["reason"], strict=True)) == expected_rejected
    assert len(catalog) + len(catalog.rejected) == len(rows)


def test_a_rejected_row_does_not_claim_its_id(tmp_path: Path) -> None:
    """Regression: a blank-category row counted as the first of its id, so the valid row after it was
    rejected as a duplicate "of" the unused row and no row of that id was predicted."""
    rows = [("1001", ""), ("1001", "Bags"), ("1000", "Tops"), ("1001", "Tops")]
    path = write_rows(tmp_path / "c.csv", pd.DataFrame(rows, columns=["sku", "type"]))
    catalog = read_generic(path, id_column="sku", category_column="type", labels=False, bad_rows="report")
    assert list(zip(catalog.lines, catalog.ids, strict=True)) == [(3, "1001"), (4, "1000")]
    rejected = catalog.rejected[["line", "reason", "detail"]].values.tolist()
    assert rejected == [
        [2, "blank-category", "no value in the category column 'type'"],
        [5, "duplicate-id", "id '1001' is also on line 3, which is used"],
    ]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.one_of(st.none(), st.integers(0, 2**52)), min_size=1, max_size=20))
def test_parquet_ids_stored_as_floats_come_back_as_integers(tmp_path: Path, ids: list[int | None]) -> None:
    path = tmp_path / "ids.parquet"
    pd.DataFrame({"id": pd.array(ids, dtype="float64")}).to_parquet(path, index=False)
    read = [None if pd.isna(v) else v for v in read_table(path)["id"]]
    assert read == [None if i is None else str(i) for i in ids]


def test_training_reads_refuse_an_id_the_image_template_cannot_take(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "c.csv", [{"sku": "1", "type": "Tops"}, {"sku": "SKU-7", "type": "Tops"}])
    with pytest.raises(CatalogError, match=r"1 rows with a bad id, e\.g\. line 3: id 'SKU-7' is not a whole"):
        read_generic(
            path, id_column="sku", category_column="type", labels=False, image_template="{id:06d}.jpg"
        )


def test_no_readable_image_names_a_numeric_template_as_written(tmp_path: Path) -> None:
    """Regression: the message filled ``{id:06d}`` in with the text "{id}" and crashed instead."""
    frame = pd.DataFrame({"id": ["7", "8"], "category": ["Tops", "Tops"]})
    catalog = Catalog(frame, [], tmp_path, "train_images/{id:06d}.jpg", source="c.csv")
    with pytest.raises(
        CatalogError, match=r"looked for as .*/train_images/\{id:06d\}\.jpg \(e\.g\. .*/000007"
    ):
        catalog.require_readable_images(0, {"missing": 2})


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_csv_rows_carry_the_line_they_start_on(tmp_path: Path, newline: str) -> None:
    """Regression: lines were the row position + 2, so a quoted title over three lines or a blank line
    shifted every later line in errors.csv and in the "also on line N" details."""
    text = [
        "sku,type,title",
        '1000,Tops,"a',
        "multiline",
        'title"',
        "1001,Bags,x",
        "",
        "1002,Tops,y",
        "   ",
        "1003,,blank cat",
        '1004,Tops,"""quoted"", then',
        '"',
        "1001,Bags,dup",
    ]
    path = tmp_path / "c.csv"
    path.write_bytes(newline.join(["", *text, ""]).encode())  # a blank line before the header, too
    catalog = read_generic(path, id_column="sku", category_column="type", labels=False, bad_rows="report")
    assert list(zip(catalog.lines, catalog.ids, strict=True)) == [
        (3, "1000"),
        (6, "1001"),
        (8, "1002"),
        (11, "1004"),
    ]
    assert catalog.rejected[["line", "reason", "detail"]].values.tolist() == [
        [10, "blank-category", "no value in the category column 'type'"],
        [13, "duplicate-id", "id '1001' is also on line 6, which is used"],
    ]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_row_with_more_fields_than_the_header_is_one_bad_row(tmp_path: Path, newline: str) -> None:
    """Regression: one row with an unquoted comma (extra fields) refused the whole file, so one bad row
    stopped a predict job; training still refuses it, naming the line."""
    text = [
        "sku,type,title",
        "1000,Tops,a",
        "1001,Bags,extra, field",
        '1002,Tops,"two',
        'lines"',
        "1003,Bags,",
    ]
    path = tmp_path / "c.csv"
    path.write_bytes(newline.join([*text, ""]).encode())
    catalog = read_generic(
        path, id_column="sku", category_column="type", text_column="title", labels=False, bad_rows="report"
    )
    assert list(zip(catalog.lines, catalog.ids, catalog.frame["text"], strict=True)) == [
        (2, "1000", "a"),
        (4, "1002", "two lines"),
        (6, "1003", ""),
    ]
    assert catalog.rejected[["line", "reason", "detail"]].values.tolist() == [
        [3, "malformed-row", "4 fields, the header has 3"]
    ]
    with pytest.raises(CatalogError, match=r"1 rows have more fields than the header's 3, e.g. line 3 \(4\)"):
        read_generic(path, id_column="sku", category_column="type", labels=False)


def test_parquet_integer_ids_with_a_gap_keep_every_digit(tmp_path: Path) -> None:
    """Regression: an int64 column with an empty cell went through float64, so ids above 2**53 were
    rounded: two products became one "duplicate-id" and a third id was rewritten."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = [9007199254740993, 9007199254740992, None, 1234567890123456789]
    path = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"sku": pa.array(ids, pa.int64()), "type": ["Tops"] * 4}), path)
    catalog = read_generic(path, id_column="sku", category_column="type", labels=False, bad_rows="report")
    assert catalog.ids == ["9007199254740993", "9007199254740992", "1234567890123456789"]
    assert catalog.rejected[["line", "reason"]].values.tolist() == [[3, "blank-id"]]


def test_fractional_parquet_floats_stay_as_written(tmp_path: Path) -> None:
    path = tmp_path / "sizes.parquet"
    pd.DataFrame({"size": [38.5, 40.0, np.nan]}).to_parquet(path, index=False)
    assert [None if pd.isna(v) else v for v in read_table(path)["size"]] == ["38.5", "40.0", None]


def test_training_reads_still_refuse_blank_ids_naming_lines(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "c.csv", [{"sku": "1", "type": "Tops"}, {"sku": "", "type": "Tops"}])
    with pytest.raises(CatalogError, match=r"1 rows without id or category, e\.g\. lines \[3\]"):
        read_generic(path, id_column="sku", category_column="type", attributes=[])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_hashing_refuses_what_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    """Regression: content_hash opened a FIFO (blocks for a writer) or /dev/zero (never ends)."""
    path = tmp_path / "x.jpg"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        os.symlink("/dev/zero", path)
    else:
        path.mkdir()
    with pytest.raises(ImageLoadError, match="unreadable \\(not a regular file\\)"):
        content_hash(path)
    hashes, errors = hash_images(["7"], [path])
    assert hashes == [None] and [(e.id, e.reason) for e in errors] == [("7", "unreadable")]


def test_inspect_reports_repeated_ids_instead_of_refusing(cli, tiny: Tiny, tmp_path: Path) -> None:
    rows = tiny.rows(6)
    data = write_rows(tmp_path / "dup.csv", [*rows.to_dict("records"), rows.iloc[2].to_dict()])
    out = tmp_path / "report"
    args = ("--set", f"catalog.path={data}", "--images", tiny.images, "-q", "-o", out)
    code, _, err = cli("inspect", "-c", tiny.config, *args)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["duplicate_ids"] == 1 and report["rows"] == 6
    assert [(r["line"], r["id"], r["reason"]) for r in report["rejected_rows"]] == [
        (8, "1002", "duplicate-id")
    ]
    assert report["images"]["unreadable"] == 0
    assert pd.read_csv(out / "rejected.csv", dtype=str)["line"].tolist() == ["8"]
