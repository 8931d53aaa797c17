"""Listing text → attribute values: TF-IDF n-grams and one logistic regression per attribute.

Titles often name attributes outright ("Turtle Check Men Navy Blue Shirt") and err where an image model
does not (and the reverse), which is what a second view for pseudo-labelling needs (co-training, Blum &
Mitchell 1998). Character 2–5-grams keep spelling variants ("Tshirt", "T-Shirt") close; words and word
pairs keep multi-word values ("Navy Blue"). The category is a feature too, as it is for the image heads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from taxonomist.data.labels import MISSING
from taxonomist.data.tokens import word_pattern

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer

UNSEEN_LOG_PROB = math.log(1e-4)
"""Log-probability of a value no labeled text had: unlikely, but finite, so calibration and products of
views stay defined when a held-out row has that value."""


MIN_DF_TEXTS = 20
"""Below this many non-blank vocabulary texts an n-gram need appear in one text only (``min_df=1``), as
:class:`~taxonomist.features.text.LexicalView` does: with a few titles, ``min_df=2`` prunes every n-gram."""


class TextAttributeClassifier:
    """``fit`` on labeled texts (label codes, ``MISSING`` = none), then ``log_probs`` per attribute.

    Few or no titles are a case to handle, not an error: the lexical probe is fitted per cross-fitting
    fold, and a catalog with titles on a few rows leaves folds with none. A vectorizer that finds no
    n-gram (no non-blank text, or only punctuation) is left out, and the model reads the category alone:
    every row then gets its category's learned value distribution, what a blank title gets from a model
    with a vocabulary. Training goes on with text features that say nothing, rather than stopping on sklearn's
    "empty vocabulary".
    """

    def __init__(self, C: float = 20.0, max_iter: int = 3000) -> None:
        self.C = C
        self.max_iter = max_iter

    def _features(self, texts: Sequence[str], category: np.ndarray):
        from scipy import sparse

        onehot = sparse.csr_matrix(
            (np.ones(len(category)), (np.arange(len(category)), np.asarray(category))),
            shape=(len(category), self.n_categories_),
        )
        parts = [v.transform(texts) for v in (self.chars_, self.words_) if v is not None]
        return sparse.hstack([*parts, onehot]).tocsr()

    def fit(
        self,
        texts: Sequence[str],
        category: np.ndarray,
        labels: Mapping[str, np.ndarray],
        n_values: Mapping[str, int],
        n_categories: int,
        *,
        vocabulary_texts: Sequence[str] | None = None,
    ) -> TextAttributeClassifier:
        """``vocabulary_texts`` (default ``texts``) fit the n-gram vocabulary and IDF: unlabeled texts
        may join there, as no label is read from them."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        texts = list(texts)
        self.n_categories_ = n_categories
        vocabulary = list(vocabulary_texts) if vocabulary_texts is not None else texts
        min_df = 2 if sum(bool(t) for t in vocabulary) >= MIN_DF_TEXTS else 1
        self.chars_ = _fitted(
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=min_df),
            vocabulary,
        )
        self.words_ = _fitted(
            TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), token_pattern=word_pattern(2)), vocabulary
        )
        x = self._features(texts, category)
        self.n_values_ = dict(n_values)
        self.models_: dict[str, object] = {}
        self.only_value_: dict[str, int | None] = {}
        for attribute, codes in labels.items():
            codes = np.asarray(codes)
            rows = codes != MISSING
            seen = np.unique(codes[rows])
            self.only_value_[attribute] = int(seen[0]) if len(seen) == 1 else None
            if len(seen) > 1:
                model = LogisticRegression(C=self.C, max_iter=self.max_iter)
                self.models_[attribute] = model.fit(x[rows], codes[rows])
        return self

    def log_probs(self, texts: Sequence[str], category: np.ndarray) -> dict[str, np.ndarray]:
        """attribute → (n, k) log-probabilities over the attribute's values; an attribute without labels
        gives all zeros (no opinion). Restricting to the category's values is left to the caller."""
        if not len(texts):  # sklearn's tf-idf refuses zero rows (an empty self-training pool)
            return {attribute: np.zeros((0, k)) for attribute, k in self.n_values_.items()}
        x = self._features(list(texts), category)
        out = {}
        for attribute, k in self.n_values_.items():
            z = np.full((x.shape[0], k), UNSEEN_LOG_PROB)
            if attribute in self.models_:
                model = self.models_[attribute]
                z[:, model.classes_] = model.predict_log_proba(x)
            elif self.only_value_.get(attribute) is not None:
                z[:, self.only_value_[attribute]] = 0.0
            else:
                z[:] = 0.0
            out[attribute] = z
        return out


def _fitted(vectorizer: TfidfVectorizer, texts: list[str]) -> TfidfVectorizer | None:
    """``vectorizer`` fitted on ``texts``; None where they hold no n-gram it keeps (sklearn's "empty
    vocabulary" / "no terms remain"), so the classifier reads the category alone."""
    if not any(texts):
        return None
    try:
        return vectorizer.fit(texts)
    except ValueError:
        return None
