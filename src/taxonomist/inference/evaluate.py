"""Score a checkpoint on labelled rows with the competition metric (images that fail count as wrong)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from taxonomist.config import ConfigError, RunConfig, VLMConfig
from taxonomist.data.catalog import (
    CATEGORY,
    ID,
    TEXT,
    Catalog,
    CatalogError,
    describe_counts,
)
from taxonomist.data.images import REASONS as IMAGE_REASONS
from taxonomist.data.prepare import (
    DATA_REPORT,
    DataReport,
    load_catalog,
    prepare_catalog,
    without_training_filters,
)
from taxonomist.data.schema import Schema
from taxonomist.features.build import embed_options
from taxonomist.features.embed import embed_catalog
from taxonomist.features.text import TextFeatures
from taxonomist.inference.predictor import ROW_ERROR_COLUMNS, Predictor, row_errors, wide_named_frame
from taxonomist.io import atomic_write_frame, atomic_write_text
from taxonomist.metrics import (
    AttributeReport,
    attribute_score,
    expected_calibration_error,
    majority_predictions,
)
from taxonomist.metrics.bootstrap import RESAMPLES, Interval, bootstrap_scores
from taxonomist.progress import progress_bar

EXAMPLE_IDS = 5
SPLITS = ("test", "dev", "all")
"""What ``evaluate`` scores: the held-out test part (default), the dev part choices were made on, or
every row."""
INPUT_VIEWS = {
    "fused": "image + text",
    "text_blanked": "image, every text blanked",
    "image_missing": "text, every image missing",
    "text_probe": "text only: the lexical probe",
}
"""Listing heads' rows scored four ways (``Evaluation.inputs``): what each input adds, on the same rows."""
FEW_ROWS = 5
"""Below this many scored rows a category's resamples hardly differ (one row: never)."""
ROW_COLUMNS = [ID, CATEGORY, "attribute", "label", "predicted", "confidence", "confidence_before", "correct"]
"""``Evaluation.rows``: one row per labelled (item, attribute); ``path`` and ``title`` follow where known."""


