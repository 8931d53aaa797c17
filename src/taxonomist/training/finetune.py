"""Recipe ``finetune``: the backbone and the heads trained end to end, then phase 2.

Phase 1 trains everything on the rows kept by the missing-label policy, with separate learning rates for
backbone and heads, AdamW, cosine-with-warmup or plateau schedules, clipping, accumulation, optional MMD
between training and dev features, augmentation, and early stopping on the dev competition
score. Every epoch is checkpointed (accelerate state) and a rerun resumes from the last one. Phase 2
freezes everything but one attribute's head and trains it on every row labelled for that attribute,
from cached shared features, so it costs seconds; a head is kept only if its dev score does not drop.

Listing heads (``heads.inputs: [image, text]``) fine-tune too: the title features (sentence embedding,
lexical view, cross-fitted probe) are fitted once on the training rows and looked up per batch, the
backbone is trained under the fused heads with modality dropout, and the checkpoint is a listing
checkpoint. Two things differ from the heads recipe: there is no image fallback (its heads would read
the frozen features that fine-tuning moves away from; rows without a title are scored by the fused
trunk, which modality dropout trained for them), and phase 2 is skipped (the fused heads' attribute
layers read the image and the title through one trunk, so there is no image-only shared part to cache).

Data parallel through accelerate: ``torchrun --nproc_per_node N -m taxonomist.cli train --recipe finetune``
(or ``accelerate launch``); ``finetune.batch_size`` is the global batch, split across processes.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from taxonomist.config import ConfigError, FinetuneConfig, RunConfig
from taxonomist.data.catalog import CATEGORY, ID, TEXT, Catalog
from taxonomist.data.images import ImageLoadError, load_image
from taxonomist.data.labels import MISSING, encode_labels
from taxonomist.data.prepare import DATA_REPORT, DataReport, prepare_catalog
from taxonomist.data.schema import Schema
from taxonomist.devices import resolve_precision
from taxonomist.features.text import ListingText, TextFeatures
from taxonomist.io import ResumeError, atomic_write, atomic_write_text
from taxonomist.metrics import attribute_score
from taxonomist.models.attention_head import AttentionHeads
from taxonomist.models.backbones import Backbone, Preprocess
from taxonomist.models.build import build_backbone, heads_checkpoint
from taxonomist.models.fusion import ListingHeads, lexical_batch, modality_dropout
from taxonomist.models.heads import NEG_INF, AttributeHeads, allowed_masks
from taxonomist.progress import progress_bar
from taxonomist.training.augment import BatchAugment
from taxonomist.training.heads import (
    Calibration,
    FeatureSet,
    fit_calibration,
    fit_text,
    hidden_present,
    logits_to_frame,
    part_report,
    resume_settings,
    rows_digest,
    set_text,
    text_record,
)
from taxonomist.training.heads import build_heads as build_flat_heads
from taxonomist.training.losses import masked_cross_entropy, mmd_loss
from taxonomist.training.schedule import warmup_cosine

STATE_DIR = "state"
PROGRESS_FILE = "finetune_progress.json"
BEST_STATE_FILE = "best_state.pt"


class ImageRows(Dataset):
    """Catalog rows → (pixels, category index, labels, ok); unreadable images come back with ok=False."""

    def __init__(
        self, catalog: Catalog, frame: pd.DataFrame, schema: Schema, categories: list[str], backbone: Backbone
    ) -> None:
        self.paths = [str(catalog.image_path(i, c)) for i, c in zip(frame[ID], frame[CATEGORY], strict=True)]
        self.ids = frame[ID].tolist()
        index = {c: i for i, c in enumerate(categories)}
        self.category = np.array([index[c] for c in frame[CATEGORY]], dtype=np.int64)
        labels = encode_labels(frame, schema)
        self.attributes = list(labels)
        self.labels = np.stack([labels[a] for a in self.attributes], axis=1)
        self.preprocess = backbone.preprocess
        self.size = backbone.preprocess.size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            pixels, ok = self.preprocess(load_image(self.paths[i])), True
        except ImageLoadError:
            pixels, ok = torch.zeros(3, self.size, self.size), False
        return pixels, self.category[i], torch.from_numpy(self.labels[i]), ok, i


class RowText:
    """A part's text features as tensors, looked up by dataset index for each batch."""

    def __init__(self, features: TextFeatures) -> None:
        self.features = features
        self.dense = torch.as_tensor(features.dense, dtype=torch.float32)
        self.present = torch.as_tensor(features.present, dtype=torch.bool)
        self.lexical = features.lexical

    def batch(self, index: torch.Tensor, device: torch.device) -> tuple:
        """(dense, has_text, lexical batch or None) of the rows ``index``."""
        rows = index.cpu().numpy()
        lexical = None
        if self.lexical is not None:
            lexical = tuple(t.to(device) for t in lexical_batch(self.lexical[rows]))
        return self.dense[rows].to(device), self.present[rows].to(device), lexical


