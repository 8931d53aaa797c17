"""What a catalog engineer is about to train on: counts, gaps, imbalance, schema drift, bad and duplicate
images.

``inspect_catalog`` runs before any training, so everything here is cheap: label statistics are a few
vectorised pandas group-bys, and images are only decoded and hashed (in parallel, :mod:`.images`), never
resized or batched. The statistics are plain frames (:class:`InspectReport`); they print as rich tables and
save as JSON + CSV + PNG plots + a self-contained ``index.html`` rendered from the shared report template.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from taxonomist.data.catalog import CATEGORY, ID, REJECTED_COLUMNS, TEXT, Catalog, describe_counts
from taxonomist.data.schema import Schema
from taxonomist.io import atomic_write_frame, atomic_write_text
from taxonomist.report.images import check_image_files
from taxonomist.report.plots import class_counts_png, missing_heatmap_png
from taxonomist.report.render import save_png, unique_slugs, write_page

TOP_N = 15

MISSING_COLUMNS = ["category", "attribute", "rows", "missing", "missing_rate"]
CLASS_COUNT_COLUMNS = ["category", "attribute", "value", "count", "share"]
IMBALANCE_COLUMNS = [
    "category",
    "attribute",
    "labelled",
    "classes",
    "largest_value",
    "largest",
    "smallest_value",
    "smallest",
    "imbalance_ratio",
    "normalised_entropy",
]
OUT_OF_SCHEMA_COLUMNS = ["category", "attribute", "value", "count", "reason"]
DUPLICATE_COLUMNS = ["group", "hash", "id", "category", "group_size", "label_conflict", "conflicting"]
UNREADABLE_COLUMNS = ["id", "category", "path", "reason", "detail"]
TEXT_COLUMNS = [
    "category",
    "rows",
    "with_text",
    "text_share",
    "median_words",
    "p90_words",
    "repeated_rows",
    "repeated_conflicting",
]
TEXT_NAMES_COLUMNS = [
    "category",
    "attribute",
    "labelled",
    "names_one",
    "names_one_share",
    "agrees",
    "agree_rate",
]
TEXT_CONFLICT_COLUMNS = [ID, "category", "attribute", "label", "text_names", "text"]


@dataclass
class InspectReport:
    """Everything ``taxonomist inspect`` found; tables are plain frames so callers can filter them further.

    ``duplicate_ids`` counts the rows repeating an earlier row's id; such rows, and rows with a blank id or
    category, are listed in ``rejected`` (line, id, category, reason, detail) when the catalog was read
    with ``bad_rows="report"``.
    ``normalised_entropy`` is entropy / log(classes): 1 for perfectly balanced, towards 0 for one dominant
    class, NaN (null in JSON) with fewer than two classes, where balance means nothing.
    """

    source: str
    rows: int
    rows_per_category: dict[str, int]
    attributes_by_category: dict[str, list[str]]
    missing: pd.DataFrame
    class_counts: pd.DataFrame
    imbalance: pd.DataFrame
    out_of_schema: pd.DataFrame
    duplicate_ids: int
    duplicates: pd.DataFrame
    unreadable: pd.DataFrame
    images_checked: bool
    images_total: int = 0
    schema_given: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    dropped_categories: dict[str, int] = field(default_factory=dict)
    """Rows per category left out before inspection (fewer than ``min_rows_per_category``)."""
    min_rows_per_category: int = 0
    rejected: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=REJECTED_COLUMNS))
    text: pd.DataFrame | None = None
    """Listing text (``catalog.text_columns``) per category: rows with text, words per text, texts
    repeated within the category and how many of those repeats carry different labels; None without text."""
    text_names: pd.DataFrame | None = None
    """Per (category, attribute), among labelled rows with text: how many texts name exactly one of the
    attribute's values (whole words, case-folded, the longest match kept) and how often that value is
    the label: how much a title can tell each attribute. None without text."""
    text_conflicts: pd.DataFrame | None = None
    """The label cells behind ``text_names``' disagreements: rows whose text names exactly one value of
    the attribute, another than the label (id, category, attribute, label, the named value, the text).
    A review queue, not a list of errors: a catalogue may file articles by its own conventions (sandals
    under Flats or Heels), and its models learn those from these rows too. None without text."""

    # ---- derived figures -------------------------------------------------------------------------------

    @property
    def dropped_note(self) -> str | None:
        """Which categories the catalog's minimum-rows filter left out, and why; None when none were."""
        if not self.dropped_categories:
            return None
        n = len(self.dropped_categories)
        return (
            f"left out {n} {'category' if n == 1 else 'categories'} with fewer than "
            f"catalog.min_rows_per_category={self.min_rows_per_category} rows: "
            f"{describe_counts(self.dropped_categories)}"
        )

    @property
    def rejected_note(self) -> str | None:
        """How many rows the reader set aside and why (``rejected.csv``); None when none were."""
        if not len(self.rejected):
            return None
        reasons = describe_counts(self.rejected["reason"].value_counts().to_dict())
        return f"{len(self.rejected)} rows set aside ({reasons}): rejected.csv"

    @property
    def duplicate_groups(self) -> int:
        return int(self.duplicates["group"].nunique()) if len(self.duplicates) else 0

    @property
    def conflicting_groups(self) -> int:
        """Duplicate-image groups whose members carry different labels: the same picture, two answers."""
        if not len(self.duplicates):
            return 0
        return int(self.duplicates.loc[self.duplicates["label_conflict"], "group"].nunique())

    @property
    def redundant_images(self) -> int:
        """Rows beyond the first of each duplicate group: what deduplication would remove."""
        return len(self.duplicates) - self.duplicate_groups

    def duplicate_group_list(self) -> list[dict[str, Any]]:
        groups = []
        for group, rows in self.duplicates.groupby("group", sort=True):
            conflicting = str(rows["conflicting"].iloc[0])
            groups.append(
                {
                    "group": int(group),
                    "hash": str(rows["hash"].iloc[0]),
                    "ids": [str(i) for i in rows["id"]],
                    "categories": sorted({str(c) for c in rows["category"]}),
                    "label_conflict": bool(rows["label_conflict"].iloc[0]),
                    "conflicting": _split_names(conflicting),
                }
            )
        return groups

    def unreadable_by_reason(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.unreadable["reason"].value_counts().items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rows": self.rows,
            "categories": len(self.rows_per_category),
            "rows_per_category": dict(self.rows_per_category),
            "attributes_by_category": {c: list(a) for c, a in self.attributes_by_category.items()},
            "duplicate_ids": self.duplicate_ids,
            "rejected_rows": _records(self.rejected),
            "dropped_categories": dict(self.dropped_categories),
            "min_rows_per_category": self.min_rows_per_category,
            "schema_given": self.schema_given,
            "images": {
                "checked": self.images_checked,
                "total": self.images_total,
                "unreadable": len(self.unreadable),
                "unreadable_by_reason": self.unreadable_by_reason(),
                "duplicate_groups": self.duplicate_groups,
                "duplicate_rows": len(self.duplicates),
                "redundant_images": self.redundant_images,
                "conflicting_groups": self.conflicting_groups,
            },
            "missing": _records(self.missing),
            "class_counts": _records(self.class_counts),
            "imbalance": _records(self.imbalance),
            "out_of_schema": _records(self.out_of_schema),
            "duplicate_groups": self.duplicate_group_list(),
            "unreadable": _records(self.unreadable),
            "text": None if self.text is None else _records(self.text),
            "text_names": None if self.text_names is None else _records(self.text_names),
            "text_conflicts": None if self.text_conflicts is None else len(self.text_conflicts),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }

    # ---- terminal --------------------------------------------------------------------------------------

    def print(self, console: Console | None = None, *, top: int = TOP_N) -> None:
        """Rich tables, each cut to its ``top`` worst rows with a count of the rest."""
        console = console or Console()
        images = (
            f"{self.images_total:,} images checked: {len(self.unreadable):,} unreadable, "
            f"{self.duplicate_groups:,} duplicate groups "
            f"({self.conflicting_groups:,} with conflicting labels)"
            if self.images_checked
            else "images not checked"
        )
        console.print(
            f"[bold]{escape(str(self.source or 'catalog'))}[/]: {self.rows:,} rows, "
            f"{len(self.rows_per_category)} categories, {self.duplicate_ids} duplicate ids; {images}"
        )
        if self.dropped_note:
            console.print(Text(self.dropped_note, style="yellow"))
        if self.rejected_note:
            console.print(Text(self.rejected_note, style="yellow"))

        per_category = pd.DataFrame(
            {
                "category": list(self.rows_per_category),
                "rows": list(self.rows_per_category.values()),
                "attrs": [len(self.attributes_by_category.get(c, [])) for c in self.rows_per_category],
            }
        ).sort_values("rows", ascending=False, kind="stable")
        per_category["share"] = per_category["rows"] / max(self.rows, 1)
        _print_table(
            console,
            "Rows per category",
            per_category,
            [
                ("category", "category", None),
                ("rows", "rows", "{:,}"),
                ("share", "share", "{:.1%}"),
                ("attrs", "attributes", "{:,}"),
            ],
            top,
        )
        worst = self.missing.sort_values(["missing_rate", "rows"], ascending=[False, False], kind="stable")
        _print_table(
            console,
            "Worst missing rates",
            worst,
            [
                ("category", "category", None),
                ("attribute", "attribute", None),
                ("missing", "missing", "{:,}"),
                ("rows", "of", "{:,}"),
                ("missing_rate", "rate", "{:.1%}"),
            ],
            top,
        )
        ranked = self.imbalance.sort_values(
            "imbalance_ratio", ascending=False, na_position="last", kind="stable"
        ).head(top * 2)
        ranked = ranked.assign(
            top_class=[
                _value_count(v, n) for v, n in zip(ranked["largest_value"], ranked["largest"], strict=True)
            ],
            rare_class=[
                _value_count(v, n) for v, n in zip(ranked["smallest_value"], ranked["smallest"], strict=True)
            ],
        )
        _print_table(
            console,
            "Most imbalanced (largest / smallest class count)",
            ranked,
            [
                ("category", "category", None),
                ("attribute", "attribute", None),
                ("classes", "classes", "{:,}"),
                ("top_class", "largest", None),
                ("rare_class", "smallest", None),
                ("imbalance_ratio", "ratio", "{:,.1f}"),
                ("normalised_entropy", "entropy", "{:.2f}"),
            ],
            top,
            total=len(self.imbalance),
        )
        if self.schema_given:
            _print_table(
                console,
                "Values outside the schema",
                self.out_of_schema.sort_values("count", ascending=False, kind="stable"),
                [
                    ("category", "category", None),
                    ("attribute", "attribute", None),
                    ("value", "value", None),
                    ("count", "rows", "{:,}"),
                    ("reason", "reason", None),
                ],
                top,
                empty="none, every label is allowed by the schema",
            )
        if self.text is not None:
            self._print_text(console, top)
        if not self.images_checked:
            return
        groups = pd.DataFrame(
            self.duplicate_group_list(), columns=["group", "ids", "categories", "conflicting"]
        )
        groups["size"] = groups["ids"].map(len)
        groups["ids"] = groups["ids"].map(lambda ids: ", ".join(ids[:6]) + (" …" if len(ids) > 6 else ""))
        groups["categories"] = groups["categories"].map(", ".join)
        groups["conflicting"] = groups["conflicting"].map(", ".join)
        _print_table(
            console,
            "Duplicate images (identical bytes)",
            groups,
            [
                ("group", "group", "{:,}"),
                ("size", "rows", "{:,}"),
                ("ids", "ids", None),
                ("categories", "categories", None),
                ("conflicting", "labels differ on", None),
            ],
            top,
            empty="none",
        )
        _print_table(
            console,
            "Unreadable images",
            self.unreadable,
            [
                ("id", "id", None),
                ("reason", "reason", None),
                ("path", "path", None),
                ("detail", "detail", None),
            ],
            top,
            empty="none",
        )

    def _print_text(self, console: Console, top: int) -> None:
        _print_table(
            console,
            "Listing text",
            self.text,
            [
                ("category", "category", None),
                ("with_text", "with text", "{:,}"),
                ("text_share", "share", "{:.1%}"),
                ("median_words", "words (median)", "{:.0f}"),
                ("p90_words", "words (p90)", "{:.0f}"),
                ("repeated_rows", "repeated", "{:,}"),
                ("repeated_conflicting", "repeated, labels differ", "{:,}"),
            ],
            top,
        )
        _print_table(
            console,
            "What the text names (least first)",
            self.text_names.sort_values("names_one_share", kind="stable"),
            [
                ("category", "category", None),
                ("attribute", "attribute", None),
                ("labelled", "labelled with text", "{:,}"),
                ("names_one_share", "names one value", "{:.1%}"),
                ("agree_rate", "that value is the label", "{:.1%}"),
            ],
            top,
        )
        console.print(
            f"{len(self.text_conflicts):,} label cells whose text names another value of the attribute "
            "(to review, not all errors): text_conflicts.csv"
        )

    # ---- files -----------------------------------------------------------------------------------------

    def save(self, out_dir: str | os.PathLike) -> Path:
        """JSON, CSVs, PNG plots and a self-contained ``index.html`` (plots inlined); returns its path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tables = {
            "missing.csv": self.missing,
            "class_counts.csv": self.class_counts,
            "imbalance.csv": self.imbalance,
            "unreadable.csv": self.unreadable,
            "rejected.csv": self.rejected,
            "duplicates.csv": self.duplicates,
            "out_of_schema.csv": self.out_of_schema,
        }
        if self.text is not None:
            tables |= {
                "text.csv": self.text,
                "text_names.csv": self.text_names,
                "text_conflicts.csv": self.text_conflicts,
            }
        for name, frame in tables.items():
            atomic_write_frame(frame, out / name)

        plots: dict[str, dict[str, str]] = {}
        for category, stem in unique_slugs(list(self.rows_per_category), "class_counts").items():
            counts = self.class_counts[self.class_counts["category"] == category]
            rates = self.missing[self.missing["category"] == category].set_index("attribute")["missing_rate"]
            data = class_counts_png(
                category,
                self.attributes_by_category.get(category, []),
                counts,
                rates.to_dict(),
                self.rows_per_category.get(category, 0),
            )
            plots[category] = save_png(out, f"{stem}.png", data)
        heatmap = (
            save_png(
                out, "missing_heatmap.png", missing_heatmap_png(self.missing, list(self.rows_per_category))
            )
            if len(self.missing)
            else None
        )

        data = self.to_dict()
        data["files"] = {
            "tables": list(tables),
            "class_count_plots": {c: p["file"] for c, p in plots.items()},
            "missing_heatmap": heatmap["file"] if heatmap else None,
        }
        text = json.dumps(data, indent=1, ensure_ascii=False, allow_nan=False, default=_json_default)
        atomic_write_text(out / "report.json", text)
        per_category = pd.DataFrame(
            {"category": list(self.rows_per_category), "rows": list(self.rows_per_category.values())}
        )
        return write_page(
            out / "index.html",
            "inspect.html",
            # The catalog's folder and file name: enough to recognise it, short enough for a heading.
            name="/".join(Path(self.source).parts[-2:]) if self.source else "catalog",
            report=self,
            summary=data,
            per_category=per_category,
            missing=self.missing.sort_values("missing_rate", ascending=False, kind="stable"),
            imbalance=self.imbalance.sort_values(
                "imbalance_ratio", ascending=False, na_position="last", kind="stable"
            ),
            plots=plots,
            heatmap=heatmap,
        )


# ---- entry point ---------------------------------------------------------------------------------------


def inspect_catalog(
    catalog: Catalog,
    *,
    schema: Schema | None = None,
    check_images: bool = True,
    num_workers: int = 2,
    progress: bool = True,
) -> InspectReport:
    """Label statistics always; image decode + content hash per row when ``check_images``.

    ``num_workers`` > 1 decodes in that many worker processes (small JPEG decoding is Python-overhead
    bound, so threads would serialise on the GIL); 0 or 1 decodes in this process. See
    ``taxonomist.report.images`` says when a script needs an ``if __name__ == "__main__":`` guard.
    """
    t0 = time.perf_counter()
    frame = catalog.frame
    by_category = _attributes_by_category(catalog)
    rows_per_category = {c: int(n) for c, n in frame[CATEGORY].astype(str).value_counts(sort=False).items()}
    rows_per_category = {c: rows_per_category.get(c, 0) for c in by_category} | {
        c: n for c, n in rows_per_category.items() if c not in by_category
    }
    pairs = pd.DataFrame(
        [(c, a, i, j) for i, (c, attrs) in enumerate(by_category.items()) for j, a in enumerate(attrs)],
        columns=["category", "attribute", "_ci", "_ai"],
    )
    missing = _missing(frame, pairs)
    counts = _class_counts(frame, by_category, pairs)
    imbalance = _imbalance(counts, missing)
    out_of_schema = (
        _out_of_schema(counts, schema) if schema is not None else pd.DataFrame(columns=OUT_OF_SCHEMA_COLUMNS)
    )
    timings = {"labels_s": time.perf_counter() - t0}

    duplicates = pd.DataFrame(columns=DUPLICATE_COLUMNS)
    unreadable = pd.DataFrame(columns=UNREADABLE_COLUMNS)
    if check_images:
        t1 = time.perf_counter()
        paths = [str(p) for p in catalog.image_paths()]
        hashes, failures = check_image_files(paths, num_workers=num_workers, progress=progress)
        unreadable = pd.DataFrame(
            [
                (frame[ID].iat[i], frame[CATEGORY].iat[i], paths[i], reason, detail)
                for i, (reason, detail) in sorted(failures.items())
            ],
            columns=UNREADABLE_COLUMNS,
        )
        duplicates = _duplicates(frame, hashes, catalog.attributes)
        timings["images_s"] = time.perf_counter() - t1
    text = text_names = text_conflicts = None
    if TEXT in frame.columns:
        texts = frame[TEXT].fillna("").astype(str)
        text = _listing_text(frame, texts, catalog.attributes)
        text_names, text_conflicts = _text_names(frame, texts, counts)
    timings["total_s"] = time.perf_counter() - t0
    return InspectReport(
        source=catalog.source,
        rows=len(frame),
        rows_per_category=rows_per_category,
        attributes_by_category=by_category,
        missing=missing,
        class_counts=counts,
        imbalance=imbalance,
        out_of_schema=out_of_schema,
        duplicate_ids=int(frame[ID].duplicated().sum())
        + int((catalog.rejected["reason"] == "duplicate-id").sum()),
        duplicates=duplicates,
        unreadable=unreadable,
        images_checked=check_images,
        images_total=len(frame) if check_images else 0,
        schema_given=schema is not None,
        timings=timings,
        dropped_categories=dict(catalog.dropped_categories),
        min_rows_per_category=catalog.min_rows_per_category,
        rejected=catalog.rejected.copy(),
        text=text,
        text_names=text_names,
        text_conflicts=text_conflicts,
    )


# ---- label statistics (vectorised) ---------------------------------------------------------------------


def _attributes_by_category(catalog: Catalog) -> dict[str, list[str]]:
    """The catalog's own mapping, plus any category with rows but no entry (it has no attributes)."""
    by_category = {str(c): list(a) for c, a in catalog.attributes_by_category.items()}
    for category in catalog.frame[CATEGORY].astype(str).unique():
        by_category.setdefault(category, [])
    return by_category