@dataclass
class Evaluation:
    """A checkpoint's score, and every labelled row it could not score as predicted: rows the reader set
    aside (blank id or category, repeated id), rows of categories the model does not know (like
    ``predict``'s unknown-category errors) and rows whose image could not be read."""

    report: AttributeReport
    """Every row of a known category; a row whose image failed counts as wrong, as a competition would."""
    unknown_categories: dict[str, int] = field(default_factory=dict)
    """Rows per category the model was not trained on."""
    unknown_examples: list[str] = field(default_factory=list)
    """Ids of some of those rows."""
    split: str = "test"
    rows: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ROW_COLUMNS))
    """Every scored label beside its prediction (``ROW_COLUMNS``): what a report studies errors on."""
    baseline: AttributeReport | None = None
    """The majority-class baseline's score on the same rows."""
    baseline_source: str = ""
    """Which rows the majority classes were counted on."""
    temperatures: dict[str, float] = field(default_factory=dict)
    valid_fraction: float | None = None
    """VLMs: the share of items whose output parsed into the schema."""
    readable_report: AttributeReport | None = None
    """The same rows less those whose image failed: the model's score where it could see; None when no
    image could be read."""
    errors: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ROW_ERROR_COLUMNS))
    """Rows not scored as predicted, with their line in the file and why (``errors.csv``)."""
    rows_read: int = 0
    """Rows of the file (or split) evaluated, before any was left out."""
    split_matches_training: bool | None = None
    """Whether the scored part has the ids training held out (from its ``data_report.json``); None for
    ``all`` or a checkpoint without a data report."""
    inputs: dict[str, AttributeReport] = field(default_factory=dict)
    """Listing heads: the rows with a readable image scored with both inputs, with each taken away, and
    by the checkpoint's lexical probe alone (:data:`INPUT_VIEWS`); empty for image-only heads."""
    interval: Interval | None = None
    """``report``'s score with its bootstrap interval (rows resampled within each category); None when
    evaluated without resamples."""
    input_intervals: dict[str, Interval] = field(default_factory=dict)
    """Each of ``inputs``' scores with its interval, on the same resamples."""
    input_gains: dict[str, Interval] = field(default_factory=dict)
    """The fused score minus each other view's, with the paired interval of that difference: whether an
    input's gain is more than the rows' sampling noise."""
    unscored_labels: dict[str, int] = field(default_factory=dict)
    """Labels per "category / attribute" pair the model's schema does not have (a file labels an attribute
    the training rows never gave that category): the metric cannot score them, so they are counted here
    and left out of every table, instead of read as errors."""
    text_note: str | None = None
    """Listing heads scored on a file without their text column(s): what the rows were predicted from."""

    @property
    def interval_note(self) -> str | None:
        if self.interval is None:
            return None
        note = (
            f"Score {self.interval} by a bootstrap of {self.interval.resamples} resamples of the scored rows "
            "within each category"
        )
        per_category = self.report.per_category
        tiny = per_category[per_category["n_rows"] < FEW_ROWS]
        if len(tiny):  # resampled within themselves, their few rows barely vary: the interval is too narrow
            counts = describe_counts(dict(zip(tiny["category"], tiny["n_rows"], strict=True)))
            note += (
                f"; categories with fewer than {FEW_ROWS} rows ({counts}) keep nearly the same rows in every "
                "resample, so the interval understates how much their pairs could move"
            )
        return note

    @property
    def split_note(self) -> str | None:
        if self.split_matches_training is not False:
            return None
        return (
            f"the {self.split} part differs from the one the training run held out (other data or split "
            "settings than the checkpoint's): some of these rows may have been trained on"
        )

    @property
    def unknown_category_note(self) -> str | None:
        if not self.unknown_categories:
            return None
        return (
            f"skipped {sum(self.unknown_categories.values())} rows of categories this model does not know "
            f"({describe_counts(self.unknown_categories)}), e.g. ids {self.unknown_examples}"
        )

    @property
    def unscored_note(self) -> str | None:
        if not self.unscored_labels:
            return None
        return (
            f"left out {sum(self.unscored_labels.values())} labels of attributes this model does not "
            f"predict for their category ({describe_counts(self.unscored_labels)})"
        )

    @property
    def notes(self) -> list[str]:
        """What the score leaves out or should be read with, one line each."""
        notes = (
            self.text_note,
            self.errors_note,
            self.unknown_category_note,
            self.unscored_note,
            self.split_note,
        )
        return [n for n in notes if n]

    @property
    def error_reasons(self) -> dict[str, int]:
        return {str(r): int(n) for r, n in self.errors["reason"].value_counts().items()}

    @property
    def errors_note(self) -> str | None:
        """Both scores and what the rows in errors.csv were, in one line; None when every row counted."""
        if not len(self.errors):
            return None
        unreadable = sum(n for r, n in self.error_reasons.items() if r in IMAGE_REASONS)
        readable = "n/a" if self.readable_report is None else f"{self.readable_report.score:.4f}"
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.error_reasons.items(), key=lambda x: -x[1]))
        return (
            f"{len(self.errors)} of {self.rows_read} rows not scored as predicted ({reasons}); score "
            f"{self.report.score:.4f} with the {unreadable} unreadable images counted wrong, {readable} "
            "without them"
        )

    def failure(self, max_error_share: float) -> str | None:
        """Why this evaluation did not measure the model (no image readable, or more than
        ``max_error_share`` of the scored rows' images not), in one line, as a failed ``predict`` job
        says it: a mistyped --images otherwise reads as a score of 0. None when it did."""
        unreadable = {r: n for r, n in self.error_reasons.items() if r in IMAGE_REASONS}
        failed = sum(unreadable.values())
        scored = int(self.report.per_category["n_rows"].sum())
        if not failed or (self.readable_report is not None and failed / max(scored, 1) <= max_error_share):
            return None
        share = "all" if self.readable_report is None else f"more than {max_error_share:.0%}"
        return (
            f"the images of {failed} of the {scored} scored rows could not be read "
            f"({describe_counts(unreadable)}), {share} of them; the score counts them wrong"
        )

    def to_dict(self) -> dict:
        return {
            **self.report.to_dict(),
            "baseline_score": None if self.baseline is None else self.baseline.to_dict()["score"],
            "score_without_unreadable": None if self.readable_report is None else self.readable_report.score,
            "rows": self.rows_read,
            "split_matches_training": self.split_matches_training,
            "errors": {"rows": len(self.errors), "reasons": self.error_reasons},
            "unknown_category": {
                "rows": sum(self.unknown_categories.values()),
                "categories": self.unknown_categories,
                "examples": self.unknown_examples,
            },
            "unscored_labels": self.unscored_labels,
            "score_interval": None if self.interval is None else self.interval.to_dict(),
            **({"scores_by_inputs": self.input_scores()} if self.inputs else {}),
        }

    def input_scores(self) -> dict[str, dict]:
        """view → its score and per-attribute harmonic F1 (``inputs``)."""
        return {
            view: {
                "score": report.score,
                "per_attribute": dict(
                    zip(report.per_attribute["attribute"], report.per_attribute["harmonic"], strict=True)
                ),
                **(
                    {"interval": self.input_intervals[view].to_dict()} if view in self.input_intervals else {}
                ),
                **(
                    {"fused_minus_this": self.input_gains[view].to_dict()} if view in self.input_gains else {}
                ),
            }
            for view, report in self.inputs.items()
        }


