"""Recipe ``taxonomy``: titles → (fine-tuned) sentence embeddings → kNN retrieval + hierarchical heads
+ TF-IDF lexical model, a brand extractor, an optional seq2seq generator, and their ensemble.

The rows are split train / dev / test within each top-level category (seeded; sizes in
``train.dev_fraction`` / ``train.test_fraction``). The encoder is fine-tuned jointly with the heads
(parent-masked cross-entropy per level), then the heads train on for a few cheap epochs over frozen
embeddings, and the retrieval index holds the fine-tuned embeddings of the training titles. Choices
(the ensemble) are made on dev and the run is scored on dev; test is left for ``taxonomy evaluate``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from taxonomist.config import TaxonomyConfig
from taxonomist.data.catalog import expand_path
from taxonomist.data.split import Split, split_train_dev_test
from taxonomist.data.taxonomy import (
    BRAND,
    TITLE,
    Taxonomy,
    TitleDataset,
    normalize_brand,
    normalize_text,
    read_flipkart,
    read_indoml,
)
from taxonomist.features.build import build_enricher
from taxonomist.io import atomic_write_frame, atomic_write_text
from taxonomist.metrics.taxonomy import TaxonomyReport, invalid_paths, taxonomy_report
from taxonomist.models.brand import BrandExtractor
from taxonomist.models.leaf_templates import LeafTemplates
from taxonomist.models.seq2seq import Seq2SeqTaxonomyModel
from taxonomist.models.taxonomy import (
    LexicalClassifier,
    RetrievalClassifier,
    hierarchical_loss,
    hierarchical_vote,
    soft_vote,
)
from taxonomist.models.taxonomy_model import (
    DISTRIBUTION_METHODS,
    HeadsClassifier,
    TaxonomyModel,
    path_key,
    path_targets,
)
from taxonomist.models.text import TextEncoder
from taxonomist.progress import progress_bar, timed

SplitName = Literal["train", "dev", "test"]


def load_titles(cfg: TaxonomyConfig) -> TitleDataset:
    path = expand_path(cfg.data.path)
    data = read_flipkart(path, cfg.data.depth) if cfg.data.layout == "flipkart" else read_indoml(path)
    if cfg.data.limit:
        rows = np.random.default_rng(cfg.train.seed).permutation(len(data.frame))[: cfg.data.limit]
        data = TitleDataset(data.frame.iloc[np.sort(rows)].reset_index(drop=True), data.levels, data.skipped)
    return data


def split_titles(data: TitleDataset, cfg: TaxonomyConfig) -> Split:
    """Seeded train / dev / test rows within each category of the first ``train.stratify_depth`` levels.

    The top level (the default) keeps dev and test close to a random sample, rare paths included; the
    full path would keep every path with fewer than about five rows out of both, which flatters them.
    """
    levels = data.levels[: cfg.train.stratify_depth]
    strata = data.frame[levels].astype(str).agg(" > ".join, axis=1)
    return split_train_dev_test(strata, cfg.train.dev_fraction, cfg.train.test_fraction, cfg.train.seed)


def split_part(data: TitleDataset, cfg: TaxonomyConfig, part: SplitName) -> TitleDataset:
    return data.subset(getattr(split_titles(data, cfg), part))


def build_model(cfg: TaxonomyConfig, encoder: TextEncoder) -> TaxonomyModel:
    """The config turned into an unfitted :class:`TaxonomyModel` (seq2seq comes from :func:`train`)."""
    methods = set(cfg.train.methods)
    return TaxonomyModel(
        encoder,
        BrandExtractor(cfg.brand.max_tokens),
        retrieval=RetrievalClassifier(cfg.retrieval.k, cfg.retrieval.temperature)
        if "retrieval" in methods
        else None,
        heads=_heads(cfg) if "heads" in methods else None,
        lexical=LexicalClassifier(cfg.lexical.C, cfg.lexical.temperature) if "lexical" in methods else None,
        leaf_templates=None
        if cfg.predict.leaf_templates == "off"
        else LeafTemplates(cfg.predict.leaf_template_share, cfg.predict.leaf_template_min_rows),
        seq2seq_beams=cfg.seq2seq.num_beams,
        enricher=build_enricher(cfg.enrich) if cfg.enrich.corpus else None,
        enrich=cfg.to_dict()["enrich"] if cfg.enrich.corpus else None,
        method=cfg.predict.method,
        ensemble="soft" if cfg.predict.ensemble == "dev" else cfg.predict.ensemble,
        brand_none_threshold=0.9 if cfg.brand.none_threshold is None else cfg.brand.none_threshold,
    )


def _heads(cfg: TaxonomyConfig) -> HeadsClassifier:
    hc = cfg.heads
    return HeadsClassifier(
        hc.hidden,
        hc.epochs,
        hc.lr,
        hc.batch_size,
        hc.label_smoothing,
        hc.scale,
        hc.beam_width,
        cfg.train.seed,
    )


def finetune_encoder(
    encoder: TextEncoder,
    heads: HeadsClassifier,
    titles: list[str],
    targets: np.ndarray,
    cfg: TaxonomyConfig,
    progress: bool = True,
) -> list[float]:
    """Encoder and heads trained together with AdamW + one-cycle schedule; returns loss per epoch.

    Runs where the encoder is (the GPU when there is one); the heads go back to the CPU afterwards,
    where they are fitted further and predict on cached embeddings.
    """
    device = torch.device(encoder.device)
    module = heads.module_.to(device)
    parents = [p if p is None else p.to(device) for p in heads.parents_]
    ec = cfg.encoder
    opt = torch.optim.AdamW(
        [
            {"params": encoder.transformer.parameters(), "lr": ec.finetune_lr},
            {"params": module.parameters(), "lr": heads.lr},
        ],
        weight_decay=0.01,
    )
    steps_per_epoch = -(-len(titles) // ec.finetune_batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=[ec.finetune_lr, heads.lr],
        total_steps=ec.finetune_epochs * steps_per_epoch,
        pct_start=0.1,
    )
    rng = np.random.default_rng(cfg.train.seed)
    target_t = torch.from_numpy(targets).to(device)
    losses = []
    encoder.transformer.train()
    module.train()
    with progress_bar("titles", disable=not progress) as bar:
        for epoch in range(ec.finetune_epochs):
            task = bar.add_task(f"fine-tune encoder {epoch + 1}/{ec.finetune_epochs}", total=len(titles))
            order = rng.permutation(len(titles))
            total = 0.0
            for start in range(0, len(order), ec.finetune_batch_size):
                batch = order[start : start + ec.finetune_batch_size]
                emb = encoder.mean_pool([titles[i] for i in batch])
                loss = hierarchical_loss(
                    module(emb * heads.scale), target_t[batch], parents, heads.label_smoothing
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([*encoder.transformer.parameters(), *module.parameters()], 1.0)
                opt.step()
                schedule.step()
                total += float(loss.detach()) * len(batch)
                bar.advance(task, len(batch))
            losses.append(total / len(titles))
    encoder.transformer.eval()
    encoder.invalidate()
    module.cpu()
    return losses


@dataclass
class TaxonomyTrainReport:
    output_dir: Path
    reports: dict[str, TaxonomyReport]
    """Dev report per method and for both ensembles."""
    invalid: dict[str, int]
    titles_per_s: dict[str, float]
    train_seconds: dict[str, float]
    n_train: int
    n_dev: int
    n_test: int
    dev_unseen_paths: int
    skipped: int
    ensemble: str
    """The ensemble the model uses (chosen on dev when ``predict.ensemble`` is ``dev``)."""
    brand_none_threshold: float
    """The brand model's "none" threshold (chosen on dev when ``brand.none_threshold`` is unset)."""
    leaf_template_parents: int | None = None
    """Parents whose brand leaves the model builds (None: brand leaves off, as set or chosen on dev)."""
    losses: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "output_dir": str(self.output_dir),
            "split": "dev",
            "n_train": self.n_train,
            "n_dev": self.n_dev,
            "n_test": self.n_test,
            "dev_unseen_paths": self.dev_unseen_paths,
            "skipped_rows": self.skipped,
            "ensemble": self.ensemble,
            "brand_none_threshold": self.brand_none_threshold,
            "leaf_template_parents": self.leaf_template_parents,
            "train_seconds": self.train_seconds,
            "titles_per_s": self.titles_per_s,
            "invalid_paths": self.invalid,
            "methods": {m: r.to_dict() for m, r in self.reports.items()},
            "losses": self.losses,
        }


