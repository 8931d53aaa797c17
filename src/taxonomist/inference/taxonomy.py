"""Title → taxonomy path + brand from a checkpoint folder, with every method and their vote.

The checkpoint carries everything needed: the taxonomy, the (fine-tuned) encoder or its id, the heads,
the retrieval index rows, the brand extractor, the optional seq2seq model and the config.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from taxonomist.config import TaxonomyConfig, load_config
from taxonomist.data.catalog import CatalogError
from taxonomist.data.taxonomy import BRAND, ID, PATH_SEP, TITLE, Taxonomy, normalize_text
from taxonomist.features.cache import default_cache_dir
from taxonomist.io import ChunkedWriter, atomic_write_frame, atomic_write_text
from taxonomist.models.brand import BrandExtractor
from taxonomist.models.checkpoint import checkpoint_digest
from taxonomist.models.runtime import exports_root
from taxonomist.models.taxonomy import (
    HierarchicalHeads,
    LexicalClassifier,
    PathPrediction,
    RetrievalClassifier,
    beam_search,
    hierarchical_vote,
    level_parents,
    path_log_probs,
    prediction_from_log_probs,
    sibling_log_softmax,
    soft_vote,
)
from taxonomist.models.text import TextEncoder
from taxonomist.progress import progress_bar

MANIFEST = "taxonomist.json"
METHODS = ("retrieval", "heads", "lexical", "seq2seq")
ENSEMBLES = ("ensemble", "soft", "vote")
"""Combinations of every method in a checkpoint: the configured ensemble, or one named explicitly."""
CHECKPOINT_FILES = (
    MANIFEST,
    "config.yaml",
    "taxonomy.json",
    "heads.safetensors",
    "retrieval.npz",
    "brand.*",
    "lexical.*",
    "encoder/**/*",
    "seq2seq/**/*",
)
"""What :meth:`TaxonomyPredictor.from_pretrained` reads: the checkpoint's version is their digest."""
DISTRIBUTION_METHODS = ("retrieval", "heads", "lexical")
"""Methods that score every path (and can join the soft ensemble)."""


class TaxonomyCheckpointError(ValueError):
    """A folder that is not a complete taxonomy checkpoint."""


