"""Recipe ``heads``: frozen backbone features (cached) → :class:`AttributeHeads`, trained in seconds.

The loop keeps the epoch with the best dev score (the competition metric, not the loss) and stops when
it has not improved for ``patience`` epochs; the test part is only scored.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from taxonomist.config import ConfigError, RunConfig, TrainConfig
from taxonomist.data.catalog import CATEGORY, ID, TEXT
from taxonomist.data.images import write_errors
from taxonomist.data.labels import MISSING, encode_labels
from taxonomist.data.prepare import DATA_REPORT, PARTS, DataReport, prepare_catalog
from taxonomist.data.schema import Schema
from taxonomist.devices import resolve_device
from taxonomist.features.build import embed_options, runtime_options
from taxonomist.features.embed import embed_catalog, runtime_backbone
from taxonomist.features.text import LexicalProbe, LexicalView, ListingText, TextFeatures, text_cache
from taxonomist.io import atomic_write_text
from taxonomist.metrics import (
    AttributeReport,
    apply_temperature,
    attribute_score,
    cross_entropy,
    expected_calibration_error,
    fit_temperature,
)
from taxonomist.models.attention_head import AttentionHeads
from taxonomist.models.backbones import Backbone
from taxonomist.models.build import build_backbone, heads_checkpoint
from taxonomist.models.checkpoint import HeadsCheckpoint, calibrated_probs, decision_scores
from taxonomist.models.fusion import (
    HAS_IMAGE,
    HAS_TEXT,
    ListingEnsemble,
    ListingHeads,
    lexical_batch,
    listing_heads,
    modality_dropout,
)
from taxonomist.models.heads import AttributeHeads, HeadsEnsemble, allowed_masks
from taxonomist.models.text import FINGERPRINT_SCHEME, TextEncoder
from taxonomist.progress import progress_bar
from taxonomist.training.losses import masked_cross_entropy
from taxonomist.training.schedule import warmup_cosine


@dataclass
class FeatureSet:
    """Features, category indices and encoded labels of one split; listing heads add text features and
    the (n, 2) image/text ``present`` flags."""

    features: torch.Tensor
    category: torch.Tensor
    labels: dict[str, torch.Tensor]
    text: torch.Tensor | None = None
    present: torch.Tensor | None = None
    lexical: object = None
    """Listing heads with a lexical view: its scipy CSR rows."""

    def __len__(self) -> int:
        return len(self.features)

    def take(self, rows: np.ndarray) -> FeatureSet:
        """The split's ``rows`` (positions) alone."""
        index = torch.as_tensor(rows, dtype=torch.long)
        return FeatureSet(
            self.features[index],
            self.category[index],
            {a: v[index] for a, v in self.labels.items()},
            None if self.text is None else self.text[index],
            None if self.present is None else self.present[index],
            None if self.lexical is None else self.lexical[rows],
        )

    @classmethod
    def build(
        cls, features: np.ndarray, category: np.ndarray, labels: Mapping[str, np.ndarray]
    ) -> FeatureSet:
        return cls(
            torch.as_tensor(features, dtype=torch.float32),
            torch.as_tensor(category, dtype=torch.long),
            {a: torch.as_tensor(v, dtype=torch.long) for a, v in labels.items()},
        )


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = -math.inf
    seconds: float = 0.0
    members: list[History] = field(default_factory=list)
    """An ensemble's (``heads.members``): each member's own history; ``best_score`` is the ensemble's."""

    @property
    def best_epochs(self) -> list[int]:
        """Each member's best epoch (a single model's one)."""
        return [h.best_epoch for h in self.members] or [self.best_epoch]


