"""What a catalog engineer is about to train on: counts, gaps, imbalance, schema drift, bad and duplicate
images.

``inspect_catalog`` runs before any training, so everything here is cheap: label statistics are a few
vectorised pandas group-bys, and images are only decoded and hashed (in parallel), never resized or batched.
The report prints as rich tables and saves as JSON + CSV + PNG plots + an ``index.html`` to open in a browser.
"""

from __future__ import annotations

import html
import io
import json
import math
import multiprocessing
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from taxonomist.data.catalog import CATEGORY, ID, Catalog, describe_counts
from taxonomist.data.images import ImageLoadError, content_hash, load_image
from taxonomist.data.schema import Schema
from taxonomist.io import atomic_write_bytes

TOP_N = 15
HTML_MAX_ROWS = 500
PLOT_TOP_VALUES = 20

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


@dataclass
class InspectReport:
    """Everything ``taxonomist inspect`` found; tables are plain frames so callers can filter them further.

    ``duplicate_ids`` is always 0 for a constructed :class:`Catalog` (its constructor rejects duplicated ids);
    it is kept so the JSON has the same shape for frames checked some other way.
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
                    "conflicting": conflicting.split(";") if conflicting else [],
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
            f"[bold]{self.source or 'catalog'}[/]: {self.rows:,} rows, "
            f"{len(self.rows_per_category)} categories, {self.duplicate_ids} duplicate ids; {images}"
        )
        if self.dropped_note:
            console.print(Text(self.dropped_note, style="yellow"))

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

    # ---- files -----------------------------------------------------------------------------------------

    def save(self, out_dir: str | os.PathLike) -> Path:
        """JSON, CSVs, PNG plots and an ``index.html`` tying them together; returns the HTML's path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tables = {
            "missing.csv": self.missing,
            "class_counts.csv": self.class_counts,
            "imbalance.csv": self.imbalance,
            "unreadable.csv": self.unreadable,
            "duplicates.csv": self.duplicates,
            "out_of_schema.csv": self.out_of_schema,
        }
        for name, frame in tables.items():
            atomic_write_bytes(out / name, frame.to_csv(index=False).encode("utf-8"))

        plots: dict[str, str] = {}
        for category, name in _plot_names(list(self.rows_per_category)).items():
            atomic_write_bytes(out / name, _class_count_png(self, category))
            plots[category] = name
        heatmap = "missing_heatmap.png" if len(self.missing) else None
        if heatmap:
            atomic_write_bytes(out / heatmap, _missing_heatmap_png(self))

        data = self.to_dict()
        data["files"] = {"tables": list(tables), "class_count_plots": plots, "missing_heatmap": heatmap}
        text = json.dumps(data, indent=1, ensure_ascii=False, allow_nan=False, default=_json_default)
        atomic_write_bytes(out / "report.json", text.encode("utf-8"))
        index = out / "index.html"
        atomic_write_bytes(index, self._html(plots, heatmap).encode("utf-8"))
        return index

    def _html(self, plots: dict[str, str], heatmap: str | None) -> str:
        esc = html.escape
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>taxonomist inspect: {esc(self.source or 'catalog')}</title>",
            "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}"
            "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:2px 8px;"
            "font-size:13px}th{background:#eee}img{max-width:100%;border:1px solid #ddd;margin:.5em 0}"
            ".note{color:#666}</style></head><body>",
            f"<h1>Catalog inspection: {esc(self.source or 'catalog')}</h1>",
        ]
        summary = self.to_dict()
        images = summary["images"]
        facts = [
            ("rows", f"{self.rows:,}"),
            ("categories", str(len(self.rows_per_category))),
            ("duplicate ids", str(self.duplicate_ids)),
            ("images checked", f"{self.images_total:,}" if self.images_checked else "no"),
        ]
        if self.images_checked:
            facts += [
                ("unreadable images", f"{images['unreadable']:,}"),
                ("duplicate-image groups", f"{images['duplicate_groups']:,}"),
                ("groups with conflicting labels", f"{images['conflicting_groups']:,}"),
            ]
        parts.append("<ul>" + "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in facts) + "</ul>")
        if self.dropped_note:
            parts.append(f"<p class='note'>{esc(self.dropped_note)}</p>")
        per_category = pd.DataFrame(
            {"category": list(self.rows_per_category), "rows": list(self.rows_per_category.values())}
        )
        parts += ["<h2>Rows per category</h2>", _html_table(per_category, "")]
        parts.append("<h2>Missing labels</h2>")
        if heatmap:
            parts.append(f"<img src='{esc(heatmap)}' alt='missing rate heatmap'>")
        worst = self.missing.sort_values("missing_rate", ascending=False, kind="stable")
        parts.append(_html_table(worst, "missing.csv"))
        parts.append("<h2>Class balance</h2>")
        ranked = self.imbalance.sort_values(
            "imbalance_ratio", ascending=False, na_position="last", kind="stable"
        )
        parts.append(_html_table(ranked, "imbalance.csv"))
        for category, name in plots.items():
            parts.append(
                f"<h3>{esc(category)}</h3><img src='{esc(name)}' alt='class counts of {esc(category)}'>"
            )
        parts.append("<h2>Values outside the schema</h2>")
        parts.append(
            _html_table(self.out_of_schema, "out_of_schema.csv")
            if self.schema_given
            else "<p class='note'>no schema given</p>"
        )
        parts.append("<h2>Duplicate images</h2>")
        parts.append(
            _html_table(self.duplicates, "duplicates.csv")
            if self.images_checked
            else "<p class='note'>images not checked</p>"
        )
        parts.append("<h2>Unreadable images</h2>")
        parts.append(
            _html_table(self.unreadable, "unreadable.csv")
            if self.images_checked
            else "<p class='note'>images not checked</p>"
        )
        parts.append("<p class='note'>All numbers: <a href='report.json'>report.json</a></p></body></html>")
        return "\n".join(parts)


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
    :func:`_mp_context` for when a script needs an ``if __name__ == "__main__":`` guard.
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
        duplicate_ids=int(frame[ID].duplicated().sum()),
        duplicates=duplicates,
        unreadable=unreadable,
        images_checked=check_images,
        images_total=len(frame) if check_images else 0,
        schema_given=schema is not None,
        timings=timings,
        dropped_categories=dict(catalog.dropped_categories),
        min_rows_per_category=catalog.min_rows_per_category,
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


def _duplicates(frame: pd.DataFrame, hashes: Sequence[str | None], attributes: Sequence[str]) -> pd.DataFrame:
    h = pd.Series(list(hashes), index=frame.index, dtype=object)
    dup = h.notna() & h.duplicated(keep=False)
    if not dup.any():
        return pd.DataFrame(columns=DUPLICATE_COLUMNS)
    rows = frame.loc[dup, [ID, CATEGORY, *attributes]].assign(hash=h[dup])
    # nunique drops missing labels: one copy labelled and one unlabelled is a gap, not a conflict.
    differs = rows.groupby("hash", sort=False)[[CATEGORY, *attributes]].nunique() > 1
    names = differs.columns.to_numpy()
    conflicting = pd.Series([";".join(names[m]) for m in differs.to_numpy()], index=differs.index)
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


# ---- images (parallel) ---------------------------------------------------------------------------------


def check_image_files(
    paths: Sequence[str], *, num_workers: int = 2, progress: bool = True
) -> tuple[list[str | None], dict[int, tuple[str, str]]]:
    """Decode and hash every path: (hash per path or None, position -> (reason, detail) of failures).

    A path shared by several rows is checked once. Unreadable files get no hash, so a pile of empty or
    truncated files does not show up as one big "duplicate" group.
    """
    unique = list(dict.fromkeys(paths))
    results: dict[str, tuple[str | None, str | None, str]] = {}
    chunk = max(8, min(256, len(unique) // max(1, num_workers * 16) or 1))
    chunks = [unique[i : i + chunk] for i in range(0, len(unique), chunk)]
    if num_workers <= 1 or len(chunks) <= 1:
        with _progress(progress, len(unique)) as advance:
            for part in chunks:
                results.update(zip(part, _check_chunk(part), strict=True))
                advance(len(part))
    else:
        # Submit before the progress bar starts its refresh thread: with fork, every worker is created
        # on the first submits, and a fork taken while another thread holds a lock can deadlock.
        with ProcessPoolExecutor(num_workers, mp_context=_mp_context()) as pool:
            futures = {pool.submit(_check_chunk, part): part for part in chunks}
            with _progress(progress, len(unique)) as advance:
                for future in as_completed(futures):
                    part = futures[future]
                    results.update(zip(part, future.result(), strict=True))
                    advance(len(part))
    hashes: list[str | None] = []
    failures: dict[int, tuple[str, str]] = {}
    for i, path in enumerate(paths):
        digest, reason, detail = results[path]
        hashes.append(digest)
        if reason is not None:
            failures[i] = (reason, detail)
    return hashes, failures


def _mp_context() -> multiprocessing.context.BaseContext:
    """fork where it is safe (Linux, no other Python thread alive): instant workers, no ``__main__`` guard.

    Otherwise spawn (macOS, Windows, Jupyter kernels, a host with threads running), which needs the usual
    ``if __name__ == "__main__":`` guard in scripts.
    """
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _check_chunk(paths: Sequence[str]) -> list[tuple[str | None, str | None, str]]:
    """Worker body: (hash, None, "") for a good image, (None, reason, detail) for a bad one."""
    out: list[tuple[str | None, str | None, str]] = []
    for path in paths:
        try:
            load_image(path)
            out.append((content_hash(path), None, ""))
        except ImageLoadError as err:  # content_hash raises it too, e.g. a file deleted after decoding
            out.append((None, err.reason, err.detail))
    return out


class _RateColumn(ProgressColumn):
    """Images per second: the number that tells whether a 1M-row catalog is a coffee or a lunch."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("? img/s" if speed is None else f"{speed:,.0f} img/s", style="progress.data.speed")


class _progress:
    """Context manager yielding ``advance(n)``; a no-op without a bar so the loop code stays the same."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.bar = (
            Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                _RateColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
            )
            if enabled
            else None
        )
        self.total = total

    def __enter__(self) -> Callable[[int], None]:
        if self.bar is None:
            return lambda n: None
        self.bar.start()
        task = self.bar.add_task("checking images", total=self.total)
        return lambda n: self.bar.advance(task, n)  # type: ignore[union-attr]

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


# ---- output helpers ------------------------------------------------------------------------------------


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
        table.add_row(*(_fmt(row[key], fmt) for key, _, fmt in columns))
    console.print(table)


def _value_count(value: Any, count: Any) -> str:
    return "-" if count is None or count is pd.NA else f"{value} ({int(count):,})"


def _fmt(value: Any, fmt: str | None) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value) if fmt else str(value)


