"""Seeded per-category splits: train/dev/test for the attribute recipes (with duplicate groups), and the
older train/validation split that caption data and self-training's labeled draw still use."""

from __future__ import annotations

from dataclasses import dataclass

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
    for rows in frame.groupby(CATEGORY, sort=True, dropna=False).indices.values():  # a missing one too
        rows = rng.permutation(rows)
        n_val = round(len(rows) * val_fraction)
        if len(rows) >= 2:
            n_val = min(max(n_val, 1), len(rows) - 1)
        val.append(rows[:n_val])
        train.append(rows[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


@dataclass(frozen=True)
class Split:
    """Positional indices of the three parts: ``train`` fits, ``dev`` chooses, ``test`` only reports."""

    train: np.ndarray
    dev: np.ndarray
    test: np.ndarray


def split_train_dev_test(
    strata: pd.Series,
    dev_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    groups: pd.Series | None = None,
) -> Split:
    """Seeded train/dev/test split within each stratum (e.g. the category).

    Rows sharing a ``groups`` key (e.g. an image digest) always land in the same part, so identical
    items never straddle the split (a row without a key shares it with none); parts are filled group by
    group, so their sizes are approximate when groups are large. Every non-empty stratum keeps at least
    one training row.
    """
    for name, value in (("dev_fraction", dev_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if dev_fraction + test_fraction >= 1:
        raise ValueError(f"dev_fraction + test_fraction must be below 1, got {dev_fraction + test_fraction}")
    if not len(strata):
        raise CatalogError("no rows to split into train, dev and test parts: the selection is empty")
    if groups is not None and len(groups) != len(strata):  # else rows past the shorter one get parts
        raise ValueError(f"groups has {len(groups)} rows, strata {len(strata)}: one key per row is needed")
    keys = pd.factorize(groups if groups is not None else pd.Series(np.arange(len(strata))))[0]
    # A missing group key (factorized to -1) is shared with no row: each such row is a group of its own,
    # where -1 indexed the last group and joined all of them to it, quotas uncounted.
    alone = keys < 0
    keys[alone] = keys.max() + 1 + np.arange(alone.sum())
    rng = np.random.default_rng(seed)
    order = rng.permutation(keys.max() + 1)  # a random rank per group
    part = np.full(keys.max() + 1, -1)  # 0 train, 1 dev, 2 test; -1 not yet placed
    # dropna=False: rows of a missing stratum form one, rather than being left out of every part.
    by_stratum = pd.Series(np.asarray(strata)).groupby(np.asarray(strata), sort=True, dropna=False)
    for rows in by_stratum.indices.values():
        by_group = pd.Series(rows).groupby(keys[rows]).apply(list)
        ranked = sorted(by_group.index, key=lambda g: order[g])
        quota = {2: round(len(rows) * test_fraction), 1: round(len(rows) * dev_fraction)}
        filled = {0: 0, 1: 0, 2: 0}
        for g in ranked:  # groups already placed by another stratum count towards their part
            if part[g] >= 0:
                filled[part[g]] += len(by_group[g])
        for g in ranked:
            if part[g] >= 0:
                continue
            target = next(
                (
                    p
                    for p in (2, 1)
                    if filled[p] < quota[p] and len(rows) - filled[1] - filled[2] > len(by_group[g])
                ),
                0,
            )
            part[g] = target
            filled[target] += len(by_group[g])
        if not any(part[g] == 0 for g in ranked):  # other strata put every group of this one in dev/test
            part[min(ranked, key=lambda g: (len(by_group[g]), order[g]))] = 0  # whole, so nothing leaks
    row_part = part[keys]
    return Split(*(np.flatnonzero(row_part == p) for p in (0, 1, 2)))
