"""The Meesho Visual Taxonomy metric and the per-category / per-attribute tables reported for each seed.

The competition scores every (category, attribute) pair on its own: the harmonic mean of F1-micro and
F1-macro over the rows that carry a true label, then averages those pair scores with equal weight. Equal
weight means a rare category's attribute counts as much as a frequent one, which is why the pair table is
kept alongside the headline score.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

NO_PREDICTION = "<none>"
"""Stand-in for a null prediction: it is a class of its own, so it is always wrong and drags macro-F1."""

PAIR_COLUMNS = ["category", "attribute", "n", "f1_micro", "f1_macro", "harmonic", "accuracy"]
CATEGORY_COLUMNS = ["category", "f1_micro", "f1_macro", "harmonic", "n_rows"]
ATTRIBUTE_COLUMNS = ["attribute", "accuracy", "harmonic", "n", "n_categories"]


@dataclass(frozen=True)
class AttributeReport:
    """Everything one evaluation produces; the tables are what the seeds' results are compared on."""

    score: float
    pairs: pd.DataFrame
    per_category: pd.DataFrame
    per_attribute: pd.DataFrame
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain Python types, NaN as None, table floats rounded (the score is not)."""
        return {
            "score": _json_float(self.score, digits=None),
            "n_pairs": len(self.pairs),
            "pairs": _records(self.pairs),
            "per_category": _records(self.per_category),
            "per_attribute": _records(self.per_attribute),
            "skipped": [[c, a] for c, a in self.skipped],
        }

    def to_markdown(self, include_pairs: bool = False) -> str:
        """A results section to paste into a report; no ``tabulate`` dependency."""
        lines = [
            f"**Score: {_fmt(self.score)}** (mean harmonic F1 over {len(self.pairs)} (category, attribute) "
            f"pairs; {len(self.skipped)} skipped without labels)",
            "",
            "### Per category",
            "",
            _markdown_table(self.per_category),
            "",
            "### Per attribute",
            "",
            _markdown_table(self.per_attribute),
        ]
        if include_pairs:
            lines += ["", "### Per (category, attribute)", "", _markdown_table(self.pairs)]
        return "\n".join(lines) + "\n"


def attribute_score(
    y_true: pd.DataFrame,
    y_pred: pd.DataFrame,
    attributes_by_category: Mapping[str, Sequence[str]] | Any,
) -> AttributeReport:
    """Score predictions against labels, both in the wide named layout (``id``, ``category``, attributes).

    ``attributes_by_category`` maps category -> attribute names (a ``Schema`` or its ``categories`` dict
    also works). Rows are matched on ``id``; the category comes from ``y_true``. Labeled rows of
    categories absent from the mapping are not scored. A pair whose category has no labeled row for the
    attribute is skipped and listed in ``skipped``; the score is NaN when every pair is skipped.
    """

    pair_rows: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    for category, attribute, rows, t, p in scored_pairs(y_true, y_pred, attributes_by_category):
        if rows is None:
            skipped.append((category, attribute))
            continue
        micro = float(f1_score(t, p, average="micro", zero_division=0))
        macro = float(f1_score(t, p, average="macro", zero_division=0))
        pair_rows.append(
            {
                "category": category,
                "attribute": attribute,
                "n": len(t),
                "f1_micro": micro,
                "f1_macro": macro,
                "harmonic": harmonic_mean(micro, macro),
                "accuracy": float(np.mean(t == p)),
            }
        )

    pairs = pd.DataFrame(pair_rows, columns=PAIR_COLUMNS)
    score = float(pairs["harmonic"].mean()) if len(pairs) else math.nan
    return AttributeReport(
        score=score,
        pairs=pairs,
        per_category=_per_category(pairs, y_true["category"].astype(str)),
        per_attribute=_per_attribute(pairs),
        skipped=skipped,
    )


def scored_pairs(
    y_true: pd.DataFrame,
    y_pred: pd.DataFrame,
    attributes_by_category: Mapping[str, Sequence[str]] | Any,
) -> Iterator[tuple[str, str, np.ndarray | None, np.ndarray | None, np.ndarray | None]]:
    """Each (category, attribute) pair of the mapping as the metric reads it: (category, attribute, the
    mask of ``y_true``'s rows that carry a label, their labels, their predictions with
    :data:`NO_PREDICTION` for a null), or (category, attribute, None, None, None) for a pair without a
    labelled row, which the metric skips."""
    mapping = _as_mapping(attributes_by_category)
    truth, pred = _align(y_true, y_pred)
    categories = truth["category"].astype(str).to_numpy()
    for category, attributes in mapping.items():
        in_category = categories == str(category)
        for attribute in attributes:
            rows = in_category & truth[attribute].notna().to_numpy() if attribute in truth.columns else None
            if rows is None or not rows.any():
                yield str(category), str(attribute), None, None, None
                continue
            t = truth[attribute][rows].astype(str).to_numpy()
            if attribute in pred.columns:
                p_col = pred[attribute][rows]
                p = np.where(p_col.isna().to_numpy(), NO_PREDICTION, p_col.astype(str).to_numpy())
            else:
                p = np.full(len(t), NO_PREDICTION, dtype=object)
            yield str(category), str(attribute), rows, t, p


def majority_predictions(
    reference: pd.DataFrame,
    rows: pd.DataFrame,
    attributes_by_category: Mapping[str, Sequence[str]] | Any,
) -> pd.DataFrame:
    """The majority-class baseline: each row of ``rows`` gets, per attribute, the most frequent label of
    its category in ``reference`` (ties: the first value in sorted order), in the wide named layout.

    An attribute with no label in ``reference`` for that category stays empty (scored as wrong).
    """
    mapping = _as_mapping(attributes_by_category)
    categories = rows["category"].astype(str)
    out = pd.DataFrame({"id": rows["id"].to_numpy(), "category": categories.to_numpy()})
    ref_categories = reference["category"].astype(str)
    for attribute in dict.fromkeys(a for attrs in mapping.values() for a in attrs):
        majority: dict[str, str] = {}
        if attribute in reference.columns:
            labelled = reference[attribute].notna()
            counts = (
                pd.DataFrame(
                    {"c": ref_categories[labelled], "v": reference.loc[labelled, attribute].astype(str)}
                )
                .value_counts()
                .rename("n")
                .reset_index()
                .sort_values(["c", "n", "v"], ascending=[True, False, True])
            )
            majority = dict(counts.drop_duplicates("c")[["c", "v"]].itertuples(index=False, name=None))
        owners = {c for c, attrs in mapping.items() if attribute in attrs}
        guesses = [majority.get(c) if c in owners else None for c in categories]
        out[attribute] = pd.Series(guesses, index=out.index, dtype=object)
    return out


def harmonic_mean(micro: float, macro: float) -> float:
    """The competition's pair score; 0 rather than 0/0 when both F1s are 0."""
    total = micro + macro
    return 0.0 if total == 0 else 2.0 * micro * macro / total


