"""Listing text → the listing heads' text features: a sentence embedding (cached) and a lexical view.

The sentence embedding generalises across wording; the lexical view (TF-IDF word 1–2-grams + char
2–5-grams) keeps values named outright ("Navy Blue", "Tshirt", "T-Shirt"), which a small sentence
encoder blurs. The heads read the lexical rows through a learned bag of n-gram vectors trained with
everything else. The lexical probe adds what a learned bag reads less well than a per-attribute linear
model (colour words above all): the probabilities of one logistic regression per attribute over the
same n-grams ⊕ category. They are stacked features, so they are cross-fitted: each training row gets
them from models that never saw it (a model's outputs on its own training rows are overconfident, and
heads fitted on those would trust the text too much on new rows).

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

from taxonomist.data.tokens import word_pattern
from taxonomist.features.cache import FeatureCache
from taxonomist.models.text import TextEncoder
from taxonomist.models.text_attributes import TextAttributeClassifier

LEXICAL_FILE = "lexical.skops"
PROBE_FILE = "lexical_probe.skops"
ENCODER_COPY = "text_encoder"
"""A listing checkpoint's copy of a text encoder that was loaded from a local folder."""
TRUSTED_TYPES = [
    "sklearn.feature_extraction.text.TfidfVectorizer",
    "sklearn.feature_extraction.text.TfidfTransformer",
    "numpy.float64",
    "numpy.int64",
    "builtins.getattr",
]
PROBE_TRUSTED_TYPES = [
    *TRUSTED_TYPES,
    "taxonomist.models.text_attributes.TextAttributeClassifier",
    "sklearn.linear_model._logistic.LogisticRegression",
    "numpy.int32",
    "numpy.float32",
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
                sublinear_tf=True, ngram_range=(1, 2), min_df=min_df, token_pattern=word_pattern(1)
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


class LexicalProbe:
    """Per-attribute text probabilities (a :class:`TextAttributeClassifier`) as dense text features.

    ``fit_transform`` returns cross-fitted features for the training rows (``folds`` models, each
    scoring the rows it did not see) and keeps a model fitted on every row for :meth:`transform`.
    """

    def __init__(
        self, n_values: dict[str, int], n_categories: int, *, C: float = 20.0, folds: int = 5
    ) -> None:
        self.n_values = dict(n_values)
        self.n_categories = n_categories
        self.C = C
        self.folds = folds
        self.model_: TextAttributeClassifier | None = None

    @property
    def dim(self) -> int:
        return sum(self.n_values.values())

    def _fit(self, texts: Sequence[str], category: np.ndarray, labels: dict[str, np.ndarray]):
        return TextAttributeClassifier(C=self.C).fit(
            texts, category, labels, self.n_values, self.n_categories
        )

    @staticmethod
    def _stack(model: TextAttributeClassifier, texts: Sequence[str], category: np.ndarray) -> np.ndarray:
        log_probs = model.log_probs(list(texts), np.asarray(category))
        return np.exp(np.concatenate(list(log_probs.values()), axis=1)).astype(np.float32)

    def fit_transform(
        self, texts: Sequence[str], category: np.ndarray, labels: dict[str, np.ndarray], seed: int = 0
    ) -> np.ndarray:
        """Cross-fitted features of the training rows; then the final model on all of them."""
        from sklearn.model_selection import KFold

        texts, category = list(texts), np.asarray(category)
        if len(texts) < 2:
            raise ValueError(
                f"the lexical probe is cross-fitted: it needs ≥ 2 training texts, got {len(texts)}"
            )
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        folds = KFold(min(self.folds, len(texts)), shuffle=True, random_state=seed)
        for fit_rows, held_rows in folds.split(texts):
            model = self._fit(
                [texts[i] for i in fit_rows], category[fit_rows], {a: v[fit_rows] for a, v in labels.items()}
            )
            out[held_rows] = self._stack(model, [texts[i] for i in held_rows], category[held_rows])
        self.model_ = self._fit(texts, category, labels)
        return out

    def transform(self, texts: Sequence[str], category: np.ndarray) -> np.ndarray:
        if self.model_ is None:
            raise RuntimeError("the lexical probe is not fitted")
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._stack(self.model_, texts, category)

    def save(self, directory: str | os.PathLike) -> None:
        import skops.io

        from taxonomist.io import atomic_write_bytes

        if self.model_ is None:
            raise RuntimeError("the lexical probe is not fitted")
        atomic_write_bytes(Path(directory) / PROBE_FILE, skops.io.dumps(self.model_))

    @classmethod
    def load(
        cls, directory: str | os.PathLike, n_values: dict[str, int], n_categories: int, **kw
    ) -> LexicalProbe:
        import skops.io

        probe = cls(n_values, n_categories, **kw)
        data = (Path(directory) / PROBE_FILE).read_bytes()
        probe.model_ = skops.io.load(io.BytesIO(data), trusted=PROBE_TRUSTED_TYPES)
        return probe


@dataclass
class TextFeatures:
    """Text features of n rows: sentence embeddings, lexical CSR rows (None without a lexical view),
    and which rows have a text at all."""

    dense: np.ndarray
    lexical: object
    present: np.ndarray

    def __len__(self) -> int:
        return len(self.dense)

    def take(self, rows: np.ndarray) -> TextFeatures:
        """The features of ``rows`` (positions)."""
        lexical = None if self.lexical is None else self.lexical[rows]
        return TextFeatures(self.dense[rows], lexical, self.present[rows])


class ListingText:
    """Normalised listing texts → :class:`TextFeatures` for :class:`ListingHeads`: the sentence
    embedding, then (with a probe) its per-attribute probabilities, as one dense row."""

    def __init__(
        self,
        encoder: TextEncoder,
        lexical: LexicalView | None,
        *,
        cache: FeatureCache | None = None,
        probe: LexicalProbe | None = None,
    ) -> None:
        self.encoder = encoder
        self.lexical = lexical
        self.cache = cache
        self.probe = probe

    @property
    def dim(self) -> int:
        return self.encoder.dim + (self.probe.dim if self.probe is not None else 0)

    @property
    def lexical_dim(self) -> int:
        return self.lexical.dim if self.lexical is not None else 0

    @property
    def probe_offset(self) -> int | None:
        """First column of the probe's probabilities in the dense text features (None: no probe)."""
        return self.encoder.dim if self.probe is not None else None

    def save(self, directory: str | os.PathLike) -> None:
        """The fitted lexical view and probe, beside the heads. The encoder is recorded by name and
        fingerprint in the checkpoint; one loaded from a local folder is copied in as well
        (:data:`ENCODER_COPY`), since that folder may move or be gone where the checkpoint is used. Hub
        ids and the offline MiniLM package load as they did in training."""
        if Path(self.encoder.name).is_dir():
            self.encoder.model.save(str(Path(directory) / ENCODER_COPY))
        if self.lexical is not None:
            self.lexical.save(directory)
        if self.probe is not None:
            self.probe.save(directory)

    def features(
        self, texts: Sequence[str], category: np.ndarray, *, probe_features: np.ndarray | None = None
    ) -> TextFeatures:
        """``category``: the rows' category indices (the probe reads them); ``probe_features``: the
        probe's cross-fitted features of training rows, used instead of the fitted probe's."""
        dense = embed_texts(texts, self.encoder, cache=self.cache)
        if self.probe is not None:
            probed = probe_features if probe_features is not None else self.probe.transform(texts, category)
            dense = np.concatenate([dense, probed], axis=1)
        lexical = self.lexical.transform(texts) if self.lexical is not None else None
        return TextFeatures(dense, lexical, np.array([bool(t) for t in texts], dtype=bool))


def load_listing_text(
    directory: str | os.PathLike,
    checkpoint,
    device: object = "cpu",
    cache_dir: str | os.PathLike | None = None,
    runtime: str = "torch",
    export_root: str | os.PathLike | None = None,
) -> ListingText:
    """A listing checkpoint's text features: its encoder (checked against the recorded fingerprint),
    its lexical view and probe. ``checkpoint``: the loaded ``HeadsCheckpoint``. ``runtime``: where the
    encoder runs (fp32 only: the heads were fitted on fp32 embeddings)."""
    record = checkpoint.text
    copy = Path(directory) / ENCODER_COPY
    encoder = TextEncoder(
        record["encoder"],
        path=copy if copy.is_dir() else None,
        max_length=record["max_length"],
        batch_size=record["batch_size"],
        device=str(device),
        runtime=runtime,
        export_root=export_root,
    )
    # A checkpoint written before the scheme was recorded holds a scheme-1 fingerprint.
    loaded = encoder.weights_fingerprint(record.get("fingerprint_scheme", 1))
    if loaded != record["fingerprint"]:
        raise RuntimeError(
            f"{directory}: text encoder {record['encoder']!r} now loads other weights or another "
            f"tokenizer (fingerprint {loaded} != {record['fingerprint']}); the heads were trained on the "
            "old embeddings"
        )
    encoder.load_runtime()
    lexical = LexicalView.load(directory) if record.get("lexical") else None
    probe = None
    if record.get("probe"):
        schema = checkpoint.schema
        n_values = {a: len(schema.values(a)) for a in schema.attributes}
        probe = LexicalProbe.load(directory, n_values, len(checkpoint.categories))
    text = ListingText(
        encoder,
        lexical,
        cache=text_cache(encoder, cache_dir) if cache_dir is not None else None,
        probe=probe,
    )
    if (text.dim, text.lexical_dim) != (record["dim"], record["lexical_dim"]):
        raise RuntimeError(
            f"{directory}: text features of dims {(text.dim, text.lexical_dim)}; the heads expect "
            f"{(record['dim'], record['lexical_dim'])}"
        )
    return text
