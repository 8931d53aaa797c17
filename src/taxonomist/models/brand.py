"""Brand extraction: pick the title prefix that is the brand (or "no brand"), so unseen brands work.

Most catalog titles start with the brand ("Alisha Solid Women's Cycling Shorts"), and many brands at
prediction time were never seen in training, so a brand *classifier* cannot name them. This ranks the
candidate spans "first 1..K tokens" and "none" with a logistic model over span statistics: is the span a
known brand, how often titles starting with it were branded by it, and how "generic" the next token is
("Women's", "Solid", "Analog" end a brand; "Paris" in "Cobra Paris" does not).

Statistics are cross-fitted while training (each row's features come from the other folds), so the
model learns what to do with a brand it has never seen instead of trusting the lexicon blindly.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import LogisticRegression

from taxonomist.data.taxonomy import NO_BRAND, normalize_brand, normalize_text

_DIGIT = re.compile(r"\d")


def tokens(title: str) -> list[str]:
    return normalize_text(title).split(" ") if normalize_text(title) else []


@dataclass
class _Stats:
    """Counts from a set of branded titles: the lexicon, span starts and per-word brand/non-brand use."""

    brand_count: Counter = field(default_factory=Counter)
    start_count: Counter = field(default_factory=Counter)
    in_brand: Counter = field(default_factory=Counter)
    out_brand: Counter = field(default_factory=Counter)
    max_k: int = 4

    def add(self, toks: list[str], brand_len: int | None) -> None:
        low = [t.casefold() for t in toks]
        for k in range(1, min(self.max_k, len(low)) + 1):
            self.start_count[" ".join(low[:k])] += 1
        if brand_len is None:
            return
        if brand_len:
            self.brand_count[" ".join(low[:brand_len])] += 1
        for i, w in enumerate(low):
            (self.in_brand if i < brand_len else self.out_brand)[w] += 1

    def generic(self, word: str | None) -> tuple[float, float]:
        """(share of a word's uses outside brands, seen flag); the title end counts as fully generic."""
        if word is None:
            return 1.0, 1.0
        w = word.casefold()
        inside, outside = self.in_brand[w], self.out_brand[w]
        if inside + outside == 0:
            return 0.5, 0.0
        return (outside + 0.5) / (inside + outside + 1.0), 1.0


N_FEATURES = 17


def _features(stats: _Stats, toks: list[str], max_k: int) -> np.ndarray:
    """Rows: candidate 0 ("none"), then spans of 1..max_k tokens (padded; absent spans get -1 marks)."""
    out = np.zeros((max_k + 1, N_FEATURES))
    first_generic, first_seen = stats.generic(toks[0] if toks else None)
    out[0, 0] = 1.0
    out[0, 1] = first_generic
    out[0, 2] = first_seen
    for k in range(1, max_k + 1):
        row = out[k]
        if k > len(toks):
            row[3] = -1.0
            continue
        span = " ".join(t.casefold() for t in toks[:k])
        nxt = toks[k] if k < len(toks) else None
        brand_n, start_n = stats.brand_count[span], stats.start_count[span]
        row[4] = float(brand_n > 0)
        row[5] = np.log1p(brand_n)
        row[6] = (brand_n + 0.1) / (start_n + 1.0) if start_n else 0.0
        row[7] = float(start_n == 0)
        row[8], row[9] = stats.generic(nxt)
        row[10], row[11] = stats.generic(toks[k - 1])
        row[12] = float(bool(nxt and _DIGIT.search(nxt)))
        row[13] = float(bool(nxt and nxt[:1].isupper()))
        row[14] = float(nxt is not None and nxt.casefold().endswith("'s"))
        row[15] = float(k)
        row[16] = float(k == 1)
    return out


def _brand_length(toks: list[str], brand: str) -> int | None:
    """Tokens of the title prefix that spell the brand; 0 for no brand; None when it is not a prefix."""
    key = normalize_brand(brand)
    if not key:
        return 0
    low = [t.casefold() for t in toks]
    for k in range(1, len(low) + 1):
        if " ".join(low[:k]) == key:
            return k
    return None


class BrandExtractor:
    """``fit(titles, brands)`` then ``predict(titles)`` → brand strings (``""`` = no brand)."""

    def __init__(self, max_tokens: int = 4, folds: int = 5, seed: int = 0) -> None:
        self.max_tokens = max_tokens
        self.folds = folds
        self.seed = seed

    def _stats(self, toks: list[list[str]], lengths: list[int | None]) -> _Stats:
        stats = _Stats(max_k=self.max_tokens)
        for t, k in zip(toks, lengths, strict=True):
            stats.add(t, k)
        return stats

    def fit(self, titles: list[str], brands: list[str]) -> BrandExtractor:
        toks = [tokens(t) for t in titles]
        lengths = [_brand_length(t, b) for t, b in zip(toks, brands, strict=True)]
        fold = np.random.default_rng(self.seed).integers(0, self.folds, len(toks))
        xs, ys = [], []
        for f in range(self.folds):
            rest = np.flatnonzero(fold != f)
            stats = self._stats([toks[i] for i in rest], [lengths[i] for i in rest])
            for i in np.flatnonzero(fold == f):
                k = lengths[i]
                if k is None or k > self.max_tokens:
                    continue  # brand not spelled by a short title prefix: nothing to learn from here
                feats = _features(stats, toks[i], self.max_tokens)
                xs.append(feats)
                ys.append(np.arange(self.max_tokens + 1) == k)
        x, y = np.concatenate(xs), np.concatenate(ys)
        valid = x[:, 3] >= 0
        self.model_ = LogisticRegression(C=1.0, max_iter=2000).fit(x[valid], y[valid])
        self.stats_ = self._stats(toks, lengths)
        return self

    def predict(self, titles: list[str]) -> list[str]:
        brands, _ = self.predict_with_confidence(titles)
        return brands

    def predict_with_confidence(self, titles: list[str]) -> tuple[list[str], np.ndarray]:
        if not titles:
            return [], np.zeros(0)
        toks = [tokens(t) for t in titles]
        x = np.stack([_features(self.stats_, t, self.max_tokens) for t in toks])
        scores = self.model_.decision_function(x.reshape(-1, N_FEATURES)).reshape(len(toks), -1)
        scores[x[:, :, 3] < 0] = -np.inf
        probs = np.exp(scores - scores.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        best = probs.argmax(1)
        brands = [" ".join(t[:k]) if k else NO_BRAND for t, k in zip(toks, best, strict=True)]
        return brands, probs[np.arange(len(toks)), best]

    def to_dict(self) -> dict:
        s = self.stats_
        return {
            "max_tokens": self.max_tokens,
            "coef": self.model_.coef_.tolist(),
            "intercept": self.model_.intercept_.tolist(),
            "stats": {
                "brand_count": dict(s.brand_count),
                "start_count": dict(s.start_count),
                "in_brand": dict(s.in_brand),
                "out_brand": dict(s.out_brand),
            },
        }

    @classmethod
    def from_dict(cls, data: dict) -> BrandExtractor:
        self = cls(max_tokens=int(data["max_tokens"]))
        model = LogisticRegression()
        model.coef_ = np.array(data["coef"])
        model.intercept_ = np.array(data["intercept"])
        model.classes_ = np.array([False, True])
        self.model_ = model
        self.stats_ = _Stats(**{k: Counter(v) for k, v in data["stats"].items()}, max_k=self.max_tokens)
        return self
