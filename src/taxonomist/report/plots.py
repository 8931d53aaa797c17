"""The figures of the reports as PNG bytes, drawn on Agg figures that never touch pyplot's global state."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from taxonomist.report.render import figure, png

PLOT_TOP_VALUES = 20
CONFUSION_TOP = 12
OTHER = "(other)"


def _plain_text(draw: Callable[..., bytes]) -> Callable[..., bytes]:
    """Labels and titles are catalog data: a "$" is a price tier, never mathtext, which garbles
    "$5-$10" and raises on "$" / "$$"."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs) -> bytes:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return wrapper


@_plain_text
def class_counts_png(
    category: str,
    attributes: Sequence[str],
    counts: pd.DataFrame,
    missing_rate: Mapping[str, float],
    rows: int,
) -> bytes:
    """One horizontal bar chart per attribute of ``category``: its most frequent values and their counts.

    ``counts``: the category's rows of the class-count table (attribute, value, count), largest first.
    """
    if not attributes:
        fig = figure(5, 1.5)
        fig.text(0.5, 0.5, f"{category}: no attributes", ha="center", va="center")
        return png(fig)
    ncols = min(3, len(attributes))
    nrows = math.ceil(len(attributes) / ncols)
    per_attr = {a: counts[counts["attribute"] == a].head(PLOT_TOP_VALUES) for a in attributes}
    tallest = max(max((len(v) for v in per_attr.values()), default=1), 1)
    fig = figure(5.0 * ncols, nrows * (0.22 * tallest + 1.2))
    for i, attr in enumerate(attributes):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        part = per_attr[attr]
        total = int((counts["attribute"] == attr).sum())
        rate = missing_rate.get(attr, float("nan"))
        shown = f"top {len(part)} of {total}" if total > len(part) else f"{total} classes"
        rate_text = "no rows" if math.isnan(rate) else f"{_percent(rate)} missing"
        ax.set_title(f"{attr} ({shown}, {rate_text})", fontsize=9)
        if not len(part):
            ax.text(0.5, 0.5, "no labels", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        labels = [_short(v) for v in part["value"].astype(str)]
        bars = ax.barh(range(len(part)), part["count"].to_numpy(), color="tab:blue")
        ax.bar_label(bars, labels=[f"{n:,}" for n in part["count"]], fontsize=6, padding=2)
        ax.margins(x=0.15)  # room for the count labels of the longest bar
        ax.set_yticks(range(len(part)), labels, fontsize=7)
        ax.set_ylim(tallest - 0.5, -0.5)  # same bar thickness in every subplot, largest on top
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"{category}: {rows:,} rows", fontsize=11)
    fig.tight_layout()
    return png(fig)


@_plain_text
def missing_heatmap_png(missing: pd.DataFrame, categories: Sequence[str]) -> bytes:
    """Missing-label rate per (category, attribute); grey where the attribute does not apply."""
    attributes = list(dict.fromkeys(missing["attribute"]))
    matrix = (
        missing.pivot_table(index="category", columns="attribute", values="missing_rate", dropna=False)
        .reindex(index=list(categories), columns=attributes)
        .to_numpy(dtype=float)
    )
    from matplotlib import colormaps

    cmap = colormaps["Reds"].with_extremes(bad="lightgrey")
    fig = figure(max(4.0, 0.7 * len(attributes) + 3), max(2.5, 0.45 * len(categories) + 1.8))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(attributes)), attributes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(categories)), list(categories), fontsize=8)
    for (r, c), value in np.ndenumerate(matrix):
        if not math.isnan(value):
            colour = "white" if value > 0.6 else "black"
            ax.text(c, r, _percent(value), ha="center", va="center", fontsize=7, color=colour)
    fig.colorbar(image, ax=ax, label="missing rate (grey: does not apply)")
    ax.set_title("Missing labels per category and attribute")
    fig.tight_layout()
    return png(fig)


@_plain_text
def confusion_png(
    title: str, labels: Sequence[str], predicted: Sequence[str], top: int = CONFUSION_TOP
) -> bytes:
    """Row-normalised confusion matrix over the ``top`` most frequent true values (the rest: "(other)").

    Counts are printed in the cells; the colour is the share of the true value's rows, so rare and
    frequent classes read on the same scale.
    """
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

    truth = pd.Series(list(labels), dtype=object).astype(str)
    pred = pd.Series(list(predicted), dtype=object).astype(str)
    kept = list(truth.value_counts().index[:top])
    classes = kept + ([OTHER] if truth.nunique() > len(kept) or not pred.isin(kept).all() else [])
    truth = truth.where(truth.isin(kept), OTHER)
    pred = pred.where(pred.isin(kept), OTHER)
    counts = confusion_matrix(truth, pred, labels=classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = counts / counts.sum(axis=1, keepdims=True)
    size = max(4.5, 0.45 * len(classes) + 2.5)
    fig = figure(size + 1.0, size)
    ax = fig.add_subplot(1, 1, 1)
    display = ConfusionMatrixDisplay(np.nan_to_num(share), display_labels=[_short(c, 20) for c in classes])
    display.plot(
        ax=ax,
        include_values=False,
        cmap="Blues",
        colorbar=True,
        xticks_rotation=60,
        im_kw={"vmin": 0, "vmax": 1},
    )
    for (r, c), n in np.ndenumerate(counts):
        if n:
            colour = "white" if share[r, c] > 0.6 else "black"
            ax.text(c, r, f"{n:,}", ha="center", va="center", fontsize=7, color=colour)
    display.im_.colorbar.set_label("share of the true value's rows")
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return png(fig)


@_plain_text
def reliability_png(
    curves: Mapping[str, Mapping[str, pd.DataFrame]], eces: Mapping[str, Mapping[str, float]]
) -> bytes:
    """Reliability diagrams, one panel per attribute: accuracy against mean confidence per bin, one line
    per variant (e.g. before and after temperature), the ECE of each in the legend."""
    names = list(curves)
    ncols = min(3, len(names)) or 1
    nrows = max(1, math.ceil(len(names) / ncols))
    fig = figure(4.2 * ncols, 4.0 * nrows)
    styles = {"before temperature": ("tab:orange", "s"), "after temperature": ("tab:blue", "o")}
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect")
        for variant, table in curves[name].items():
            filled = table[table["count"] > 0]
            colour, marker = styles.get(variant, ("tab:green", "^"))
            ece = eces[name][variant]
            ax.plot(
                filled["confidence"],
                filled["accuracy"],
                marker=marker,
                markersize=4,
                color=colour,
                label=f"{variant} (ECE {ece:.3f})",
            )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return png(fig)


@_plain_text
def level_accuracy_png(levels: Sequence[str], methods: Mapping[str, Sequence[float]]) -> bytes:
    """Accuracy per taxonomy level, one bar group per level and one bar per method."""
    fig = figure(max(4.5, 1.2 * len(levels) + 2), 3.2)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(methods))
    for k, (method, values) in enumerate(methods.items()):
        x = np.arange(len(levels)) + k * width
        bars = ax.bar(x, values, width, label=method)
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=7, padding=2)
    ax.set_xticks(np.arange(len(levels)) + width * (len(methods) - 1) / 2, list(levels))
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png(fig)


def _percent(rate: float) -> str:
    """A share as a whole percent that never rounds a few rows away: 0.3% reads "<1%", not "0%", and
    99.7% reads ">99%", not "100%"."""
    if 0 < rate < 0.005:
        return "<1%"
    if 0.995 <= rate < 1:
        return ">99%"
    return f"{rate:.0%}"


def _short(text: str, limit: int = 28) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