def heads_forward(
    model: AttributeHeads | HeadsEnsemble | ListingHeads,
    data: FeatureSet,
    rows,
    present: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Logits of ``data``'s ``rows``; listing heads see ``present`` (default: the rows' own flags)."""
    if listing_heads(model) is not None:
        flags = data.present[rows] if present is None else present
        lexical = None
        if data.lexical is not None:
            lexical = lexical_batch(data.lexical[rows if isinstance(rows, slice) else np.asarray(rows)])
        return model(data.features[rows], data.text[rows], data.category[rows], flags, lexical)
    return model(data.features[rows], data.category[rows])


@torch.no_grad()
def predict_logits(
    model: AttributeHeads | HeadsEnsemble | ListingHeads,
    data: FeatureSet,
    batch_size: int = 4096,
    *,
    hide: str | None = None,
) -> dict[str, torch.Tensor]:
    """``hide`` (listing heads): ``"text"`` or ``"image"``, scored as if every row lacked it."""
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {a: [] for a in model.attributes}
    # At least one (maybe empty) batch: no rows (an empty pool or test part) give (0, k) logits.
    for start in range(0, max(len(data), 1), batch_size):
        rows = slice(start, start + batch_size)
        present = None if hide is None else hidden_present(data.present[rows], hide)
        out = heads_forward(model, data, rows, present)
        for a, v in out.items():
            parts[a].append(v)
    return {a: torch.cat(v) for a, v in parts.items()}


def hidden_present(present: torch.Tensor, hide: str | None) -> torch.Tensor:
    """Listing heads' image/text flags with the ``hide`` input (``"text"`` or ``"image"``) removed."""
    if hide is None:
        return present
    present = present.clone()
    present[:, HAS_TEXT if hide == "text" else HAS_IMAGE] = False
    return present


def fit_heads(
    model: AttributeHeads | ListingHeads,
    train: FeatureSet,
    val: FeatureSet,
    score: Callable[[dict[str, torch.Tensor]], float],
    cfg: TrainConfig,
    *,
    progress: bool = True,
    text_dropout: float = 0.0,
    image_dropout: float = 0.0,
) -> History:
    """Train ``model`` in place; returns its history and leaves the best epoch's weights loaded.

    Listing heads train with modality dropout: each batch hides rows' text (``text_dropout``) and image
    (``image_dropout``) at random, from a generator of its own so the image-only path draws as before."""
    torch.manual_seed(cfg.seed)
    listing = isinstance(model, ListingHeads)
    if listing:
        model.set_standardization(train.features, train.text, train.present)
        hiding = torch.Generator().manual_seed(cfg.seed + 1)
    else:
        model.set_standardization(train.features)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train) / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    warmup = min(steps_per_epoch * cfg.warmup_epochs, total // 2)
    schedule = warmup_cosine(optimizer, warmup, total)
    history = History()
    best_state = copy.deepcopy(model.state_dict())
    generator = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    stale = 0
    with progress_bar("epoch", disable=not progress) as bar:
        task = bar.add_task("train heads", total=cfg.epochs)
        for epoch in range(cfg.epochs):
            model.train()
            order = torch.randperm(len(train), generator=generator)
            running = 0.0
            for step in range(steps_per_epoch):
                idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                present = (
                    modality_dropout(train.present[idx], text_dropout, image_dropout, hiding)
                    if listing
                    else None
                )
                logits = heads_forward(model, train, idx, present)
                loss = masked_cross_entropy(
                    logits, {a: v[idx] for a, v in train.labels.items()}, cfg.label_smoothing
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                running += loss.item()
            val_logits = predict_logits(model, val)
            val_loss = masked_cross_entropy(val_logits, val.labels).item()
            val_score = score(val_logits)
            history.epochs.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": running / steps_per_epoch,
                    "val_loss": val_loss,
                    "val_score": val_score,
                }
            )
            bar.update(task, advance=1, description=f"train heads (val {val_score:.4f})")
            if val_score > history.best_score:
                history.best_score, history.best_epoch, stale = val_score, epoch + 1, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
    model.load_state_dict(best_state)
    model.eval()
    history.seconds = time.perf_counter() - start
    return history


# --- the recipe: config → checkpoint directory -------------------------------------------------------


@dataclass
class TrainReport:
    output_dir: str
    score: float
    """Dev score: the split every choice was made on."""
    report: AttributeReport
    history: History
    calibration: dict[str, dict[str, float]]
    embed_seconds: float
    train_seconds: float
    n_train: int
    n_dev: int
    image_errors: int
    policy: str
    test_report: AttributeReport | None = None
    """Test part, seen by no choice; None without a test part (``train.test_fraction=0``)."""
    n_test: int = 0
    data: DataReport | None = None
    class_balance: dict[str, float] = field(default_factory=dict)
    """Each attribute's prior-correction strength (``train.class_balance``; with ``dev``, its choice)."""
    class_balance_by_inputs: dict[str, dict[str, float]] = field(default_factory=dict)
    """Listing heads with ``class_balance: dev``: the strengths chosen for rows missing an input."""


