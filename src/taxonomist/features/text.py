"""Listing text → the listing heads' text features: a sentence embedding (cached) and a lexical view.

The sentence embedding generalises across wording; the lexical view (TF-IDF word 1–2-grams + char
2–5-grams) keeps values named outright ("Navy Blue", "Tshirt", "T-Shirt"), which a small sentence
encoder blurs. The heads read the lexical rows through a learned bag of n-gram vectors trained with
everything else, so the listing model is one network fitted once (stacked per-attribute classifiers
would need cross-fitting, as their outputs on their own training rows are overconfident).

A blank text gives zero features; the row's text is then absent (``present``), the case modality
dropout trained for.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from taxonomist.features.cache import FeatureCache
from taxonomist.models.text import TextEncoder

LEXICAL_FILE = "lexical.skops"
TRUSTED_TYPES = [
    "sklearn.feature_extraction.text.TfidfVectorizer",
    "sklearn.feature_extraction.text.TfidfTransformer",
    "numpy.float64",
    "numpy.int64",
    "builtins.getattr",
]
"""What a saved lexical view may contain beyond skops' defaults; anything else is refused on load."""


def text_key(text: str) -> str:
    """Cache key of a normalised text: its sha256 (the encoder's fingerprint names the cache folder)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def text_cache(encoder: TextEncoder, cache_dir: str | os.PathLike | None) -> FeatureCache:
    """The cache of ``encoder``'s embeddings, beside the image features but never mixed with them."""
    return FeatureCache(cache_dir, f"text-{encoder.fingerprint()}")


def embed_texts(
    texts: Sequence[str], encoder: TextEncoder, *, cache: FeatureCache | None = None
) -> np.ndarray:
    """(n, dim) float32 sentence embeddings of normalised texts; blank texts give zero rows.

    Each distinct text is encoded once; with ``cache``, once across runs.
    """
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    rows_by_key: dict[str, list[int]] = {}
    text_of: dict[str, str] = {}
    for row, text in enumerate(texts):
        if text:
            key = text_key(text)
            rows_by_key.setdefault(key, []).append(row)
            text_of[key] = text
    keys = list(rows_by_key)
    hits = [k for k in keys if cache is not None and k in cache]
    todo = [k for k in keys if cache is None or k not in cache]
    vectors: dict[str, np.ndarray] = {}
    if hits:
        vectors.update(zip(hits, cache.get(hits), strict=True))
    if todo:
        computed = encoder.encode([text_of[k] for k in todo])
        vectors.update(zip(todo, computed, strict=True))
        if cache is not None:
            cache.put(todo, computed)
    for key, rows in rows_by_key.items():
        out[rows] = vectors[key]
    return out


class LexicalView:
    """TF-IDF of word 1–2-grams and char 2–5-grams: one sparse row per text, read by the heads' lexical
    bag (:class:`ListingHeads`). Fitted on the training texts; saved with skops, no pickle."""

    def __init__(self, min_df: int = 2) -> None:
        self.min_df = min_df
        self.vectorizers: list | None = None

    @property
    def dim(self) -> int:
        return sum(len(v.vocabulary_) for v in self._fitted())

    def _fitted(self) -> list:
        if self.vectorizers is None:
            raise RuntimeError("the lexical view is not fitted")
        return self.vectorizers

    def fit(self, texts: Sequence[str]) -> LexicalView:
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = [t for t in texts if t]
        if not texts:
            raise ValueError("the lexical view needs at least one non-blank training text")
        min_df = self.min_df if len(texts) >= 10 * self.min_df else 1
        self.vectorizers = [
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=min_df),
            TfidfVectorizer(
                sublinear_tf=True, ngram_range=(1, 2), min_df=min_df, token_pattern=r"(?u)\b\w+\b"
            ),
        ]
        for vectorizer in self.vectorizers:
            vectorizer.fit(texts)
        return self

    def transform(self, texts: Sequence[str]):
        """(n, dim) float32 CSR rows, each part L2-normalised; a blank text is an empty row."""
        from scipy import sparse

        if not len(texts):  # a chunk whose every image failed: sklearn refuses zero rows
            return sparse.csr_matrix((0, self.dim), dtype=np.float32)
        parts = [v.transform(list(texts)) for v in self._fitted()]
        return sparse.hstack(parts, format="csr", dtype=np.float32)

    def save(self, directory: str | os.PathLike) -> None:
        import skops.io

        from taxonomist.io import atomic_write_bytes

        atomic_write_bytes(Path(directory) / LEXICAL_FILE, skops.io.dumps(self._fitted()))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> LexicalView:
        import skops.io

        view = cls()
        data = (Path(directory) / LEXICAL_FILE).read_bytes()
        view.vectorizers = skops.io.load(io.BytesIO(data), trusted=TRUSTED_TYPES)
        return view


@dataclass
class TextFeatures:
    """Text features of n rows: sentence embeddings, lexical CSR rows (None without a lexical view),
    and which rows have a text at all."""

    dense: np.ndarray
    lexical: object
    present: np.ndarray

    def __len__(self) -> int:
        return len(self.dense)


class ListingText:
    """Normalised listing texts → :class:`TextFeatures` for :class:`ListingHeads`."""

    def __init__(
        self, encoder: TextEncoder, lexical: LexicalView | None, *, cache: FeatureCache | None = None
    ) -> None:
        self.encoder = encoder
        self.lexical = lexical
        self.cache = cache

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def lexical_dim(self) -> int:
        return self.lexical.dim if self.lexical is not None else 0

    def features(self, texts: Sequence[str]) -> TextFeatures:
        dense = embed_texts(texts, self.encoder, cache=self.cache)
        lexical = self.lexical.transform(texts) if self.lexical is not None else None
        return TextFeatures(dense, lexical, np.array([bool(t) for t in texts], dtype=bool))


def load_listing_text(
    directory: str | os.PathLike,
    checkpoint,
    device: object = "cpu",
    cache_dir: str | os.PathLike | None = None,
) -> ListingText:
    """A listing checkpoint's text features: its encoder (checked against the recorded fingerprint) and
    its lexical view. ``checkpoint``: the loaded ``HeadsCheckpoint``."""
    record = checkpoint.text
    encoder = TextEncoder(
        record["encoder"],
        max_length=record["max_length"],
        batch_size=record["batch_size"],
        device=str(device),
    )
    if encoder.fingerprint() != record["fingerprint"]:
        raise RuntimeError(
            f"{directory}: text encoder {record['encoder']!r} now loads other weights (fingerprint "
            f"{encoder.fingerprint()} != {record['fingerprint']}); the heads were trained on the old "
            "embeddings"
        )
    lexical = LexicalView.load(directory) if record.get("lexical") else None
    text = ListingText(
        encoder, lexical, cache=text_cache(encoder, cache_dir) if cache_dir is not None else None
    )
    if (text.dim, text.lexical_dim) != (record["dim"], record["lexical_dim"]):
        raise RuntimeError(
            f"{directory}: text features of dims {(text.dim, text.lexical_dim)}; the heads expect "
            f"{(record['dim'], record['lexical_dim'])}"
        )
    return text
