"""Losses of the finetune recipe: masked (focal, label-smoothed) cross-entropy and an MMD feature term.

Logits arrive masked (values not allowed for the row's category hold ``NEG_INF``). Label smoothing
therefore spreads its mass over the *allowed* values only: smoothing over every value would put target
mass on values the model can never give probability to, and the loss would read ~1e8 instead of ~1.
All terms are computed in float32, so they stay finite under mixed precision (where ``NEG_INF`` is -inf).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch

from taxonomist.data.labels import MISSING
from taxonomist.models.heads import NEG_INF

# Multipliers of the median pairwise squared distance: one kernel from finer to coarser than the bulk
# of the data, so the term has a gradient whether the two batches are near or far apart.
DEFAULT_BANDWIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)


def focal_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0, gamma: float = 0.0
) -> torch.Tensor:
    """Mean over labelled rows of ``(1 - p_target)^gamma · CE``; rows labelled ``MISSING`` add nothing.

    ``gamma`` > 0 down-weights rows the model already gets right (focal loss, for rare values);
    ``gamma`` = 0 is plain (label-smoothed) cross-entropy. Without any labelled row the result is a
    zero that keeps the graph. Masks instead of boolean indexing: no host sync on GPU.
    """
    total, count = _focal_sum(logits, target, label_smoothing, gamma)
    return total / count.clamp_min(1)


def _focal_sum(
    logits: torch.Tensor, target: torch.Tensor, label_smoothing: float, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the per-row focal loss over labelled rows, and their count."""
    keep = target != MISSING
    z = logits.float().clamp_min(NEG_INF)  # -inf (NEG_INF in half precision) would give NaN rows
    y = target.clamp_min(0)[:, None]
    log_p = torch.log_softmax(z, dim=1)
    target_log_p = log_p.gather(1, y).squeeze(1)
    nll = -target_log_p
    if label_smoothing:
        allowed = (z > NEG_INF / 2).scatter(1, y, True)
        uniform = -(log_p * allowed).sum(1) / allowed.sum(1)
        nll = (1 - label_smoothing) * nll + label_smoothing * uniform
    if gamma:
        # Clamped: a row predicted with p == 1.0 exactly would give 0 ** gamma a NaN gradient for gamma < 1.
        nll = (1 - target_log_p.exp()).clamp_min(1e-12) ** gamma * nll
    return torch.where(keep, nll, 0).sum(), keep.sum()


def masked_cross_entropy(
    logits: Mapping[str, torch.Tensor],
    labels: Mapping[str, torch.Tensor],
    label_smoothing: float = 0.0,
    *,
    gamma: float = 0.0,
    sum_over_processes: Callable[[torch.Tensor], torch.Tensor] | None = None,
    num_processes: int = 1,
) -> torch.Tensor:
    """Mean over attributes that have a labelled row of :func:`focal_cross_entropy`.

    Same call as ``training.heads.masked_cross_entropy`` plus ``gamma``; an attribute without any
    label in the batch is left out of the mean rather than counted as zero.

    Data-parallel: ``sum_over_processes`` (an all-reduce sum) makes each attribute's mean run over the
    labelled rows of *every* process's batch, and the result is scaled by ``num_processes`` so that
    DDP's averaging of gradients yields the gradient of the global batch's loss. A per-process mean
    would weigh a row by how many labelled rows its own shard happened to get.
    """
    sums, counts = zip(
        *(_focal_sum(z, labels[a], label_smoothing, gamma) for a, z in logits.items()), strict=True
    )
    total, count = torch.stack(sums), torch.stack(counts).float()
    if sum_over_processes is not None:
        count = sum_over_processes(count)
    per_attribute = total * num_processes / count.clamp_min(1)
    labelled = count > 0
    return (per_attribute * labelled).sum() / labelled.sum().clamp_min(1)


def mmd_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    kernel: Literal["rbf", "linear"] = "rbf",
    bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS,
    *,
    unbiased: bool = True,
) -> torch.Tensor:
    """Squared maximum mean discrepancy between feature batches ``x`` (n, d) and ``y`` (m, d).

    ``rbf``: the mean of Gaussian kernels ``exp(-|a-b|² / (s·h))`` over ``s`` in ``bandwidths``, with
    ``h`` the median pairwise squared distance of the pooled batches (detached: the scale follows the
    features without the term shrinking it to win). ``linear``: ``k(a, b) = a·b``.

    ``unbiased`` (default) is the U-statistic: within-batch sums skip the diagonal, so its expectation
    is exactly 0 for equal distributions (it can dip below 0 on one batch; still a valid loss). The
    biased V-statistic keeps the diagonal and is ≥ 0 but inflated by O(1/n) for small batches.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need (n, d) and (m, d) features, got {tuple(x.shape)} and {tuple(y.shape)}")
    n, m = len(x), len(y)
    if unbiased and min(n, m) < 2:
        raise ValueError("the unbiased estimator needs at least 2 rows in each batch")
    with torch.autocast(x.device.type, enabled=False):  # fp16 distances would lose most digits
        z = torch.cat([x, y]).float()
        # Both kernels' MMD ignores a common shift; centring keeps |a|² + |b|² - 2a·b from cancelling.
        z = z - z.mean(0).detach()
        gram = _gram(z, kernel, bandwidths)
    kxx, kyy, kxy = gram[:n, :n], gram[n:, n:], gram[:n, n:]
    if unbiased:
        within_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        within_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    else:
        within_x, within_y = kxx.mean(), kyy.mean()
    return within_x + within_y - 2 * kxy.mean()


def _gram(z: torch.Tensor, kernel: str, bandwidths: Sequence[float]) -> torch.Tensor:
    if kernel == "linear":
        return z @ z.T
    if kernel != "rbf":
        raise ValueError(f"kernel must be 'rbf' or 'linear', got {kernel!r}")
    sq = z.pow(2).sum(1)
    # Expanded form, clamped: torch.cdist's sqrt has no gradient at zero distance.
    dist = (sq[:, None] + sq[None, :] - 2 * z @ z.T).clamp_min(0)
    off_diagonal = dist[~torch.eye(len(z), dtype=torch.bool, device=z.device)]
    scale = off_diagonal.detach().median().clamp_min(1e-12)
    return torch.stack([torch.exp(-dist / (s * scale)) for s in bandwidths]).mean(0)
