"""Score a checkpoint on labelled rows with the competition metric (images that fail count as wrong)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from taxonomist.config import RunConfig, VLMConfig
from taxonomist.data.catalog import CATEGORY, ID, CatalogError, describe_counts, load_catalog
from taxonomist.data.split import split_per_category
from taxonomist.inference.embed import embed_catalog
from taxonomist.inference.predictor import Predictor, wide_named_frame
from taxonomist.inference.writers import atomic_write_text
from taxonomist.metrics import AttributeReport, attribute_score, expected_calibration_error
from taxonomist.progress import progress_bar

EXAMPLE_IDS = 5


@dataclass
class Evaluation:
    """A checkpoint's score, and the labelled rows left unscored because the model does not know their
    category (like ``predict``'s unknown-category errors)."""

    report: AttributeReport
    unknown_categories: dict[str, int] = field(default_factory=dict)
    """Rows per category the model was not trained on."""
    unknown_examples: list[str] = field(default_factory=list)
    """Ids of some of those rows."""

    @property
    def unknown_category_note(self) -> str | None:
        if not self.unknown_categories:
            return None
        return (
            f"skipped {sum(self.unknown_categories.values())} rows of categories this model does not know "
            f"({describe_counts(self.unknown_categories)}), e.g. ids {self.unknown_examples}"
        )

    def to_dict(self) -> dict:
        return {
            **self.report.to_dict(),
            "unknown_category": {
                "rows": sum(self.unknown_categories.values()),
                "categories": self.unknown_categories,
                "examples": self.unknown_examples,
            },
        }


def evaluate(
    checkpoint: str | Path,
    cfg: RunConfig,
    *,
    split: str = "val",
    output: str | Path | None = None,
    progress: bool = True,
) -> Evaluation:
    """Score the configured catalog's rows (its validation split, or all of them); rows of categories the
    model does not know are left out before anything is embedded and reported in the result."""
    if split not in ("val", "all"):
        raise ValueError(f"split must be 'val' or 'all', got {split!r}")
    catalog = load_catalog(cfg.catalog, seed=cfg.train.seed)
    # Scored on the numerics the heads were fitted on (and their warm feature cache).
    predictor = Predictor.from_pretrained(checkpoint, device=cfg.embed.device, runtime=None)
    # Before the split, so the known categories' validation rows are the ones the training run held out.
    unknown = ~catalog.frame[CATEGORY].astype(str).isin(predictor.categories)
    unknown_rows = catalog.frame[unknown]
    unknown_categories = {str(c): int(n) for c, n in unknown_rows[CATEGORY].value_counts().items()}
    if len(catalog) and unknown.all():
        raise CatalogError(
            f"{catalog.source}: no rows of this model's categories {predictor.categories} to score "
            f"(the catalog has {describe_counts(unknown_categories)})"
        )
    if unknown.any():
        catalog = catalog.subset(~unknown.to_numpy())
    if split == "val":
        _, val_idx = split_per_category(catalog.frame, cfg.train.val_fraction, cfg.train.seed)
        catalog = catalog.subset(val_idx)
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
    evaluation = Evaluation(
        attribute_score(frame, predicted, schema.categories),
        unknown_categories,
        unknown_rows[ID].astype(str).head(EXAMPLE_IDS).tolist(),
    )
    if output is not None:
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            output / "evaluation.json", json.dumps({"split": split, **evaluation.to_dict()}, indent=1)
        )
        markdown = evaluation.report.to_markdown(include_pairs=True)
        if evaluation.unknown_category_note:
            markdown += f"\n{evaluation.unknown_category_note}\n"
        atomic_write_text(output / "evaluation.md", markdown)
    return evaluation


def evaluate_vlm(
    model_dir: str | Path,
    cfg: VLMConfig,
    *,
    split: str = "val",
    output: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Score a VLM on the held-out examples of its training config: the competition metric, validity and
    calibration of per-attribute confidences (attributes), or BLEU-4/ROUGE-L/CIDEr/FGD (captions)."""
    from taxonomist.inference.vlm import VLMPredictor, to_predictions
    from taxonomist.metrics.captions import caption_scores
    from taxonomist.training.vlm_sft import build_examples

    if split not in ("val", "all"):
        raise ValueError(f"split must be 'val' or 'all', got {split!r}")
    train_examples, val_examples, _ = build_examples(cfg)
    examples = val_examples if split == "val" else [*train_examples, *val_examples]
    predictor = VLMPredictor.from_pretrained(model_dir, generate=cfg.generate)
    items = list({e.id: e for e in examples}.values())  # caption data: several references per image
    results = []
    step = cfg.generate.chunk_size
    with progress_bar("image", disable=not progress) as bar:
        task = bar.add_task(f"evaluate vlm ({predictor.task})", total=len(items))
        for start in range(0, len(items), step):
            chunk = items[start : start + step]
            results += predictor.predict(
                [e.image for e in chunk], [e.category for e in chunk], [e.id for e in chunk]
            )
            bar.advance(task, len(chunk))
    ok = [r for r in results if r.best is not None and not r.best.error]
    summary: dict = {"split": split, "task": predictor.task, "n": len(items), "failed": len(items) - len(ok)}
    if predictor.task == "caption":
        references: dict[str, list[str]] = {}
        for e in examples:
            references.setdefault(e.id, []).append(e.answer)
        # A failed image gets an empty caption: scored, not dropped, as a challenge would.
        predictions = {r.id: r.best.text if r in ok else "" for r in results}  # type: ignore[union-attr]
        summary.update(caption_scores(predictions, references).to_dict())
    else:
        schema = predictor.schema
        assert schema is not None
        truth = pd.DataFrame([{ID: e.id, CATEGORY: e.category, **json.loads(e.answer)} for e in items])
        preds = to_predictions(ok)
        predicted = wide_named_frame(preds, schema.attributes)
        failed = truth.loc[~truth[ID].isin(predicted[ID]), [ID, CATEGORY]]
        predicted = pd.concat([predicted, failed], ignore_index=True)
        report = attribute_score(truth, predicted, schema.categories)
        by_id = truth.set_index(ID)
        confidence, correct = [], []
        for p in preds:
            for attribute, value in p.attributes.items():
                label = by_id.at[p.id, attribute] if attribute in by_id.columns else None
                if isinstance(label, str):
                    confidence.append(value.confidence)
                    correct.append(value.value == label)
        summary.update(
            report.to_dict(),
            valid_fraction=len(ok) / max(1, len(items)),
            ece=expected_calibration_error(np.array(confidence), np.array(correct)) if confidence else None,
        )
    if output is not None:
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output / "evaluation.json", json.dumps(summary, indent=1, default=str))
    return summary
