"""Seeded per-category train/validation split (seed 001: 90/10 within each category)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from taxonomist.data.catalog import CATEGORY, CatalogError


def split_per_category(
    frame: pd.DataFrame, val_fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Positional (train, val) indices; every category keeps its share in both parts."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not len(frame):
        raise CatalogError("no rows to split into training and validation parts: the selection is empty")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for _, rows in frame.groupby(CATEGORY, sort=True).indices.items():
        rows = rng.permutation(rows)
        n_val = round(len(rows) * val_fraction)
        if len(rows) >= 2:
            n_val = min(max(n_val, 1), len(rows) - 1)
        val.append(rows[:n_val])
        train.append(rows[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