def _fit_seq2seq(
    cfg: TaxonomyConfig, taxonomy: Taxonomy, titles: list[str], data: TitleDataset, work: Path
) -> tuple[Seq2SeqTaxonomyModel, list[float]]:
    from taxonomist.training.seq2seq import fit_seq2seq

    sc = cfg.seq2seq
    model = Seq2SeqTaxonomyModel.from_pretrained(sc.model, taxonomy, prompt=sc.prompt)
    losses = fit_seq2seq(
        model,
        titles,
        data.paths(),
        data.frame[BRAND].tolist(),
        work,
        epochs=sc.epochs,
        learning_rate=sc.lr,
        batch_size=sc.batch_size,
        lora=sc.lora,
        seed=cfg.train.seed,
    )
    return model, losses


@dataclass
class _Parts:
    """The recipe's titles: the whole set, its split, the training part (paths in the taxonomy only) with
    its node targets, dev, the taxonomy, and how many dev titles carry a path training never saw."""

    data: TitleDataset
    split: Split
    train: TitleDataset
    train_targets: np.ndarray
    dev: TitleDataset
    taxonomy: Taxonomy
    dev_unseen: int


def _prepare_titles(cfg: TaxonomyConfig) -> _Parts:
    data = load_titles(cfg)
    split = split_titles(data, cfg)
    train_data, dev_data = data.subset(split.train), data.subset(split.dev)
    taxonomy = Taxonomy.load(expand_path(cfg.data.taxonomy)) if cfg.data.taxonomy else train_data.taxonomy()
    if taxonomy.levels != data.levels:
        raise ValueError(f"taxonomy levels {taxonomy.levels} differ from the data's {data.levels}")
    train_targets = path_targets(taxonomy, train_data.paths())
    known = (train_targets >= 0).all(axis=1)
    dev_unseen = int((path_targets(taxonomy, dev_data.paths()) < 0).any(axis=1).sum())
    return _Parts(
        data,
        split,
        train_data.subset(np.flatnonzero(known)),
        train_targets[known],
        dev_data,
        taxonomy,
        dev_unseen,
    )


