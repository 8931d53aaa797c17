"""Missing-label policies: what to do with unlabelled (category, attribute) cells before training.

Every policy is a plain function ``(frame, attributes_by_category, **options) -> PolicyResult`` that returns
a new frame and never mutates its input, so a config can name one (``mask``, ``drop``, ``dynamic-fill``,
``similar-mode``) and runs stay comparable. Only a category's own attributes are touched: an attribute that
does not apply to a category stays missing whatever the policy.

Modes are deterministic: most frequent value, ties broken by the first value in sorted order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from taxonomist.data.catalog import CATEGORY

LEN = "len"
_KEY_LIMIT = 1 << 62  # mixed-radix keys stay well inside int64


@dataclass(frozen=True)
class PolicyResult:
    """A policy's output frame plus the counts that make its effect visible in logs."""

    frame: pd.DataFrame
    filled: int
    dropped: int
    policy: str

    def summary(self) -> str:
        return (
            f"{self.policy}: {len(self.frame)} rows kept, {self.dropped} dropped, {self.filled} cells filled"
        )


def mask(frame: pd.DataFrame, attributes_by_category: Mapping[str, Sequence[str]]) -> PolicyResult:
    """Keep missing labels missing; the loss ignores them later (like ``ignore_index``)."""
    return PolicyResult(frame.reset_index(drop=True), 0, 0, "mask")


def drop(frame: pd.DataFrame, attributes_by_category: Mapping[str, Sequence[str]]) -> PolicyResult:
    """Train only on fully labelled rows: smaller but clean data."""
    out = frame.reset_index(drop=True)
    incomplete = np.zeros(len(out), dtype=bool)
    for rows, attrs in _categories(out, attributes_by_category):
        incomplete[rows] = out.loc[rows, attrs].isna().to_numpy().any(axis=1)
    return PolicyResult(out.loc[~incomplete].reset_index(drop=True), 0, int(incomplete.sum()), "drop")


def dynamic_fill(
    frame: pd.DataFrame, attributes_by_category: Mapping[str, Sequence[str]], *, fill_value: str = "no"
) -> PolicyResult:
    """Fill the first ``len`` attributes with the category mode and the rest with a dummy value.

    From the "Dynamic Attribute Filling" recipe: positions a row is supposed to carry get the most
    plausible value, positions past its ``len`` get an explicit "not applicable" label. Without a ``len``
    column every attribute of the category counts as within ``len``. An attribute with no label at all in
    its category gets ``fill_value`` too, so the result has no missing cells.
    """
    out = frame.reset_index(drop=True).copy()
    filled = 0
    for rows, attrs in _categories(out, attributes_by_category):
        if LEN in out.columns:
            lengths = pd.to_numeric(out.loc[rows, LEN], errors="coerce").fillna(len(attrs)).to_numpy()
        else:
            lengths = np.full(len(rows), len(attrs))
        for position, attr in enumerate(attrs, start=1):
            column = out.loc[rows, attr]
            missing = column.isna().to_numpy()
            if not missing.any():
                continue
            mode = _mode(column)
            within = missing & (lengths >= position)
            beyond = missing & ~within
            if mode is None:
                within, beyond = np.zeros_like(missing), missing
            if isinstance(out[attr].dtype, pd.CategoricalDtype):  # the fill may be a value it lacks
                out[attr] = out[attr].astype(object)
            out.loc[rows[within], attr] = mode
            out.loc[rows[beyond], attr] = fill_value
            filled += int(missing.sum())
    return PolicyResult(out, filled, 0, "dynamic-fill")