def evaluate(
    checkpoint: str | Path,
    cfg: RunConfig,
    *,
    split: str = "test",
    output: str | Path | None = None,
    progress: bool = True,
    resamples: int = RESAMPLES,
) -> Evaluation:
    """Score the configured catalog's rows: the training run's test part (``test``, the default) or dev
    part (``dev``), remade by the shared data step from the run's own settings so the parts are the ones
    it held out, or every row of the file (``all``, with no training-only filter). Rows of categories the
    model does not know are left out before anything is embedded; they and every other row not scored as
    predicted are listed in ``errors.csv``. Scores come with a bootstrap interval over ``resamples``
    resamples of the rows (0: none)."""
    if resamples < 0:
        raise ConfigError(f"--resamples must be 0 (no intervals) or more, got {resamples}")
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)} for this checkpoint, got {split!r}")
    source, part, split_matches = _rows_to_score(Path(checkpoint), cfg, split)
    # Scored on the numerics the heads were fitted on (and their warm feature cache).
    predictor = Predictor.from_pretrained(checkpoint, device=cfg.embed.device, runtime=None)
    catalog = source if part is None else source.subset(part)
    known = source
    unknown = ~catalog.frame[CATEGORY].astype(str).isin(predictor.categories)
    unknown_rows = catalog.frame[unknown]
    unknown_categories = {str(c): int(n) for c, n in unknown_rows[CATEGORY].value_counts().items()}
    if unknown.all():
        raise CatalogError(
            f"{catalog.source}: no rows of this model's categories {predictor.categories} to score "
            f"(the catalog has {describe_counts(unknown_categories)})"
        )
    if unknown.any():
        catalog = catalog.subset(~unknown.to_numpy())
    embedded = embed_catalog(catalog, predictor.backbone, **embed_options(cfg.embed), progress=progress)
    good = np.flatnonzero(embedded.ok)
    frame = catalog.frame
    cats = frame[CATEGORY].astype(str).to_numpy()
    text = texts = None
    if predictor.reads_text:  # listing heads: the catalog's text column (rows without one are blank)
        texts = frame[TEXT].to_numpy()[good].tolist() if TEXT in frame.columns else None
        text = predictor.text_features(texts, cats[good].tolist())
    probs = predictor.predict_features(embedded.features[good], cats[good].tolist(), text)
    before = predictor.predict_features(embedded.features[good], cats[good].tolist(), text, calibrated=False)
    ranked = predictor.ranked(probs, predictor.inputs_present(text, len(good)))
    preds = predictor.decode(probs, frame[ID].to_numpy()[good].tolist(), cats[good].tolist(), ranked=ranked)
    chosen = {a: order[:, 0] for a, order in ranked.items()}
    schema = predictor.schema
    predicted = wide_named_frame(preds, schema.attributes)
    # Rows whose image failed get no prediction: they are scored as wrong, as a competition would.
    failed = frame.loc[~embedded.ok, [ID, CATEGORY]]
    readable_report = attribute_score(frame[embedded.ok], predicted, schema.categories) if len(good) else None
    seen_predicted = predicted
    if len(failed):
        predicted = pd.concat([predicted, failed], ignore_index=True)
    paths = dict(zip(source.ids, source.image_paths(), strict=True))
    unknown_errors = [
        {
            "id": i,
            "path": str(paths[i]),
            "reason": "unknown-category",
            "detail": f"category {c!r} is not one of this model's {predictor.categories}",
        }
        for i, c in zip(unknown_rows[ID], unknown_rows[CATEGORY], strict=True)
    ]
    errors = row_errors(source, pd.DataFrame([*unknown_errors, *(e.__dict__ for e in embedded.errors)]))
    # The majority classes come from the rows the model was fitted on, where the split leaves any; rows
    # of categories it does not know hold no majority for its categories (alone, they scored it 0).
    outside = ~known.frame[ID].isin(set(frame[ID])) & known.frame[CATEGORY].astype(str).isin(
        predictor.categories
    )
    reference = known.frame[outside] if outside.any() else frame
    evaluation = Evaluation(
        attribute_score(frame, predicted, schema.categories),
        unknown_categories,
        unknown_rows[ID].astype(str).head(EXAMPLE_IDS).tolist(),
        split=split,
        rows=scored_rows(
            catalog,
            predicted,
            _confidences(probs, chosen, good, len(frame)),
            _confidences(before, chosen, good, len(frame)),
            applies=schema.categories,
        ),
        baseline=attribute_score(
            frame, majority_predictions(reference, frame, schema.categories), schema.categories
        ),
        baseline_source=f"{'the other' if outside.any() else 'the same'} {len(reference):,} rows",
        temperatures=dict(predictor.checkpoint.temperatures),
        readable_report=readable_report,
        errors=errors,
        text_note=source.text_note if predictor.reads_text else None,
        rows_read=len(catalog) + len(unknown_rows) + len(source.rejected),
        split_matches_training=split_matches,
        unscored_labels=unscored_labels(frame, catalog.attributes, schema.categories),
    )
    if resamples:
        evaluation.interval = bootstrap_scores(
            frame, {"model": predicted}, schema.categories, resamples=resamples
        ).interval("model")
    if predictor.reads_text and readable_report is not None:
        seen = frame.iloc[good].reset_index(drop=True)
        views = {
            "fused": seen_predicted,
            **input_views(predictor, embedded.features[good], seen, texts, text),
        }
        score_inputs(evaluation, seen, views, schema, resamples)
    if output is not None:
        write_evaluation(evaluation, output)
    return evaluation


