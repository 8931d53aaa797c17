"""How sure a score is: the competition metric under resampled rows, and intervals from it.

A test part of a few thousand rows scores a model to about ±0.01 (on fashion-product-images' 3,234 test
rows the listing model's score has a bootstrap sd of 0.006), and rare values, which macro-F1 weighs as
much as common ones, move it most. So a score comes with a bootstrap interval, and two models scored on
the same rows are compared **paired**: every resample scores both on the same rows, and the interval is
that of their difference, far narrower than the two intervals side by side suggest.

Rows are resampled within each category, so every category keeps its number of rows, as the split that
made the test part kept it. Each resample is scored by the competition metric itself
(:func:`~taxonomist.metrics.attributes.attribute_score`'s pairs, their harmonic F1 and equal-weight mean),
from per-value counts, so a thousand resamples take seconds. The intervals are BCa (bias-corrected and
accelerated, as ``scipy.stats.bootstrap`` defaults to): macro-F1 on resampled rows runs high, because a
resample that misses a rare, badly predicted value averages over fewer values, and plain percentiles of
the resampled scores would carry that bias into the interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from taxonomist.metrics.attributes import scored_pairs

RESAMPLES = 1000
LEVEL = 0.95
_BLOCK = 100
"""Resamples scored at once: bounds the (resamples x rows) count matrix on large parts."""
_NORMAL = NormalDist()

Pair = tuple[np.ndarray, np.ndarray, np.ndarray, int]
"""One scored (category, attribute) pair: its labelled rows' mask, their labels' and predictions' codes
over the pair's values, and how many values there are."""


