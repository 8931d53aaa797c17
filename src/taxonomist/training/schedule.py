"""The learning-rate schedule the recipes share: linear warm-up, then cosine decay to zero."""

from __future__ import annotations

import math

import torch


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Factor ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps (full rate at the last
    of them), then half a cosine from 1 down to 0 at ``total_steps``, and 0 after it.

    Not transformers' ``get_cosine_schedule_with_warmup``: that one starts at a rate of 0, which makes
    a short run's first step a no-op, and the heads recipe must not need transformers.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        done = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, done)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