def logits_to_frame(
    logits: Mapping[str, torch.Tensor], ids: list[str], categories: list[str], schema: Schema
) -> pd.DataFrame:
    """Argmax per attribute, decoded to strings, only where the attribute applies to the row's category."""
    frame = pd.DataFrame({ID: ids, CATEGORY: categories})
    cats = np.asarray(categories)
    for attribute, z in logits.items():
        values = np.asarray(schema.values(attribute), dtype=object)[z.argmax(1).numpy()]
        applies = np.array([attribute in schema.categories.get(c, {}) for c in cats])
        frame[attribute] = np.where(applies, values, None)
    return frame


def feature_set(
    frame: pd.DataFrame, catalog, embedded, schema: Schema, categories: list[str]
) -> tuple[FeatureSet, pd.DataFrame]:
    """Cached features, category indices and labels of ``frame``'s rows whose image could be read."""
    by_id = {item_id: row for row, item_id in enumerate(catalog.ids)}
    cat_index = {c: i for i, c in enumerate(categories)}
    rows = np.array([by_id[i] for i in frame[ID]], dtype=np.int64)
    keep = embedded.ok[rows]
    frame = frame[keep].reset_index(drop=True)
    data = FeatureSet.build(
        embedded.features[rows[keep]],
        np.array([cat_index[c] for c in frame[CATEGORY]]),
        encode_labels(frame, schema),
    )
    return data, frame


def attach_text(
    cfg: RunConfig,
    schema: Schema,
    train: tuple[FeatureSet, pd.DataFrame],
    *others: tuple[FeatureSet, pd.DataFrame],
) -> ListingText:
    """Fit the text features on the ``train`` part's texts (and labels, for the probe) and fill each
    feature set's text features and image/text presence flags; returns the fitted text features.
    Training rows get the probe's cross-fitted features, the other parts the final probe's."""
    train_set, train_frame = train
    labels = {a: v.numpy() for a, v in train_set.labels.items()}
    text, features = fit_text(cfg, schema, train_frame, train_set.category.numpy(), labels)
    set_text(train_set, features)
    for data, frame in others:
        set_text(data, text.features(frame[TEXT].tolist(), data.category.numpy()))
    return text


def fit_text(
    cfg: RunConfig,
    schema: Schema,
    frame: pd.DataFrame,
    category: np.ndarray,
    labels: Mapping[str, np.ndarray],
) -> tuple[ListingText, TextFeatures]:
    """The configured text features fitted on ``frame``'s texts (lexical view) and labels (the probe,
    cross-fitted), and the features of those training rows: each gets the probe's probabilities from a
    model that never saw it."""
    if TEXT not in frame.columns:
        raise ConfigError("heads.inputs has 'text' but the catalog has no text: set catalog.text_columns")
    text = listing_text(cfg, schema)
    texts = frame[TEXT].tolist()
    if text.lexical is not None:
        text.lexical.fit(texts)
    probed = None
    if text.probe is not None:
        probed = text.probe.fit_transform(texts, category, dict(labels), seed=cfg.train.seed)
    return text, text.features(texts, category, probe_features=probed)


def listing_text(cfg: RunConfig, schema: Schema) -> ListingText:
    """The configured (unfitted) text features, embeddings cached beside the image features."""
    encoder = TextEncoder(
        cfg.text.encoder,
        max_length=cfg.text.max_length,
        batch_size=cfg.text.batch_size,
        device=str(resolve_device(cfg.embed.device)),
    )
    lexical = LexicalView() if cfg.text.lexical else None
    probe = None
    if cfg.text.probe:
        n_values = {a: len(schema.values(a)) for a in schema.attributes}
        probe = LexicalProbe(n_values, len(schema.categories), C=cfg.text.probe_c, folds=cfg.text.probe_folds)
    return ListingText(encoder, lexical, cache=text_cache(encoder, cfg.embed.cache_dir), probe=probe)


RESULT_SECTIONS = ("catalog", "missing_labels", "backbone", "embed", "heads", "text", "train")
"""Config sections whose settings shape a recipe's results (with the recipe's own section)."""
_NOT_RESULTS = {"embed": ("batch_size", "num_workers", "cache_dir", "device")}
"""Settings of those sections that change how fast a result comes, not the result."""


