"""The taxonomy model: title → path + brand, one plain fitted object saved and loaded by itself.

:class:`TaxonomyModel` holds a sentence encoder and the path classifiers of :mod:`taxonomist.models.taxonomy`
(kNN retrieval, hierarchical heads, TF-IDF lexical, optionally a constrained seq2seq model), combines them
(soft product of experts or hierarchy-compliant vote) and adds the brand. Its parts take plain arguments;
the recipe (:mod:`taxonomist.training.taxonomy`) turns a config into them, fine-tunes the encoder and the
seq2seq model where asked (both are training loops), then calls :meth:`TaxonomyModel.fit` for the rest.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from taxonomist.data.taxonomy import BRAND, PATH_SEP, Taxonomy, normalize_text
from taxonomist.io import atomic_write_json
from taxonomist.models.brand import BrandExtractor
from taxonomist.models.leaf_templates import LeafTemplates
from taxonomist.models.seq2seq import Seq2SeqTaxonomyModel
from taxonomist.models.taxonomy import (
    HierarchicalHeads,
    LexicalClassifier,
    PathPrediction,
    RetrievalClassifier,
    beam_search,
    hierarchical_loss,
    hierarchical_vote,
    level_parents,
    path_log_probs,
    prediction_from_log_probs,
    sibling_log_softmax,
    soft_vote,
)
from taxonomist.models.text import TextEncoder

MANIFEST = "taxonomist.json"
FORMAT = 2
"""Checkpoint layout version: 2 keeps every setting in the manifest (1 read them from config.yaml)."""
METHODS = ("retrieval", "heads", "lexical", "seq2seq")
ENSEMBLES = ("ensemble", "soft", "vote")
"""Combinations of every method in a model: its own ensemble, or one named explicitly."""
DISTRIBUTION_METHODS = ("retrieval", "heads", "lexical")
"""Methods that score every path (and can join the soft ensemble)."""
LEAF_TEMPLATES = "leaf_templates.json"
CHECKPOINT_FILES = (
    MANIFEST,
    "taxonomy.json",
    "heads.safetensors",
    "retrieval.npz",
    "brand.*",
    "lexical.*",
    LEAF_TEMPLATES,
    "encoder/**/*",
    "seq2seq/**/*",
)
"""What :meth:`TaxonomyModel.load` reads: a checkpoint's version is their digest."""


class TaxonomyCheckpointError(ValueError):
    """A folder that is not a complete taxonomy checkpoint, or a method it does not have."""


def path_key(path: Sequence[str]) -> str:
    return PATH_SEP.join(path)


def path_targets(taxonomy: Taxonomy, paths: Sequence[Sequence[str]]) -> np.ndarray:
    """``(n, depth)`` node ids per level; rows whose path is not in the taxonomy get -1."""
    node_ids = taxonomy.path_node_ids()
    path_ids = np.array([taxonomy.path_id(p) for p in paths], dtype=np.int64)
    out = np.full((len(path_ids), taxonomy.depth), -1, dtype=np.int64)
    out[path_ids >= 0] = node_ids[path_ids[path_ids >= 0]]
    return out


def prediction_frame(
    paths: Sequence[Sequence[str]],
    level_confidence: np.ndarray,
    levels: Sequence[str],
    brands: Sequence[str],
    brand_confidence: np.ndarray,
) -> pd.DataFrame:
    # dtype=str: a frame of no rows has text columns like any other, not float ones.
    frame = pd.DataFrame({level: [p[k] for p in paths] for k, level in enumerate(levels)}, dtype=str)
    frame[BRAND] = pd.Series(list(brands), dtype=str)
    for k, level in enumerate(levels):
        frame[f"{level}_confidence"] = np.asarray(level_confidence)[:, k].round(4)
    frame["brand_confidence"] = np.round(brand_confidence, 4)
    return frame


