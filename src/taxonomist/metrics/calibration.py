"""Calibration: how far confidences are from accuracies, and one temperature to close the gap.

Predictions are restricted to the values valid for a row's category, so every function here takes an
optional ``mask`` of allowed classes: a temperature fitted on the unmasked softmax would be calibrating a
distribution the model never outputs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

T_MIN, T_MAX = 0.05, 20.0


def reliability_table(confidences: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> pd.DataFrame:
    """Equal-width bins on [0, 1], each ``(lower, upper]`` (0 in the first); empty bins have NaN means."""
    conf, hit = _check_binary_inputs(confidences, correct)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left" on the inner edges puts a confidence equal to an edge into the bin below it.
    index = np.searchsorted(edges[1:-1], conf, side="left")
    count = np.bincount(index, minlength=n_bins)
    conf_sum = np.bincount(index, weights=conf, minlength=n_bins)
    hit_sum = np.bincount(index, weights=hit, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        accuracy = np.where(count > 0, hit_sum / count, np.nan)
    return pd.DataFrame(
        {
            "lower": edges[:-1],
            "upper": edges[1:],
            "count": count.astype(np.int64),
            "confidence": mean_conf,
            "accuracy": accuracy,
        }
    )


def expected_calibration_error(confidences: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: sum over bins of (count / n) * |accuracy - mean confidence|; NaN for no rows."""
    table = reliability_table(confidences, correct, n_bins)
    n = int(table["count"].sum())
    if n == 0:
        return math.nan
    filled = table[table["count"] > 0]
    gap = (filled["accuracy"] - filled["confidence"]).abs()
    return float((gap * filled["count"]).sum() / n)


def fit_temperature(
    logits: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor | None = None,
) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) on labeled rows (label -1 = ignored).

    ``mask`` (n, k) marks the classes allowed per row; non-finite logits count as disallowed too. L-BFGS
    runs on log T, unconstrained (NLL is unimodal in log T), and the result is clamped to [0.05, 20]. Fewer
    than 2 labeled rows give 1.0: one row says nothing about calibration. So do rows that are all predicted
    right: their NLL keeps falling as T -> 0, but they say nothing about how sure to be of a wrong answer,
    and one-hot confidences would meet the first error elsewhere at ~100% (a small or easy attribute's dev
    part, or one half of it in :func:`calibrate`'s cross-fitted report).
    """
    z, allowed = _logits_and_mask(logits, mask)
    y = _as_numpy(labels).astype(np.int64).reshape(-1)
    if y.shape[0] != z.shape[0]:
        raise ValueError(f"labels has {y.shape[0]} rows, logits {z.shape[0]}")
    if (y >= z.shape[1]).any() or (y < -1).any():
        raise ValueError(f"labels outside [-1, {z.shape[1] - 1}]")
    keep = y >= 0
    if keep.sum() < 2:
        return 1.0
    z, allowed, y = z[keep], allowed[keep], y[keep]
    bad = ~allowed[np.arange(len(y)), y]
    if bad.any():
        raise ValueError(f"{int(bad.sum())} labeled row(s) have a label the mask disallows (or a -inf logit)")
    rivals = np.where(allowed, z, -np.inf)
    rivals[np.arange(len(y)), y] = -np.inf
    if (z[np.arange(len(y)), y] > rivals.max(1)).all():
        return 1.0

    zt = torch.from_numpy(np.where(allowed, z, 0.0))
    disallowed = None if allowed.all() else torch.from_numpy(~allowed)
    # The labeled logit enters the NLL linearly in 1/T, so its mean is computed once.
    picked_mean = zt.gather(1, torch.from_numpy(y)[:, None]).mean()

    def nll(log_t: torch.Tensor) -> torch.Tensor:
        scaled = zt / torch.exp(log_t)
        if disallowed is not None:
            # Zeroed before dividing, -inf after: the gradient of a disallowed entry is 0, not 0 * inf.
            scaled = scaled.masked_fill(disallowed, -math.inf)
        return torch.logsumexp(scaled, dim=1).mean() - picked_mean / torch.exp(log_t)

    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [log_t],
        lr=1.0,
        max_iter=100,
        tolerance_grad=1e-10,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nll(log_t)
        loss.backward()
        return loss

    optimizer.step(closure)
    value = float(log_t.detach().item())
    found = min(max(value, math.log(T_MIN)), math.log(T_MAX)) if math.isfinite(value) else 0.0
    # L-BFGS stops early where the NLL is flat (near-separable data drives T toward 0); the NLL is
    # unimodal in log T, so comparing with the two bounds settles which end such a plateau belongs to.
    with torch.no_grad():
        candidates = [found, math.log(T_MIN), math.log(T_MAX)]
        losses = [float(nll(torch.tensor([c], dtype=torch.float64))) for c in candidates]
    best = candidates[int(np.argmin(losses))]
    return float(min(max(math.exp(best), T_MIN), T_MAX))


def apply_temperature(
    logits: np.ndarray | torch.Tensor,
    temperature: float,
    mask: np.ndarray | torch.Tensor | None = None,
) -> np.ndarray:
    """softmax(logits / T) restricted to the allowed classes (exactly 0 elsewhere).

    A row with no allowed class (an attribute that does not apply to the row's category) comes back all
    zeros instead of NaN.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z, allowed = _logits_and_mask(logits, mask)
    scaled = np.where(allowed, z / float(temperature), -np.inf)
    any_allowed = allowed.any(axis=1, keepdims=True)
    top = np.where(any_allowed, scaled.max(axis=1, keepdims=True), 0.0)
    expd = np.exp(scaled - top)  # exp(-inf) = 0 for disallowed classes
    total = expd.sum(axis=1, keepdims=True)
    return np.where(any_allowed, expd / np.where(total > 0, total, 1.0), 0.0)


# --------------------------------------------------------------------------------------------- helpers


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _logits_and_mask(
    logits: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor | None
) -> tuple[np.ndarray, np.ndarray]:
    z = _as_numpy(logits).astype(np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must be (n, k), got shape {z.shape}")
    allowed = np.isfinite(z)
    if mask is not None:
        m = _as_numpy(mask).astype(bool)
        try:
            allowed &= np.broadcast_to(m, z.shape)
        except ValueError:
            raise ValueError(f"mask shape {m.shape} does not fit logits shape {z.shape}") from None
    return z, allowed


def _check_binary_inputs(confidences: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    conf = _as_numpy(confidences).astype(np.float64).reshape(-1)
    hit = _as_numpy(correct).astype(np.float64).reshape(-1)
    if conf.shape != hit.shape:
        raise ValueError(f"confidences ({conf.shape[0]}) and correct ({hit.shape[0]}) differ in length")
    if conf.size and (np.isnan(conf).any() or conf.min() < -1e-9 or conf.max() > 1 + 1e-9):
        raise ValueError("confidences must lie in [0, 1]")
    return np.clip(conf, 0.0, 1.0), hit