def resume_settings(cfg: RunConfig, own: str, free: tuple[str, ...] = ()) -> dict:
    """What must match for a run's finished part to be reused when it is resumed: the settings that
    shape results (:data:`RESULT_SECTIONS` and the recipe's ``own`` section, bar its ``free`` keys,
    such as a longer schedule), as they read back from JSON."""
    settings = {k: v for k, v in cfg.to_dict().items() if k in (*RESULT_SECTIONS, own)}
    skip = {**_NOT_RESULTS, own: free}
    settings = {
        k: {f: v for f, v in section.items() if f not in skip.get(k, ())} for k, section in settings.items()
    }
    return json.loads(json.dumps(settings))


def rows_digest(*frames: pd.DataFrame) -> str:
    """The rows a run learns from and is chosen on (ids, categories, labels, texts): a catalog edited
    between a crash and its rerun is other data, whose finished part is not this run's to continue."""
    digest = hashlib.sha256()
    for frame in frames:
        digest.update(json.dumps(list(frame.columns)).encode())
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def text_record(cfg: RunConfig, text: ListingText) -> dict:
    """What a listing checkpoint records about its text features (the predictor rebuilds them)."""
    return {
        **dataclasses.asdict(cfg.text),
        "fingerprint": text.encoder.weights_fingerprint(),
        "fingerprint_scheme": FINGERPRINT_SCHEME,
        "text_columns": list(cfg.catalog.text_columns),
        "dim": text.dim,
        "lexical_dim": text.lexical_dim,
        "probe_offset": text.probe_offset,
    }


def set_text(data: FeatureSet, text: TextFeatures, has_image: np.ndarray | None = None) -> None:
    """Attach text features; every row has its image unless ``has_image`` says otherwise."""
    has_image = np.ones(len(text), dtype=bool) if has_image is None else has_image
    data.text = torch.as_tensor(text.dense, dtype=torch.float32)
    data.lexical = text.lexical
    data.present = torch.as_tensor(np.stack([has_image, text.present], axis=1))


def build_heads(
    cfg: RunConfig, feature_dim: int, masks: Mapping[str, torch.Tensor], text: ListingText | None
) -> AttributeHeads | ListingHeads:
    if text is None:
        return AttributeHeads(
            feature_dim,
            masks,
            hidden=cfg.heads.hidden,
            category_dim=cfg.heads.category_dim,
            dropout=cfg.heads.dropout,
        )
    return ListingHeads(
        feature_dim,
        text.dim,
        masks,
        hidden=cfg.heads.hidden,
        category_dim=cfg.heads.category_dim,
        dropout=cfg.heads.dropout,
        fusion=cfg.text.fusion,
        lexical_dim=text.lexical_dim,
        probe_offset=text.probe_offset,
        lexical_width=cfg.text.lexical_width,
        image_fallback=cfg.text.image_fallback,
    )


def embedding_backbone(cfg: RunConfig) -> tuple[Backbone, dict[str, torch.Tensor] | None]:
    """The frozen backbone the heads recipes embed with (on ``embed``'s device, runtime and precision),
    and the weights their checkpoint must carry: None for pretrained ones, which are rebuilt from their
    name; a copy for anything else."""
    backbone = build_backbone(cfg.backbone)
    state = None if cfg.backbone.pretrained else copy.deepcopy(backbone.state_dict())
    return runtime_backbone(backbone, **runtime_options(cfg.embed)), state