@dataclass(eq=False)
class HeadsClassifier:
    """One head per level over (scaled) title embeddings, trained with the parent-masked loss; beam search
    over parent-conditional probabilities predicts, so every output is a path of the tree.

    :meth:`build` creates the network; the recipe may train it jointly with the encoder first, and
    :meth:`fit` then continues on frozen embeddings (seconds on CPU, so it can run to convergence).
    Its fields are the settings; learned state (``module_``, ``parents_``, ``losses_``) is set by fitting.
    """

    hidden: int = 0
    epochs: int = 30
    lr: float = 3e-3
    batch_size: int = 256
    label_smoothing: float = 0.1
    scale: float = 8.0
    beam_width: int = 5
    seed: int = 0

    def build(self, in_dim: int, taxonomy: Taxonomy) -> HierarchicalHeads:
        self.module_ = HierarchicalHeads(in_dim, [len(n) for n in taxonomy.nodes], self.hidden)
        self.parents_ = level_parents(taxonomy)
        return self.module_

    def fit(self, embeddings: np.ndarray, targets: np.ndarray, taxonomy: Taxonomy) -> HeadsClassifier:
        """AdamW + one-cycle on ``(n, depth)`` node targets; warm-starts from :meth:`build`'s network."""
        if not hasattr(self, "module_"):
            self.build(embeddings.shape[1], taxonomy)
        heads = self.module_
        x = torch.from_numpy(embeddings) * self.scale
        y = torch.from_numpy(targets)
        opt = torch.optim.AdamW(heads.parameters(), lr=self.lr, weight_decay=1e-4)
        steps = self.epochs * -(-len(x) // self.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.lr, total_steps=max(1, steps), pct_start=0.1
        )
        gen = torch.Generator().manual_seed(self.seed)
        self.losses_: list[float] = []
        heads.train()
        for _ in range(self.epochs):
            order = torch.randperm(len(x), generator=gen)
            total = 0.0
            for start in range(0, len(x), self.batch_size):
                batch = order[start : start + self.batch_size]
                loss = hierarchical_loss(heads(x[batch]), y[batch], self.parents_, self.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step()
                total += float(loss.detach()) * len(batch)
            self.losses_.append(total / len(x))
        heads.eval()
        return self

    def level_log_probs(self, embeddings: np.ndarray) -> list[torch.Tensor]:
        """Per level, log p(node | its parent)."""
        self.module_.eval()
        with torch.inference_mode():
            logits = self.module_(torch.from_numpy(embeddings) * self.scale)
            return [sibling_log_softmax(lg, p) for lg, p in zip(logits, self.parents_, strict=True)]

    def predict(self, embeddings: np.ndarray) -> PathPrediction:
        return beam_search(self.level_log_probs(embeddings), self.parents_, self.beam_width)

    def settings(self) -> dict[str, Any]:
        keys = ("hidden", "epochs", "lr", "batch_size", "label_smoothing", "scale", "beam_width", "seed")
        return {k: getattr(self, k) for k in keys}

    def save(self, path: str | os.PathLike) -> None:
        save_file(self.module_.state_dict(), str(path))

    @classmethod
    def load(
        cls, path: str | os.PathLike, settings: Mapping[str, Any], in_dim: int, taxonomy: Taxonomy
    ) -> HeadsClassifier:
        self = cls(**settings)
        self.build(in_dim, taxonomy).load_state_dict(load_file(str(path)))
        self.module_.eval()
        return self


class TitleEnricher(Protocol):
    """Appends text about each title (e.g. :class:`taxonomist.features.enrich.Enricher`)."""

    def enrich(self, titles: list[str]) -> list[str]: ...


@dataclass(eq=False)
class TaxonomyModel:
    """``fit(titles, paths, brands, taxonomy)`` then ``predict(titles)`` → levels, brand, confidences.

    Parts left None are not used; ``seq2seq`` comes already fine-tuned (the recipe's training loop) and
    is kept as it is. ``enricher`` appends corpus text to every title before any method sees it;
    ``enrich`` holds its settings (corpus, columns, k, …), saved so that whoever loads the model can
    rebuild the same enricher (see :meth:`load`). ``method`` is what :meth:`predict` uses unless told
    otherwise (a method, ``ensemble``, ``soft`` or ``vote``); ``ensemble`` is how ``ensemble`` combines
    the methods (the recipe can pick it on the dev split).
    """

    encoder: TextEncoder
    brand: BrandExtractor
    _: KW_ONLY
    retrieval: RetrievalClassifier | None = None
    heads: HeadsClassifier | None = None
    lexical: LexicalClassifier | None = None
    seq2seq: Seq2SeqTaxonomyModel | None = None
    leaf_templates: LeafTemplates | None = None
    seq2seq_beams: int = 4
    enricher: TitleEnricher | None = None
    enrich: Mapping[str, Any] | None = None
    method: str = "ensemble"
    ensemble: Literal["soft", "vote"] = "soft"
    brand_none_threshold: float = 0.9
    encoder_finetuned: bool = False

    def __post_init__(self) -> None:
        self.enrich = dict(self.enrich) if self.enrich else None

    @property
    def methods(self) -> list[str]:
        return [m for m in METHODS if getattr(self, m) is not None]

    # -- fitting ---------------------------------------------------------------------------------------
    def fit(
        self,
        titles: Sequence[str],
        paths: Sequence[Sequence[str]],
        brands: Sequence[str],
        taxonomy: Taxonomy,
        *,
        progress: bool = False,
    ) -> TaxonomyModel:
        """Fit every part but a (pre-fitted) seq2seq model; seconds per part land in ``fit_seconds_``."""
        if not len(titles) == len(paths) == len(brands):
            raise ValueError(f"{len(titles)} titles, {len(paths)} paths and {len(brands)} brands")
        if not self.methods:
            raise ValueError("no path method to fit: give at least one of retrieval, heads, lexical, seq2seq")
        targets = path_targets(taxonomy, paths)
        unknown = (targets < 0).any(axis=1)
        if unknown.any():
            first = paths[int(np.flatnonzero(unknown)[0])]
            raise ValueError(f"{int(unknown.sum())} training paths are not in the taxonomy, e.g. {first}")
        self.taxonomy_ = taxonomy
        self.fit_seconds_: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            self.fit_seconds_[name] = round(now - clock, 2)
            clock = now

        prepared = self.prepare(titles)
        lap("prepare")
        if self.retrieval is not None or self.heads is not None:
            embeddings = self.embed(prepared, show_progress=progress)
            lap("embed_train")
            if self.retrieval is not None:
                self.retrieval.fit(embeddings, targets[:, -1], taxonomy)
                lap("retrieval")
            if self.heads is not None:
                self.heads.fit(embeddings, targets, taxonomy)
                lap("heads")
        if self.lexical is not None:
            self.lexical.fit(prepared, targets[:, -1], taxonomy)
            lap("lexical")
        if self.seq2seq is not None and self.seq2seq.taxonomy is None:
            self.seq2seq.taxonomy = taxonomy
        if self.leaf_templates is not None:
            self.leaf_templates.fit([normalize_text(t) for t in titles], paths)
        self.brand.fit(list(titles), list(brands), [path_key(p) for p in paths])
        lap("brand")
        return self

    # -- prediction -----------------------------------------------------------------------------------
    def prepare(self, titles: Sequence[str]) -> list[str]:
        titles = [normalize_text(t) for t in titles]
        if self.enricher is not None:
            titles = self.enricher.enrich(titles)
        return titles

    def embed(self, titles: Sequence[str], show_progress: bool = False) -> np.ndarray:
        return self.encoder.encode(list(titles), show_progress=show_progress)

    def method_outputs(
        self, titles: Sequence[str], methods: Sequence[str], embeddings: np.ndarray | None = None
    ) -> tuple[dict[str, PathPrediction], dict[str, np.ndarray]]:
        """Each method's paths and, for those that score every path, its path log-probabilities.

        ``titles`` are already prepared (:meth:`prepare`); pass ``embeddings`` to reuse them.
        """
        preds: dict[str, PathPrediction] = {}
        scores: dict[str, np.ndarray] = {}
        if embeddings is None and {"retrieval", "heads"} & set(methods) and titles:
            embeddings = self.embed(titles)
        for method in methods:
            if method == "retrieval" and self.retrieval is not None:
                neighbours = self.retrieval.neighbours(embeddings)
                scores[method] = self.retrieval.log_shares(*neighbours)
                preds[method] = self.retrieval.vote(*neighbours)
            elif method == "heads" and self.heads is not None:
                level_log_probs = self.heads.level_log_probs(embeddings)
                scores[method] = path_log_probs(level_log_probs, self.taxonomy_)
                preds[method] = beam_search(level_log_probs, self.heads.parents_, self.heads.beam_width)
            elif method == "lexical" and self.lexical is not None:
                scores[method] = self.lexical.path_log_probs(titles)
                preds[method] = prediction_from_log_probs(scores[method], self.taxonomy_)
            elif method == "seq2seq" and self.seq2seq is not None:
                preds[method], _ = self.seq2seq.predict(list(titles), num_beams=self.seq2seq_beams)
            else:
                raise TaxonomyCheckpointError(f"method {method!r} is not in this model (has {self.methods})")
        return preds, scores

    def combine(
        self, preds: dict[str, PathPrediction], scores: dict[str, np.ndarray], how: str | None = None
    ) -> PathPrediction:
        """The ensemble: ``soft`` over path distributions, or the hierarchy-compliant ``vote``."""
        how = how or self.ensemble
        if len(preds) == 1:
            return next(iter(preds.values()))
        if how == "soft" and scores:
            return soft_vote(list(scores.values()), self.taxonomy_)
        return hierarchical_vote(list(preds.values()), self.taxonomy_)

    def resolve_methods(self, method: str) -> list[str]:
        """The methods ``method`` runs; the soft ensemble only those that score every path."""
        if method not in ENSEMBLES and method not in self.methods:
            raise TaxonomyCheckpointError(
                f"unknown method {method!r}; this checkpoint has {[*self.methods, *ENSEMBLES]}"
            )
        if method not in ENSEMBLES:
            return [method]
        if method == "soft" or (method == "ensemble" and self.ensemble == "soft"):
            return [m for m in self.methods if m in DISTRIBUTION_METHODS] or self.methods
        return self.methods

    def predict(self, titles: Sequence[str], method: str | None = None) -> pd.DataFrame:
        """One row per title: levels, brand, per-level and brand confidence. Paths are always valid."""
        method = method or self.method
        methods = self.resolve_methods(method)
        if not len(titles):  # kNN search and TF-IDF refuse a batch of no rows
            return self.finish(
                titles, PathPrediction(np.zeros(0, np.int64), np.zeros((0, self.taxonomy_.depth)))
            )
        preds, scores = self.method_outputs(self.prepare(titles), methods)
        pred = self.combine(preds, scores, how=method if method in ("soft", "vote") else None)
        return self.finish(titles, pred)

    def finish(self, titles: Sequence[str], pred: PathPrediction) -> pd.DataFrame:
        """The output frame of predicted paths: brand leaves filled in (``leaf_templates``), then the
        brand given each final path (a path may make a non-title brand label a candidate)."""
        normalized = [normalize_text(t) for t in titles]
        paths, confidence = pred.paths(self.taxonomy_), pred.level_confidence
        if self.leaf_templates is not None:
            paths, confidence = self.leaf_templates.rewrite(normalized, paths, confidence)
        brands, brand_conf = self.brand.predict_with_confidence(
            normalized, [path_key(p) for p in paths], none_threshold=self.brand_none_threshold
        )
        return prediction_frame(paths, confidence, self.taxonomy_.levels, brands, brand_conf)

    def is_valid(self, title: str, path: Sequence[str]) -> bool:
        """A path of the tree, or a brand leaf of ``title`` under a templated parent."""
        return self.taxonomy_.path_id(tuple(path)) >= 0 or (
            self.leaf_templates is not None and self.leaf_templates.follows(normalize_text(title), path)
        )

    # -- persistence -----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.taxonomy_.save(path / "taxonomy.json")
        if self.encoder_finetuned:
            self.encoder.save(path / "encoder")
        self.brand.save(path / "brand")
        if self.heads is not None:
            self.heads.save(path / "heads.safetensors")
        if self.retrieval is not None:
            self.retrieval.save(path / "retrieval.npz")
        if self.lexical is not None:
            self.lexical.save(path / "lexical")
        if self.leaf_templates is not None:
            self.leaf_templates.save(path / LEAF_TEMPLATES)
        else:  # a retrained model in an earlier run's folder must not pick that run's templates up
            (path / LEAF_TEMPLATES).unlink(missing_ok=True)
        if self.seq2seq is not None:
            self.seq2seq.save(path / "seq2seq")
        manifest = {
            "kind": "taxonomy",
            "format": FORMAT,
            "methods": self.methods,
            "encoder": {
                "name": "encoder" if self.encoder_finetuned else self.encoder.name,
                "dim": self.encoder.dim,
                "max_length": self.encoder.max_length,
                "batch_size": self.encoder.batch_size,
            },
            "retrieval": None
            if self.retrieval is None
            else {"k": self.retrieval.k, "temperature": self.retrieval.temperature},
            "heads": None if self.heads is None else self.heads.settings(),
            "seq2seq_beams": self.seq2seq_beams,
            "leaf_templates": self.leaf_templates is not None,
            "enrich": self.enrich,
            "method": self.method,
            "ensemble": self.ensemble,
            "brand_none_threshold": self.brand_none_threshold,
        }
        atomic_write_json(path / MANIFEST, manifest, indent=1)

    @staticmethod
    def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
        """The checkpoint's settings (``enrich`` among them), checked to be a taxonomy model's."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise TaxonomyCheckpointError(f"{path} is not a taxonomy checkpoint (no {MANIFEST})")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("kind") != "taxonomy":
            raise TaxonomyCheckpointError(f"{path} holds a {manifest.get('kind')!r} checkpoint, not taxonomy")
        if manifest.get("format") != FORMAT:
            raise TaxonomyCheckpointError(
                f"{path} was written by an older taxonomist (checkpoint format "
                f"{manifest.get('format', 1)}, this version reads {FORMAT}); retrain it with "
                "`taxonomist taxonomy train`"
            )
        return manifest

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        enricher: TitleEnricher | None = None,
        encoder: dict[str, Any] | None = None,
    ) -> TaxonomyModel:
        """A folder written by :meth:`save` (an older one's torch int8 switch is ignored: fp32);
        ``encoder``: more :class:`TextEncoder` options (``runtime``, ``precision``, ``export_root``).

        A model trained with enrichment needs its ``enricher`` rebuilt from ``read_manifest(path)["enrich"]``
        (:func:`taxonomist.inference.taxonomy.load_model` does that).
        """
        path = Path(path)
        manifest = cls.read_manifest(path)
        if manifest["enrich"] and enricher is None:
            raise TaxonomyCheckpointError(
                f"{path} enriches titles from {manifest['enrich'].get('corpus')}: load it with "
                "taxonomist.inference.taxonomy.load_model, which rebuilds the enricher"
            )
        taxonomy = Taxonomy.load(path / "taxonomy.json")
        enc = manifest["encoder"]
        encoder = TextEncoder(
            str(path / "encoder") if enc["name"] == "encoder" else enc["name"],
            max_length=enc["max_length"],
            batch_size=enc["batch_size"],
            **(encoder or {}),
        )
        methods = manifest["methods"]
        self = cls(
            encoder,
            BrandExtractor.load(path / "brand"),
            seq2seq_beams=manifest["seq2seq_beams"],
            enricher=enricher,
            enrich=manifest["enrich"],
            method=manifest["method"],
            ensemble=manifest["ensemble"],
            brand_none_threshold=manifest["brand_none_threshold"],
            encoder_finetuned=enc["name"] == "encoder",
        )
        self.taxonomy_ = taxonomy
        if "heads" in methods:
            self.heads = HeadsClassifier.load(
                path / "heads.safetensors", manifest["heads"], enc["dim"], taxonomy
            )
        if "retrieval" in methods:
            self.retrieval = RetrievalClassifier.load(
                path / "retrieval.npz", taxonomy, **manifest["retrieval"]
            )
        if "lexical" in methods:
            self.lexical = LexicalClassifier.load(path / "lexical")
        # The manifest decides (a file can be a stale one); a manifest without the key predates it.
        if manifest.get("leaf_templates", (path / LEAF_TEMPLATES).is_file()):
            self.leaf_templates = LeafTemplates.load(path / LEAF_TEMPLATES)
        if "seq2seq" in methods:
            self.seq2seq = Seq2SeqTaxonomyModel.from_pretrained(str(path / "seq2seq"), taxonomy)
        return self
