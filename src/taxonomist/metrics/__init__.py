"""Scores used to compare runs: the competition metric, cross-entropy and calibration."""

from taxonomist.metrics.attributes import (
    AttributeReport,
    attribute_score,
    cross_entropy,
    majority_predictions,
)
from taxonomist.metrics.bootstrap import BootstrapScores, Interval, bootstrap_scores
from taxonomist.metrics.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability_table,
)

__all__ = [
    "AttributeReport",
    "BootstrapScores",
    "Interval",
    "apply_temperature",
    "attribute_score",
    "bootstrap_scores",
    "cross_entropy",
    "expected_calibration_error",
    "fit_temperature",
    "majority_predictions",
    "reliability_table",
]
