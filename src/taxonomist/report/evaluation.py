"""The evaluation report: scores beside a majority-class baseline, confusion matrices, reliability before
and after temperature, per-class precision/recall/F1, the most confused values and the most confident
errors with their pictures, as one self-contained ``report.html`` plus PNG and CSV files.

It reads only :class:`~taxonomist.inference.evaluate.Evaluation` data (the scored rows and the score
tables), so a heads checkpoint and a VLM get the same page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_fscore_support

from taxonomist.inference.evaluate import INPUT_VIEWS, Evaluation
from taxonomist.io import atomic_write_frame
from taxonomist.metrics import expected_calibration_error, reliability_table
from taxonomist.report.plots import confusion_png, reliability_png
from taxonomist.report.render import save_png, thumbnail_uri, unique_slugs, write_page

CONFIDENT_ERRORS = 24
CONFUSED_PAIRS = 25
PER_CLASS_ROWS = 15
REPORT_FILE = "report.html"
RELIABILITY_BINS = 15
"""Bins of the reliability diagrams and of the ECE in their legends, so the ECE is that of the points
drawn; 15 as in training's ``ece_before`` / ``ece_after``."""


def write_evaluation_report(evaluation: Evaluation, out_dir: str | Path, *, model: str = "") -> Path:
    """Write ``report.html`` and its figures/tables into ``out_dir``; returns the page's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = evaluation.rows
    scored = rows[rows["predicted"].notna()]

    scores = score_tables(evaluation)
    for name, frame in scores.items():
        atomic_write_frame(frame, out / f"scores_{name}.csv")
    per_class = per_class_scores(rows)
    atomic_write_frame(per_class, out / "per_class.csv")
    confused = confused_pairs(rows)
    atomic_write_frame(confused, out / "confused_pairs.csv")

    attributes = list(dict.fromkeys(rows["attribute"]))
    confusion = {}
    for attribute, stem in unique_slugs(attributes, "confusion").items():
        part = rows[rows["attribute"] == attribute]
        predicted = part["predicted"].fillna("(no prediction)")
        confusion[attribute] = save_png(
            out, f"{stem}.png", confusion_png(f"{attribute} ({len(part):,} labels)", part["label"], predicted)
        )
    calibration, reliability = _calibration(scored, evaluation.temperatures)
    reliability_plot = save_png(out, "reliability.png", reliability) if reliability else None

    return write_page(
        out / REPORT_FILE,
        "evaluation.html",
        evaluation=evaluation,
        model=model,
        facts=_facts(evaluation, rows),
        scores=scores,
        confusion=confusion,
        calibration=calibration,
        reliability=reliability_plot,
        per_class={a: g.head(PER_CLASS_ROWS) for a, g in per_class.groupby("attribute", sort=False)},
        per_class_rows=PER_CLASS_ROWS,
        confused=confused.head(CONFUSED_PAIRS),
        errors=confident_errors(rows),
        has_title="title" in rows.columns,
    )


def score_tables(evaluation: Evaluation) -> dict[str, pd.DataFrame]:
    """The model's per-category, per-attribute and per-pair scores beside the majority baseline's."""
    report, baseline = evaluation.report, evaluation.baseline
    tables = {
        "category": (report.per_category, ["category"], ["harmonic", "f1_micro", "f1_macro"]),
        "attribute": (report.per_attribute, ["attribute"], ["accuracy", "harmonic"]),
        "pair": (report.pairs, ["category", "attribute"], ["accuracy", "harmonic"]),
    }
    out = {}
    base_tables = (
        {"category": baseline.per_category, "attribute": baseline.per_attribute, "pair": baseline.pairs}
        if baseline is not None
        else {}
    )
    for name, (frame, keys, metrics) in tables.items():
        table = frame.copy()
        if name in base_tables:
            base = base_tables[name][[*keys, *metrics[:2]]].rename(
                columns={m: f"baseline_{m}" for m in metrics}
            )
            table = table.merge(base, on=keys, how="left")
            table["gain"] = table[metrics[0]] - table[f"baseline_{metrics[0]}"]
        out[name] = table
    return out


def per_class_scores(rows: pd.DataFrame) -> pd.DataFrame:
    """Precision, recall, F1 and support of every labelled value, per attribute, most frequent first."""
    parts = []
    for attribute, part in rows.groupby("attribute", sort=False):
        labels = part["label"].astype(str)
        predicted = part["predicted"].fillna("").astype(str)
        values = labels.value_counts().index.tolist()
        p, r, f, n = precision_recall_fscore_support(labels, predicted, labels=values, zero_division=0)
        parts.append(
            pd.DataFrame(
                {"attribute": attribute, "value": values, "precision": p, "recall": r, "f1": f, "support": n}
            )
        )
    columns = ["attribute", "value", "precision", "recall", "f1", "support"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def confused_pairs(rows: pd.DataFrame) -> pd.DataFrame:
    """(attribute, label, predicted) of the errors, most frequent first, with the share of that label's
    rows that went to that wrong value."""
    # astype(bool): an empty frame's object column would otherwise index columns, not rows.
    wrong = rows[~rows["correct"].astype(bool)].assign(
        predicted=lambda f: f["predicted"].fillna("(no prediction)")
    )
    columns = ["attribute", "label", "predicted", "count", "share_of_label"]
    if not len(wrong):
        return pd.DataFrame(columns=columns)
    pairs = wrong.groupby(["attribute", "label", "predicted"]).size().rename("count").reset_index()
    support = rows.groupby(["attribute", "label"]).size().rename("support").reset_index()
    pairs = pairs.merge(support, on=["attribute", "label"])
    pairs["share_of_label"] = pairs["count"] / pairs["support"]
    pairs = pairs.sort_values(["count", "share_of_label", "attribute"], ascending=[False, False, True])
    return pairs[columns].reset_index(drop=True)


def confident_errors(rows: pd.DataFrame, limit: int = CONFIDENT_ERRORS) -> list[dict[str, Any]]:
    """The wrong predictions the model was surest of, each with a thumbnail of its image when readable."""
    wrong = rows[~rows["correct"].astype(bool) & rows["predicted"].notna()]
    wrong = wrong.sort_values(["confidence", "id"], ascending=[False, True]).head(limit)
    out = []
    for row in wrong.to_dict("records"):
        row["thumbnail"] = thumbnail_uri(row["path"]) if row.get("path") else None
        out.append(row)
    return out


def _calibration(scored: pd.DataFrame, temperatures: dict[str, float]) -> tuple[pd.DataFrame, bytes | None]:
    """ECE per attribute (and over all) before and after temperature, and the reliability diagrams."""
    variants = (
        {"before temperature": "confidence_before", "after temperature": "confidence"}
        if temperatures
        else {"model confidence": "confidence"}
    )
    groups = [("all attributes", scored), *scored.groupby("attribute", sort=False)]
    curves: dict[str, dict[str, pd.DataFrame]] = {}
    eces: dict[str, dict[str, float]] = {}
    table = []
    for name, part in groups:
        part = part[part["confidence"].notna()]
        if not len(part):
            continue
        correct = part["correct"].to_numpy(dtype=float)
        curves[str(name)], eces[str(name)] = {}, {}
        row: dict[str, Any] = {"attribute": str(name), "n": len(part), "accuracy": float(correct.mean())}
        if temperatures and name in temperatures:
            row["temperature"] = temperatures[str(name)]
        for variant, column in variants.items():
            confidence = np.clip(part[column].to_numpy(dtype=float), 0, 1)
            curves[str(name)][variant] = reliability_table(confidence, correct, RELIABILITY_BINS)
            eces[str(name)][variant] = expected_calibration_error(confidence, correct, RELIABILITY_BINS)
            row[f"ECE {variant}"] = eces[str(name)][variant]
            row[f"mean confidence {variant}"] = float(confidence.mean())
        table.append(row)
    if not curves:
        return pd.DataFrame(), None
    return pd.DataFrame(table), reliability_png(curves, eces)


def _facts(evaluation: Evaluation, rows: pd.DataFrame) -> list[tuple[str, str]]:
    report, baseline = evaluation.report, evaluation.baseline
    facts = [
        ("score (mean harmonic F1)", f"{report.score:.4f}"),
        *([(f"{i.level:.0%} interval (bootstrap)", i.span())] if (i := evaluation.interval) else []),
        ("majority baseline", "–" if baseline is None else f"{baseline.score:.4f}"),
        ("split", evaluation.split),
        ("items", f"{rows['id'].nunique():,}"),
        ("labels scored", f"{len(rows):,}"),
        ("wrong labels", f"{int((~rows['correct']).sum()):,}"),
    ]
    if evaluation.valid_fraction is not None:
        facts.append(("valid outputs", f"{evaluation.valid_fraction:.1%}"))
    for view, r in evaluation.inputs.items():
        gain = evaluation.input_gains.get(view)
        paired = "" if gain is None else f" (fused {gain.value:+.4f}, interval {gain.span(signed=True)})"
        facts.append((INPUT_VIEWS[view], f"{r.score:.4f}{paired}"))
    return facts
