"""Recipe ``self-train``: heads on a few labels, then rounds of pseudo-labelling the unlabeled rows.

Round 0 trains the heads on the labeled rows alone. Each later round predicts every unlabeled row on
the original image and on its augmented views (mirrored: no attribute here depends on left/right),
calibrates those predictions with temperatures fitted on held-out labeled rows, keeps a pseudo-label
(row, attribute) only where the views agree and the calibrated probability clears the threshold
(optionally only the most confident share per value), and retrains the heads on labels ∪ pseudo-labels.
Features are cached per view, so a round costs one heads training, not an embedding pass.

Where the catalog has listing text, the teacher also reads it (``self_training.text_view``): a title
classifier fit on the same labeled rows gives a second, independent opinion, multiplied into each image
view's probabilities. An image model's own confident cells are the ones it already gets right, so
retraining on them alone changes little; titles name values the image model misses. The student is then
the image heads alone.

With listing heads (``heads.inputs: [image, text]``) the student is the fused model: every round trains
listing heads (text features fitted on the labeled rows, as the heads recipe fits them on its training
part) on labels ∪ pseudo-labels, and the teacher of the next round is that fused model read on each image
view with the row's title. The separate title classifier is not used then: the teacher already reads the
title, and multiplying the same evidence in twice would make it overconfident.

Held-out labeled rows ("dev") pick each round's epoch, fit its temperatures and pick the best round:
the test part of the shared data step is only reported on. Every round lands in ``out/round-k/``
(checkpoint, pseudo-labels, metrics) before ``progress.json`` names it done, so a rerun after a kill
resumes at the next round.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from taxonomist.config import ConfigError, RunConfig
from taxonomist.data.catalog import CATEGORY, ID, TEXT, CatalogError, describe_counts, expand_path
from taxonomist.data.labels import MISSING
from taxonomist.data.policies import PolicyResult, apply_policy
from taxonomist.data.prepare import (
    DATA_REPORT,
    POLICY,
    DataReport,
    PreparedData,
    policy_options,
    prepare_catalog,
)
from taxonomist.data.schema import Schema
from taxonomist.data.split import split_per_category
from taxonomist.features.build import embed_options
from taxonomist.features.embed import embed_catalog
from taxonomist.features.text import ListingText
from taxonomist.io import ResumeError, atomic_write_frame, atomic_write_json, atomic_write_text
from taxonomist.metrics import AttributeReport, apply_temperature, fit_temperature
from taxonomist.models.build import heads_checkpoint, load_heads_checkpoint
from taxonomist.models.checkpoint import HeadsCheckpoint
from taxonomist.models.fusion import ListingHeads
from taxonomist.models.heads import AttributeHeads, allowed_masks
from taxonomist.models.text_attributes import TextAttributeClassifier
from taxonomist.training.heads import (
    Calibration,
    FeatureSet,
    attach_text,
    embedding_backbone,
    feature_set,
    fit_calibration,
    fit_heads,
    fit_recipe_heads,
    part_report,
    predict_decisions,
    predict_probs,
    resume_settings,
    rows_digest,
    text_record,
)

PROGRESS_FILE = "progress.json"
PSEUDO_FILE = "pseudo_labels.parquet"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class Partition:
    """Positional rows of the training split: labeled for fitting, labeled held out, unlabeled pool."""

    fit: np.ndarray
    dev: np.ndarray
    pool: np.ndarray


def partition(
    frame: pd.DataFrame,
    attributes_by_category: Mapping[str, Sequence[str]],
    labeled_fraction: float,
    dev_fraction: float,
    seed: int,
) -> Partition:
    """Seeded per-category draw of the labeled rows (at least one per category that has any); rows with
    no label at all always join the pool."""
    if not 0 < labeled_fraction <= 1:
        raise ValueError(f"labeled_fraction must be in (0, 1], got {labeled_fraction}")
    unlabeled = np.ones(len(frame), dtype=bool)
    for category, attributes in attributes_by_category.items():
        rows = (frame[CATEGORY] == category).to_numpy()
        present = [a for a in attributes if a in frame.columns]
        if present:
            unlabeled[rows] = frame.loc[rows, present].isna().all(axis=1).to_numpy()
    labeled = np.flatnonzero(~unlabeled)
    hidden = np.array([], dtype=np.int64)
    if labeled_fraction < 1:
        drawn = np.zeros(len(labeled), dtype=bool)
        drawn[split_per_category(frame.iloc[labeled], labeled_fraction, seed)[1]] = True
        # A category's only labeled row is drawn, not hidden: the schema is inferred from the drawn rows,
        # so hiding it left the category without heads and its pool and test rows failed to encode.
        categories = frame[CATEGORY].to_numpy()[labeled]
        drawn |= ~np.isin(categories, categories[drawn])
        hidden, labeled = labeled[~drawn], labeled[drawn]
    fit, dev = split_per_category(frame.iloc[labeled], dev_fraction, seed)
    pool = np.sort(np.concatenate([hidden, np.flatnonzero(unlabeled)]))
    return Partition(labeled[fit], labeled[dev], pool)


def calibrated_probabilities(
    model: AttributeHeads | ListingHeads,
    data: FeatureSet,
    temperatures: Mapping[str, float],
    by_inputs: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, np.ndarray]:
    """attribute → (n, k) calibrated probabilities; all zeros where the attribute does not apply.

    Without the prior correction: a pseudo-label is the most probable value, since the student's own
    correction (chosen on dev) already lifts rare values at prediction."""
    out = {}
    for attribute, p in predict_probs(model, data, temperatures, by_inputs).items():
        out[attribute] = p.numpy() * model.mask(attribute)[data.category].numpy()
    return out


def select_pseudo_labels(
    views: Sequence[Mapping[str, np.ndarray]], threshold: float, *, require_agreement: bool = True
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(codes, confidence) per attribute from each view's calibrated probabilities.

    The label is the argmax of the view-averaged probability and its confidence that average's value;
    a row keeps it (else ``MISSING``) when the confidence reaches ``threshold`` and, with
    ``require_agreement``, every view's own argmax is that label. Rows whose probabilities are all
    zero (the attribute does not apply to their category) never get one.
    """
    codes, confidence = {}, {}
    for attribute in views[0]:
        stack = np.stack([np.asarray(v[attribute], dtype=np.float64) for v in views])  # (views, n, k)
        mean = stack.mean(0)
        label = mean.argmax(1)
        conf = mean[np.arange(len(label)), label]
        keep = (conf >= threshold) & (conf > 0)
        if require_agreement:
            keep &= (stack.argmax(2) == label).all(0)
        codes[attribute] = np.where(keep, label, MISSING)
        confidence[attribute] = np.where(keep, conf, 0.0)
    return codes, confidence