def _html_table(frame: pd.DataFrame, csv_name: str) -> str:
    if not len(frame):
        return "<p class='note'>none</p>"
    shown = frame.head(HTML_MAX_ROWS)
    body = shown.to_html(index=False, na_rep="", float_format=lambda x: f"{x:.4g}", border=0)
    if len(frame) > len(shown):
        body += (
            f"<p class='note'>first {len(shown):,} of {len(frame):,} rows; all in "
            f"<a href='{html.escape(csv_name)}'>{html.escape(csv_name)}</a></p>"
        )
    return body


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


def _plot_names(categories: Sequence[str]) -> dict[str, str]:
    """Category → file name; categories like "Women Tops & Tunics" need a filesystem-safe, unique slug."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for i, category in enumerate(categories):
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", category).strip("._") or f"category_{i}"
        base, n = slug, 2
        while slug.lower() in used:
            slug, n = f"{base}_{n}", n + 1
        used.add(slug.lower())
        names[category] = f"class_counts_{slug}.png"
    return names


def _figure(width: float, height: float) -> Any:
    """An Agg-backed figure that never touches pyplot, so no global backend is switched or leaked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _class_count_png(report: InspectReport, category: str) -> bytes:
    attrs = report.attributes_by_category.get(category, [])
    counts = report.class_counts[report.class_counts["category"] == category]
    missing = report.missing[report.missing["category"] == category].set_index("attribute")["missing_rate"]
    if not attrs:
        fig = _figure(5, 1.5)
        fig.text(0.5, 0.5, f"{category}: no attributes", ha="center", va="center")
        return _png(fig)
    ncols = min(3, len(attrs))
    nrows = math.ceil(len(attrs) / ncols)
    per_attr = {a: counts[counts["attribute"] == a].head(PLOT_TOP_VALUES) for a in attrs}
    tallest = max(max((len(v) for v in per_attr.values()), default=1), 1)
    fig = _figure(5.0 * ncols, nrows * (0.22 * tallest + 1.2))
    for i, attr in enumerate(attrs):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        part = per_attr[attr]
        total = int(counts.loc[counts["attribute"] == attr, "value"].size)
        rate = missing.get(attr, float("nan"))
        shown = f"top {len(part)} of {total}" if total > len(part) else f"{total} classes"
        rate_text = "<1%" if 0 < rate < 0.005 else f"{rate:.0%}"
        ax.set_title(f"{attr} ({shown}, {rate_text} missing)", fontsize=9)
        if not len(part):
            ax.text(0.5, 0.5, "no labels", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        labels = [v if len(v) <= 28 else v[:27] + "…" for v in part["value"].astype(str)]
        bars = ax.barh(range(len(part)), part["count"].to_numpy(), color="tab:blue")
        ax.bar_label(bars, labels=[f"{n:,}" for n in part["count"]], fontsize=6, padding=2)
        ax.margins(x=0.15)  # room for the count labels of the longest bar
        ax.set_yticks(range(len(part)), labels, fontsize=7)
        ax.set_ylim(tallest - 0.5, -0.5)  # same bar thickness in every subplot, largest on top
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"{category}: {report.rows_per_category.get(category, 0):,} rows", fontsize=11)
    fig.tight_layout()
    return _png(fig)


def _missing_heatmap_png(report: InspectReport) -> bytes:
    categories = list(report.rows_per_category)
    attributes = list(dict.fromkeys(report.missing["attribute"]))
    matrix = (
        report.missing.pivot_table(index="category", columns="attribute", values="missing_rate", dropna=False)
        .reindex(index=categories, columns=attributes)
        .to_numpy(dtype=float)
    )
    from matplotlib import colormaps

    cmap = colormaps["Reds"].with_extremes(bad="lightgrey")
    fig = _figure(max(4.0, 0.7 * len(attributes) + 3), max(2.5, 0.45 * len(categories) + 1.8))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(attributes)), attributes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(categories)), categories, fontsize=8)
    for (r, c), value in np.ndenumerate(matrix):
        if not math.isnan(value):
            colour = "white" if value > 0.6 else "black"
            ax.text(c, r, f"{value:.0%}", ha="center", va="center", fontsize=7, color=colour)
    fig.colorbar(image, ax=ax, label="missing rate (grey: does not apply)")
    ax.set_title("Missing labels per category and attribute")
    fig.tight_layout()
    return _png(fig)