def _missing(frame: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    category = frame[CATEGORY].astype(str)
    rows = category.value_counts()
    attrs = [a for a in dict.fromkeys(pairs["attribute"]) if a in frame.columns]
    if attrs:
        na = frame[attrs].isna().groupby(category, sort=False).sum()
        long = na.stack().rename("missing").rename_axis(["category", "attribute"]).reset_index()
    else:
        long = pd.DataFrame(columns=["category", "attribute", "missing"])
    out = pairs.merge(long, on=["category", "attribute"], how="left")
    out["rows"] = out["category"].map(rows).fillna(0).astype(int)
    # An attribute the category lists but the frame lacks is missing everywhere, not absent from the report.
    out["missing"] = out["missing"].fillna(out["rows"]).astype(int)
    out["missing_rate"] = np.where(out["rows"] > 0, out["missing"] / out["rows"].clip(lower=1), np.nan)
    return out[MISSING_COLUMNS].reset_index(drop=True)


def _class_counts(
    frame: pd.DataFrame, by_category: dict[str, list[str]], pairs: pd.DataFrame
) -> pd.DataFrame:
    category = frame[CATEGORY].astype(str)
    parts = []
    for attr in dict.fromkeys(pairs["attribute"]):
        if attr not in frame.columns:
            continue
        owners = [c for c, attrs in by_category.items() if attr in attrs]
        mask = category.isin(owners) & frame[attr].notna()
        if not mask.any():
            continue
        sub = pd.DataFrame({"category": category[mask], "value": frame.loc[mask, attr].astype(str)})
        part = sub.groupby(["category", "value"], sort=False).size().rename("count").reset_index()
        part["attribute"] = attr
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=CLASS_COUNT_COLUMNS)
    counts = pd.concat(parts, ignore_index=True).merge(pairs, on=["category", "attribute"])
    counts["share"] = counts["count"] / counts.groupby(["category", "attribute"])["count"].transform("sum")
    counts = counts.sort_values(["_ci", "_ai", "count", "value"], ascending=[True, True, False, True])
    return counts[CLASS_COUNT_COLUMNS].reset_index(drop=True)