def score_inputs(
    evaluation: Evaluation,
    frame: pd.DataFrame,
    views: dict[str, pd.DataFrame],
    schema: Schema,
    resamples: int,
) -> None:
    """``evaluation.inputs`` from each view's predictions of ``frame``'s rows, the readable ones (the fused
    view's score is ``readable_report``) and, with ``resamples``, every view's interval and the fused
    model's paired gain over each other view (the same resamples for all)."""
    evaluation.inputs = {
        view: evaluation.readable_report
        if view == "fused"
        else attribute_score(frame, pred, schema.categories)
        for view, pred in views.items()
    }
    if resamples:
        boot = bootstrap_scores(frame, views, schema.categories, resamples=resamples)
        evaluation.input_intervals = {view: boot.interval(view) for view in views}
        evaluation.input_gains = {view: boot.difference("fused", view) for view in views if view != "fused"}


def input_views(
    predictor: Predictor,
    features: np.ndarray,
    frame: pd.DataFrame,
    texts: list[str] | None,
    text: TextFeatures,
) -> dict[str, pd.DataFrame]:
    """Listing heads' predictions (wide named frames) of ``frame``'s rows (their image ``features`` and
    ``text``) with every text blanked, with every image missing, and the checkpoint's lexical probe alone
    (where it has one): whether the fused model beats each input alone on the very rows it is scored on.
    A row without a title has no input left once its image goes; it is predicted from its category
    alone, as the benchmark does. Leaving it unpredicted instead would add a zero-F1 "no prediction"
    class to its pairs' macro-F1: on fashion-product-images' test part that took the every-image-missing
    view from 0.8168 to 0.7987 for a handful of title-less rows, a penalty that is not the text's."""
    ids, cats = frame[ID].tolist(), frame[CATEGORY].astype(str).tolist()
    attributes = predictor.schema.attributes
    out = {
        "text_blanked": wide_named_frame(predictor.predict_rows(features, cats, ids, None), attributes),
        "image_missing": wide_named_frame(
            predictor.predict_rows(features, cats, ids, text, has_image=np.zeros(len(ids), dtype=bool)),
            attributes,
        ),
    }
    probe = predictor.probe_probs(texts, cats)
    if probe is not None:
        ranked = {a: np.argsort(-p, axis=1, kind="stable") for a, p in probe.items()}
        out["text_probe"] = wide_named_frame(predictor.decode(probe, ids, cats, ranked=ranked), attributes)
    return out


