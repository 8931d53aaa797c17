"""Taxonomy metrics: item accuracy (IndoML's headline), path and per-level accuracy, macro-F1, hF1.

Levels compare as exact labels; brands compare case-folded (:func:`normalize_brand`), since "FabHomeDecor"
and "Fabhomedecor" are one brand. Item accuracy is computed on rows whose truth carries a brand: an empty
brand in scraped data usually means "not recorded", not "unbranded".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from taxonomist.data.taxonomy import normalize_brand


def hierarchical_f1(true: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> float:
    """Kiritchenko et al.'s hF: micro precision/recall over each path's set of ancestor nodes.

    A prediction right down to the group but wrong on the module earns partial credit, unlike path
    accuracy; nodes are prefixes, so the same label under another parent is not a match.
    """
    overlap = n_pred = n_true = 0
    for t, p in zip(true, pred, strict=True):
        t_nodes = {tuple(t[: k + 1]) for k in range(len(t))}
        p_nodes = {tuple(p[: k + 1]) for k in range(len(p))}
        overlap += len(t_nodes & p_nodes)
        n_pred += len(p_nodes)
        n_true += len(t_nodes)
    if overlap == 0:
        return 0.0
    precision, recall = overlap / n_pred, overlap / n_true
    return 2 * precision * recall / (precision + recall)


@dataclass
class TaxonomyReport:
    n_rows: int
    path_accuracy: float
    """Every level right."""
    item_accuracy: float | None
    """Every level and the brand right, on rows with a true brand (None without brand predictions)."""
    per_level_accuracy: dict[str, float]
    per_level_macro_f1: dict[str, float]
    hierarchical_f1: float
    brand_accuracy: float | None = None
    """On rows with a true brand."""
    no_brand_accuracy: float | None = None
    """On rows without one: how often "no brand" was predicted."""
    n_branded: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "extra"} | self.extra

    def to_markdown(self) -> str:
        lines = ["| metric | value |", "|---|---:|", f"| rows | {self.n_rows} |"]
        for name in (
            "path_accuracy",
            "item_accuracy",
            "hierarchical_f1",
            "brand_accuracy",
            "no_brand_accuracy",
        ):
            value = getattr(self, name)
            if value is not None:
                lines.append(f"| {name} | {value:.4f} |")
        for level, acc in self.per_level_accuracy.items():
            lines.append(
                f"| {level} accuracy / macro-F1 | {acc:.4f} / {self.per_level_macro_f1[level]:.4f} |"
            )
        return "\n".join(lines)


def taxonomy_report(
    true: pd.DataFrame, pred: pd.DataFrame, levels: Sequence[str], brand: str | None = "brand"
) -> TaxonomyReport:
    """Score predicted paths (and brands) against the truth; frames align by position."""
    if len(true) != len(pred):
        raise ValueError(f"{len(true)} true rows but {len(pred)} predicted rows")
    if not len(true):  # sklearn would say "Found empty input array", naming nothing
        raise ValueError("no rows to score: the taxonomy report needs at least one labelled title")
    levels = list(levels)
    for side, frame in (("true", true), ("predicted", pred)):
        # The title readers give every kept row all its levels; a missing one failed in sklearn's sort.
        missing = frame[levels].isna().to_numpy()
        if missing.any():
            row, k = np.argwhere(missing)[0]
            raise ValueError(
                f"{side} level {levels[k]!r} is missing in row {row} ({int(missing.any(axis=1).sum())} of "
                f"{len(frame)} rows miss a level): every scored row needs a label at every level"
            )
    t_levels = true[levels].astype(str).to_numpy()
    p_levels = pred[levels].astype(str).to_numpy()
    level_ok = t_levels == p_levels
    path_ok = level_ok.all(axis=1)
    per_level = {lv: float(level_ok[:, k].mean()) for k, lv in enumerate(levels)}
    macro = {
        lv: float(f1_score(t_levels[:, k], p_levels[:, k], average="macro", zero_division=0))
        for k, lv in enumerate(levels)
    }
    hf1 = hierarchical_f1(t_levels.tolist(), p_levels.tolist())
    item = brand_acc = no_brand_acc = None
    n_branded = 0
    if brand and brand in true.columns and brand in pred.columns:
        t_brand = true[brand].map(normalize_brand).to_numpy()
        p_brand = pred[brand].map(normalize_brand).to_numpy()
        branded = t_brand != ""
        n_branded = int(branded.sum())
        brand_ok = t_brand == p_brand
        if n_branded:
            item = float((path_ok & brand_ok)[branded].mean())
            brand_acc = float(brand_ok[branded].mean())
        if (~branded).any():
            no_brand_acc = float(brand_ok[~branded].mean())
    return TaxonomyReport(
        n_rows=len(true),
        path_accuracy=float(path_ok.mean()) if len(true) else 0.0,
        item_accuracy=item,
        per_level_accuracy=per_level,
        per_level_macro_f1=macro,
        hierarchical_f1=hf1,
        brand_accuracy=brand_acc,
        no_brand_accuracy=no_brand_acc,
        n_branded=n_branded,
    )


def invalid_paths(
    pred: pd.DataFrame,
    levels: Sequence[str],
    titles: Sequence[str],
    is_valid: Callable[[str, tuple[str, ...]], bool],
) -> int:
    """How many predicted paths are not valid for their title (must be zero for every method):
    ``is_valid`` accepts the tree's paths and whatever else the model may rightly output."""
    rows = pred[list(levels)].itertuples(index=False, name=None)
    return int(sum(not is_valid(t, tuple(p)) for t, p in zip(titles, rows, strict=True)))
