"""Inputs of the review app without training a model: the tiny catalog, a schema, and predictions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from taxonomist.data.catalog import read_generic
from taxonomist.data.schema import Schema

from .conftest import make_catalog


@dataclass
class ReviewInputs:
    catalog: Path
    """The tiny catalog CSV (sku, type, color, fit); images under ``catalog.parent / "images"``."""
    checkpoint: Path
    """A folder holding only ``schema.json``, as a checkpoint would."""
    predictions: Path
    """A ``predict`` output folder holding ``predictions_long.csv``."""
    long: pd.DataFrame


def write_review_inputs(root: Path, seed: int = 0) -> ReviewInputs:
    """``predictions_long.csv`` in the layout ``taxonomist predict`` writes: mostly right, every 4th item
    wrong, confidences spread over (0, 1)."""
    catalog_path = make_catalog(root / "data", seed=seed)
    catalog = read_generic(catalog_path, id_column="sku", category_column="type", attributes=["color", "fit"])
    schema = catalog.infer_schema()
    checkpoint = root / "ckpt"
    checkpoint.mkdir()
    schema.save(checkpoint / "schema.json")
    rng = np.random.default_rng(seed)
    rows = []
    for k, item in enumerate(catalog.frame.itertuples(index=False)):
        for attribute in schema.attributes_of(item.category):
            allowed = schema.allowed(item.category, attribute)
            label = getattr(item, attribute)
            truth = label if pd.notna(label) else allowed[0]
            wrong = [v for v in allowed if v != truth]
            value = wrong[k % len(wrong)] if k % 4 == 0 else truth
            rows.append((item.id, item.category, attribute, value, round(float(rng.uniform(0.05, 0.99)), 6)))
    long = pd.DataFrame(rows, columns=["id", "category", "attribute", "value", "confidence"])
    predictions = root / "pred"
    predictions.mkdir()
    long.to_csv(predictions / "predictions_long.csv", index=False)
    return ReviewInputs(catalog_path, checkpoint, predictions, long)


def schema_of(inputs: ReviewInputs) -> Schema:
    return Schema.load(inputs.checkpoint / "schema.json")