class FinetuneModel(nn.Module):
    """Backbone + heads with one split point: ``shared`` (cached in phase 2) and ``head_logits``.
    Listing heads read the batch's text features too (``text``: what :meth:`RowText.batch` gives)."""

    def __init__(self, backbone: Backbone, heads: AttributeHeads | AttentionHeads | ListingHeads) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self.spatial = isinstance(heads, AttentionHeads)
        self.listing = isinstance(heads, ListingHeads)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(pixels) if self.spatial else self.backbone(pixels)

    def pooled(self, features: torch.Tensor) -> torch.Tensor:
        return features.mean((2, 3)) if self.spatial else features

    def shared(self, features: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        if self.spatial:
            return self.heads.shared(features)
        h = self.heads
        x = (features - h.feature_mean) / h.feature_std
        return h.trunk(torch.cat([x, h.category_embedding(category)], dim=1))

    def head_logits(self, index: int, shared: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        h = self.heads
        if self.spatial:
            extra = h.category_embedding(category) if h.category_embedding is not None else None
            out = h.heads[index](shared, extra)
        else:
            out = h.heads[index](shared)
        mask = h.mask(h.attributes[index])[category]
        return out.masked_fill(~mask, NEG_INF)

    def forward(
        self,
        pixels: torch.Tensor,
        category: torch.Tensor,
        text: tuple | None = None,
        present: torch.Tensor | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``present`` (listing heads): the (n, 2) image/text flags to use, e.g. after modality dropout;
        default: every image present, text where the row has one."""
        features = self.features(pixels)
        if self.listing:
            dense, has_text, lexical = text
            if present is None:
                present = torch.stack([torch.ones_like(has_text), has_text], dim=1)
            return self.heads(features, dense, category, present, lexical), features
        shared = self.shared(features, category)
        logits = {a: self.head_logits(i, shared, category) for i, a in enumerate(self.heads.attributes)}
        return logits, self.pooled(features)


def build_heads(
    cfg: RunConfig,
    backbone: Backbone,
    schema: Schema,
    categories: list[str],
    text: ListingText | None = None,
) -> nn.Module:
    masks = allowed_masks(schema, categories)
    if text is not None:  # as the heads recipe builds them (``_listing_config`` took the fallback off)
        return build_flat_heads(cfg, backbone.feature_dim, masks, text)
    if cfg.finetune.head == "attention":
        return AttentionHeads(
            backbone.feature_map_dim, masks, category_dim=cfg.heads.category_dim, dropout=cfg.heads.dropout
        )
    return AttributeHeads(
        backbone.feature_dim,
        masks,
        hidden=cfg.heads.hidden,
        category_dim=cfg.heads.category_dim,
        dropout=cfg.heads.dropout,
    )


def _collate(batch):
    pixels, category, labels, ok, index = zip(*batch, strict=True)
    return (
        torch.stack(pixels),
        torch.as_tensor(np.array(category)),
        torch.stack(labels),
        torch.as_tensor(ok),
        torch.as_tensor(index),
    )


def _loss(
    cfg: RunConfig, logits: Mapping[str, torch.Tensor], labels: torch.Tensor, ok: torch.Tensor, accelerator
) -> torch.Tensor:
    """Masked loss of the global batch: labelled counts are summed over the data-parallel processes."""
    targets = {a: torch.where(ok, labels[:, i], MISSING) for i, a in enumerate(logits)}
    return masked_cross_entropy(
        logits,
        targets,
        cfg.finetune.label_smoothing,
        gamma=cfg.finetune.focal_gamma,
        sum_over_processes=lambda t: accelerator.reduce(t, reduction="sum"),
        num_processes=accelerator.num_processes,
    )


@dataclass
class FinetuneReport:
    output_dir: str
    score_phase1: float
    score_phase2: float
    per_attribute_phase1: dict[str, float]
    per_attribute_phase2: dict[str, float]
    phase2_kept: dict[str, bool]
    epochs: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    images_per_s_train: float = 0.0
    n_train: int = 0
    n_val: int = 0
    image_errors: int = 0
    resumed_from_epoch: int = 0
    num_processes: int = 1
    warm_start_score: float | None = None
    dev_score: float | None = None
    """Dev with the checkpoint's decision rule (temperatures, then ``train.class_balance``)."""
    class_balance: dict[str, float] = field(default_factory=dict)
    class_balance_by_inputs: dict[str, dict[str, float]] = field(default_factory=dict)
    calibration: dict[str, dict[str, float]] = field(default_factory=dict)


def _evaluate(
    model: FinetuneModel,
    loader,
    accelerator,
    val_frame,
    schema,
    attributes,
    text: RowText | None = None,
    hide: str | None = None,
) -> tuple[float, dict, dict, np.ndarray]:
    """Validation score (competition metric), per-attribute harmonic F1, the logits and the positions in
    ``val_frame`` of the rows they score, gathered over processes. ``hide`` (listing heads): the input
    every row is scored without.

    Rows whose image could not be read are left out, as the heads recipe leaves them out of dev: their
    blank pixels are no prediction ``predict`` would make, so they must not choose the epoch, the kept
    phase-2 heads, the temperatures or the prior correction."""
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {a: [] for a in attributes}
    order: list[torch.Tensor] = []
    readable: list[torch.Tensor] = []
    with torch.no_grad():
        for pixels, category, _labels, ok, index in loader:
            rows_text = None if text is None else text.batch(index, pixels.device)
            present = None
            if hide is not None:
                has_text = rows_text[1]
                present = hidden_present(torch.stack([torch.ones_like(has_text), has_text], dim=1), hide)
            logits, _ = model(pixels, category, rows_text, present)
            logits = accelerator.gather_for_metrics(logits)
            order.append(accelerator.gather_for_metrics(index).cpu())
            readable.append(accelerator.gather_for_metrics(ok).cpu())
            for a in attributes:
                parts[a].append(logits[a].float().cpu())
    rows = torch.cat(order).numpy()
    by_row = np.argsort(rows)
    keep = by_row[torch.cat(readable).numpy()[by_row]]
    logits = {a: torch.cat(v)[torch.as_tensor(keep)] for a, v in parts.items()}
    scored = rows[keep]
    frame = val_frame.iloc[scored].reset_index(drop=True)
    pred = logits_to_frame(logits, frame[ID].tolist(), frame[CATEGORY].tolist(), schema)
    report = attribute_score(frame, pred, schema.categories)
    per_attr = dict(zip(report.per_attribute["attribute"], report.per_attribute["harmonic"], strict=True))
    model.train()
    return report.score, per_attr, logits, scored


def build_augment(fc: FinetuneConfig, preprocess: Preprocess) -> BatchAugment:
    """The recipe's augmentation, on the backbone's normalised input."""
    return BatchAugment(
        p=fc.augment_p,
        brightness=fc.color_jitter,
        contrast=fc.color_jitter,
        saturation=fc.color_jitter,
        hue=fc.hue,
        mean=preprocess.mean,
        std=preprocess.std,
    )


@dataclass
class _Data:
    """The recipe's rows: dev ("val") keeps its true labels, training rows went through the policy."""

    catalog: Catalog
    schema: Schema
    categories: list[str]
    full_train: pd.DataFrame
    """Every training row, for phase 2 (which trains each head on all rows labelled for it)."""
    train: pd.DataFrame
    val: pd.DataFrame
    text: ListingText | None = None
    """Listing heads: the text features fitted on the training rows."""
    train_text: RowText | None = None
    val_text: RowText | None = None


@dataclass
class _Setup:
    """Everything the epochs run with, already prepared by accelerate."""

    accelerator: Any
    model: Any
    unwrapped: FinetuneModel
    optimizer: torch.optim.Optimizer
    scheduler: Any
    augment: BatchAugment
    train_loader: Any
    val_loader: Any
    train_text: RowText | None
    val_text: RowText | None
    unlabeled: Any
    steps_per_epoch: int
    n_train: int
    n_val: int
    warm_score: float | None


@dataclass
class _Progress:
    """What survives a kill: written after every epoch, read back by a rerun."""

    next_epoch: int = 0
    best_score: float = -1.0
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    settings: dict = field(default_factory=dict)
    """The settings the epochs ran with (:func:`resume_settings`)."""


def train(cfg: RunConfig, output_dir: str | Path, *, progress: bool = True) -> FinetuneReport:
    from accelerate.utils import set_seed

    cfg = _listing_config(cfg)
    fc = cfg.finetune
    output_dir = Path(output_dir)
    accelerator = _accelerator(fc)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.train.seed)
    data, data_report = _prepare_data(cfg)
    if accelerator.is_main_process:
        atomic_write_text(output_dir / DATA_REPORT, data_report.to_json())
    run = _set_up_model(cfg, data, accelerator, progress)
    settings = {
        **resume_settings(cfg, "finetune", free=("epochs",)),
        "data": rows_digest(data.train, data.val),
    }
    state = _resume(output_dir, accelerator, settings)
    resumed_from = state.next_epoch
    seen_images, train_seconds = 0, 0.0
    for epoch in range(state.next_epoch, fc.epochs):
        if state.bad_epochs >= fc.patience:
            break
        start = time.perf_counter()
        loss, images = _one_epoch(cfg, run, epoch, progress)
        train_seconds += time.perf_counter() - start
        seen_images += images
        score, per_attr = _validate(run, data)
        if fc.scheduler == "plateau":
            run.scheduler.step(score)
        _record_epoch(state, run, epoch, loss, score, per_attr, output_dir)

    if state.best_state is not None:
        run.unwrapped.load_state_dict(state.best_state)
    phase1_score, phase1_attr = _validate(run, data)
    kept: dict[str, bool] = {}
    phase2_score, phase2_attr = phase1_score, phase1_attr
    if fc.phase2_epochs > 0 and not run.unwrapped.listing:
        kept = _phase_two_kept(cfg, run, data, phase1_attr)
        phase2_score, phase2_attr = _validate(run, data)
    fitted = _fit_calibration(cfg, run, data)
    report = FinetuneReport(
        str(output_dir),
        phase1_score,
        phase2_score,
        phase1_attr,
        phase2_attr,
        kept,
        state.history,
        round(train_seconds, 2),
        round(seen_images / max(train_seconds, 1e-9), 2),
        run.n_train,
        run.n_val,
        resumed_from_epoch=resumed_from,
        num_processes=accelerator.num_processes,
        warm_start_score=run.warm_score,
        dev_score=fitted.dev_score,
        class_balance=fitted.calibration.strengths,
        class_balance_by_inputs=fitted.calibration.strengths_by_inputs,
        calibration=fitted.calibration.report,
    )
    if accelerator.is_main_process:
        _save_checkpoint(run.unwrapped, cfg, data, output_dir, report, fitted.calibration)
    accelerator.end_training()
    return report


def _accelerator(fc: FinetuneConfig) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    return Accelerator(
        # fp16/bf16 autocast is for GPUs; on CPU the run stays fp32 whatever the setting.
        mixed_precision=resolve_precision(fc.mixed_precision, "cuda") if torch.cuda.is_available() else "no",
        gradient_accumulation_steps=fc.grad_accumulation,
        cpu=not torch.cuda.is_available(),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )


def _listing_config(cfg: RunConfig) -> RunConfig:
    """Image heads: ``cfg`` as is. Listing heads: checked, and without the image fallback (see the
    module docstring), so the checkpoint records heads that have none."""
    if cfg.heads.members > 1:
        raise ConfigError("heads.members > 1 is for the heads recipe; fine-tuning trains one network")
    if "text" not in cfg.heads.inputs:
        return cfg
    if cfg.finetune.head == "attention":
        raise ConfigError("listing heads (heads.inputs: [image, text]) fine-tune with finetune.head: mlp")
    if not cfg.finetune.warm_start:
        raise ConfigError(
            "listing heads fine-tune from heads fitted on frozen features (finetune.warm_start: true)"
        )
    cfg = copy.deepcopy(cfg)
    cfg.text.image_fallback = False
    return cfg


def _prepare_data(cfg: RunConfig) -> tuple[_Data, DataReport]:
    """The shared data step: its dev part is this recipe's "val" (epochs, phase-2 heads); its test part
    is left to ``evaluate``. Listing heads: text features fitted on the training rows (the probe
    cross-fitted there) and computed for the dev rows."""
    prepared = prepare_catalog(cfg)
    schema = prepared.schema
    data = _Data(
        prepared.catalog,
        schema,
        list(schema.categories),
        prepared.part("train"),
        prepared.train,
        prepared.part("dev"),
    )
    if "text" in cfg.heads.inputs:
        _attach_row_text(cfg, data)
    return data, prepared.report


def _attach_row_text(cfg: RunConfig, data: _Data) -> None:
    index = {c: i for i, c in enumerate(data.categories)}
    category = np.array([index[c] for c in data.train[CATEGORY]], dtype=np.int64)
    labels = encode_labels(data.train, data.schema)
    data.text, train_features = fit_text(cfg, data.schema, data.train, category, labels)
    data.train_text = RowText(train_features)
    val_category = np.array([index[c] for c in data.val[CATEGORY]], dtype=np.int64)
    data.val_text = RowText(data.text.features(data.val[TEXT].tolist(), val_category))


def _set_up_model(cfg: RunConfig, data: _Data, accelerator: Any, progress: bool) -> _Setup:
    """Backbone + heads (warm-started or standardised), loaders, optimizer and schedule, prepared."""
    fc = cfg.finetune
    backbone = build_backbone(cfg.backbone)
    if fc.gradient_checkpointing:
        _enable_checkpointing(backbone)
    model = FinetuneModel(backbone, build_heads(cfg, backbone, data.schema, data.categories, data.text))
    train_rows = ImageRows(data.catalog, data.train, data.schema, data.categories, backbone)
    val_rows = ImageRows(data.catalog, data.val, data.schema, data.categories, backbone)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    accelerator.register_for_checkpointing(_SamplerState(generator))
    loader_args = {
        "collate_fn": _collate,
        "num_workers": fc.num_workers,
        "persistent_workers": fc.num_workers > 0,
    }
    # A partial last batch would be padded with repeated rows on several processes (accelerate's
    # even batches), so 1 and N processes would train on different batches: it is dropped instead,
    # as timm does, unless it is the only batch.
    train_loader = DataLoader(
        train_rows,
        batch_size=fc.batch_size,
        shuffle=True,
        generator=generator,
        drop_last=len(train_rows) > fc.batch_size,
        **loader_args,
    )
    val_loader = DataLoader(val_rows, batch_size=fc.batch_size, **loader_args)
    warm_score = None
    # Heads set-up happens on the main process only; the broadcast below gives the others its result.
    if not model.spatial and accelerator.is_main_process and fc.warm_start:
        # Fits the heads on cached features on the CPU, so before the model moves.
        warm_score = warm_start_heads(model, data, cfg, progress)
    # Standardisation's forwards and the broadcast (NCCL takes only GPU tensors) run where training will.
    model.to(accelerator.device)
    if not model.spatial and accelerator.is_main_process and not fc.warm_start:
        _standardize(model, train_loader, batches=max(1, 512 // fc.batch_size), device=accelerator.device)
    if accelerator.num_processes > 1:
        _broadcast_state(model)
    optimizer = torch.optim.AdamW(
        [
            {"params": list(model.backbone.parameters()), "lr": fc.backbone_lr},
            {"params": list(model.heads.parameters()), "lr": fc.heads_lr},
        ],
        weight_decay=fc.weight_decay,
    )
    steps_per_epoch = math.ceil(len(train_loader) / fc.grad_accumulation)
    if fc.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, fc.max_steps_per_epoch)
    scheduler = _scheduler(optimizer, fc, steps_per_epoch)
    augment = build_augment(fc, backbone.preprocess).to(accelerator.device)
    prepared, optimizer, train_loader, val_loader = accelerator.prepare(
        model, optimizer, train_loader, val_loader
    )
    accelerator.register_for_checkpointing(scheduler)
    return _Setup(
        accelerator,
        prepared,
        accelerator.unwrap_model(prepared),
        optimizer,
        scheduler,
        augment,
        train_loader,
        val_loader,
        data.train_text,
        data.val_text,
        _mmd_batches(val_loader) if fc.mmd else None,
        steps_per_epoch,
        len(train_rows),
        len(val_rows),
        warm_score,
    )


class _SamplerState:
    """The training sampler's generator as accelerate checkpoints it with each epoch, so a resumed run
    draws the batches the uninterrupted one would have (recreated from the seed, it repeated epoch 0's)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


def _resume(output_dir: Path, accelerator: Any, settings: dict) -> _Progress:
    """The last finished epoch's state and progress, or a fresh start; epochs run with other settings or
    on other data (``settings``: :func:`resume_settings` and :func:`rows_digest`) are refused, not
    continued as if they were this run's."""
    progress_file = output_dir / PROGRESS_FILE
    if not progress_file.exists():
        return _Progress(settings=settings)
    saved = json.loads(progress_file.read_text(encoding="utf-8"))
    if saved.get("settings") != settings:  # older versions recorded none (nor the sampler's state)
        raise ResumeError(
            f"{output_dir} holds fine-tuning epochs run with other settings, on other data or by an older "
            "taxonomist; "
            "use another output folder or delete this one (a longer finetune.epochs alone resumes)"
        )
    accelerator.load_state(str(output_dir / STATE_DIR / f"epoch-{saved['epoch']}"))
    best_file = output_dir / BEST_STATE_FILE
    return _Progress(
        saved["epoch"] + 1,
        saved["best_score"],
        saved["bad_epochs"],
        saved["history"],
        torch.load(best_file, weights_only=True) if best_file.exists() else None,
        settings,
    )


def _one_epoch(cfg: RunConfig, run: _Setup, epoch: int, progress: bool) -> tuple[float, int]:
    """One pass over the training rows (capped at ``max_steps_per_epoch`` optimizer steps): the mean
    loss and the number of images seen by all processes."""
    fc, accelerator, model = cfg.finetune, run.accelerator, run.model
    model.train()
    if fc.freeze_batchnorm:
        _freeze_batchnorm(model)
    losses, steps, images = [], 0, 0
    show = progress and accelerator.is_main_process
    with progress_bar("batch", disable=not show) as bar:
        task = bar.add_task(
            f"epoch {epoch + 1}/{fc.epochs}", total=run.steps_per_epoch * fc.grad_accumulation
        )
        for pixels, category, labels, ok, index in run.train_loader:
            with accelerator.accumulate(model):
                loss = _step_loss(cfg, run, pixels, category, labels, ok, index)
                accelerator.backward(loss)
                if accelerator.sync_gradients and fc.clip_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), fc.clip_grad_norm)
                run.optimizer.step()
                run.optimizer.zero_grad(set_to_none=True)
            if accelerator.sync_gradients:
                steps += 1
                if fc.scheduler == "cosine":
                    run.scheduler.step()
            losses.append(float(accelerator.gather(loss.detach()).mean()))
            images += len(pixels) * accelerator.num_processes
            bar.advance(task)
            if fc.max_steps_per_epoch and steps >= fc.max_steps_per_epoch:
                break
    return float(np.mean(losses)), images


def _step_loss(
    cfg: RunConfig,
    run: _Setup,
    pixels: torch.Tensor,
    category: torch.Tensor,
    labels: torch.Tensor,
    ok: torch.Tensor,
    index: torch.Tensor,
) -> torch.Tensor:
    """Masked (focal) cross-entropy on augmented pixels, plus MMD to validation features if asked.
    Listing heads read the rows' titles, hidden at random (modality dropout) as the heads recipe does."""
    text = present = None
    if run.train_text is not None:
        text = run.train_text.batch(index, pixels.device)
        flags = torch.stack([torch.ones_like(text[1]), text[1]], dim=1).cpu()
        present = modality_dropout(flags, cfg.text.text_dropout, cfg.text.image_dropout).to(pixels.device)
        # A hidden image is the all-zero "average" input; the backbone still runs (one batch shape).
    logits, pooled = run.model(run.augment(pixels), category, text, present)
    loss = _loss(cfg, logits, labels, ok, run.accelerator)
    if run.unlabeled is not None:
        other, *_ = next(run.unlabeled)
        features = run.unwrapped.pooled(run.unwrapped.features(other))
        loss = loss + cfg.finetune.mmd_weight * mmd_loss(pooled.float(), features.float())
    return loss


def _validate(run: _Setup, data: _Data) -> tuple[float, dict]:
    score, per_attr, *_ = _evaluate(
        run.model,
        run.val_loader,
        run.accelerator,
        data.val,
        data.schema,
        list(data.schema.attributes),
        run.val_text,
    )
    return score, per_attr


@dataclass
class _Fitted:
    calibration: Calibration
    dev_score: float


def _fit_calibration(cfg: RunConfig, run: _Setup, data: _Data) -> _Fitted:
    """Temperatures and ``train.class_balance`` on dev, fitted as the heads recipe fits them but from the
    fine-tuned network's own dev logits (its backbone moved, so no cached features would do)."""
    index = {c: i for i, c in enumerate(data.categories)}

    def labels_only(frame: pd.DataFrame, has_text: torch.Tensor | None = None) -> FeatureSet:
        category = np.array([index[c] for c in frame[CATEGORY]], dtype=np.int64)
        part = FeatureSet.build(np.empty((len(frame), 0)), category, encode_labels(frame, data.schema))
        if has_text is not None:
            part.present = torch.stack([torch.ones_like(has_text), has_text], dim=1)
        return part

    evaluated: dict[str | None, tuple] = {}  # one pass over dev's images per input set

    def evaluate(hide: str | None) -> tuple:
        if hide not in evaluated:
            attributes = list(data.schema.attributes)
            evaluated[hide] = _evaluate(
                run.model,
                run.val_loader,
                run.accelerator,
                data.val,
                data.schema,
                attributes,
                run.val_text,
                hide,
            )
        return evaluated[hide]

    def logits_of(hide: str | None) -> dict[str, torch.Tensor]:
        return evaluate(hide)[2]

    scored = evaluate(None)[3]  # the dev rows with a readable image, as every pass scores them
    val = data.val.iloc[scored].reset_index(drop=True)

    def score(decisions: Mapping[str, torch.Tensor], rows: np.ndarray | None = None) -> float:
        return part_report(decisions, val, data.schema, rows).score

    dev_set = labels_only(val, None if run.val_text is None else run.val_text.present[scored])
    heads = run.unwrapped.heads
    calibration = fit_calibration(cfg, heads, labels_only(data.train), dev_set, score, logits_of)
    decisions = calibration.decisions(logits_of(None), dev_set.present)
    return _Fitted(calibration, score(decisions))


def _record_epoch(
    state: _Progress, run: _Setup, epoch: int, loss: float, score: float, per_attr: dict, output_dir: Path
) -> None:
    """Early-stopping bookkeeping, then the epoch's state on disk (a rerun resumes after it)."""
    accelerator = run.accelerator
    improved = score > state.best_score
    if improved:
        state.best_score, state.bad_epochs = score, 0
        state.best_state = {k: v.detach().cpu().clone() for k, v in run.unwrapped.state_dict().items()}
    else:
        state.bad_epochs += 1
    state.history.append({"epoch": epoch + 1, "loss": loss, "val_score": score, "per_attribute": per_attr})
    accelerator.wait_for_everyone()
    # A new folder per epoch, named in the progress file only once complete: a kill at any point
    # leaves the last finished epoch's state intact.
    state_dir = output_dir / STATE_DIR
    accelerator.save_state(str(state_dir / f"epoch-{epoch}"))
    if accelerator.is_main_process:
        if improved:
            atomic_write(output_dir / BEST_STATE_FILE, lambda tmp: torch.save(state.best_state, tmp))
        payload = {
            "epoch": epoch,
            "best_score": state.best_score,
            "bad_epochs": state.bad_epochs,
            "history": state.history,
            "settings": state.settings,
        }
        atomic_write_text(output_dir / PROGRESS_FILE, json.dumps(payload, indent=1))
        for old in state_dir.glob("epoch-*"):
            if old.name != f"epoch-{epoch}":
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _phase_two_kept(cfg: RunConfig, run: _Setup, data: _Data, phase1_attr: dict) -> dict[str, bool]:
    """Phase 2, then each head that got worse on validation goes back to its phase-1 weights."""
    model = run.unwrapped
    previous = phase_two(
        model, data.catalog, data.full_train, data.schema, data.categories, cfg, run.accelerator
    )
    _, trained_attr = _validate(run, data)
    # Heads are independent given the frozen shared features: revert each one that got worse.
    kept: dict[str, bool] = {}
    for attribute, state in previous.items():
        kept[attribute] = trained_attr.get(attribute, 0.0) >= phase1_attr.get(attribute, 0.0)
        if not kept[attribute]:
            model.heads.heads[model.heads.attributes.index(attribute)].load_state_dict(state)
    return kept


def warm_start_heads(model: FinetuneModel, data: _Data, cfg: RunConfig, progress: bool) -> float:
    """LP-FT's first step: the heads recipe on cached features of the (still frozen) backbone (listing
    heads: with the rows' text features and modality dropout, as the heads recipe trains them)."""
    from taxonomist.features.build import embed_options, runtime_options
    from taxonomist.features.embed import embed_catalog, runtime_backbone
    from taxonomist.training.heads import feature_set, fit_heads

    catalog, schema, categories = data.catalog, data.schema, data.categories
    frozen = runtime_backbone(build_backbone(cfg.backbone), **runtime_options(cfg.embed))
    embedded = embed_catalog(catalog, frozen, **embed_options(cfg.embed), progress=progress)
    catalog.require_readable_images(int(embedded.ok.sum()), Counter(e.reason for e in embedded.errors))
    train_set, _ = feature_set(data.train, catalog, embedded, schema, categories)
    val_set, val_rows = feature_set(data.val, catalog, embedded, schema, categories)
    if model.listing:
        by_id = {item_id: row for row, item_id in enumerate(catalog.ids)}
        for part, frame, text in (
            (train_set, data.train, data.train_text),
            (val_set, data.val, data.val_text),
        ):
            readable = embedded.ok[np.array([by_id[i] for i in frame[ID]], dtype=np.int64)]
            set_text(part, text.features.take(np.flatnonzero(readable)))  # every image present

    def score(logits: Mapping[str, torch.Tensor]) -> float:
        pred = logits_to_frame(logits, val_rows[ID].tolist(), val_rows[CATEGORY].tolist(), schema)
        return attribute_score(val_rows, pred, schema.categories).score

    history = fit_heads(
        model.heads,
        train_set,
        val_set,
        score,
        cfg.train,
        progress=progress,
        text_dropout=cfg.text.text_dropout if model.listing else 0.0,
        image_dropout=cfg.text.image_dropout if model.listing else 0.0,
    )
    return max(e["val_score"] for e in history.epochs)


def _broadcast_state(model: FinetuneModel) -> None:
    """Every process starts from the main process's weights (warm-started heads, standardisation)."""
    import torch.distributed as dist

    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=0)