def _rows_to_score(
    checkpoint: Path, cfg: RunConfig, split: str
) -> tuple[Catalog, np.ndarray | None, bool | None]:
    """(rows read, positions of the part to score or None for all, whether that part is the one the
    training run recorded)."""
    # Scoring reads text columns the file lacks as blank titles (Catalog.text_note says so): an image-only
    # checkpoint never reads them, and listing heads predict a blank title from the image.
    if split == "all":
        source = load_catalog(
            without_training_filters(cfg.catalog), seed=cfg.train.seed, bad_rows="report", text_optional=True
        )
        part, split_matches = None, None
    else:
        data = prepare_catalog(cfg, text_optional=True)
        source, part = data.catalog, getattr(data.split, split)
        if not len(part):
            raise CatalogError(
                f"{source.source}: the {split} part is empty (train.{split}_fraction="
                f"{getattr(cfg.train, f'{split}_fraction')}); score --split dev or --split all instead"
            )
        split_matches = _same_part(checkpoint, data.report, split)
    if not len(source):
        what = f"all {len(source.rejected)} rows were set aside" if len(source.rejected) else "it has no rows"
        raise CatalogError(f"{source.source}: nothing to evaluate ({what})")
    return source, part, split_matches


def _same_part(checkpoint: Path, report: DataReport, split: str) -> bool | None:
    """Whether ``report``'s part has the ids the training run's data report recorded for it."""
    saved = checkpoint / DATA_REPORT
    if not saved.is_file():
        return None
    recorded = DataReport.load(saved).split.get("ids", {}).get(split)
    return recorded is None or recorded == report.split["ids"][split]


def _confidences(
    probs: dict[str, np.ndarray], chosen: dict[str, np.ndarray], good: np.ndarray, n: int
) -> dict[str, np.ndarray]:
    """attribute → the probability of the value each catalog row got (NaN where the image failed).

    ``chosen`` is the same for the calibrated and the uncalibrated ``probs``, so the reliability diagrams
    before and after temperature judge the same predictions."""
    out = {}
    for attribute, p in probs.items():
        column = np.full(n, np.nan)
        column[good] = p[np.arange(len(p)), chosen[attribute]]
        out[attribute] = column
    return out


def unscored_labels(
    frame: pd.DataFrame, attributes: Sequence[str], applies: Mapping[str, Sequence[str]]
) -> dict[str, int]:
    """Labels per "category / attribute" of ``frame`` that ``applies`` (the model's schema) has no pair
    for, so no metric scores them."""
    out = {}
    for category, rows in frame.groupby(frame[CATEGORY].astype(str), sort=True):
        for attribute in attributes:
            n = int(rows[attribute].notna().sum()) if attribute in rows.columns else 0
            if n and attribute not in applies.get(category, ()):
                out[f"{category} / {attribute}"] = n
    return out


def scored_rows(
    catalog: Catalog,
    predicted: pd.DataFrame,
    confidence: dict[str, np.ndarray],
    confidence_before: dict[str, np.ndarray] | None = None,
    applies: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """One row per labelled (item, attribute) of ``catalog`` that ``applies`` (default: the catalog's own
    attributes per category; evaluate passes the model's schema, the pairs the metric scores): label,
    prediction (empty where the image failed), its confidence with and without temperature, whether it
    is right, the image path and, where the catalog has listing text, the title."""
    frame = catalog.frame
    applies = catalog.attributes_by_category if applies is None else applies
    by_id = predicted.drop_duplicates(ID).set_index(predicted[ID].astype(str).drop_duplicates())
    ids = frame[ID].astype(str)
    paths = [str(p) for p in catalog.image_paths()]
    parts = []
    for attribute in catalog.attributes:
        if attribute not in frame.columns:
            continue
        labelled = frame[attribute].notna().to_numpy()
        in_schema = np.array([attribute in applies.get(str(c), ()) for c in frame[CATEGORY]], dtype=bool)
        keep = labelled & in_schema
        if not keep.any():
            continue
        pred = (
            by_id[attribute].reindex(ids[keep]).to_numpy()
            if attribute in by_id.columns
            else np.full(int(keep.sum()), None, dtype=object)
        )
        part = pd.DataFrame(
            {
                ID: ids[keep].to_numpy(),
                CATEGORY: frame.loc[keep, CATEGORY].astype(str).to_numpy(),
                "attribute": attribute,
                "label": frame.loc[keep, attribute].astype(str).to_numpy(),
                "predicted": pd.Series(pred, dtype=object).where(pd.notna(pred), None).to_numpy(),
                "confidence": confidence.get(attribute, np.full(len(frame), np.nan))[keep],
                "confidence_before": (confidence_before or confidence).get(
                    attribute, np.full(len(frame), np.nan)
                )[keep],
            }
        )
        part["correct"] = part["label"] == part["predicted"]
        part["path"] = np.asarray(paths, dtype=object)[keep]
        if TEXT in frame.columns:
            part["title"] = frame.loc[keep, TEXT].astype(str).to_numpy()
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=ROW_COLUMNS)
    return pd.concat(parts, ignore_index=True)