def fit_recipe_heads(
    cfg: RunConfig,
    data: tuple[FeatureSet, FeatureSet],
    masks: Mapping[str, torch.Tensor],
    text: ListingText | None,
    score: Callable[[dict[str, torch.Tensor]], float],
    progress: bool,
) -> tuple[AttributeHeads | HeadsEnsemble | ListingHeads, History]:
    """The heads on ``data`` (train, dev), as the recipes train them (``text``: listing heads), from
    ``heads.members`` seeds ``train.seed``, +1, … (each stops at its own best dev epoch). Listing heads
    with an image fallback get the image recipe's single heads first, trained exactly as that recipe
    trains them, and every member shares them."""
    train_set, dev_set = data
    dim = train_set.features.shape[1]
    # Seeded here, not earlier: whether embedding ran (its DataLoader draws from the global RNG) or hit
    # the cache must not change the initial weights.
    torch.manual_seed(cfg.train.seed)
    fallback = None
    if text is not None and cfg.text.image_fallback:
        fallback = build_heads(cfg, dim, masks, None)
        fit_heads(fallback, train_set, dev_set, score, cfg.train, progress=progress)
    members, histories = [], []
    for offset in range(cfg.heads.members):
        train_cfg = dataclasses.replace(cfg.train, seed=cfg.train.seed + offset)
        torch.manual_seed(train_cfg.seed)
        member = build_heads(cfg, dim, masks, text)
        if fallback is not None:
            member.set_image_fallback(fallback)
        histories.append(
            fit_heads(
                member,
                train_set,
                dev_set,
                score,
                train_cfg,
                progress=progress,
                text_dropout=cfg.text.text_dropout,
                image_dropout=cfg.text.image_dropout,
            )
        )
        members.append(member)
    if len(members) == 1:
        return members[0], histories[0]
    model = (ListingEnsemble(members) if text is not None else HeadsEnsemble(members)).eval()
    history = History(
        best_score=score(predict_logits(model, dev_set)),
        seconds=sum(h.seconds for h in histories),
        members=histories,
    )
    return model, history


def train(cfg: RunConfig, output_dir: str | Path, *, progress: bool = True) -> TrainReport:
    """Heads on the training part; dev picks the epoch, prior correction and temperatures; test is only
    scored. ``data_report.json`` says what the data step dropped, masked or found suspicious."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    data = prepare_catalog(cfg)
    catalog, schema = data.catalog, data.schema
    backbone, backbone_state = embedding_backbone(cfg)
    embedded = embed_catalog(catalog, backbone, **embed_options(cfg.embed), progress=progress)
    errors = embedded.errors
    write_errors(errors, output_dir / "image_errors.csv")
    catalog.require_readable_images(int(embedded.ok.sum()), Counter(e.reason for e in errors))
    data.report.unreadable_images = {
        name: int((~embedded.ok[getattr(data.split, name)]).sum()) for name in PARTS
    }
    atomic_write_text(output_dir / DATA_REPORT, data.report.to_json())
    categories = list(schema.categories)
    train_set, train_frame = feature_set(data.train, catalog, embedded, schema, categories)
    dev_set, dev_frame = feature_set(data.part("dev"), catalog, embedded, schema, categories)
    test_set, test_frame = feature_set(data.part("test"), catalog, embedded, schema, categories)
    text = None
    if "text" in cfg.heads.inputs:
        text = attach_text(
            cfg, schema, (train_set, train_frame), (dev_set, dev_frame), (test_set, test_frame)
        )

    def score(logits: Mapping[str, torch.Tensor], rows: np.ndarray | None = None) -> float:
        return part_report(logits, dev_frame, schema, rows).score

    masks = allowed_masks(schema, categories)
    model, history = fit_recipe_heads(cfg, (train_set, dev_set), masks, text, score, progress)
    fitted = fit_calibration(cfg, model, train_set, dev_set, score)
    report = part_report(predict_decisions(model, dev_set, fitted), dev_frame, schema)
    test_report = (
        part_report(predict_decisions(model, test_set, fitted), test_frame, schema) if len(test_set) else None
    )
    checkpoint = heads_checkpoint(
        cfg,
        backbone,
        schema,
        categories,
        embedded.features.shape[1],
        metrics={
            "dev_score": report.score,
            "test_score": None if test_report is None else test_report.score,
            "selection_split": "dev",
            "best_epoch": history.best_epoch,
            **({"member_best_epochs": history.best_epochs} if history.members else {}),
            "class_balance": fitted.strengths,
            **({"class_balance_by_inputs": fitted.strengths_by_inputs} if fitted.strengths_by_inputs else {}),
            "calibration": fitted.report,
        },
        text=text_record(cfg, text) if text is not None else {},
        **fitted.checkpoint_fields(),
    )
    checkpoint.save(output_dir, model, backbone_state)
    if text is not None:
        text.save(output_dir)
    cfg.save(output_dir / "config.yaml")
    result = TrainReport(
        str(output_dir),
        report.score,
        report,
        history,
        fitted.report,
        embedded.seconds,
        history.seconds,
        len(train_set),
        len(dev_set),
        len(errors),
        data.policy.summary(),
        test_report,
        len(test_set),
        data.report,
        fitted.strengths,
        fitted.strengths_by_inputs,
    )
    atomic_write_text(output_dir / "metrics.json", json.dumps(summary_dict(result), indent=1))
    markdown = report.to_markdown(include_pairs=True)
    if test_report is not None:
        markdown = f"## dev (chose epoch and temperatures)\n\n{markdown}\n## test (reported only)\n\n"
        markdown += test_report.to_markdown(include_pairs=True)
    atomic_write_text(output_dir / "report.md", markdown)
    return result


DevLogits = Callable[[str | None], dict[str, torch.Tensor]]
"""Dev's logits with one input (``"text"``, ``"image"``) hidden from every row, or none (``None``)."""