def _freeze_batchnorm(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def _mmd_batches(loader: DataLoader) -> Iterator:
    """Cycles ``loader`` past batches of one row (a partial last one): the unbiased MMD needs two rows,
    and validation rows one past a multiple of the batch size stopped training with a ValueError."""
    while True:
        usable = False
        for batch in loader:
            if len(batch[0]) > 1:
                usable = True
                yield batch
        if not usable:
            raise ConfigError("finetune.mmd needs validation batches of at least 2 rows: raise batch_size")


def _standardize(model: FinetuneModel, loader: DataLoader, batches: int, device: torch.device) -> None:
    """Input standardisation of the MLP heads from the initial backbone's features on a few batches."""
    feats = []
    model.eval()
    with torch.no_grad():
        for k, (pixels, _c, _l, ok, _i) in enumerate(loader):
            if k >= batches:
                break
            feats.append(model.backbone(pixels[ok].to(device)))
    model.train()
    if feats:
        model.heads.set_standardization(torch.cat(feats))


def _scheduler(optimizer: torch.optim.Optimizer, fc, steps_per_epoch: int):
    if fc.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.3, patience=1)
    return warmup_cosine(
        optimizer, int(fc.warmup_epochs * steps_per_epoch), max(1, fc.epochs * steps_per_epoch)
    )


