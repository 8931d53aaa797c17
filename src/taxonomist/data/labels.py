"""String labels ↔ per-attribute class indices (vocabulary = the schema's union of values)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from taxonomist.data.schema import Schema

MISSING = -1


def encode_labels(frame: pd.DataFrame, schema: Schema) -> dict[str, np.ndarray]:
    """attribute → (n,) int64; -1 where the label is missing or outside the category's schema."""
    out = {}
    categories = frame["category"].to_numpy()
    for attribute in schema.attributes:
        vocab = {v: i for i, v in enumerate(schema.values(attribute))}
        values = frame[attribute] if attribute in frame.columns else pd.Series([None] * len(frame))
        codes = np.full(len(frame), MISSING, dtype=np.int64)
        for row, (category, value) in enumerate(zip(categories, values, strict=True)):
            if value is not None and value == value and schema.is_valid(category, attribute, str(value)):
                codes[row] = vocab[str(value)]
        out[attribute] = codes
    return out