def _fit_model(
    cfg: TaxonomyConfig, parts: _Parts, output_dir: Path, seconds: dict[str, float], progress: bool
) -> tuple[TaxonomyModel, dict[str, list[float]]]:
    """Build the model, fine-tune the encoder and seq2seq where asked, then fit every other part."""
    encoder = TextEncoder(cfg.encoder.name, cfg.encoder.max_length, cfg.encoder.batch_size)
    with timed(seconds, "enrich_index"):  # the corpus (if any) is embedded once, timed apart
        model = build_model(cfg, encoder)
    if not cfg.enrich.corpus:
        del seconds["enrich_index"]
    losses: dict[str, list[float]] = {}
    methods = set(cfg.train.methods)
    titles = parts.train.frame[TITLE].tolist()
    if cfg.encoder.finetune_epochs > 0 and methods & {"heads", "retrieval"}:
        with timed(seconds, "finetune_encoder"):
            heads = model.heads or _heads(cfg)  # retrieval alone still fine-tunes through the heads' loss
            heads.build(encoder.dim, parts.taxonomy)
            prepared = model.prepare(titles)
            losses["finetune"] = finetune_encoder(
                encoder, heads, prepared, parts.train_targets, cfg, progress
            )
            model.encoder_finetuned = True
    if "seq2seq" in methods:
        with timed(seconds, "seq2seq"):
            model.seq2seq, losses["seq2seq"] = _fit_seq2seq(
                cfg, parts.taxonomy, model.prepare(titles), parts.train, output_dir / "seq2seq-work"
            )
    model.fit(
        titles, parts.train.paths(), parts.train.frame[BRAND].tolist(), parts.taxonomy, progress=progress
    )
    seconds.update(model.fit_seconds_)
    if model.heads is not None:
        losses["heads"] = model.heads.losses_
    return model, losses


def _own_method(model: TaxonomyModel, result: dict) -> str:
    """The method ``model`` predicts with, among those ``result`` scored (a single method: no ensemble)."""
    method = model.ensemble if model.method == "ensemble" else model.method
    return method if method in result["reports"] else next(iter(result["reports"]))