def _enable_checkpointing(backbone: Backbone) -> None:
    """Hugging Face backbones recompute activations in backward; other families do not support it."""
    inner = getattr(backbone, "inner", backbone)
    model = getattr(inner, "model", None)
    # Recent transformers renamed it activation checkpointing; the old name is a deprecated alias that
    # will go in v6 (and then this check must not quietly fall through to "not supported").
    names = ("activation_checkpointing_enable", "gradient_checkpointing_enable")
    enable = next((getattr(model, n) for n in names if hasattr(model, n)), None)
    if enable is not None:
        enable()
    else:
        raise ValueError(
            f"{backbone.name}: gradient checkpointing is only available for Hugging Face backbones"
        )


def _save_checkpoint(
    model: FinetuneModel, cfg: RunConfig, data: _Data, output_dir: Path, report, calibration: Calibration
) -> None:
    """The core checkpoint layout (heads + backbone.safetensors), so ``predict`` and ``evaluate`` work;
    a listing checkpoint also carries its fitted lexical view and probe."""
    backbone_state = {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()}
    fresh = build_backbone(cfg.backbone)
    fresh.load_state_dict(backbone_state)
    checkpoint = heads_checkpoint(
        cfg,
        fresh,
        data.schema,
        data.categories,
        fresh.feature_dim,
        metrics={
            "val_score": report.score_phase2,
            "dev_score": report.dev_score,
            "recipe": "finetune",
            "head": cfg.finetune.head,
            "class_balance": calibration.strengths,
            **({"class_balance_by_inputs": calibration.strengths_by_inputs} if data.text is not None else {}),
            "calibration": calibration.report,
        },
        text=text_record(cfg, data.text) if data.text is not None else {},
        **calibration.checkpoint_fields(),
    )
    if data.text is not None:
        data.text.save(output_dir)
    if model.spatial:
        checkpoint.save(output_dir, model.heads, backbone_state)  # predicting it needs forward_features
    else:
        checkpoint.save(output_dir, model.heads.cpu(), backbone_state)
    cfg.save(output_dir / "config.yaml")
    atomic_write_text(output_dir / "metrics.json", json.dumps(report.__dict__, indent=1, default=str))


