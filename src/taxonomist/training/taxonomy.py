"""Recipe ``taxonomy``: titles → (fine-tuned) sentence embeddings → kNN retrieval + hierarchical heads,
a brand extractor, an optional seq2seq generator, and their hierarchy-compliant vote.

The encoder is fine-tuned jointly with the heads (parent-masked cross-entropy per level), then the heads
train on for a few cheap epochs over frozen embeddings, and the retrieval index holds the fine-tuned
embeddings of the training titles. Everything is scored on a seeded validation split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from taxonomist.config import TaxonomyConfig
from taxonomist.data.catalog import expand_path
from taxonomist.data.taxonomy import BRAND, TITLE, Taxonomy, TitleDataset, read_flipkart, read_indoml
from taxonomist.inference.taxonomy import DISTRIBUTION_METHODS, TaxonomyPredictor, path_key, prediction_frame
from taxonomist.io import atomic_write_frame, atomic_write_text
from taxonomist.metrics.taxonomy import TaxonomyReport, invalid_paths, taxonomy_report
from taxonomist.models.brand import BrandExtractor
from taxonomist.models.taxonomy import (
    HierarchicalHeads,
    LexicalClassifier,
    RetrievalClassifier,
    hierarchical_loss,
    hierarchical_vote,
    level_parents,
    soft_vote,
)
from taxonomist.models.text import TextEncoder
from taxonomist.progress import progress_bar, timed


def load_titles(cfg: TaxonomyConfig) -> TitleDataset:
    path = expand_path(cfg.data.path)
    data = read_flipkart(path, cfg.data.depth) if cfg.data.layout == "flipkart" else read_indoml(path)
    if cfg.data.limit:
        rows = np.random.default_rng(cfg.train.seed).permutation(len(data.frame))[: cfg.data.limit]
        data = TitleDataset(data.frame.iloc[np.sort(rows)].reset_index(drop=True), data.levels, data.skipped)
    return data


def split_rows(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split (train rows, validation rows)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * val_fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _targets(taxonomy: Taxonomy, data: TitleDataset) -> np.ndarray:
    """``(n, depth)`` node ids per level; rows whose path is not in the taxonomy get -1."""
    node_ids = taxonomy.path_node_ids()
    path_ids = np.array([taxonomy.path_id(p) for p in data.paths()], dtype=np.int64)
    out = np.full((len(path_ids), taxonomy.depth), -1, dtype=np.int64)
    out[path_ids >= 0] = node_ids[path_ids[path_ids >= 0]]
    return out


def finetune_encoder(
    encoder: TextEncoder,
    heads: HierarchicalHeads,
    titles: list[str],
    targets: np.ndarray,
    taxonomy: Taxonomy,
    cfg: TaxonomyConfig,
    progress: bool = True,
) -> list[float]:
    """Encoder and heads trained together with AdamW + one-cycle schedule; returns loss per epoch.

    Runs where the encoder is (the GPU when there is one); the heads go back to the CPU afterwards,
    where they are fitted further and predict on cached embeddings.
    """
    device = torch.device(encoder.device)
    heads.to(device)
    parents = [p if p is None else p.to(device) for p in level_parents(taxonomy)]
    ec, hc = cfg.encoder, cfg.heads
    opt = torch.optim.AdamW(
        [
            {"params": encoder.transformer.parameters(), "lr": ec.finetune_lr},
            {"params": heads.parameters(), "lr": hc.lr},
        ],
        weight_decay=0.01,
    )
    steps_per_epoch = -(-len(titles) // ec.finetune_batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[ec.finetune_lr, hc.lr], total_steps=ec.finetune_epochs * steps_per_epoch, pct_start=0.1
    )
    rng = np.random.default_rng(cfg.train.seed)
    target_t = torch.from_numpy(targets).to(device)
    losses = []
    encoder.transformer.train()
    heads.train()
    with progress_bar("titles", disable=not progress) as bar:
        for epoch in range(ec.finetune_epochs):
            task = bar.add_task(f"fine-tune encoder {epoch + 1}/{ec.finetune_epochs}", total=len(titles))
            order = rng.permutation(len(titles))
            total = 0.0
            for start in range(0, len(order), ec.finetune_batch_size):
                batch = order[start : start + ec.finetune_batch_size]
                emb = encoder.mean_pool([titles[i] for i in batch])
                loss = hierarchical_loss(heads(emb * hc.scale), target_t[batch], parents, hc.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([*encoder.transformer.parameters(), *heads.parameters()], 1.0)
                opt.step()
                schedule.step()
                total += float(loss.detach()) * len(batch)
                bar.advance(task, len(batch))
            losses.append(total / len(titles))
    encoder.transformer.eval()
    encoder.invalidate()
    heads.cpu()
    return losses


def fit_heads(
    heads: HierarchicalHeads,
    embeddings: np.ndarray,
    targets: np.ndarray,
    taxonomy: Taxonomy,
    cfg: TaxonomyConfig,
) -> list[float]:
    """Heads alone on frozen embeddings: seconds on CPU, so they can train to convergence."""
    hc = cfg.heads
    parents = level_parents(taxonomy)
    x = torch.from_numpy(embeddings) * hc.scale
    y = torch.from_numpy(targets)
    opt = torch.optim.AdamW(heads.parameters(), lr=hc.lr, weight_decay=1e-4)
    steps = hc.epochs * -(-len(x) // hc.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=hc.lr, total_steps=max(1, steps), pct_start=0.1
    )
    gen = torch.Generator().manual_seed(cfg.train.seed)
    losses = []
    heads.train()
    for _ in range(hc.epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for start in range(0, len(x), hc.batch_size):
            batch = order[start : start + hc.batch_size]
            loss = hierarchical_loss(heads(x[batch]), y[batch], parents, hc.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
        losses.append(total / len(x))
    heads.eval()
    return losses


@dataclass
class TaxonomyTrainReport:
    output_dir: Path
    reports: dict[str, TaxonomyReport]
    """Validation report per method and for the ensemble."""
    invalid: dict[str, int]
    titles_per_s: dict[str, float]
    train_seconds: dict[str, float]
    n_train: int
    n_val: int
    val_unseen_paths: int
    skipped: int
    losses: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "output_dir": str(self.output_dir),
            "n_train": self.n_train,
            "n_val": self.n_val,
            "val_unseen_paths": self.val_unseen_paths,
            "skipped_rows": self.skipped,
            "train_seconds": self.train_seconds,
            "titles_per_s": self.titles_per_s,
            "invalid_paths": self.invalid,
            "methods": {m: r.to_dict() for m, r in self.reports.items()},
            "losses": self.losses,
        }


def train(cfg: TaxonomyConfig, output_dir: str | Path, *, progress: bool = True) -> TaxonomyTrainReport:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    torch.manual_seed(cfg.train.seed)
    data = load_titles(cfg)
    train_rows, val_rows = split_rows(len(data.frame), cfg.train.val_fraction, cfg.train.seed)
    train_data, val_data = data.subset(train_rows), data.subset(val_rows)
    taxonomy = Taxonomy.load(expand_path(cfg.data.taxonomy)) if cfg.data.taxonomy else train_data.taxonomy()
    if taxonomy.levels != data.levels:
        raise ValueError(f"taxonomy levels {taxonomy.levels} differ from the data's {data.levels}")
    train_targets = _targets(taxonomy, train_data)
    known = (train_targets >= 0).all(axis=1)
    train_data = train_data.subset(np.flatnonzero(known))
    train_targets = train_targets[known]
    val_unseen = int((_targets(taxonomy, val_data) < 0).any(axis=1).sum())

    encoder = TextEncoder(
        cfg.encoder.name, cfg.encoder.max_length, cfg.encoder.batch_size, quantize=cfg.encoder.quantize
    )
    predictor = TaxonomyPredictor(taxonomy, encoder, cfg, BrandExtractor(cfg.brand.max_tokens))
    if cfg.enrich.corpus:
        from taxonomist.features.enrich import Enricher

        with timed(seconds, "enrich_index"):
            predictor.enricher = Enricher.from_config(cfg.enrich)
    train_titles = predictor.prepare(train_data.frame[TITLE].tolist())
    losses: dict[str, list[float]] = {}

    methods = list(cfg.train.methods)
    unknown = set(methods) - {"retrieval", "heads", "lexical", "seq2seq"}
    if unknown:
        raise ValueError(f"unknown taxonomy method(s) {sorted(unknown)}")
    level_sizes = [len(n) for n in taxonomy.nodes]
    heads = HierarchicalHeads(encoder.dim, level_sizes, cfg.heads.hidden)
    if cfg.encoder.finetune_epochs > 0 and ("heads" in methods or "retrieval" in methods):
        with timed(seconds, "finetune_encoder"):
            losses["finetune"] = finetune_encoder(
                encoder, heads, train_titles, train_targets, taxonomy, cfg, progress
            )
            predictor.encoder_finetuned = True
    if "heads" in methods or "retrieval" in methods:
        with timed(seconds, "embed_train"):
            train_emb = encoder.encode(train_titles, show_progress=progress)
    if "retrieval" in methods:
        with timed(seconds, "retrieval"):
            predictor.retrieval = RetrievalClassifier(cfg.retrieval.k, cfg.retrieval.temperature).fit(
                train_emb, train_targets[:, -1], taxonomy
            )
    if "heads" in methods:
        with timed(seconds, "heads"):
            losses["heads"] = fit_heads(heads, train_emb, train_targets, taxonomy, cfg)
            predictor.heads = heads
    if "lexical" in methods:
        with timed(seconds, "lexical"):
            predictor.lexical = LexicalClassifier(cfg.lexical.C, cfg.lexical.temperature).fit(
                train_titles, train_targets[:, -1], taxonomy
            )
    if "seq2seq" in methods:
        from taxonomist.models.seq2seq import Seq2SeqTaxonomyModel

        with timed(seconds, "seq2seq"):
            sc = cfg.seq2seq
            model = Seq2SeqTaxonomyModel.from_pretrained(sc.model, taxonomy, prompt=sc.prompt)
            model.fit(
                train_titles,
                train_data.paths(),
                train_data.frame[BRAND].tolist(),
                output_dir / "seq2seq-work",
                epochs=sc.epochs,
                learning_rate=sc.lr,
                batch_size=sc.batch_size,
                lora=sc.lora,
                seed=cfg.train.seed,
            )
            predictor.seq2seq = model
    with timed(seconds, "brand"):
        predictor.brand.fit(
            train_data.frame[TITLE].tolist(),
            train_data.frame[BRAND].tolist(),
            [path_key(p) for p in train_data.paths()],
        )
    predictor.save(output_dir)

    result = evaluate_predictor(predictor, val_data, progress)
    report = TaxonomyTrainReport(
        output_dir=output_dir,
        reports=result["reports"],
        invalid=result["invalid"],
        titles_per_s=result["titles_per_s"],
        train_seconds={k: round(v, 2) for k, v in seconds.items()},
        n_train=len(train_data.frame),
        n_val=len(val_data.frame),
        val_unseen_paths=val_unseen,
        skipped=len(data.skipped),
        losses=losses,
    )
    atomic_write_frame(result["predictions"], output_dir / "val_predictions.csv")
    atomic_write_text(output_dir / "metrics.json", json.dumps(report.to_dict(), indent=1))
    atomic_write_text(output_dir / "report.md", report_markdown(report))
    return report


def evaluate_predictor(predictor: TaxonomyPredictor, data: TitleDataset, progress: bool = False) -> dict:
    """Score every method and both ensembles on labelled titles.

    Titles/s per method is end to end on this batch: normalising (and enriching), encoding when the
    method needs embeddings, the method itself and the brand; an ensemble pays for all its members.
    """
    titles = data.frame[TITLE].tolist()
    valid = set(predictor.taxonomy.paths)
    shared: dict[str, float] = {}
    with timed(shared, "prepare"):
        prepared = predictor.prepare(titles)
    embeddings = None
    if {"retrieval", "heads"} & set(predictor.methods):
        with timed(shared, "embed"):
            embeddings = predictor.embed(prepared, show_progress=progress)
    preds, scores, own = {}, {}, {}
    for method in predictor.methods:
        with timed(own, method):
            p, s = predictor.method_outputs(prepared, [method], embeddings)
        preds.update(p)
        scores.update(s)
    brand_seconds: dict[str, float] = {}
    outputs = {}
    for method, pred in preds.items():
        with timed(brand_seconds, method):
            outputs[method] = predictor.predict_brands(titles, pred)
    shared["brand"] = float(np.mean(list(brand_seconds.values())))

    def cost(members: list[str], extra: float = 0.0) -> float:
        embed = shared.get("embed", 0.0) if {"retrieval", "heads"} & set(members) else 0.0
        return shared["prepare"] + shared["brand"] + embed + sum(own[m] for m in members) + extra

    seconds = {m: cost([m]) for m in own}
    members = list(preds)
    if len(members) > 1:
        combine: dict[str, float] = {}
        with timed(combine, "vote"):
            preds["vote"] = hierarchical_vote([preds[m] for m in members], predictor.taxonomy)
        seconds["vote"] = cost(members, combine["vote"])
        soft_members = [m for m in members if m in DISTRIBUTION_METHODS]
        if len(soft_members) > 1:
            with timed(combine, "soft"):
                preds["soft"] = soft_vote([scores[m] for m in soft_members], predictor.taxonomy)
            seconds["soft"] = cost(soft_members, combine["soft"])
    for method in preds.keys() - outputs.keys():
        outputs[method] = predictor.predict_brands(titles, preds[method])
    reports, invalid, frames = {}, {}, []
    for method, pred in preds.items():
        frame = prediction_frame(pred, predictor.taxonomy, *outputs[method])
        reports[method] = taxonomy_report(data.frame, frame, predictor.taxonomy.levels)
        invalid[method] = invalid_paths(frame, predictor.taxonomy.levels, valid)
        frames.append(frame.assign(method=method, title=titles))
    return {
        "reports": reports,
        "invalid": invalid,
        "titles_per_s": {m: round(len(titles) / max(s, 1e-9), 1) for m, s in seconds.items()},
        "predictions": pd.concat(frames, ignore_index=True),
    }


def report_markdown(report: TaxonomyTrainReport) -> str:
    lines = [
        f"# Taxonomy run: {report.n_train} training / {report.n_val} validation titles",
        "",
        f"Validation titles whose path is not in the taxonomy (cannot be right): {report.val_unseen_paths}.",
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