@dataclass(frozen=True)
class Interval:
    """A bootstrap interval around ``value`` (a score, or a difference of two)."""

    value: float
    low: float
    high: float
    level: float
    resamples: int
    """How many resamples gave a score (a resample without any labelled row gives none)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def span(self, signed: bool = False) -> str:
        """``low to high``, with their signs where ``signed`` (a difference)."""
        form = "+.4f" if signed else ".4f"
        return f"{self.low:{form}} to {self.high:{form}}"

    def __str__(self) -> str:
        return f"{self.value:.4f} ({self.level:.0%} CI {self.span()})"


@dataclass(frozen=True)
class BootstrapScores:
    """Each model's score on the rows as given (``scores``), on every resample of them (``samples``, the
    same resamples for every model) and with each row left out in turn (``jackknife``)."""

    scores: dict[str, float]
    samples: dict[str, np.ndarray]
    jackknife: dict[str, np.ndarray]
    level: float = LEVEL

    def interval(self, name: str) -> Interval:
        return self._interval(self.scores[name], self.samples[name], self.jackknife[name])

    def difference(self, name: str, other: str) -> Interval:
        """``name``'s score minus ``other``'s, with the paired interval of that difference."""
        return self._interval(
            self.scores[name] - self.scores[other],
            self.samples[name] - self.samples[other],
            self.jackknife[name] - self.jackknife[other],
        )

    def _interval(self, value: float, samples: np.ndarray, jackknife: np.ndarray) -> Interval:
        low, high = bca_interval(value, samples, jackknife, self.level)
        return Interval(value, low, high, self.level, int(np.isfinite(samples).sum()))


def bca_interval(
    value: float, samples: np.ndarray, jackknife: np.ndarray, level: float
) -> tuple[float, float]:
    """Efron's bias-corrected and accelerated interval: percentiles of ``samples`` moved by how far their
    median sits from ``value`` (macro-F1 on resampled rows runs high: a rare value a resample misses
    leaves the mean) and by the skew of the leave-one-out ``jackknife`` values. Without bias and skew it
    is the plain percentile interval."""
    samples = samples[np.isfinite(samples)]
    if not len(samples) or not math.isfinite(value):
        return math.nan, math.nan
    below = (np.sum(samples < value) + 0.5 * np.sum(samples == value)) / len(samples)
    edge = 0.5 / len(samples)
    z0 = _NORMAL.inv_cdf(float(np.clip(below, edge, 1 - edge)))
    spread = jackknife[np.isfinite(jackknife)]  # none: every leave-one-out set was unscorable
    spread = spread.mean() - spread if len(spread) else spread
    denominator = 6 * float(np.sum(spread**2)) ** 1.5
    accel = float(np.sum(spread**3)) / denominator if denominator > 0 else 0.0
    tail = (1 - level) / 2
    shares = []
    for z in (_NORMAL.inv_cdf(tail), _NORMAL.inv_cdf(1 - tail)):
        shares.append(_NORMAL.cdf(z0 + (z0 + z) / (1 - accel * (z0 + z))))
    low, high = np.quantile(samples, np.clip(shares, 0, 1))
    return float(low), float(high)


def bootstrap_scores(
    y_true: pd.DataFrame,
    predictions: Mapping[str, pd.DataFrame],
    attributes_by_category: Mapping[str, Sequence[str]] | Any,
    *,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> BootstrapScores:
    """The competition score of each of ``predictions`` (name → wide named frame, as
    :func:`~taxonomist.metrics.attributes.attribute_score` takes) on ``y_true``'s rows and on
    ``resamples`` resamples of them, drawn with replacement within each category (seeded)."""
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    categories = y_true["category"].astype(str).to_numpy()
    blocks = list(resample_counts(categories, resamples, seed=seed))
    ones = np.ones((1, len(categories)))
    scores, samples, jackknife = {}, {}, {}
    for name, y_pred in predictions.items():
        pairs = _encoded_pairs(y_true, y_pred, attributes_by_category)  # read once, scored on every block
        scores[name] = float(_weighted(pairs, ones)[0])
        samples[name] = np.concatenate([_weighted(pairs, w) for w in blocks])
        jackknife[name] = _jackknife(pairs, len(categories))
    return BootstrapScores(scores, samples, jackknife, level)


def resample_counts(
    categories: Sequence[str] | np.ndarray, resamples: int, *, seed: int = 0, block: int = _BLOCK
) -> Iterator[np.ndarray]:
    """How often each row is drawn in each of ``resamples`` resamples, in blocks of ``block`` resamples
    (block x rows): rows drawn with replacement within their category, as many as the category has."""
    categories = np.asarray(categories)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(categories == c) for c in dict.fromkeys(categories.tolist())]
    for start in range(0, resamples, block):
        size = min(block, resamples - start)
        counts = np.zeros((size, len(categories)), dtype=np.float32)
        for rows in groups:
            counts[:, rows] = rng.multinomial(len(rows), np.full(len(rows), 1 / len(rows)), size=size)
        yield counts


def weighted_scores(
    y_true: pd.DataFrame,
    y_pred: pd.DataFrame,
    attributes_by_category: Mapping[str, Sequence[str]] | Any,
    weights: np.ndarray,
) -> np.ndarray:
    """The competition score with each row of ``y_true`` counted ``weights[k, row]`` times, for every row
    ``k`` of ``weights`` (whole counts: a bootstrap resample; all ones: the score itself). A pair without
    a counted label is left out of that row's mean, as ``attribute_score`` skips it."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] != len(y_true):
        raise ValueError(f"weights must be (resamples, {len(y_true)} rows), got shape {weights.shape}")
    return _weighted(_encoded_pairs(y_true, y_pred, attributes_by_category), weights)


def _weighted(pairs: list[Pair], weights: np.ndarray) -> np.ndarray:
    pair_scores = [_pair_harmonic(t, p, k, weights[:, rows]) for rows, t, p, k in pairs]
    if not pair_scores:
        return np.full(len(weights), math.nan)
    stacked = np.vstack(pair_scores)
    counted = np.isfinite(stacked).sum(0)
    total = np.nansum(stacked, axis=0)
    return np.divide(total, counted, out=np.full(len(weights), math.nan), where=counted > 0)


def jackknife_scores(
    y_true: pd.DataFrame,
    y_pred: pd.DataFrame,
    attributes_by_category: Mapping[str, Sequence[str]] | Any,
) -> np.ndarray:
    """The competition score with each row of ``y_true`` left out in turn (what the interval's skew is
    measured on). A row changes only the pairs it is labelled in, and in each only the counts of its
    label and its prediction, so every leave-one-out score comes from the totals at once."""
    return _jackknife(_encoded_pairs(y_true, y_pred, attributes_by_category), len(y_true))