def cross_entropy(probs: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Mean NLL per attribute over labeled rows (label -1 = missing), plus ``"mean"`` over attributes.

    Probabilities are clipped at 1e-12 so a confidently wrong prediction costs ~27.6 nats instead of inf.
    An attribute without any label gets NaN and is left out of the mean.
    """
    out: dict[str, float] = {}
    for attribute, p in probs.items():
        if attribute not in labels:
            raise ValueError(f"cross_entropy: no labels for attribute {attribute!r}")
        p = np.asarray(p, dtype=np.float64)
        y = np.asarray(labels[attribute]).astype(np.int64).reshape(-1)
        if p.ndim != 2 or p.shape[0] != y.shape[0]:
            raise ValueError(
                f"cross_entropy[{attribute!r}]: probs shape {p.shape} does not match labels shape {y.shape}"
            )
        if (y >= p.shape[1]).any() or (y < -1).any():
            raise ValueError(f"cross_entropy[{attribute!r}]: labels outside [-1, {p.shape[1] - 1}]")
        keep = y >= 0
        if not keep.any():
            out[attribute] = math.nan
            continue
        picked = p[np.flatnonzero(keep), y[keep]]
        out[attribute] = float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())
    finite = [v for v in out.values() if not math.isnan(v)]
    out["mean"] = float(np.mean(finite)) if finite else math.nan
    return out


# --------------------------------------------------------------------------------------------- helpers


def _as_mapping(obj: Any) -> Mapping[str, Sequence[str]]:
    """Accept a Schema (duck-typed on ``.categories``) so callers need not unwrap it."""
    raw = getattr(obj, "categories", obj)
    if not isinstance(raw, Mapping):
        raise TypeError("attributes_by_category must map category -> attribute names (or be a Schema)")
    return {str(c): [str(a) for a in attrs] for c, attrs in raw.items()}


def _align(y_true: pd.DataFrame, y_pred: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Labels in their own order and the prediction row for each, matched on ``id``."""
    for name, frame, needed in (("y_true", y_true, ("id", "category")), ("y_pred", y_pred, ("id",))):
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} lacks column(s) {missing}")
    true_ids = y_true["id"].astype(str)
    pred_ids = y_pred["id"].astype(str)
    for name, ids in (("y_true", true_ids), ("y_pred", pred_ids)):
        dup = ids[ids.duplicated()].unique()
        if len(dup):
            raise ValueError(f"{name} has duplicated ids: {_preview(dup)}")
    absent = true_ids[~true_ids.isin(set(pred_ids))]
    if len(absent):
        raise ValueError(f"{len(absent)} labeled id(s) have no prediction: {_preview(absent.to_numpy())}")
    truth = y_true.reset_index(drop=True)
    pred = y_pred.set_index(pred_ids.to_numpy()).reindex(true_ids.to_numpy()).reset_index(drop=True)
    return truth, pred


