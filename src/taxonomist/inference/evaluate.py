"""Score a checkpoint on labelled rows with the competition metric (images that fail count as wrong)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from taxonomist.config import RunConfig
from taxonomist.data.catalog import CATEGORY, ID, load_catalog
from taxonomist.data.split import split_per_category
from taxonomist.inference.embed import embed_catalog
from taxonomist.inference.predictor import Predictor, wide_named_frame
from taxonomist.inference.writers import atomic_write_text
from taxonomist.metrics import AttributeReport, attribute_score


def evaluate(
    checkpoint: str | Path,
    cfg: RunConfig,
    *,
    split: str = "val",
    output: str | Path | None = None,
    progress: bool = True,
) -> AttributeReport:
    if split not in ("val", "all"):
        raise ValueError(f"split must be 'val' or 'all', got {split!r}")
    catalog = load_catalog(cfg.catalog, seed=cfg.train.seed)
    if split == "val":
        _, val_idx = split_per_category(catalog.frame, cfg.train.val_fraction, cfg.train.seed)
        catalog = catalog.subset(val_idx)
    predictor = Predictor.from_pretrained(checkpoint)
    embedded = embed_catalog(catalog, predictor.backbone, cfg.embed, progress=progress)
    good = np.flatnonzero(embedded.ok)
    frame = catalog.frame
    cats = frame[CATEGORY].astype(str).to_numpy()
    probs = predictor.predict_features(embedded.features[good], cats[good].tolist())
    preds = predictor.decode(probs, frame[ID].to_numpy()[good].tolist(), cats[good].tolist())
    schema = predictor.schema
    predicted = wide_named_frame(preds, schema.attributes)
    # Rows whose image failed get no prediction: they are scored as wrong, as a competition would.
    failed = frame.loc[~embedded.ok, [ID, CATEGORY]]
    if len(failed):
        predicted = pd.concat([predicted, failed], ignore_index=True)
    report = attribute_score(frame, predicted, schema.categories)
    if output is not None:
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            output / "evaluation.json", json.dumps({"split": split, **report.to_dict()}, indent=1)
        )
        atomic_write_text(output / "evaluation.md", report.to_markdown(include_pairs=True))
    return report