def _choose_on_dev(cfg: TaxonomyConfig, model: TaxonomyModel, dev: TitleDataset, progress: bool) -> dict:
    """Brand leaves, the ensemble and the brand "none" threshold chosen on dev; returns the dev figures
    as saved."""
    result = evaluate_model(model, dev, progress)
    if cfg.predict.leaf_templates == "dev" and model.leaf_templates is not None:
        # Path accuracy of the model's own method decides; ties leave the leaves as the tree has them.
        method = _own_method(model, result)
        templates, model.leaf_templates = model.leaf_templates, None
        without = evaluate_model(model, dev, progress)
        if result["reports"][method].path_accuracy > without["reports"][method].path_accuracy:
            model.leaf_templates = templates
        else:
            result = without
    if cfg.predict.ensemble == "dev" and {"soft", "vote"} <= set(result["reports"]):
        # Path accuracy decides; ties keep the soft ensemble.
        soft, vote = (result["reports"][m].path_accuracy for m in ("soft", "vote"))
        model.ensemble = "vote" if vote > soft else "soft"
    if cfg.brand.none_threshold is None:
        predicted = result["predictions"]
        chosen = predicted[predicted["method"] == _own_method(model, result)]
        model.brand_none_threshold = choose_none_threshold(
            model, dev, chosen.reset_index(drop=True), cfg.brand.min_no_brand_accuracy
        )
        result = evaluate_model(model, dev, progress)  # dev figures of the model as saved
    return result