class DevScore(Protocol):
    """Dev's competition score of every dev row's decision scores; ``rows``: of those positions alone."""

    def __call__(self, decisions: Mapping[str, torch.Tensor], rows: np.ndarray | None = None) -> float: ...


def input_temperatures(
    cfg: RunConfig, model: ListingHeads, dev_set: FeatureSet, logits_of: DevLogits
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Listing heads: per-attribute temperatures of rows scored without their title (``"image"``) and,
    with image dropout, without their image (``"text"``), fitted on dev, with their calibration records.

    A row missing an input is scored by the same checkpoint but is less certain: its own temperature
    keeps those confidences calibrated too."""
    by_inputs, calibration = {}, {}
    for inputs, hide in hidden_inputs(cfg).items():
        rows = view_rows(dev_set.present, hide)
        logits = {a: z[torch.as_tensor(rows)] for a, z in logits_of(hide).items()}
        by_inputs[inputs], part = calibrate(logits, dev_set.take(rows), model, enabled=cfg.train.calibrate)
        calibration.update({f"{a} ({inputs} only)": v for a, v in part.items()})
    return by_inputs, calibration


def hidden_inputs(cfg: RunConfig) -> dict[str, str]:
    """Listing heads: each set of inputs a row may be left with → the input hidden to score dev so."""
    return {"image": "text", **({"text": "image"} if cfg.text.image_dropout > 0 else {})}


def view_rows(present: torch.Tensor, hide: str) -> np.ndarray:
    """Positions of the dev rows still holding an input once ``hide`` is taken away. A row left with
    none (no title, its image hidden) is refused at prediction, so its category-only guess has no say in
    that view's temperatures or prior correction."""
    return np.flatnonzero(hidden_present(present, hide).any(dim=1).numpy())


@dataclass
class Calibration:
    """What dev fits after the heads: temperatures and the prior correction (listing heads: also per
    set of inputs a row may be left with), the strengths chosen and the calibration records."""

    temperatures: dict[str, float]
    adjustment: dict[str, list[float]]
    strengths: dict[str, float]
    report: dict[str, dict[str, float]]
    temperatures_by_inputs: dict[str, dict[str, float]] = field(default_factory=dict)
    adjustment_by_inputs: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    strengths_by_inputs: dict[str, dict[str, float]] = field(default_factory=dict)

    def checkpoint_fields(self) -> dict[str, dict]:
        """The :class:`HeadsCheckpoint` fields a predictor needs to decide as dev was scored."""
        return {
            "temperatures": self.temperatures,
            "logit_adjustment": self.adjustment,
            "temperatures_by_inputs": self.temperatures_by_inputs,
            "logit_adjustment_by_inputs": self.adjustment_by_inputs,
        }

    @classmethod
    def of_checkpoint(cls, checkpoint: HeadsCheckpoint) -> Calibration:
        """What a saved checkpoint decides with (its strengths and records are not needed for that)."""
        return cls(
            checkpoint.temperatures,
            checkpoint.logit_adjustment,
            {},
            {},
            checkpoint.temperatures_by_inputs,
            checkpoint.logit_adjustment_by_inputs,
        )

    def decisions(
        self, logits: Mapping[str, torch.Tensor], present: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The decision scores (argmax = value) of rows with these ``logits`` and input flags."""
        probs = calibrated_probs(
            logits, self.temperatures, by_inputs=self.temperatures_by_inputs, present=present
        )
        return decision_scores(probs, self.adjustment, by_inputs=self.adjustment_by_inputs, present=present)


def fit_calibration(
    cfg: RunConfig,
    model: AttributeHeads | AttentionHeads | HeadsEnsemble | ListingHeads,
    train_set: FeatureSet,
    dev_set: FeatureSet,
    score: DevScore,
    logits_of: DevLogits | None = None,
) -> Calibration:
    """Temperatures on dev (``train.calibrate``), then ``train.class_balance`` on the calibrated dev
    probabilities. Listing heads fit both again for rows missing an input: a row without its title is
    scored by the image heads, which need their own strengths (the titled rows' lifted the fused model's
    blank-title score 0.025 above the image heads' on fashion-product-images).

    ``logits_of(hide)``: dev's logits with that input hidden; by default ``model`` over ``dev_set``'s
    features. The fine-tune recipe passes its whole network's, with a ``dev_set`` of labels only."""

    def heads_logits(hide: str | None) -> dict[str, torch.Tensor]:
        return predict_logits(model, dev_set, hide=hide)

    logits_of = logits_of or heads_logits
    logits = logits_of(None)
    temperatures, report = calibrate(logits, dev_set, model, enabled=cfg.train.calibrate)
    out = Calibration(temperatures, {}, {}, report)
    if listing_heads(model) is not None:
        out.temperatures_by_inputs, parts = input_temperatures(cfg, model, dev_set, logits_of)
        out.report = {**report, **parts}
    by_inputs = out.temperatures_by_inputs
    dev_probs = calibrated_probs(logits, temperatures, by_inputs=by_inputs, present=dev_set.present)
    out.adjustment, out.strengths = balance_adjustment(
        cfg.train.class_balance, train_set, dev_probs, model, score
    )
    if listing_heads(model) is not None and cfg.train.class_balance == "dev":
        for inputs, hide in hidden_inputs(cfg).items():
            rows = view_rows(dev_set.present, hide)
            if not len(rows):
                continue
            present = hidden_present(dev_set.present, hide)
            probs = calibrated_probs(logits_of(hide), temperatures, by_inputs=by_inputs, present=present)
            out.adjustment_by_inputs[inputs], out.strengths_by_inputs[inputs] = balance_adjustment(
                "dev", train_set, probs, model, partial(score, rows=rows)
            )
    return out


def predict_probs(
    model: AttributeHeads | HeadsEnsemble | ListingHeads,
    data: FeatureSet,
    temperatures: Mapping[str, float],
    by_inputs: Mapping[str, Mapping[str, float]] | None = None,
    *,
    hide: str | None = None,
) -> dict[str, torch.Tensor]:
    """The calibrated probabilities a checkpoint with these temperatures predicts for ``data`` (with the
    ``hide`` input removed from every row)."""
    present = None if data.present is None else hidden_present(data.present, hide)
    logits = predict_logits(model, data, hide=hide)
    return calibrated_probs(logits, temperatures, by_inputs=by_inputs, present=present)


def predict_decisions(
    model: AttributeHeads | HeadsEnsemble | ListingHeads, data: FeatureSet, fitted: Calibration
) -> dict[str, torch.Tensor]:
    """The decision scores a checkpoint with this calibration gives ``data``'s rows (argmax = value)."""
    return fitted.decisions(predict_logits(model, data), data.present)


def part_report(
    logits: Mapping[str, torch.Tensor], frame: pd.DataFrame, schema: Schema, rows: np.ndarray | None = None
) -> AttributeReport:
    """The competition score of ``logits`` on ``frame``'s rows (same order); ``rows``: of those positions
    alone."""
    if rows is not None:
        logits = {a: z[torch.as_tensor(rows)] for a, z in logits.items()}
        frame = frame.iloc[rows].reset_index(drop=True)
    pred = logits_to_frame(logits, frame[ID].tolist(), frame[CATEGORY].tolist(), schema)
    return attribute_score(frame, pred, schema.categories)


def summary_dict(result: TrainReport) -> dict:
    return {
        "score": result.score,
        "dev_score": result.score,
        "test_score": None if result.test_report is None else result.test_report.score,
        "selection_split": "dev",
        "report": result.report.to_dict(),
        "test_report": None if result.test_report is None else result.test_report.to_dict(),
        "history": result.history.epochs,
        "best_epoch": result.history.best_epoch,
        **(
            {"member_histories": [h.epochs for h in result.history.members]} if result.history.members else {}
        ),
        "calibration": result.calibration,
        "embed_seconds": result.embed_seconds,
        "train_seconds": result.train_seconds,
        "n_train": result.n_train,
        "n_dev": result.n_dev,
        "n_test": result.n_test,
        "image_errors": result.image_errors,
        "policy": result.policy,
        "class_balance": result.class_balance,
        **(
            {"class_balance_by_inputs": result.class_balance_by_inputs}
            if result.class_balance_by_inputs
            else {}
        ),
    }


BALANCE_CHOICES = (0.0, 0.25, 0.5, 0.75, 1.0)
"""The strengths ``train.class_balance: dev`` chooses from, per attribute."""


def balance_adjustment(
    strength: float | str,
    train_set: FeatureSet,
    dev_probs: Mapping[str, torch.Tensor],
    model: AttributeHeads | HeadsEnsemble | ListingHeads,
    score: Callable[[dict[str, torch.Tensor]], float],
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """The prior correction and each attribute's strength: ``strength`` for every attribute, or with
    ``"dev"`` the one of :data:`BALANCE_CHOICES` whose :func:`decision_scores` on the calibrated
    ``dev_probs`` give the best dev ``score`` for that attribute (ties: the weaker).

    Per attribute, because macro-F1 gains from lifting rare values only where the heads under-predict
    them: on fashion-product-images dev picks 0 to 1 across the six attributes (``benchmarks/multimodal.py``).
    The score averages over (category, attribute) pairs, so each attribute is chosen on its own."""
    if strength != "dev":
        fixed = float(strength)
        return prior_adjustment(train_set, model, fixed), dict.fromkeys(model.attributes, fixed)
    scores = decision_scores(dev_probs, {})
    corrections = {s: prior_adjustment(train_set, model, s) for s in BALANCE_CHOICES}
    base = score(scores)
    chosen = {}
    for attribute in model.attributes:
        best, chosen[attribute] = base, 0.0
        for s in BALANCE_CHOICES[1:]:
            trial = score({**scores, **decision_scores({attribute: dev_probs[attribute]}, corrections[s])})
            if trial > best:
                best, chosen[attribute] = trial, s
    adjustment = {a: corrections[s][a] for a, s in chosen.items() if s > 0}
    return adjustment, chosen


def prior_adjustment(data: FeatureSet, model: AttributeHeads, strength: float) -> dict[str, list[float]]:
    """-strength · log(class prior): lifts rare values, which macro-F1 weighs as much as common ones."""
    if strength == 0:
        return {}
    out = {}
    for attribute, labels in data.labels.items():
        k = model.mask(attribute).shape[1]
        counts = torch.bincount(labels[labels != MISSING], minlength=k).double() + 1.0
        out[attribute] = (-strength * torch.log(counts / counts.sum())).float().tolist()
    return out


def calibrate(
    logits: Mapping[str, torch.Tensor], data: FeatureSet, model: AttributeHeads, *, enabled: bool = True
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Temperature per attribute on validation; ECE before/after is cross-fitted on two halves and
    measures the most probable value's probability (the prior correction is chosen afterwards).

    Reporting ECE on the rows the temperature was fitted on would flatter it, so each half is scored
    with the temperature fitted on the other half; the saved temperature uses all rows.
    """
    temperatures, report = {}, {}
    halves = torch.arange(len(data)) % 2 == 0
    for attribute, z in logits.items():
        labels = data.labels[attribute].numpy()
        allowed = model.mask(attribute)[data.category].numpy()
        rows = labels != MISSING
        if rows.sum() < 2:
            continue
        t_all = fit_temperature(z.numpy(), labels, allowed) if enabled else 1.0
        temperatures[attribute] = t_all
        before_p = apply_temperature(z.numpy(), 1.0, allowed)
        after_p = np.zeros_like(before_p)
        for half in (halves, ~halves):
            other = np.where(half.numpy(), MISSING, labels)  # fit on the other half
            t = fit_temperature(z.numpy(), other, allowed) if enabled else 1.0
            after_p[half.numpy()] = apply_temperature(z.numpy()[half.numpy()], t, allowed[half.numpy()])
        correct = before_p.argmax(1) == labels
        report[attribute] = {
            "temperature": t_all,
            "ece_before": expected_calibration_error(before_p.max(1)[rows], correct[rows]),
            "ece_after": expected_calibration_error(after_p.max(1)[rows], correct[rows]),
            "cross_entropy_before": cross_entropy({attribute: before_p}, {attribute: labels})[attribute],
            "cross_entropy_after": cross_entropy({attribute: after_p}, {attribute: labels})[attribute],
        }
    return temperatures, report