def _imbalance(counts: pd.DataFrame, missing: pd.DataFrame) -> pd.DataFrame:
    keys = ["category", "attribute"]
    base = missing[keys].copy()
    if not len(counts):
        for col in IMBALANCE_COLUMNS[2:]:
            base[col] = 0 if col in ("labelled", "classes") else np.nan
        return base[IMBALANCE_COLUMNS]
    c = counts.copy()  # sorted by count descending within each pair
    c["plogp"] = c["share"] * np.log(c["share"])
    g = c.groupby(keys, sort=False)
    stats = g.agg(
        labelled=("count", "sum"),
        classes=("count", "size"),
        largest_value=("value", "first"),
        largest=("count", "first"),
        smallest_value=("value", "last"),
        smallest=("count", "last"),
        plogp=("plogp", "sum"),
    ).reset_index()
    stats["imbalance_ratio"] = stats["largest"] / stats["smallest"]
    k = stats["classes"].astype(float)
    stats["normalised_entropy"] = np.where(k > 1, -stats["plogp"] / np.log(k.clip(lower=2)), np.nan)
    out = base.merge(stats, on=keys, how="left")
    for col in ("labelled", "classes"):
        out[col] = out[col].fillna(0).astype(int)
    for col in ("largest", "smallest"):
        out[col] = out[col].astype("Int64")
    return out[IMBALANCE_COLUMNS].reset_index(drop=True)


