"""Retrieval enrichment: append the text of the nearest external-corpus products to a title.

Short titles ("Netis WF2412") say little; the description of a similar product in another catalog
("wireless router, networking") gives every method more to go on. Corpus embeddings come from a frozen
encoder and are cached on disk by (encoder fingerprint, text hash), so a corpus is embedded once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from taxonomist.data.catalog import expand_path, read_lined_table, warn_rows_left_out
from taxonomist.data.taxonomy import normalize_text
from taxonomist.features.cache import FeatureCache
from taxonomist.models.text import TextEncoder

SEPARATOR = " | "


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def cached_encode(encoder: TextEncoder, texts: list[str], cache: FeatureCache) -> np.ndarray:
    """Embeddings of ``texts``, computing only those the cache does not hold yet."""
    keys = [text_key(t) for t in texts]
    missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in cache}.items())
    if missing:
        cache.put([k for k, _ in missing], encoder.encode([t for _, t in missing]))
    return cache.get(keys) if keys else np.zeros((0, encoder.dim), dtype=np.float32)


class Enricher:
    """``enrich(titles)`` → ``"title | text of neighbour 1 | …"`` (k neighbours, each cut to max_chars)."""

    def __init__(
        self,
        corpus_titles: list[str],
        corpus_texts: list[str],
        encoder: TextEncoder,
        k: int = 1,
        max_chars: int = 200,
        cache_dir: str | None = None,
    ) -> None:
        import faiss

        if len(corpus_titles) != len(corpus_texts) or not corpus_titles:
            raise ValueError("the enrichment corpus needs as many texts as titles, and at least one")
        self.encoder = encoder
        self.k = k
        self.max_chars = max_chars
        self.texts = [normalize_text(t)[:max_chars] for t in corpus_texts]
        cache = FeatureCache(cache_dir, f"text-{encoder.fingerprint()}")
        corpus = cached_encode(encoder, [normalize_text(t) for t in corpus_titles], cache)
        self.index = faiss.IndexFlatIP(corpus.shape[1])
        self.index.add(np.ascontiguousarray(corpus, dtype=np.float32))

    @classmethod
    def from_file(
        cls,
        corpus: str | os.PathLike,
        *,
        title_column: str,
        text_columns: Sequence[str],
        encoder: str,
        k: int = 1,
        max_chars: int = 200,
        cache_dir: str | None = None,
    ) -> Enricher:
        """The corpus file's titles and their ``text_columns`` joined with ", ", searched by ``encoder``.

        A row with more fields than the header fails the file, naming its line; rows without a title
        cannot be searched, so they are left out with a warning that counts them and names their lines.
        """
        path = expand_path(corpus)
        if not Path(path).is_file():
            raise FileNotFoundError(f"enrichment corpus not found: {path}")
        frame, _ = read_lined_table(path)
        columns = [title_column, *text_columns]
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(
                f"{path}: corpus column(s) {missing} not found; columns are {list(frame.columns)}"
            )
        frame = frame[columns].fillna("").astype(str)
        titled = frame[title_column].str.strip() != ""
        if not titled.any():
            raise ValueError(f"{path}: no corpus row has a {title_column!r} to search by")
        warn_rows_left_out(
            path, frame, titled, f"of the corpus have no {title_column!r} and are left out of the search"
        )
        frame = frame[titled]
        texts = [", ".join(row) for row in frame[list(text_columns)].to_numpy()]
        return cls(frame[title_column].tolist(), texts, TextEncoder(encoder), k, max_chars, cache_dir)

    def enrich(self, titles: list[str]) -> list[str]:
        if not titles:
            return []
        # Queries are not cached: at prediction time every chunk would add a shard of titles that are
        # rarely seen again; only the corpus (embedded once, reused by every run) is.
        queries = self.encoder.encode(titles)
        _, rows = self.index.search(np.ascontiguousarray(queries), self.k)
        return [
            SEPARATOR.join([t, *(self.texts[r] for r in row if r >= 0)])
            for t, row in zip(titles, rows, strict=True)
        ]