def with_text_view(image: Mapping[str, np.ndarray], text: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Product of an image view's and the text view's probabilities, renormalised per row.

    Independent opinions multiply: a value both find likely gains, one the title rules out loses. A row
    where they share no value (or the attribute does not apply) comes back all zeros: no pseudo-label.
    """
    out = {}
    for attribute, p in image.items():
        joint = p * text[attribute]
        total = joint.sum(1, keepdims=True)
        out[attribute] = np.divide(joint, total, out=np.zeros_like(joint), where=total > 0)
    return out


def cap_per_value(
    codes: Mapping[str, np.ndarray], confidence: Mapping[str, np.ndarray], fraction: float
) -> dict[str, np.ndarray]:
    """Per (attribute, value): keep the most confident ``fraction`` of the rows pseudo-labelled with it.

    Confident predictions are mostly frequent values; a per-value share keeps rare values in the
    pseudo-labelled set, which matters to a score that weighs every value alike (macro-F1). Ties in
    confidence keep the earlier row.
    """
    out = {}
    for attribute, c in codes.items():
        c = c.copy()
        for value in np.unique(c[c != MISSING]):
            rows = np.flatnonzero(c == value)
            keep = math.ceil(fraction * len(rows))
            c[rows[np.argsort(-confidence[attribute][rows], kind="stable")[keep:]]] = MISSING
        out[attribute] = c
    return out


def agreement_with_truth(
    predicted: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray], selected: Mapping[str, np.ndarray]
) -> dict[str, float | None]:
    """Share of ``selected`` (row, attribute) cells with a known true label where ``predicted`` is right.

    Per attribute and ``all`` (pooled over cells); None where no selected cell has a known label.
    """
    out: dict[str, float | None] = {}
    hits = total = 0
    for attribute, chosen in selected.items():
        rows = (chosen != MISSING) & (truth[attribute] != MISSING)
        n = int(rows.sum())
        correct = int((predicted[attribute][rows] == truth[attribute][rows]).sum())
        out[attribute] = correct / n if n else None
        hits, total = hits + correct, total + n
    out["all"] = hits / total if total else None
    return out


def with_pseudo_labels(labeled: FeatureSet, pool: FeatureSet, codes: Mapping[str, np.ndarray]) -> FeatureSet:
    """Labeled rows plus every pool row that got at least one pseudo-label (the others add nothing);
    listing features (text, presence flags, lexical rows) come along when the sets have them."""
    rows = np.flatnonzero(np.any([c != MISSING for c in codes.values()], axis=0))
    picked = torch.as_tensor(rows, dtype=torch.long)
    out = FeatureSet(
        torch.cat([labeled.features, pool.features[picked]]),
        torch.cat([labeled.category, pool.category[picked]]),
        {
            a: torch.cat([v, torch.as_tensor(codes[a][rows], dtype=torch.long)])
            for a, v in labeled.labels.items()
        },
    )
    if labeled.text is not None:
        from scipy import sparse

        out.text = torch.cat([labeled.text, pool.text[picked]])
        out.present = torch.cat([labeled.present, pool.present[picked]])
        if labeled.lexical is not None:
            out.lexical = sparse.vstack([labeled.lexical, pool.lexical[rows]], format="csr")
    return out


@dataclass
class SelfTrainingData:
    """Everything the rounds need, built once: features of each part and of each view of the pool."""

    schema: Schema
    checkpoint: HeadsCheckpoint
    """Backbone spec, schema and head sizes shared by every round's checkpoint."""
    backbone_state: dict[str, torch.Tensor] | None
    fit: FeatureSet
    fit_frame: pd.DataFrame
    dev: FeatureSet
    dev_frame: pd.DataFrame
    test: FeatureSet
    test_frame: pd.DataFrame
    pool_frame: pd.DataFrame
    pool_views: list[FeatureSet]
    """Original view first; the pool's labels in there are the hidden ones: never trained on."""
    embed_seconds: float
    pool_text: dict[str, np.ndarray] | None = None
    """Calibrated title-classifier probabilities of the pool's rows; None = no text view."""
    text_report: dict | None = None
    """The title classifier's temperatures and accuracies (dev; pool, against the hidden labels)."""
    data_report: DataReport | None = None
    text: ListingText | None = None
    """Fitted text features of a fused student (listing heads); None = the image heads."""

    def score(
        self, frame: pd.DataFrame, logits: Mapping[str, torch.Tensor], rows: np.ndarray | None = None
    ) -> AttributeReport:
        """The competition score of ``logits`` on ``frame``'s rows; ``rows``: of those positions alone."""
        return part_report(logits, frame, self.schema, rows)


def training_rows(data: PreparedData) -> np.ndarray:
    """Positional rows of ``data.catalog`` this recipe may learn from: every part but test."""
    return np.sort(np.concatenate([data.split.train, data.split.dev]))


def prepare(cfg: RunConfig, *, progress: bool = True) -> SelfTrainingData:
    """Split, hide the pool's labels from training, embed every part (pool: every view) through the cache.

    The shared data step gives the test part (only reported) and the rows this recipe partitions into
    labeled fit and dev rows and the unlabeled pool: its train and dev parts together, since a
    semi-supervised run holds out dev rows from its own labeled budget.
    """
    st = cfg.self_training
    data = prepare_catalog(cfg)
    catalog = data.catalog
    train_idx = training_rows(data)
    train_frame = catalog.frame.iloc[train_idx].reset_index(drop=True)
    test_frame = data.part("test")
    parts = partition(
        train_frame, catalog.attributes_by_category, st.labeled_fraction, st.dev_fraction, st.seed
    )
    # Dev picks each round's epoch and fits its temperatures: nothing trains without it.
    if not len(parts.dev):
        drawn = describe_counts(train_frame[CATEGORY].iloc[parts.fit].astype(str).value_counts().to_dict())
        raise ConfigError(
            f"self_training.labeled_fraction={st.labeled_fraction} and dev_fraction={st.dev_fraction} leave "
            f"no labeled row to hold out for dev (labeled rows drawn: {drawn}); raise them"
        )
    labeled = apply_policy(
        cfg.missing_labels.policy,
        train_frame.iloc[parts.fit],
        catalog.attributes_by_category,
        **policy_options(cfg.missing_labels),
    )
    # As the shared data step refuses for its train part: a category without a fit row has no heads
    # to fit (without a dev row, none at all, and encoding its pool and test rows failed on its name).
    emptied = sorted(set(train_frame[CATEGORY].iloc[parts.fit].astype(str)) - set(labeled.frame[CATEGORY]))
    if emptied:
        raise CatalogError(
            f"{catalog.source}: missing_labels.policy={labeled.policy} left no labeled fit row of {emptied} "
            "(every drawn one lacked a label it needs); use missing_labels.policy=mask, which keeps rows "
            "with gaps, or raise self_training.labeled_fraction"
        )
    report = _self_training_report(data.report, labeled, train_frame.iloc[parts.fit], parts, len(test_frame))
    dev_frame = train_frame.iloc[parts.dev].reset_index(drop=True)
    # The vocabulary comes from the labeled training rows only: never the hidden ones, never test.
    schema = (
        Schema.load(expand_path(cfg.catalog.schema))
        if cfg.catalog.schema
        else Schema.infer(
            pd.concat([labeled.frame, dev_frame]),
            catalog.attributes_by_category,
            attributes=catalog.attributes,
        )
    )
    categories = list(schema.categories)

    backbone, backbone_state = embedding_backbone(cfg)
    start = time.perf_counter()
    embedded = embed_catalog(catalog, backbone, **embed_options(cfg.embed), progress=progress)
    catalog.require_readable_images(int(embedded.ok.sum()), Counter(e.reason for e in embedded.errors))
    pool_catalog = catalog.subset(train_idx[parts.pool])
    views = [
        embed_catalog(pool_catalog, backbone, **embed_options(cfg.embed), progress=progress, view=v)
        for v in st.views
    ]
    embed_seconds = time.perf_counter() - start

    fit, fit_frame = feature_set(labeled.frame, catalog, embedded, schema, categories)
    dev, dev_frame = feature_set(dev_frame, catalog, embedded, schema, categories)
    test, test_frame = feature_set(test_frame, catalog, embedded, schema, categories)
    readable = np.logical_and.reduce([embedded.ok[train_idx[parts.pool]], *(e.ok for e in views)])
    pool_frame = pool_catalog.frame[readable].reset_index(drop=True)
    pool_views = [feature_set(pool_frame, catalog, embedded, schema, categories)[0]] + [
        feature_set(pool_frame, pool_catalog, e, schema, categories)[0] for e in views
    ]
    # feature_set leaves out rows whose image could not be read (a pool row: in any view); the report
    # counts them per part, or the parts it names would hold rows that no round ever saw.
    report.unreadable_images = {
        "fit": len(labeled.frame) - len(fit),
        "dev": len(parts.dev) - len(dev),
        "pool": len(parts.pool) - len(pool_frame),
        "test": report.parts["test"] - len(test),
    }
    text = None
    if "text" in cfg.heads.inputs:
        # Fitted on the labeled rows only (the probe cross-fitted there); every pool view shares the
        # pool's title features, since a view changes the image, not the listing's text.
        text = attach_text(
            cfg, schema, (fit, fit_frame), (dev, dev_frame), (test, test_frame), (pool_views[0], pool_frame)
        )
        for view in pool_views[1:]:
            view.text, view.present, view.lexical = (
                pool_views[0].text,
                pool_views[0].present,
                pool_views[0].lexical,
            )
    checkpoint = heads_checkpoint(
        cfg,
        backbone,
        schema,
        categories,
        embedded.features.shape[1],
        text=text_record(cfg, text) if text is not None else {},
    )
    pool_text = text_report = None
    if st.text_view and text is None and TEXT in catalog.frame.columns:
        pool_text, text_report = text_view(
            [(fit_frame, fit), (dev_frame, dev), (pool_frame, pool_views[0])],
            train_frame[TEXT],
            schema,
            categories,
            calibrate=cfg.train.calibrate,
        )
    return SelfTrainingData(
        schema,
        checkpoint,
        backbone_state,
        fit,
        fit_frame,
        dev,
        dev_frame,
        test,
        test_frame,
        pool_frame,
        pool_views,
        embed_seconds,
        pool_text,
        text_report,
        report,
        text,
    )


def _self_training_report(
    shared: DataReport, labeled: PolicyResult, fit_rows: pd.DataFrame, parts: Partition, n_test: int
) -> DataReport:
    """The shared data step's report with this recipe's own parts (it re-partitions train and dev into
    labeled fit rows, dev rows and the pool) and its own policy counts, on the fit rows it trains on."""
    gone = fit_rows[~fit_rows[ID].isin(labeled.frame[ID])][CATEGORY].astype(str).value_counts()
    dropped = {reason: counts for reason, counts in shared.dropped_rows.items() if reason != POLICY}
    if len(gone):
        dropped[POLICY] = {str(c): int(n) for c, n in gone.items()}
    return dataclasses.replace(
        shared,
        parts={"fit": len(labeled.frame), "dev": len(parts.dev), "pool": len(parts.pool), "test": n_test},
        policy={"policy": labeled.policy, "rows_dropped": labeled.dropped, "cells_filled": labeled.filled},
        dropped_rows=dropped,
    )


def text_view(
    parts: Sequence[tuple[pd.DataFrame, FeatureSet]],
    vocabulary: Sequence[str],
    schema: Schema,
    categories: list[str],
    *,
    calibrate: bool = True,
) -> tuple[dict[str, np.ndarray], dict]:
    """The pool's calibrated title-view probabilities, from a classifier fit on the labeled rows.

    ``parts`` = (fit, dev, pool) frames with their feature sets: fit trains, dev fits one temperature per
    attribute (as for the image heads), the pool is predicted. ``vocabulary`` (every training-split text,
    labeled or not) fits the n-gram vocabulary and IDF only.
    """
    (fit_frame, fit), (dev_frame, dev), (pool_frame, pool) = parts
    masks = allowed_masks(schema, categories)
    classifier = TextAttributeClassifier().fit(
        fit_frame[TEXT].tolist(),
        fit.category.numpy(),
        {a: v.numpy() for a, v in fit.labels.items()},
        {a: len(schema.values(a)) for a in fit.labels},
        len(categories),
        vocabulary_texts=list(vocabulary),
    )
    dev_z = classifier.log_probs(dev_frame[TEXT].tolist(), dev.category.numpy())
    pool_z = classifier.log_probs(pool_frame[TEXT].tolist(), pool.category.numpy())
    probabilities: dict[str, np.ndarray] = {}
    report: dict[str, dict] = {"temperature": {}, "dev_accuracy": {}, "pool_accuracy": {}}
    for attribute, z in dev_z.items():
        dev_allowed = masks[attribute][dev.category].numpy()
        labels = dev.labels[attribute].numpy()
        t = fit_temperature(z, labels, dev_allowed) if calibrate else 1.0
        pool_allowed = masks[attribute][pool.category].numpy()
        probabilities[attribute] = apply_temperature(pool_z[attribute], t, pool_allowed)
        dev_p = apply_temperature(z, t, dev_allowed)
        report["temperature"][attribute] = t
        for name, p, y in (
            ("dev_accuracy", dev_p, labels),
            ("pool_accuracy", probabilities[attribute], pool.labels[attribute].numpy()),
        ):
            known = y != MISSING
            report[name][attribute] = float((p[known].argmax(1) == y[known]).mean()) if known.any() else None
    return probabilities, report


@dataclass
class RoundModel:
    """One round's heads with the calibration they are predicted with."""

    model: AttributeHeads | ListingHeads
    calibration: Calibration

    def probabilities(self, data: FeatureSet) -> dict[str, np.ndarray]:
        fitted = self.calibration
        return calibrated_probabilities(self.model, data, fitted.temperatures, fitted.temperatures_by_inputs)


def train_round(
    cfg: RunConfig, data: SelfTrainingData, train_set: FeatureSet, teacher: RoundModel | None, progress: bool
) -> tuple[RoundModel, dict]:
    """Heads on ``train_set``, epoch picked and temperatures fitted on dev; scores on dev and test.
    A fused student trains as the heads recipe trains listing heads (image fallback first)."""

    def score(z: Mapping[str, torch.Tensor], rows: np.ndarray | None = None) -> float:
        return data.score(data.dev_frame, z, rows).score

    if data.text is not None:
        masks = allowed_masks(data.schema, data.checkpoint.categories)
        model, history = fit_recipe_heads(cfg, (train_set, data.dev), masks, data.text, score, progress)
    else:
        torch.manual_seed(cfg.train.seed)
        model = data.checkpoint.build_model()
        if cfg.self_training.warm_start and teacher is not None:
            model.load_state_dict(teacher.model.state_dict())
        history = fit_heads(model, train_set, data.dev, score, cfg.train, progress=progress)
    fitted = fit_calibration(cfg, model, train_set, data.dev, score)
    # No test part (train.test_fraction=0) has no test score: None, as the heads recipe writes, not NaN.
    test_report = None
    if len(data.test):
        test_report = data.score(data.test_frame, predict_decisions(model, data.test, fitted))
    record = {
        "dev_score": data.score(data.dev_frame, predict_decisions(model, data.dev, fitted)).score,
        "test_score": None if test_report is None else test_report.score,
        "test_per_attribute": None
        if test_report is None
        else dict(
            zip(test_report.per_attribute["attribute"], test_report.per_attribute["harmonic"], strict=True)
        ),
        "n_train_rows": len(train_set),
        "best_epoch": history.best_epoch,
    }
    return RoundModel(model, fitted), record


@dataclass
class SelfTrainingReport:
    output_dir: str
    rounds: list[dict]
    """Per round: scores, pseudo-label counts and precision, supervised accuracy on the same cells."""
    best_round: int
    """Round with the best score on the held-out labeled rows (never on test)."""
    n_fit: int
    n_dev: int
    n_pool: int
    n_test: int
    embed_seconds: float
    text_view: dict | None = None
    """The title classifier's temperatures and accuracies; None = no separate title classifier."""
    student: str = "image heads"
    """What every round trains: ``"image heads"`` or ``"listing heads"`` (image + text, fused)."""


def self_train(cfg: RunConfig, output_dir: str | Path, *, progress: bool = True) -> SelfTrainingReport:
    """Round 0 (supervised on the labeled rows), then ``cfg.self_training.rounds`` rounds; resumable."""
    st = cfg.self_training
    if cfg.heads.members > 1:
        raise ConfigError("heads.members > 1 is for the heads recipe; self-training trains one student")
    if st.warm_start and "text" in cfg.heads.inputs:
        raise ConfigError(
            "self_training.warm_start applies to image heads; a fused student (heads.inputs: [image, "
            "text]) trains fresh each round, its image fallback first"
        )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = load_progress(out / PROGRESS_FILE, resume_settings(cfg, "self_training", free=("rounds",)))
    data = prepare(cfg, progress=progress)
    # Settings are checked before embedding; the rows only once prepared. Runs that recorded none: as before.
    digest = rows_digest(data.fit_frame, data.dev_frame, data.pool_frame, data.test_frame)
    if state.setdefault("data", digest) != digest:
        raise ResumeError(
            f"{out} holds self-training rounds run on other data (the catalog's rows or labels were edited); "
            "use another output folder or delete this one"
        )
    if data.data_report is not None:
        atomic_write_text(out / DATA_REPORT, data.data_report.to_json())
    truth = {a: v.numpy() for a, v in data.pool_views[0].labels.items()}
    records: list[dict] = state["rounds"]
    teacher: RoundModel | None = None
    supervised: dict[str, np.ndarray] = {}
    for k in range(st.rounds + 1):
        round_dir = out / f"round-{k}"
        if k < len(records):  # finished before a kill, or by an earlier run with fewer rounds
            finished, model = load_heads_checkpoint(round_dir)
            current = RoundModel(model, Calibration.of_checkpoint(finished))
        else:
            round_start = time.perf_counter()
            train_set, record = data.fit, {"round": k}
            if teacher is not None:
                views = [teacher.probabilities(v) for v in data.pool_views]
                if data.pool_text is not None:
                    views = [with_text_view(v, data.pool_text) for v in views]
                codes, confidence = select_pseudo_labels(
                    views, st.threshold, require_agreement=st.require_agreement
                )
                if st.value_fraction < 1:
                    codes = cap_per_value(codes, confidence, st.value_fraction)
                    confidence = {a: np.where(codes[a] != MISSING, v, 0.0) for a, v in confidence.items()}
                train_set = with_pseudo_labels(data.fit, data.pool_views[0], codes)
                write_pseudo_labels(round_dir / PSEUDO_FILE, data.pool_frame, codes, confidence, data.schema)
                record |= {
                    "n_pseudo": {a: int((c != MISSING).sum()) for a, c in codes.items()},
                    "pseudo_label_precision": agreement_with_truth(codes, truth, codes),
                    "supervised_accuracy_same_items": agreement_with_truth(supervised, truth, codes),
                }
            current, scores = train_round(cfg, data, train_set, teacher, progress)
            record |= scores | {"seconds": time.perf_counter() - round_start}
            save_round(round_dir, cfg, data, current, record)
            records.append(record)
            state["best_round"] = max(range(len(records)), key=lambda r: records[r]["dev_score"])
            atomic_write_json(out / PROGRESS_FILE, state, indent=1)
        if k == 0:
            supervised = {
                a: np.where(p.sum(1) > 0, p.argmax(1), MISSING)
                for a, p in current.probabilities(data.pool_views[0]).items()
            }
        teacher = current
    return SelfTrainingReport(
        str(out),
        records[: st.rounds + 1],
        max(range(st.rounds + 1), key=lambda r: records[r]["dev_score"]),
        len(data.fit),
        len(data.dev),
        len(data.pool_frame),
        len(data.test),
        data.embed_seconds,
        data.text_report,
        "image heads" if data.text is None else "listing heads",
    )


def save_round(
    round_dir: Path, cfg: RunConfig, data: SelfTrainingData, current: RoundModel, record: dict
) -> None:
    """One round's checkpoint (a listing checkpoint carries its fitted text features), config and metrics."""
    checkpoint = dataclasses.replace(data.checkpoint, **current.calibration.checkpoint_fields())
    checkpoint.metrics = {"test_score": record["test_score"], "dev_score": record["dev_score"]}
    checkpoint.save(round_dir, current.model, data.backbone_state)
    if data.text is not None:
        data.text.save(round_dir)
    cfg.save(round_dir / "config.yaml")
    atomic_write_json(round_dir / METRICS_FILE, record, indent=1)


def write_pseudo_labels(
    path: Path,
    pool: pd.DataFrame,
    codes: Mapping[str, np.ndarray],
    confidence: Mapping[str, np.ndarray],
    schema: Schema,
) -> None:
    """Long layout (id, category, attribute, value, confidence): one row per kept pseudo-label."""
    parts = []
    for attribute, c in codes.items():
        rows = np.flatnonzero(c != MISSING)
        vocab = np.asarray(schema.values(attribute), dtype=object)
        parts.append(
            pd.DataFrame(
                {
                    ID: pool[ID].to_numpy()[rows],
                    CATEGORY: pool[CATEGORY].to_numpy()[rows],
                    "attribute": attribute,
                    "value": vocab[c[rows]],
                    "confidence": confidence[attribute][rows],
                }
            )
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_frame(pd.concat(parts, ignore_index=True), path)


def load_progress(path: Path, settings: dict) -> dict:
    if not path.exists():
        return {"settings": settings, "rounds": [], "best_round": None}
    state = json.loads(path.read_text(encoding="utf-8"))
    if state["settings"] != settings:
        raise ResumeError(
            f"{path.parent} holds self-training rounds run with other settings; "
            "use another output folder or delete this one"
        )
    return state