def _jackknife(pairs: list[Pair], n_rows: int) -> np.ndarray:
    if not pairs:
        return np.full(n_rows, math.nan)
    scored = [(rows, *_pair_leave_one_out(t, p, k)) for rows, t, p, k in pairs]
    total = sum(full for _, full, _ in scored)
    changed = np.zeros(n_rows)
    count = np.full(n_rows, float(len(scored)))
    for rows, full, left in scored:
        gone = np.isnan(left)  # the pair's only label: the pair goes
        changed[rows] += np.where(gone, full, full - left)
        count[rows] -= gone
    return np.divide(total - changed, count, out=np.full(n_rows, math.nan), where=count > 0)


def _encoded_pairs(
    y_true: pd.DataFrame, y_pred: pd.DataFrame, attributes_by_category: Mapping[str, Sequence[str]] | Any
) -> list[Pair]:
    """The pairs the metric scores, their labels and predictions as codes over each pair's values."""
    pairs = []
    for _, _, rows, t, p in scored_pairs(y_true, y_pred, attributes_by_category):
        if rows is not None:
            values, codes = np.unique(np.concatenate([t, p]), return_inverse=True)
            pairs.append((rows, codes[: len(t)], codes[len(t) :], len(values)))
    return pairs


def _pair_leave_one_out(true_code: np.ndarray, pred_code: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """One pair's harmonic F1, and that with each of its rows left out (NaN: no label left)."""
    hit = (true_code == pred_code).astype(float)
    labelled = np.bincount(true_code, minlength=k).astype(float)
    occurs = labelled + np.bincount(pred_code, minlength=k)
    hits = np.bincount(true_code, weights=hit, minlength=k)
    f1 = _f1(hits, occurs)
    n = len(true_code)
    full = float(_harmonic(hits.sum() / n, f1.sum() / np.count_nonzero(occurs)))
    same = true_code == pred_code
    # Leaving a row out takes one from its label's and its prediction's occurrences (two from one value
    # when they agree) and, where they agree, one hit.
    occ_t = occurs[true_code] - 1 - same
    new_t = _f1(hits[true_code] - hit, occ_t)
    occ_p = occurs[pred_code] - 1
    new_p = np.where(same, 0.0, _f1(hits[pred_code], occ_p))
    f1_sum = f1.sum() - f1[true_code] + new_t - np.where(same, 0.0, f1[pred_code] - new_p)
    present = np.count_nonzero(occurs) - (occ_t == 0) - np.where(same, 0, occ_p == 0)
    macro = np.divide(f1_sum, present, out=np.zeros(n), where=present > 0)
    micro = np.divide(hits.sum() - hit, n - 1, out=np.zeros(n), where=n > 1)
    left = _harmonic(micro, macro)
    return full, np.where(n > 1, left, math.nan)


def _f1(hits: np.ndarray, occurs: np.ndarray) -> np.ndarray:
    """Each value's F1 from its hits and its occurrences as a label or a prediction (0 where none)."""
    return np.divide(2 * hits, occurs, out=np.zeros(np.shape(hits)), where=occurs > 0)


def _harmonic(micro, macro):
    total = micro + macro
    return np.divide(
        2 * micro * macro, total, out=np.zeros_like(np.asarray(total, dtype=float)), where=total > 0
    )


def _pair_harmonic(true_code: np.ndarray, pred_code: np.ndarray, k: int, weights: np.ndarray) -> np.ndarray:
    """Harmonic mean of micro- and macro-F1 of one pair under each row of ``weights``; NaN where no
    label is counted. Macro-F1 averages over the values that occur as a label or a prediction in that
    resample (sklearn's default labels); micro-F1 is the accuracy, every row having one prediction."""
    eye = np.eye(k)
    labelled = weights @ eye[true_code]
    predicted = weights @ eye[pred_code]
    hits = weights @ (eye[true_code] * (true_code == pred_code)[:, None])
    occurs = labelled + predicted
    f1 = _f1(hits, occurs)
    present = (occurs > 0).sum(1)
    n = labelled.sum(1)
    macro = np.divide(f1.sum(1), present, out=np.zeros(len(weights)), where=present > 0)
    micro = np.divide(hits.sum(1), n, out=np.zeros(len(weights)), where=n > 0)
    return np.where(n > 0, _harmonic(micro, macro), math.nan)