def write_evaluation(evaluation: Evaluation, output: str | Path, *, summary: dict | None = None) -> None:
    """``evaluation.json`` (``summary``, default: the evaluation's numbers), ``evaluation.md`` and
    ``predictions.csv`` (the scored rows) into ``output``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    summary = summary or {"split": evaluation.split, **evaluation.to_dict()}
    atomic_write_text(output / "evaluation.json", json.dumps(summary, indent=1, default=str))
    markdown = evaluation.report.to_markdown(include_pairs=True)
    if evaluation.interval_note:
        markdown += f"\n{evaluation.interval_note}\n"
    if evaluation.baseline is not None:
        markdown += (
            f"\nMajority-class baseline ({evaluation.baseline_source}): score "
            f"{evaluation.baseline.score:.4f}\n"
        )
    if evaluation.valid_fraction is not None:
        markdown += f"\nValid outputs: {evaluation.valid_fraction:.1%}\n"
    if evaluation.inputs:
        markdown += "\n" + inputs_markdown(evaluation) + "\n"
    for note in evaluation.notes:
        markdown += f"\n{note}\n"
    atomic_write_text(output / "evaluation.md", markdown)
    atomic_write_frame(evaluation.rows, output / "predictions.csv")
    atomic_write_frame(evaluation.errors, output / "errors.csv")


def inputs_markdown(evaluation: Evaluation) -> str:
    """``Evaluation.inputs`` as a table: one row per view, its score and each attribute's."""
    scores = evaluation.input_scores()
    attributes = list(next(iter(scores.values()))["per_attribute"])
    intervals, gains = evaluation.input_intervals, evaluation.input_gains
    extra = ["interval", "fused − this (paired interval)"] if intervals else []
    lines = [
        "Inputs (rows with a readable image):",
        "",
        "| inputs | score | " + " | ".join([*extra, *attributes]) + " |",
        "| --- | ---: |" + " ---: |" * (len(extra) + len(attributes)),
    ]
    for view, s in scores.items():
        cells = [f"{s['per_attribute'][a]:.4f}" for a in attributes]
        if intervals:
            gain = gains.get(view)
            cells = [
                intervals[view].span(),
                "" if gain is None else f"{gain.value:+.4f} ({gain.span(signed=True)})",
                *cells,
            ]
        lines.append(f"| {INPUT_VIEWS[view]} | {s['score']:.4f} | {' | '.join(cells)} |")
    return "\n".join(lines)


