from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taxonomist.metrics import attribute_score
from taxonomist.metrics.bootstrap import (
    bca_interval,
    bootstrap_scores,
    jackknife_scores,
    resample_counts,
    weighted_scores,
)

SCHEMA = {"Shirts": ["color", "sleeve"], "Shoes": ["color"]}
VALUES = ["red", "blue", "green", "black", None]


@st.composite
def labelled_rows(draw) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A small catalog of two categories with gaps in labels and predictions, and values only one side
    has (what macro-F1's value set depends on)."""
    n = draw(st.integers(1, 25))
    cells = st.sampled_from(VALUES)
    ids = [f"r{i}" for i in range(n)]
    truth = pd.DataFrame(
        {
            "id": ids,
            "category": draw(st.lists(st.sampled_from(["Shirts", "Shoes", "Hats"]), min_size=n, max_size=n)),
            "color": draw(st.lists(cells, min_size=n, max_size=n)),
            "sleeve": draw(st.lists(st.sampled_from(["long", "short", None]), min_size=n, max_size=n)),
        }
    )
    pred = pd.DataFrame(
        {
            "id": ids[::-1],  # matched on id, not position
            "color": draw(st.lists(cells, min_size=n, max_size=n)),
            "sleeve": draw(
                st.lists(st.sampled_from(["long", "short", "none", None]), min_size=n, max_size=n)
            ),
        }
    )
    return truth, pred


@settings(max_examples=60, deadline=None)
@given(labelled_rows())
def test_unit_weights_give_the_metric(frames) -> None:
    truth, pred = frames
    expected = attribute_score(truth, pred, SCHEMA).score
    got = weighted_scores(truth, pred, SCHEMA, np.ones((1, len(truth))))[0]
    if np.isnan(expected):
        assert np.isnan(got)
    else:
        assert got == pytest.approx(expected, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(labelled_rows(), st.data())
def test_whole_weights_count_rows_that_many_times(frames, data) -> None:
    """A resample is the metric on the catalog with each row repeated as often as it was drawn."""
    truth, pred = frames
    counts = np.array(data.draw(st.lists(st.integers(0, 3), min_size=len(truth), max_size=len(truth))))
    repeated = truth.loc[truth.index.repeat(counts)].reset_index(drop=True)
    by_id = pred.set_index("id")
    repeated_pred = by_id.loc[repeated["id"]].reset_index(drop=True)
    repeated["id"] = repeated_pred["id"] = [f"k{k}" for k in range(len(repeated))]
    expected = attribute_score(repeated, repeated_pred, SCHEMA).score if len(repeated) else np.nan
    got = weighted_scores(truth, pred, SCHEMA, counts[None, :])[0]
    if np.isnan(expected):
        assert np.isnan(got)
    else:
        assert got == pytest.approx(expected, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(labelled_rows())
def test_jackknife_is_the_metric_without_each_row(frames) -> None:
    truth, pred = frames
    left_out = 1 - np.eye(len(truth))
    np.testing.assert_allclose(
        jackknife_scores(truth, pred, SCHEMA), weighted_scores(truth, pred, SCHEMA, left_out), atol=1e-12
    )


def test_bca_is_the_percentile_interval_without_bias_or_skew() -> None:
    samples = np.random.default_rng(0).normal(0.8, 0.01, 4001)
    value = float(np.median(samples))
    low, high = bca_interval(value, samples, np.zeros(50), 0.9)
    assert (low, high) == pytest.approx(tuple(np.quantile(samples, [0.05, 0.95])), abs=1e-4)
    # Resamples that run high (as macro-F1's do when rare values drop out) move the interval down.
    shifted_low, shifted_high = bca_interval(value - 0.005, samples, np.zeros(50), 0.9)
    assert shifted_low < low and shifted_high < high
    assert bca_interval(float("nan"), samples, np.zeros(5), 0.9) == (pytest.approx(np.nan, nan_ok=True),) * 2


def test_bca_agrees_with_scipy_on_a_skewed_mean() -> None:
    from scipy import stats

    rng = np.random.default_rng(0)
    x = rng.exponential(1.0, 60)
    samples = x[rng.integers(0, len(x), (20000, len(x)))].mean(1)
    jackknife = (x.sum() - x) / (len(x) - 1)
    reference = stats.bootstrap((x,), np.mean, n_resamples=20000, method="BCa", random_state=1)
    ours = bca_interval(float(x.mean()), samples, jackknife, 0.95)
    assert ours == pytest.approx(tuple(reference.confidence_interval), abs=0.01)
    # Skewed: BCa sits above the plain percentiles here.
    assert ours[1] > np.quantile(samples, 0.975) + 0.02


def _catalog(seed: int = 0, n: int = 400) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    rng = np.random.default_rng(seed)
    truth = pd.DataFrame(
        {
            "id": [str(i) for i in range(n)],
            "category": rng.choice(["Shirts", "Shoes"], n, p=[0.8, 0.2]),
            "color": rng.choice(["red", "blue", "green", "black"], n),
            "sleeve": rng.choice(["long", "short"], n),
        }
    )

    def noisy(share: float) -> pd.DataFrame:
        out = truth.copy()
        for column, values in (("color", ["red", "blue", "green", "black"]), ("sleeve", ["long", "short"])):
            flip = rng.random(n) < share
            out.loc[flip, column] = rng.choice(values, flip.sum())
        return out

    return truth, {"good": noisy(0.2), "worse": noisy(0.5), "same": truth.copy()}


def test_intervals_hold_the_score_and_pair_the_resamples() -> None:
    truth, preds = _catalog()
    boot = bootstrap_scores(truth, preds, SCHEMA, resamples=300, seed=1)
    for name, pred in preds.items():
        interval = boot.interval(name)
        assert interval.value == pytest.approx(attribute_score(truth, pred, SCHEMA).score)
        assert interval.low <= interval.value <= interval.high
        assert interval.resamples == 300 and interval.level == 0.95
    assert boot.interval("same").low == boot.interval("same").high == 1.0
    good = boot.interval("good")
    assert 0.005 < good.high - good.low < 0.2
    # Paired: the difference's interval is narrower than the two scores' intervals side by side allow.
    gap = boot.difference("good", "worse")
    worse = boot.interval("worse")
    assert gap.value == pytest.approx(good.value - worse.value)
    assert gap.low > 0
    assert gap.high - gap.low < (good.high - good.low) + (worse.high - worse.low)
    assert boot.difference("good", "good").low == boot.difference("good", "good").high == 0.0


def test_seeded_and_drawn_within_each_category() -> None:
    truth, preds = _catalog()
    a = bootstrap_scores(truth, preds, SCHEMA, resamples=50, seed=3)
    b = bootstrap_scores(truth, preds, SCHEMA, resamples=50, seed=3)
    c = bootstrap_scores(truth, preds, SCHEMA, resamples=50, seed=4)
    np.testing.assert_array_equal(a.samples["good"], b.samples["good"])
    assert not np.array_equal(a.samples["good"], c.samples["good"])
    categories = np.array(["a"] * 7 + ["b"] * 3 + ["a"] * 2)
    blocks = list(resample_counts(categories, 250, seed=0, block=100))
    assert [len(b) for b in blocks] == [100, 100, 50]
    counts = np.vstack(blocks)
    # Every resample keeps each category's number of rows, and draws only rows of that category.
    np.testing.assert_array_equal(counts[:, categories == "a"].sum(1), 9)
    np.testing.assert_array_equal(counts[:, categories == "b"].sum(1), 3)
    assert counts.min() >= 0 and counts.max() > 1  # with replacement


def test_bad_arguments_are_named() -> None:
    truth, preds = _catalog(n=20)
    with pytest.raises(ValueError, match="resamples must be at least 1"):
        bootstrap_scores(truth, preds, SCHEMA, resamples=0)
    with pytest.raises(ValueError, match="level must be between 0 and 1"):
        bootstrap_scores(truth, preds, SCHEMA, level=95)
    with pytest.raises(ValueError, match=r"weights must be \(resamples, 20 rows\)"):
        weighted_scores(truth, preds["good"], SCHEMA, np.ones(20))


def test_a_single_labelled_row_gives_its_score_without_warnings() -> None:
    """Regression: with every leave-one-out set empty, BCa's acceleration took the mean of an empty
    array and printed numpy RuntimeWarnings in the middle of `evaluate`'s output."""
    truth = pd.DataFrame({"id": ["a"], "category": ["A"], "c": ["x"]})
    for predicted, score in (("x", 1.0), ("y", 0.0)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            interval = bootstrap_scores(
                truth, {"m": truth.assign(c=predicted)}, {"A": ["c"]}, resamples=50
            ).interval("m")
        assert (interval.value, interval.low, interval.high, interval.resamples) == (score, score, score, 50)
