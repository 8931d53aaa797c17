"""The shared warm-up + cosine schedule: full rate at the end of warm-up, zero at the last step."""

from __future__ import annotations

import pytest
import torch

from taxonomist.training.schedule import warmup_cosine


def test_warmup_then_cosine_to_zero() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_cosine(optimizer, warmup_steps=4, total_steps=12)
    rates = []
    for _ in range(14):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert rates[8] == pytest.approx(0.5)  # half-way through the decay
    assert rates[12:] == pytest.approx([0.0, 0.0])  # never back up after the last step