def evaluate_vlm(
    model_dir: str | Path,
    cfg: VLMConfig,
    *,
    split: str = "test",
    output: str | Path | None = None,
    progress: bool = True,
) -> tuple[dict, Evaluation | None]:
    """Score a VLM on the held-out examples of its training config: the competition metric, validity and
    calibration of per-attribute confidences (attributes), or BLEU-4/ROUGE-L/CIDEr/FGD (captions).

    Returns the summary (what ``evaluation.json`` holds) and, for attributes, the same
    :class:`Evaluation` a heads checkpoint gets, so reports read both alike."""
    from taxonomist.data.prepare import build_examples
    from taxonomist.inference.vlm import VLMPredictor, to_predictions
    from taxonomist.metrics.captions import caption_scores
    from taxonomist.models.build import build_decoding

    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)} for this model, got {split!r}")
    train_examples, held_out, _ = build_examples(cfg, "dev" if split == "dev" else "test")
    examples = held_out if split != "all" else [*train_examples, *held_out]
    predictor = VLMPredictor.from_pretrained(model_dir, decoding=build_decoding(cfg.generate))
    items = list({e.id: e for e in examples}.values())  # caption data: several references per image
    results = []
    step = cfg.generate.chunk_size
    with progress_bar("image", disable=not progress) as bar:
        task = bar.add_task(f"evaluate vlm ({predictor.task})", total=len(items))
        for start in range(0, len(items), step):
            chunk = items[start : start + step]
            results += predictor.predict(
                [e.image for e in chunk],
                [e.category for e in chunk],
                [e.id for e in chunk],
                titles=[e.title for e in chunk],
            )
            bar.advance(task, len(chunk))
    ok = [r for r in results if r.best is not None and not r.best.error]
    summary: dict = {"split": split, "task": predictor.task, "n": len(items), "failed": len(items) - len(ok)}
    evaluation = None
    if predictor.task == "caption":
        references: dict[str, list[str]] = {}
        for e in examples:
            references.setdefault(e.id, []).append(e.answer)
        # A failed image gets an empty caption: scored, not dropped, as a challenge would.
        predictions = {r.id: r.best.text if r in ok else "" for r in results}  # type: ignore[union-attr]
        # FGD fits a covariance: a one-image split (a smoke run) gets the other scores, FGD none.
        summary.update(caption_scores(predictions, references, fgd=len(references) >= 2).to_dict())
    else:
        assert predictor.schema is not None
        evaluation = _vlm_attribute_evaluation(
            items, train_examples, to_predictions(ok), predictor.schema, split, len(ok) / max(1, len(items))
        )
        scored = evaluation.rows[evaluation.rows["confidence"].notna()]
        summary.update(
            evaluation.report.to_dict(),
            valid_fraction=evaluation.valid_fraction,
            ece=expected_calibration_error(scored["confidence"].to_numpy(), scored["correct"].to_numpy())
            if len(scored)
            else None,
            baseline_score=evaluation.to_dict()["baseline_score"],
            score_interval=evaluation.to_dict()["score_interval"],
        )
    if output is not None:
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output / "evaluation.json", json.dumps(summary, indent=1, default=str))
        if evaluation is not None:
            write_evaluation(evaluation, output, summary=summary)
        else:
            atomic_write_text(output / "evaluation.md", _caption_markdown(summary))
    return summary, evaluation


def _vlm_attribute_evaluation(
    items: list, train_examples: list, preds: list, schema: Schema, split: str, valid: float
) -> Evaluation:
    """The VLM's attribute answers scored like a heads checkpoint's: the metric, the scored rows with
    each value's confidence, and the majority baseline counted on the training examples."""
    truth = pd.DataFrame([{ID: e.id, CATEGORY: e.category, **json.loads(e.answer)} for e in items])
    truth = truth.reindex(columns=[ID, CATEGORY, *schema.attributes])
    predicted = wide_named_frame(preds, schema.attributes)
    failed = truth.loc[~truth[ID].isin(predicted[ID]), [ID, CATEGORY]]
    predicted = pd.concat([predicted, failed], ignore_index=True)
    train_truth = pd.DataFrame(
        [{ID: e.id, CATEGORY: e.category, **json.loads(e.answer)} for e in train_examples]
    )
    reference = train_truth if len(train_truth) else truth
    catalog = Catalog(
        truth, list(schema.attributes), None, "{id}", {c: list(a) for c, a in schema.categories.items()}
    )
    confidence = {a: np.full(len(truth), np.nan) for a in schema.attributes}
    row_of = {item_id: k for k, item_id in enumerate(truth[ID])}
    for p in preds:
        for attribute, value in p.attributes.items():
            confidence[attribute][row_of[p.id]] = value.confidence
    rows = scored_rows(catalog, predicted, confidence)
    rows["path"] = rows[ID].map({e.id: e.image for e in items})
    return Evaluation(
        attribute_score(truth, predicted, schema.categories),
        split=split,
        rows=rows,
        baseline=attribute_score(
            truth, majority_predictions(reference, truth, schema.categories), schema.categories
        ),
        baseline_source=f"the {len(reference):,} training examples",
        valid_fraction=valid,
        interval=bootstrap_scores(truth, {"model": predicted}, schema.categories).interval("model"),
    )


def _caption_markdown(summary: dict) -> str:
    scores = {k: v for k, v in summary.items() if isinstance(v, int | float) and k not in ("n", "failed")}
    lines = [
        f"**Captions** ({summary['n']} images, {summary['failed']} failed; {summary['split']} split)",
        "",
    ]
    lines += ["| metric | value |", "|---|---:|", *(f"| {k} | {v:.4f} |" for k, v in scores.items())]
    return "\n".join(lines) + "\n"
