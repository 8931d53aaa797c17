"""Batch prediction of taxonomy paths + brands: a CSV/Parquet of titles → ``predictions.csv``.

:class:`TaxonomyPredictor` wraps a :class:`~taxonomist.models.taxonomy_model.TaxonomyModel` loaded from
its checkpoint folder for batch jobs: chunks written as they finish, so a crashed run resumes, with a
manifest that refuses to resume another job's output.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from taxonomist.data.catalog import CatalogError, read_lined_table
from taxonomist.data.taxonomy import BRAND, ID, TITLE, Taxonomy, normalize_text
from taxonomist.features.cache import default_cache_dir
from taxonomist.io import ChunkedWriter, atomic_write_frame, atomic_write_text
from taxonomist.models.checkpoint import checkpoint_digest
from taxonomist.models.runtime import exports_root
from taxonomist.models.taxonomy_model import (
    CHECKPOINT_FILES,
    TaxonomyCheckpointError,
    TaxonomyModel,
)
from taxonomist.progress import progress_bar

__all__ = ["TaxonomyCheckpointError", "TaxonomyPredictor", "load_model"]

DEFAULT_CHUNK_SIZE = 2048


@dataclass
class TaxonomyPredictor:
    model: TaxonomyModel
    version: str = ""
    """Content digest of the checkpoint folder (set by :meth:`from_pretrained`), recorded by batch jobs."""
    chunk_size: int = DEFAULT_CHUNK_SIZE
    """Titles per resumable chunk of :meth:`predict_file`."""

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        *,
        runtime: str = "auto",
        precision: str = "fp32",
    ) -> TaxonomyPredictor:
        """``runtime``/``precision``: the sentence encoder's (see :mod:`taxonomist.models.runtime`)."""
        model = load_model(path, runtime=runtime, precision=precision)
        return cls(model, checkpoint_digest(Path(path), CHECKPOINT_FILES), chunk_size)

    @property
    def taxonomy(self) -> Taxonomy:
        return self.model.taxonomy_

    @property
    def methods(self) -> list[str]:
        return self.model.methods

    def predict(self, titles: Sequence[str], method: str | None = None) -> pd.DataFrame:
        return self.model.predict(titles, method)

    def predict_file(
        self,
        input_path: str | os.PathLike,
        output_dir: str | os.PathLike,
        *,
        title_column: str = TITLE,
        id_column: str | None = None,
        method: str | None = None,
        progress: bool = True,
        encoding: str = "utf-8",
    ) -> dict:
        """CSV/Parquet of titles → ``predictions.csv`` in chunks that survive a crash and resume;
        ``id_column``: the rows' ids (must exist; None: the ``id`` column, else the row number);
        ``encoding``: a CSV's text encoding."""
        input_path = Path(input_path)
        frame = _read_titles(input_path, title_column, id_column, encoding)
        bad = (frame[TITLE] == "").to_numpy()
        method = method or self.model.method
        self.model.resolve_methods(method)  # an unknown method fails before anything is written
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        good = frame[~bad].reset_index(drop=True)
        # The manifest check comes first: a refused rerun must leave the finished job's files alone.
        writer = ChunkedWriter(
            output_dir,
            good[[ID, TITLE]],
            self.chunk_size,
            {"model": self.version, "method": method, "encoder": self.model.encoder.fingerprint()},
        )
        errors = frame[bad].assign(line=frame.index[bad], reason="empty title", file=str(input_path))
        atomic_write_frame(errors[[ID, "line", "reason", "file"]], output_dir / "errors.csv")
        start = time.perf_counter()
        with progress_bar("titles", disable=not progress) as bar:
            task = bar.add_task("predict", total=len(good))
            bar.advance(
                task, sum(len(writer.chunk_rows(k)) for k in range(writer.n_chunks) if writer.done(k))
            )
            for k in writer.pending():
                rows = writer.chunk_rows(k)
                chunk = good.iloc[rows.start : rows.stop]
                pred = self.model.predict(chunk[TITLE].tolist(), method)
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


def load_model(path: str | os.PathLike, *, runtime: str = "torch", precision: str = "fp32") -> TaxonomyModel:
    """:meth:`TaxonomyModel.load`, with the retrieval enricher rebuilt from its saved settings; an
    encoder on another runtime is exported into the run's ``exports`` folder (or the cache)."""
    settings = TaxonomyModel.read_manifest(path)["enrich"]
    enricher = None
    if settings:
        from taxonomist.features.build import enricher_from_settings

        enricher = enricher_from_settings(settings)
    root = exports_root(path, default_cache_dir() / "exports")
    encoder = {"runtime": runtime, "precision": precision, "export_root": root}
    return TaxonomyModel.load(path, enricher=enricher, encoder=encoder)


def _read_titles(path: Path, title_column: str, id_column: str | None, encoding: str) -> pd.DataFrame:
    """id and normalised title per row, indexed by the row's line in the file (for errors.csv)."""
    try:
        raw, _ = read_lined_table(path, encoding)  # a malformed record fails the file, naming it
    except CatalogError as err:
        if isinstance(err.__cause__, UnicodeDecodeError):
            raise CatalogError(
                f"{path}: not valid {encoding} text ({err.__cause__}); give the file's encoding with "
                "--encoding latin-1 (or cp1252, ...)"
            ) from err
        raise
    if title_column not in raw.columns:
        raise CatalogError(f"{path}: no title column {title_column!r}; columns are {list(raw.columns)}")
    # A named id column that is missing (a typo) fails: row numbers in its place would pass for ids.
    if id_column is not None and id_column not in raw.columns:
        raise CatalogError(f"{path}: no id column {id_column!r}; columns are {list(raw.columns)}")
    id_column = id_column or (ID if ID in raw.columns else None)
    ids = raw[id_column].astype(str) if id_column else pd.Series(range(len(raw))).astype(str)
    titles = raw[title_column].map(normalize_text)
    return pd.DataFrame({ID: ids.to_numpy(), TITLE: titles.to_numpy()}, index=raw.index)