@dataclass
class TaxonomyPredictor:
    taxonomy: Taxonomy
    encoder: TextEncoder
    config: TaxonomyConfig
    brand: BrandExtractor
    retrieval: RetrievalClassifier | None = None
    heads: HierarchicalHeads | None = None
    lexical: LexicalClassifier | None = None
    seq2seq: object | None = None
    enricher: object | None = None
    encoder_finetuned: bool = False
    version: str = ""
    """Content digest of the checkpoint folder (set by :meth:`from_pretrained`), recorded by batch jobs."""

    @property
    def methods(self) -> list[str]:
        return [m for m in METHODS if getattr(self, m) is not None]

    @cached_property
    def parent_ids(self) -> list[torch.Tensor | None]:
        return level_parents(self.taxonomy)

    # -- prediction -----------------------------------------------------------------------------------
    def prepare(self, titles: Sequence[str]) -> list[str]:
        titles = [normalize_text(t) for t in titles]
        if self.enricher is not None:
            titles = self.enricher.enrich(titles)
        return titles

    def embed(self, titles: Sequence[str], show_progress: bool = False) -> np.ndarray:
        return self.encoder.encode(list(titles), show_progress=show_progress)

    def heads_log_probs(self, embeddings: np.ndarray) -> list[torch.Tensor]:
        assert self.heads is not None
        self.heads.eval()
        with torch.inference_mode():
            logits = self.heads(torch.from_numpy(embeddings) * self.config.heads.scale)
            return [sibling_log_softmax(lg, p) for lg, p in zip(logits, self.parent_ids, strict=True)]

    def predict_heads(self, embeddings: np.ndarray) -> PathPrediction:
        return beam_search(self.heads_log_probs(embeddings), self.parent_ids, self.config.heads.beam_width)

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
                level_log_probs = self.heads_log_probs(embeddings)
                scores[method] = path_log_probs(level_log_probs, self.taxonomy)
                preds[method] = beam_search(level_log_probs, self.parent_ids, self.config.heads.beam_width)
            elif method == "lexical" and self.lexical is not None:
                scores[method] = self.lexical.path_log_probs(titles)
                preds[method] = prediction_from_log_probs(scores[method], self.taxonomy)
            elif method == "seq2seq" and self.seq2seq is not None:
                preds[method], _ = self.seq2seq.predict(list(titles), num_beams=self.config.seq2seq.num_beams)
            else:
                raise ValueError(f"method {method!r} is not in this checkpoint (has {self.methods})")
        return preds, scores

    def combine(
        self, preds: dict[str, PathPrediction], scores: dict[str, np.ndarray], how: str | None = None
    ) -> PathPrediction:
        """The ensemble: ``soft`` over path distributions, or the hierarchy-compliant ``vote``."""
        how = how or self.config.predict.ensemble
        if len(preds) == 1:
            return next(iter(preds.values()))
        if how == "soft" and scores:
            return soft_vote(list(scores.values()), self.taxonomy)
        return hierarchical_vote(list(preds.values()), self.taxonomy)

    def resolve_methods(self, method: str) -> list[str]:
        if method in ENSEMBLES:
            return self.methods
        if method not in self.methods:
            raise TaxonomyCheckpointError(
                f"unknown method {method!r}; this checkpoint has {[*self.methods, *ENSEMBLES]}"
            )
        return [method]

    def predict(self, titles: Sequence[str], method: str | None = None) -> pd.DataFrame:
        """One row per title: levels, brand, per-level and brand confidence. Paths are always valid."""
        method = method or self.config.predict.method
        methods = self.resolve_methods(method)
        if method == "soft" or (method == "ensemble" and self.config.predict.ensemble == "soft"):
            methods = [m for m in methods if m in DISTRIBUTION_METHODS] or methods
        preds, scores = self.method_outputs(self.prepare(titles), methods)
        pred = self.combine(preds, scores, how=method if method in ("soft", "vote") else None)
        brands, brand_conf = self.predict_brands(titles, pred)
        return prediction_frame(pred, self.taxonomy, brands, brand_conf)

    def predict_brands(self, titles: Sequence[str], pred: PathPrediction) -> tuple[list[str], np.ndarray]:
        """Brands given the predicted paths (a path may make a non-title brand label a candidate)."""
        return self.brand.predict_with_confidence(
            [normalize_text(t) for t in titles],
            [path_key(p) for p in pred.paths(self.taxonomy)],
            none_threshold=self.config.brand.none_threshold,
        )

    def predict_file(
        self,
        input_path: str | os.PathLike,
        output_dir: str | os.PathLike,
        *,
        title_column: str = TITLE,
        id_column: str = ID,
        method: str | None = None,
        progress: bool = True,
    ) -> dict:
        """CSV/Parquet of titles → ``predictions.csv`` in chunks that survive a crash and resume."""
        input_path = Path(input_path)
        frame = _read_titles(input_path, title_column, id_column)
        bad = frame[TITLE] == ""
        method = method or self.config.predict.method
        self.resolve_methods(method)  # an unknown method fails before anything is written
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        errors = frame[bad].assign(line=np.flatnonzero(bad) + 2, reason="empty title", file=str(input_path))
        atomic_write_frame(errors[[ID, "line", "reason", "file"]], output_dir / "errors.csv")
        good = frame[~bad].reset_index(drop=True)
        writer = ChunkedWriter(
            output_dir,
            good[[ID, TITLE]],
            self.config.predict.chunk_size,
            {"model": self.version, "method": method},
        )
        start = time.perf_counter()
        with progress_bar("titles", disable=not progress) as bar:
            task = bar.add_task("predict", total=len(good))
            bar.advance(
                task, sum(len(writer.chunk_rows(k)) for k in range(writer.n_chunks) if writer.done(k))
            )
            for k in writer.pending():
                rows = writer.chunk_rows(k)
                chunk = good.iloc[rows.start : rows.stop]
                pred = self.predict(chunk[TITLE].tolist(), method)
                writer.write(k, {"pred": pd.concat([chunk[[ID]].reset_index(drop=True), pred], axis=1)})
                bar.advance(task, len(rows))
        levels = self.taxonomy.levels
        header = [ID, *levels, BRAND, *(f"{level}_confidence" for level in levels), "brand_confidence"]
        result = writer.read("pred", empty=pd.DataFrame(columns=header))
        atomic_write_frame(result, output_dir / "predictions.csv")
        summary = {
            "rows": len(frame),
            "predicted": len(result),
            "skipped": int(bad.sum()),
            "method": method,
            "seconds": round(time.perf_counter() - start, 2),
        }
        atomic_write_text(output_dir / "summary.json", json.dumps(summary, indent=1))
        return summary

    # -- persistence -----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.taxonomy.save(path / "taxonomy.json")
        self.config.save(path / "config.yaml")
        if self.encoder_finetuned:
            self.encoder.save(path / "encoder")
        self.brand.save(path / "brand")
        if self.heads is not None:
            save_file(self.heads.state_dict(), str(path / "heads.safetensors"))
        if self.retrieval is not None:
            np.savez(
                path / "retrieval.npz",
                embeddings=self.retrieval.index_.reconstruct_n(0, self.retrieval.index_.ntotal),
                path_ids=self.retrieval.path_ids_,
            )
        if self.lexical is not None:
            self.lexical.save(path / "lexical")
        if self.seq2seq is not None:
            self.seq2seq.save(path / "seq2seq")
        manifest = {
            "kind": "taxonomy",
            "methods": self.methods,
            "encoder": "encoder" if self.encoder_finetuned else self.encoder.name,
            "embedding_dim": self.encoder.dim,
            "level_sizes": [len(n) for n in self.taxonomy.nodes],
        }
        atomic_write_text(path / MANIFEST, json.dumps(manifest, indent=1))

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        quantize: bool | None = None,
        runtime: str | None = None,
        precision: str | None = None,
    ) -> TaxonomyPredictor:
        """``runtime``/``precision``: the encoder's (default: the run config's ``encoder`` settings)."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise TaxonomyCheckpointError(f"{path} is not a taxonomy checkpoint (no {MANIFEST})")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("kind") != "taxonomy":
            raise TaxonomyCheckpointError(f"{path} holds a {manifest.get('kind')!r} checkpoint, not taxonomy")
        config = load_config(path / "config.yaml", cls=TaxonomyConfig)
        taxonomy = Taxonomy.load(path / "taxonomy.json")
        enc_name = str(path / "encoder") if manifest["encoder"] == "encoder" else manifest["encoder"]
        encoder = TextEncoder(
            enc_name,
            max_length=config.encoder.max_length,
            batch_size=config.encoder.batch_size,
            quantize=config.encoder.quantize if quantize is None else quantize,
            runtime=runtime or config.encoder.runtime,
            precision=precision or config.encoder.precision,
            export_root=exports_root(path, default_cache_dir() / "exports"),
        )
        brand = BrandExtractor.load(path / "brand")
        self = cls(
            taxonomy,
            encoder,
            config,
            brand,
            encoder_finetuned=manifest["encoder"] == "encoder",
            version=checkpoint_digest(path, CHECKPOINT_FILES),
        )
        if "heads" in manifest["methods"]:
            self.heads = HierarchicalHeads(
                manifest["embedding_dim"], manifest["level_sizes"], config.heads.hidden
            )
            self.heads.load_state_dict(load_file(str(path / "heads.safetensors")))
            self.heads.eval()
        if "retrieval" in manifest["methods"]:
            data = np.load(path / "retrieval.npz")
            self.retrieval = RetrievalClassifier(config.retrieval.k, config.retrieval.temperature).fit(
                data["embeddings"], data["path_ids"], taxonomy
            )
        if "lexical" in manifest["methods"]:
            self.lexical = LexicalClassifier.load(path / "lexical")
        if "seq2seq" in manifest["methods"]:
            from taxonomist.models.seq2seq import Seq2SeqTaxonomyModel

            self.seq2seq = Seq2SeqTaxonomyModel.from_pretrained(str(path / "seq2seq"), taxonomy)
        if config.enrich.corpus:
            from taxonomist.features.enrich import Enricher

            self.enricher = Enricher.from_config(config.enrich)
        return self


def path_key(path: Sequence[str]) -> str:
    return PATH_SEP.join(path)


def prediction_frame(
    pred: PathPrediction, taxonomy: Taxonomy, brands: Sequence[str], brand_confidence: np.ndarray
) -> pd.DataFrame:
    paths = pred.paths(taxonomy)
    frame = pd.DataFrame({level: [p[k] for p in paths] for k, level in enumerate(taxonomy.levels)})
    frame[BRAND] = list(brands)
    for k, level in enumerate(taxonomy.levels):
        frame[f"{level}_confidence"] = pred.level_confidence[:, k].round(4)
    frame["brand_confidence"] = np.round(brand_confidence, 4)
    return frame


def _read_titles(path: Path, title_column: str, id_column: str) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"titles file not found: {path}")
    raw = (
        pd.read_parquet(path)
        if path.suffix == ".parquet"
        else pd.read_csv(path, dtype=str, keep_default_na=False)
    )
    if title_column not in raw.columns:
        raise CatalogError(f"{path}: no title column {title_column!r}; columns are {list(raw.columns)}")
    ids = raw[id_column].astype(str) if id_column in raw.columns else pd.Series(raw.index.astype(str))
    return pd.DataFrame({ID: ids.to_numpy(), TITLE: raw[title_column].map(normalize_text).to_numpy()})