def phase_two(
    model: FinetuneModel,
    catalog: Catalog,
    train_frame: pd.DataFrame,
    schema: Schema,
    categories: list[str],
    cfg: RunConfig,
    accelerator,
) -> dict[str, dict[str, torch.Tensor]]:
    """Per attribute, only its head trains, on every training row labelled for it (no policy filter).

    Shared features are computed once (the frozen part) and cached; a new head is kept only when the
    attribute's validation score does not drop (decided by the caller, which gets the old weights).
    """
    fc = cfg.finetune
    rows = ImageRows(catalog, train_frame, schema, categories, model.backbone)
    loader = DataLoader(rows, batch_size=fc.batch_size, collate_fn=_collate, num_workers=fc.num_workers)
    model.eval()
    shared, cats, labels = [], [], []
    with torch.no_grad():
        for pixels, category, label, ok, _ in loader:
            pixels, category = pixels.to(accelerator.device), category.to(accelerator.device)
            keep = ok.to(accelerator.device)
            out = model.shared(model.features(pixels[keep]), category[keep])
            shared.append(out.half().cpu() if model.spatial else out.cpu())
            cats.append(category[keep].cpu())
            labels.append(label[ok])
    shared_t, cats_t, labels_t = torch.cat(shared), torch.cat(cats), torch.cat(labels)
    previous: dict[str, dict[str, torch.Tensor]] = {}
    for index, attribute in enumerate(model.heads.attributes):
        rows_a = torch.nonzero(labels_t[:, index] != MISSING).flatten()
        if len(rows_a) == 0:
            continue
        head = model.heads.heads[index]
        before = copy.deepcopy(head.state_dict())
        optimizer = torch.optim.AdamW(head.parameters(), lr=fc.heads_lr * 0.1, weight_decay=fc.weight_decay)
        gen = torch.Generator().manual_seed(cfg.train.seed + index)
        head.train()
        for _ in range(fc.phase2_epochs):
            order = rows_a[torch.randperm(len(rows_a), generator=gen)]
            for start in range(0, len(order), fc.batch_size * 4):
                batch = order[start : start + fc.batch_size * 4]
                x = shared_t[batch].float().to(accelerator.device)
                c = cats_t[batch].to(accelerator.device)
                logits = model.head_logits(index, x, c)
                loss = masked_cross_entropy(
                    {attribute: logits},
                    {attribute: labels_t[batch, index].to(accelerator.device)},
                    fc.label_smoothing,
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        head.eval()
        previous[attribute] = before
    return previous