def similar_mode(
    frame: pd.DataFrame, attributes_by_category: Mapping[str, Sequence[str]], *, max_nans: int = 3
) -> PolicyResult:
    """Fill each missing label with its mode among rows that agree on everything the row does know.

    Rows missing more than ``max_nans`` labels carry too little to match on and are dropped. Candidates
    are rows of the same category labelled for the target attribute and equal to the row on all its
    labelled attributes; without candidates the category's column mode is used. Only observed labels
    are matched, never values filled in this pass, so the result does not depend on row order. (Dropped
    rows cannot be candidates anyway: they lack too many labels to agree on all of a kept row's.)

    Rows are grouped by missing-pattern; for each (pattern, target) one keyed mode is computed over the
    candidate rows and looked up for the pattern's rows.
    """
    out = frame.reset_index(drop=True).copy()
    dropped = np.zeros(len(out), dtype=bool)
    filled = 0
    for rows, attrs in _categories(out, attributes_by_category):
        codes, uniques = _codes(out.loc[rows, attrs])
        cards = [len(u) for u in uniques]
        missing = codes < 0
        n_missing = missing.sum(axis=1)
        keep = n_missing <= max_nans
        dropped[rows[~keep]] = True
        col_modes = [_mode_code(codes[~missing[:, j], j], cards[j]) for j in range(len(attrs))]
        new_codes = codes.copy()
        pattern = missing.astype(np.int64) @ (np.int64(1) << np.arange(len(attrs), dtype=np.int64))
        for p in np.unique(pattern[keep & (n_missing > 0)]):
            targets = keep & (pattern == p)
            missing_cols = [j for j in range(len(attrs)) if (p >> j) & 1]
            known = [j for j in range(len(attrs)) if not (p >> j) & 1]
            pool = ~missing[:, known].any(axis=1)  # rows labelled on all known attributes (targets included)
            key = _keys(codes[pool][:, known], [cards[j] for j in known])
            target_key = key[targets[pool]]
            target_rows = np.flatnonzero(targets)
            for j in missing_cols:
                candidate = ~missing[pool, j]
                group_keys, group_modes = _mode_by_key(key[candidate], codes[pool][candidate, j], cards[j])
                new_codes[target_rows, j] = _lookup(group_keys, group_modes, target_key, col_modes[j])
        for j, attr in enumerate(attrs):
            changed = (codes[:, j] < 0) & (new_codes[:, j] >= 0) & keep
            if changed.any():
                out.loc[rows[changed], attr] = uniques[j].take(new_codes[changed, j]).to_numpy()
                filled += int(changed.sum())
    out = out.loc[~dropped].reset_index(drop=True)
    return PolicyResult(out, filled, int(dropped.sum()), "similar-mode")


POLICIES: dict[str, Callable[..., PolicyResult]] = {
    "mask": mask,
    "drop": drop,
    "dynamic-fill": dynamic_fill,
    "similar-mode": similar_mode,
}


def apply_policy(
    name: str, frame: pd.DataFrame, attributes_by_category: Mapping[str, Sequence[str]], **options
) -> PolicyResult:
    """Look a policy up by its config name, so a typo fails loudly with the valid choices."""
    try:
        policy = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown missing-label policy {name!r} (valid: {', '.join(POLICIES)})") from None
    return policy(frame, attributes_by_category, **options)


def _categories(
    frame: pd.DataFrame, attributes_by_category: Mapping[str, Sequence[str]]
) -> list[tuple[np.ndarray, list[str]]]:
    """(row positions, attributes present in the frame) for each category that has rows."""
    categories = frame[CATEGORY].astype(str).to_numpy()
    found = []
    for category, attrs in attributes_by_category.items():
        rows = np.flatnonzero(categories == str(category))
        attrs = [a for a in attrs if a in frame.columns]
        if len(rows) and attrs:
            found.append((rows, attrs))
    return found


def _mode(column: pd.Series):
    codes, uniques = pd.factorize(column, sort=True)
    code = _mode_code(codes[codes >= 0], len(uniques))
    return None if code < 0 else uniques[code]


def _mode_code(codes: np.ndarray, card: int) -> int:
    """Sorted-order codes make argmax's first-maximum rule the deterministic tie-break."""
    if len(codes) == 0:
        return -1
    return int(np.argmax(np.bincount(codes, minlength=card)))


def _codes(block: pd.DataFrame) -> tuple[np.ndarray, list[pd.Index]]:
    codes = np.empty(block.shape, dtype=np.int64)
    uniques = []
    for j, attr in enumerate(block.columns):
        codes[:, j], u = pd.factorize(block[attr], sort=True)
        uniques.append(u)
    return codes, uniques


def _keys(codes: np.ndarray, cards: Sequence[int]) -> np.ndarray:
    """One dense int64 key per distinct row of non-negative codes."""
    key = np.zeros(len(codes), dtype=np.int64)
    bound = 1
    for j, card in enumerate(cards):
        if bound * max(card, 1) >= _KEY_LIMIT:
            key = np.unique(key, return_inverse=True)[1].reshape(-1).astype(np.int64)
            bound = int(key.max()) + 1 if len(key) else 1
        key = key * card + codes[:, j]
        bound *= max(card, 1)
    return np.unique(key, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _mode_by_key(keys: np.ndarray, values: np.ndarray, card: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct keys, mode value per key); ties go to the smallest (first sorted) value."""
    pairs, counts = np.unique(keys * card + values, return_counts=True)
    k, v = pairs // card, pairs % card
    order = np.lexsort((v, -counts, k))
    k, v = k[order], v[order]
    first = np.ones(len(k), dtype=bool)
    first[1:] = k[1:] != k[:-1]
    return k[first], v[first]


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, keys: np.ndarray, default: int) -> np.ndarray:
    """``values`` at each key's position in ``sorted_keys``, ``default`` where the key is absent."""
    if len(sorted_keys) == 0:
        return np.full(len(keys), default, dtype=np.int64)
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return np.where(sorted_keys[at] == keys, values[at], default)