def _per_category(pairs: pd.DataFrame, categories: pd.Series) -> pd.DataFrame:
    if pairs.empty:
        return pd.DataFrame(columns=CATEGORY_COLUMNS)
    table = pairs.groupby("category", sort=False)[["f1_micro", "f1_macro", "harmonic"]].mean().reset_index()
    counts = categories.value_counts()
    table["n_rows"] = [int(counts.get(c, 0)) for c in table["category"]]
    return table[CATEGORY_COLUMNS]


def _per_attribute(pairs: pd.DataFrame) -> pd.DataFrame:
    """Accuracy pools rows across categories (weighted by n); harmonic averages pairs (unweighted)."""
    if pairs.empty:
        return pd.DataFrame(columns=ATTRIBUTE_COLUMNS)
    rows = []
    for attribute, group in pairs.groupby("attribute", sort=False):
        n = int(group["n"].sum())
        rows.append(
            {
                "attribute": attribute,
                "accuracy": float((group["accuracy"] * group["n"]).sum() / n),
                "harmonic": float(group["harmonic"].mean()),
                "n": n,
                "n_categories": len(group),
            }
        )
    return pd.DataFrame(rows, columns=ATTRIBUTE_COLUMNS)


def _preview(values: Sequence[Any] | np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(repr(str(v)) for v in list(values)[:limit])
    more = len(values) - limit
    return shown + (f" ... (+{more} more)" if more > 0 else "")


def _json_float(value: Any, digits: int | None = 4) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value) or math.isinf(value):
            return None
        return round(value, digits) if digits is not None else value
    return value


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _json_float(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _markdown_table(frame: pd.DataFrame) -> str:
    """GitHub pipe table; numbers right-aligned so columns of scores line up in the rendered page."""
    columns = list(frame.columns)
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in columns]
    header = "| " + " | ".join(_fmt(c) for c in columns) + " |"
    rule = "|" + "|".join("---:" if num else "---" for num in numeric) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    if not body:
        body = ["| " + " | ".join("" for _ in columns) + " |"]
    return "\n".join([header, rule, *body])
