"""The taxonomy evaluation report: every method's scores, accuracy per level, confusions between sibling
nodes (right parent, wrong child) and the surest wrong paths with their titles."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from taxonomist.io import atomic_write_frame
from taxonomist.metrics.taxonomy import TaxonomyReport
from taxonomist.report.plots import level_accuracy_png
from taxonomist.report.render import save_png, write_page

WORST_ERRORS = 30
SIBLING_PAIRS = 25
PATH_SEPARATOR = " › "


def write_taxonomy_report(
    truth: pd.DataFrame,
    predictions: pd.DataFrame,
    reports: Mapping[str, TaxonomyReport],
    levels: Sequence[str],
    out_dir: str | Path,
    *,
    model: str = "",
) -> Path:
    """``report.html`` plus ``predictions.csv`` (every method's rows beside the truth) into ``out_dir``.

    ``truth``: the labelled rows (levels, optionally ``brand`` and ``title``), in the order of each
    method's rows in ``predictions`` (which has a ``method`` column and ``<level>_confidence`` columns).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    levels = list(levels)
    methods = list(reports)
    best = max(methods, key=lambda m: reports[m].path_accuracy)
    rows = _beside_truth(truth, predictions, levels)
    atomic_write_frame(rows, out / "predictions.csv")
    chosen = rows[rows["method"] == best].reset_index(drop=True)
    siblings = sibling_confusions(chosen, levels)
    atomic_write_frame(siblings, out / "sibling_confusions.csv")
    plot = save_png(
        out,
        "level_accuracy.png",
        level_accuracy_png(
            levels, {m: [reports[m].per_level_accuracy[lv] for lv in levels] for m in methods}
        ),
    )
    table = pd.DataFrame(
        [
            {
                "method": m,
                "path accuracy": r.path_accuracy,
                "item accuracy": r.item_accuracy,
                "hierarchical F1": r.hierarchical_f1,
                "brand accuracy": r.brand_accuracy,
                **{f"{lv} accuracy": r.per_level_accuracy[lv] for lv in levels},
            }
            for m, r in reports.items()
        ]
    )
    return write_page(
        out / "report.html",
        "taxonomy.html",
        model=model,
        best=best,
        rows=len(truth),
        methods=table,
        plot=plot,
        siblings=siblings.head(SIBLING_PAIRS),
        errors=worst_errors(chosen, levels),
    )


def _beside_truth(truth: pd.DataFrame, predictions: pd.DataFrame, levels: list[str]) -> pd.DataFrame:
    parts = []
    for method, part in predictions.groupby("method", sort=False):
        part = part.reset_index(drop=True)
        frame = pd.DataFrame(index=part.index)
        frame["method"] = method
        if "title" in truth.columns or "title" in part.columns:
            frame["title"] = (truth["title"] if "title" in truth.columns else part["title"]).to_numpy()
        for level in levels:
            frame[f"true_{level}"] = truth[level].astype(str).to_numpy()
            frame[f"pred_{level}"] = part[level].astype(str).to_numpy()
            frame[f"{level}_confidence"] = part.get(f"{level}_confidence")
        if "brand" in truth.columns and "brand" in part.columns:
            frame["true_brand"], frame["pred_brand"] = truth["brand"].to_numpy(), part["brand"].to_numpy()
        frame["path_correct"] = (
            frame[[f"true_{lv}" for lv in levels]].to_numpy()
            == frame[[f"pred_{lv}" for lv in levels]].to_numpy()
        ).all(axis=1)
        parts.append(frame)
    return pd.concat(parts, ignore_index=True)


def sibling_confusions(rows: pd.DataFrame, levels: list[str]) -> pd.DataFrame:
    """(level, parent path, true node, predicted node, count): errors whose parent was right, so the two
    nodes are siblings, most frequent first."""
    found = []
    for k, level in enumerate(levels):
        parent_ok = pd.Series(True, index=rows.index)
        for upper in levels[:k]:
            parent_ok &= rows[f"true_{upper}"] == rows[f"pred_{upper}"]
        wrong = rows[parent_ok & (rows[f"true_{level}"] != rows[f"pred_{level}"])]
        if not len(wrong):
            continue
        parent = wrong[[f"true_{u}" for u in levels[:k]]].agg(PATH_SEPARATOR.join, axis=1) if k else "(root)"
        found.append(
            pd.DataFrame(
                {
                    "level": level,
                    "parent": parent,
                    "true": wrong[f"true_{level}"],
                    "predicted": wrong[f"pred_{level}"],
                }
            )
        )
    columns = ["level", "parent", "true", "predicted", "count"]
    if not found:
        return pd.DataFrame(columns=columns)
    pairs = pd.concat(found).groupby(columns[:-1], sort=False).size().rename("count").reset_index()
    return pairs.sort_values("count", ascending=False, kind="stable")[columns].reset_index(drop=True)


def worst_errors(rows: pd.DataFrame, levels: list[str], limit: int = WORST_ERRORS) -> list[dict[str, Any]]:
    """Wrong paths, surest first (by the deepest level's confidence), with their titles."""
    wrong = rows[~rows["path_correct"]].copy()
    deepest = f"{levels[-1]}_confidence"
    wrong["confidence"] = wrong[deepest] if deepest in wrong.columns else float("nan")
    wrong = wrong.sort_values("confidence", ascending=False, kind="stable").head(limit)
    return [
        {
            "title": r.get("title", ""),
            "true": PATH_SEPARATOR.join(str(r[f"true_{lv}"]) for lv in levels),
            "predicted": PATH_SEPARATOR.join(str(r[f"pred_{lv}"]) for lv in levels),
            "confidence": r["confidence"],
        }
        for r in wrong.to_dict("records")
    ]