def train(cfg: TaxonomyConfig, output_dir: str | Path, *, progress: bool = True) -> TaxonomyTrainReport:
    """Fit on the training part, choose the ensemble and brand threshold on dev, save, score on dev."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    torch.manual_seed(cfg.train.seed)
    parts = _prepare_titles(cfg)
    model, losses = _fit_model(cfg, parts, output_dir, seconds, progress)
    result = _choose_on_dev(cfg, model, parts.dev, progress)
    model.save(output_dir)
    cfg.save(output_dir / "config.yaml")  # the run's record: `taxonomy evaluate` rebuilds its split
    report = TaxonomyTrainReport(
        output_dir=output_dir,
        reports=result["reports"],
        invalid=result["invalid"],
        titles_per_s=result["titles_per_s"],
        train_seconds={k: round(v, 2) for k, v in seconds.items()},
        n_train=len(parts.train.frame),
        n_dev=len(parts.dev.frame),
        n_test=len(parts.split.test),
        dev_unseen_paths=parts.dev_unseen,
        skipped=len(parts.data.skipped),
        ensemble=model.ensemble,
        brand_none_threshold=model.brand_none_threshold,
        leaf_template_parents=None if model.leaf_templates is None else len(model.leaf_templates.parents_),
        losses=losses,
    )
    atomic_write_frame(result["predictions"], output_dir / "dev_predictions.csv")
    atomic_write_text(output_dir / "metrics.json", json.dumps(report.to_dict(), indent=1))
    atomic_write_text(output_dir / "report.md", report_markdown(report))
    return report


NONE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995)
"""The brand "none" thresholds tried on dev."""


def choose_none_threshold(
    model: TaxonomyModel,
    data: TitleDataset,
    predicted: pd.DataFrame,
    min_no_brand_accuracy: float,
    thresholds: Sequence[float] = NONE_THRESHOLDS,
) -> float:
    """The "no brand" threshold with the best dev item accuracy (path and brand right, on branded rows)
    among those that still call at least ``min_no_brand_accuracy`` of the brandless dev rows brandless.

    ``predicted`` holds the model's dev paths (one row per title). Ties go to the lower threshold.
    """
    levels = model.taxonomy_.levels
    titles = [normalize_text(t) for t in data.frame[TITLE]]
    paths = [path_key(p) for p in predicted[levels].itertuples(index=False, name=None)]
    truth = data.frame[BRAND].map(normalize_brand).to_numpy()
    branded = truth != ""
    path_ok = (predicted[levels].to_numpy() == data.frame[levels].to_numpy()).all(axis=1)
    best, best_item = thresholds[0], -1.0
    for threshold in thresholds:
        brands, _ = model.brand.predict_with_confidence(titles, paths, none_threshold=threshold)
        ok = np.array([normalize_brand(b) for b in brands]) == truth
        if (~branded).any() and ok[~branded].mean() < min_no_brand_accuracy:
            continue
        item = float((ok & path_ok)[branded].mean()) if branded.any() else 0.0
        if item > best_item:
            best, best_item = threshold, item
    return best


def evaluate_model(model: TaxonomyModel, data: TitleDataset, progress: bool = False) -> dict:
    """Score every method and both ensembles on labelled titles.

    Titles/s per method is end to end on this batch: normalising (and enriching), encoding when the
    method needs embeddings, the method itself and the brand; an ensemble pays for all its members.
    """
    titles = data.frame[TITLE].tolist()
    taxonomy = model.taxonomy_
    shared: dict[str, float] = {}
    with timed(shared, "prepare"):
        prepared = model.prepare(titles)
    embeddings = None
    if {"retrieval", "heads"} & set(model.methods):
        with timed(shared, "embed"):
            embeddings = model.embed(prepared, show_progress=progress)
    preds, scores, own = {}, {}, {}
    for method in model.methods:
        with timed(own, method):
            p, s = model.method_outputs(prepared, [method], embeddings)
        preds.update(p)
        scores.update(s)
    brand_seconds: dict[str, float] = {}
    frames = {}
    for method, pred in preds.items():
        with timed(brand_seconds, method):  # brand leaves and brands: what follows the paths
            frames[method] = model.finish(titles, pred)
    shared["brand"] = float(np.mean(list(brand_seconds.values())))

    def cost(members: list[str], extra: float = 0.0) -> float:
        embed = shared.get("embed", 0.0) if {"retrieval", "heads"} & set(members) else 0.0
        return shared["prepare"] + shared["brand"] + embed + sum(own[m] for m in members) + extra

    seconds = {m: cost([m]) for m in own}
    members = list(preds)
    if len(members) > 1:
        combine: dict[str, float] = {}
        with timed(combine, "vote"):
            preds["vote"] = hierarchical_vote([preds[m] for m in members], taxonomy)
        seconds["vote"] = cost(members, combine["vote"])
        soft_members = [m for m in members if m in DISTRIBUTION_METHODS]
        if len(soft_members) > 1:
            with timed(combine, "soft"):
                preds["soft"] = soft_vote([scores[m] for m in soft_members], taxonomy)
            seconds["soft"] = cost(soft_members, combine["soft"])
    for method in preds.keys() - frames.keys():
        frames[method] = model.finish(titles, preds[method])
    reports, invalid = {}, {}
    for method, frame in frames.items():
        reports[method] = taxonomy_report(data.frame, frame, taxonomy.levels)
        invalid[method] = invalid_paths(frame, taxonomy.levels, titles, model.is_valid)
    return {
        "reports": reports,
        "invalid": invalid,
        "titles_per_s": {m: round(len(titles) / max(s, 1e-9), 1) for m, s in seconds.items()},
        "predictions": pd.concat(
            [f.assign(method=m, title=titles) for m, f in frames.items()], ignore_index=True
        ),
    }


def report_markdown(report: TaxonomyTrainReport) -> str:
    lines = [
        f"# Taxonomy run: {report.n_train} training / {report.n_dev} dev titles "
        f"({report.n_test} test titles kept for `taxonomist taxonomy evaluate`)",
        "",
        f"Dev titles whose path is not in the taxonomy (cannot be right): {report.dev_unseen_paths}. "
        f"Chosen on dev: the {report.ensemble} ensemble, brand none threshold "
        f"{report.brand_none_threshold}, brand leaves "
        + (
            "off."
            if report.leaf_template_parents is None
            else f"on ({report.leaf_template_parents} parents name their leaves after the brand)."
        ),
        "",
        "| method | path acc | item acc | brand acc | hier. F1 | titles/s | invalid paths |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for method, r in report.reports.items():
        item = f"{r.item_accuracy:.4f}" if r.item_accuracy is not None else "-"
        brand = f"{r.brand_accuracy:.4f}" if r.brand_accuracy is not None else "-"
        lines.append(
            f"| {method} | {r.path_accuracy:.4f} | {item} | {brand} | {r.hierarchical_f1:.4f} "
            f"| {report.titles_per_s.get(method, 0):.0f} | {report.invalid[method]} |"
        )
    return "\n".join(lines) + "\n"