def _out_of_schema(counts: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    allowed = pd.DataFrame(
        [(c, a, str(v)) for c, attrs in schema.categories.items() for a, vals in attrs.items() for v in vals],
        columns=["category", "attribute", "value"],
    ).drop_duplicates()
    merged = counts.merge(allowed.assign(_ok=True), on=["category", "attribute", "value"], how="left")
    bad = merged[merged["_ok"].isna()].copy()
    if not len(bad):
        return pd.DataFrame(columns=OUT_OF_SCHEMA_COLUMNS)
    known_pairs = set(zip(allowed["category"], allowed["attribute"], strict=True)) | {
        (c, a) for c, attrs in schema.categories.items() for a in attrs
    }
    pair_known = [(c, a) in known_pairs for c, a in zip(bad["category"], bad["attribute"], strict=True)]
    bad["reason"] = np.where(
        ~bad["category"].isin(list(schema.categories)),
        "unknown category",
        np.where(pair_known, "unknown value", "unknown attribute"),
    )
    return bad[OUT_OF_SCHEMA_COLUMNS].reset_index(drop=True)


def _listing_text(frame: pd.DataFrame, texts: pd.Series, attributes: Sequence[str]) -> pd.DataFrame:
    has = texts != ""
    labels = [a for a in attributes if a in frame.columns]
    keyed = frame.loc[has, [CATEGORY, *labels]].assign(_text=texts[has])
    groups = keyed.groupby([CATEGORY, "_text"], sort=False)
    repeated = groups[CATEGORY].transform("size") > 1
    # nunique drops missing labels: a repeat labelled once and left blank once is a gap, not a conflict.
    differs = (
        (groups[labels].transform("nunique") > 1).any(axis=1) if labels else pd.Series(False, keyed.index)
    )
    by = pd.DataFrame(
        {
            "category": frame[CATEGORY].astype(str),
            "has": has,
            "words": texts.str.split().str.len().where(has),
            "repeated": repeated.reindex(frame.index, fill_value=False),
            "conflicting": (repeated & differs).reindex(frame.index, fill_value=False),
        }
    ).groupby("category", sort=False)
    out = by.agg(
        rows=("has", "size"),
        with_text=("has", "sum"),
        median_words=("words", "median"),
        p90_words=("words", lambda w: w.quantile(0.9)),
        repeated_rows=("repeated", "sum"),
        repeated_conflicting=("conflicting", "sum"),
    ).reset_index()
    out["text_share"] = out["with_text"] / out["rows"]
    return out[TEXT_COLUMNS]


def _text_names(
    frame: pd.DataFrame, texts: pd.Series, counts: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per category and attribute: how often a text names one value and that value is the label;
    the label cells where it is another)."""
    category = frame[CATEGORY].astype(str)
    rows, conflicts = [], []
    for (cat, attr), values in counts.groupby(["category", "attribute"], sort=False)["value"]:
        mask = (category == cat) & frame[attr].notna() & (texts != "")
        labels = frame.loc[mask, attr].astype(str).str.casefold()
        named = _named_value(texts[mask], values.tolist())
        one = named.notna()
        agrees = int((named[one] == labels[one]).sum())
        n, k = int(mask.sum()), int(one.sum())
        rows.append((cat, attr, n, k, k / n if n else np.nan, agrees, agrees / k if k else np.nan))
        spelling = {str(v).casefold(): str(v) for v in values}
        other = named.index[one & (named != labels)]
        conflicts.append(
            pd.DataFrame(
                {
                    ID: frame.loc[other, ID].astype(str),
                    "category": cat,
                    "attribute": attr,
                    "label": frame.loc[other, attr].astype(str),
                    "text_names": named[other].map(spelling),
                    "text": texts[other],
                },
                columns=TEXT_CONFLICT_COLUMNS,
            )
        )
    found = [c for c in conflicts if len(c)]
    conflict_frame = (
        pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=TEXT_CONFLICT_COLUMNS)
    )
    return pd.DataFrame(rows, columns=TEXT_NAMES_COLUMNS), conflict_frame


def _named_value(texts: pd.Series, values: Sequence[str]) -> pd.Series:
    """Each text's one named value (case-folded), NaN where it names none or several. Longer values are
    tried first, so "Navy Blue" is read as that, not as "Blue"."""
    folded = sorted({str(v).casefold() for v in values if str(v).strip()}, key=len, reverse=True)
    if not folded:
        return pd.Series(np.nan, index=texts.index, dtype=object)
    pattern = r"(?<!\w)(" + "|".join(re.escape(v) for v in folded) + r")(?!\w)"
    found = texts.str.casefold().str.findall(pattern).map(set)
    return found.map(lambda s: next(iter(s)) if len(s) == 1 else np.nan)


def _duplicates(frame: pd.DataFrame, hashes: Sequence[str | None], attributes: Sequence[str]) -> pd.DataFrame:
    h = pd.Series(list(hashes), index=frame.index, dtype=object)
    dup = h.notna() & h.duplicated(keep=False)
    if not dup.any():
        return pd.DataFrame(columns=DUPLICATE_COLUMNS)
    rows = frame.loc[dup, [ID, CATEGORY, *attributes]].assign(hash=h[dup])
    # nunique drops missing labels: one copy labelled and one unlabelled is a gap, not a conflict.
    differs = rows.groupby("hash", sort=False)[[CATEGORY, *attributes]].nunique() > 1
    names = differs.columns.to_numpy()
    conflicting = pd.Series([_join_names(names[m]) for m in differs.to_numpy()], index=differs.index)
    size = rows.groupby("hash", sort=False)[ID].transform("size")
    # Group 1 is the most actionable: groups whose labels conflict first, then the biggest.
    order = (
        pd.DataFrame({"hash": rows["hash"], "size": size, "pos": np.arange(len(rows))})
        .groupby("hash", sort=False)
        .agg(size=("size", "first"), pos=("pos", "min"))
    )
    order["conflict"] = conflicting.reindex(order.index) != ""
    order = order.sort_values(["conflict", "size", "pos"], ascending=[False, False, True])
    group = pd.Series(np.arange(1, len(order) + 1), index=order.index)
    out = pd.DataFrame(
        {
            "group": rows["hash"].map(group).to_numpy(),
            "hash": rows["hash"].to_numpy(),
            "id": rows[ID].to_numpy(),
            "category": rows[CATEGORY].to_numpy(),
            "group_size": size.to_numpy(),
            "conflicting": rows["hash"].map(conflicting).to_numpy(),
        }
    )
    out["label_conflict"] = out["conflicting"] != ""
    out = out.sort_values(["group"], kind="stable")
    return out[DUPLICATE_COLUMNS].reset_index(drop=True)


def _join_names(names: Sequence[str]) -> str:
    """``color;size``, as duplicates.csv reads; a name holding ``;`` or ``"`` is quoted by CSV rules
    (``"size;fit"``), so :func:`_split_names` gives it back whole rather than as two attributes."""
    buf = io.StringIO()
    csv.writer(buf, delimiter=";", lineterminator="").writerow(names)
    return buf.getvalue()


def _split_names(text: str) -> list[str]:
    return next(csv.reader([text], delimiter=";")) if text else []


# ---- terminal and JSON helpers ------------------------------------------------------------------


def _print_table(
    console: Console,
    title: str,
    frame: pd.DataFrame,
    columns: list[tuple[str, str, str | None]],
    top: int,
    *,
    empty: str | None = None,
    total: int | None = None,
) -> None:
    """``columns``: (frame column, header, format or None for text); numbers are right-aligned."""
    if not len(frame):
        if empty:
            console.print(f"[bold]{title}[/]: {empty}")
        return
    rest = (len(frame) if total is None else total) - top
    caption = f"… and {rest:,} more" if rest > 0 else None
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for _, header, fmt in columns:
        table.add_column(header, justify="right" if fmt else "left", overflow="fold")
    for row in frame.head(top).to_dict(orient="records"):
        table.add_row(*(Text(_fmt(row[key], fmt)) for key, _, fmt in columns))  # data, never markup
    console.print(table)


def _value_count(value: Any, count: Any) -> str:
    return "-" if count is None or count is pd.NA else f"{value} ({int(count):,})"


def _fmt(value: Any, fmt: str | None) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value) if fmt else str(value)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    clean = frame.astype(object).where(frame.notna(), None)
    return clean.to_dict(orient="records")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return None if math.isnan(obj) else float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
