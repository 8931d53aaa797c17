"""Brand extraction: pick the title prefix that is the brand (or "no brand"), so unseen brands work.

Most catalog titles start with the brand ("Alisha Solid Women's Cycling Shorts"), and many brands at
prediction time were never seen in training, so a brand *classifier* cannot name them. This ranks the
candidate spans "first 1..K tokens" and "none" with gradient-boosted trees over span statistics: is the
span a known brand, how often titles starting with it were branded by it, and how "generic" the next token
is, overall and under the product's path ("Women's", "Solid", "Analog" end a brand; "Paris" in "Cobra
Paris" does not). Trees beat the earlier logistic model by about one point of brand accuracy in 3-fold
cross-validation on the flipkart training split, because these statistics matter in combination.

Some catalogs fill the brand field with something else for whole categories (flipkart: "regular" or
"slim" for shirts, the colour for bras). Given the predicted path, the labels that the path's rows carry
but their titles do not start with become candidates too, scored by their share under the path and
whether the title mentions them; the most frequent such label the title mentions ("... Yellow Cotton
Bra") gets a slot of its own even when it is not among the path's most frequent. A span that the path
itself names ("Dinoimpex" under "... > Dinoimpex Musical Instruments & Toys") is likely the brand.

Statistics are cross-fitted while training (each row's features come from the other folds), so the
model learns what to do with a brand it has never seen instead of trusting the lexicon blindly.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

from taxonomist.data.taxonomy import NO_BRAND, normalize_brand, normalize_text
from taxonomist.io import atomic_write_bytes, atomic_write_text

_DIGIT = re.compile(r"\d")


def tokens(title: str) -> list[str]:
    text = normalize_text(title)
    return text.split(" ") if text else []


@dataclass
class _Stats:
    """Counts from a set of branded titles: the lexicon, span starts and per-word brand/non-brand use."""

    brand_count: Counter = field(default_factory=Counter)
    path_rows: Counter = field(default_factory=Counter)
    """Branded rows per path."""
    path_all: Counter = field(default_factory=Counter)
    """All rows per path (with or without a brand)."""
    path_other: dict = field(default_factory=dict)
    """Per path, the brands that were not a title prefix, with counts."""
    start_count: Counter = field(default_factory=Counter)
    in_brand: Counter = field(default_factory=Counter)
    out_brand: Counter = field(default_factory=Counter)
    path_words: dict = field(default_factory=dict)
    """Per path, in how many titles each word (after the first) occurs: what is generic *here*."""
    max_k: int = 4

    def add(self, toks: list[str], brand_len: int | None, path: str = "", brand: str = "") -> None:
        low = [t.casefold() for t in toks]
        for k in range(1, min(self.max_k, len(low)) + 1):
            self.start_count[" ".join(low[:k])] += 1
        self.path_all[path] += 1
        self.path_words.setdefault(path, Counter()).update(set(low[1:]))
        if brand:
            self.path_rows[path] += 1
        if brand_len is None:
            if brand:
                self.path_other.setdefault(path, Counter())[brand] += 1
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


N_FEATURES = 29
N_FREQUENT = 3
N_PATH_CANDIDATES = N_FREQUENT + 1
"""The path's most frequent non-prefix labels, then the most frequent other one the title mentions."""


def _mentions(low_title: str, label: str) -> bool:
    """Whole-word match; ``low_title`` is the case-folded title padded with spaces."""
    return f" {label} " in low_title


def _path_candidates(stats: _Stats, path: str, toks: list[str]) -> list[tuple[str, float] | None]:
    """The path's non-prefix brand candidates with their share of the path's branded rows (None = empty
    slot): the most frequent ones, then the most frequent of the rest that the title mentions."""
    other = stats.path_other.get(path)
    if not other:
        return []
    total = max(1, stats.path_rows[path])
    ranked = [(b, n / total) for b, n in other.most_common() if n >= 2]
    low = f" {' '.join(toks).casefold()} "
    mentioned = next((c for c in ranked[N_FREQUENT:] if _mentions(low, c[0])), None)
    return [*ranked[:N_FREQUENT], *[None] * (N_FREQUENT - len(ranked[:N_FREQUENT])), mentioned]


def _features(stats: _Stats, toks: list[str], max_k: int, path: str = "") -> np.ndarray:
    """Rows: candidate 0 ("none"), spans of 1..max_k tokens, then the path's brand candidates
    (padded; absent candidates get -1 marks)."""
    out = np.zeros((max_k + 1 + N_PATH_CANDIDATES, N_FEATURES))
    low_path = f" {normalize_text(path.replace('>', ' ')).casefold()} "
    first_generic, first_seen = stats.generic(toks[0] if toks else None)
    out[0, 0] = 1.0
    out[0, 1] = first_generic
    out[0, 2] = first_seen
    # How often this path's products had no brand recorded: some categories are mostly unbranded.
    seen_rows = stats.path_all[path]
    out[0, 20] = (seen_rows - stats.path_rows[path] + 1.0) / (seen_rows + 2.0)
    out[0, 21] = float(seen_rows > 0)
    words = stats.path_words.get(path, Counter())
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
        # Upper-case runs ("PALSUN WEARS Full Sleeve") tend to be one brand.
        span_caps = all(t.isupper() for t in toks[:k])
        next_caps = bool(nxt and nxt.isupper())
        row[22] = float(span_caps)
        row[23] = float(next_caps)
        row[24] = float(span_caps and next_caps)
        # The longest title prefix that the path names.
        longer = f"{span} {nxt.casefold()}" if nxt else None
        row[25] = float(_mentions(low_path, span) and not (longer and _mentions(low_path, longer)))
        row[27] = (words[nxt.casefold()] + 0.5) / (seen_rows + 1.0) if nxt else 1.0
        row[28] = (words[toks[k - 1].casefold()] + 0.5) / (seen_rows + 1.0)
    candidates = _path_candidates(stats, path, toks)
    low = f" {' '.join(toks).casefold()} "
    for j in range(N_PATH_CANDIDATES):
        row = out[max_k + 1 + j]
        if j >= len(candidates) or candidates[j] is None:
            row[3] = -1.0
            continue
        brand, share = candidates[j]
        row[17] = 1.0
        row[18] = share
        row[19] = float(_mentions(low, brand))
        row[26] = float(j == N_FREQUENT)
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

    def _stats(self, toks, lengths, paths, brands, rows) -> _Stats:
        stats = _Stats(max_k=self.max_tokens)
        for i in rows:
            stats.add(toks[i], lengths[i], paths[i], brands[i])
        return stats

    def _labels(
        self, stats: _Stats, toks: list[str], k: int | None, path: str, brand: str
    ) -> np.ndarray | None:
        """Which candidate is right: a span length, "none", or one of the path's candidates."""
        target = np.zeros(self.max_tokens + 1 + N_PATH_CANDIDATES, dtype=bool)
        if k is not None and k <= self.max_tokens:
            target[k] = True
            return target
        for j, candidate in enumerate(_path_candidates(stats, path, toks)):
            if candidate is not None and candidate[0] == brand:
                target[self.max_tokens + 1 + j] = True
                return target
        return None  # spelled neither by a short prefix nor by the path: nothing to learn here

    def fit(self, titles: list[str], brands: list[str], paths: list[str] | None = None) -> BrandExtractor:
        """``paths``: each row's taxonomy path (any string key); enables the path's candidates."""
        toks = [tokens(t) for t in titles]
        keys = [normalize_brand(b) for b in brands]
        paths = list(paths) if paths is not None else [""] * len(toks)
        lengths = [_brand_length(t, b) for t, b in zip(toks, brands, strict=True)]
        fold = np.random.default_rng(self.seed).integers(0, self.folds, len(toks))
        xs, ys = [], []
        for f in range(self.folds):
            stats = self._stats(toks, lengths, paths, keys, np.flatnonzero(fold != f))
            for i in np.flatnonzero(fold == f):
                target = self._labels(stats, toks[i], lengths[i], paths[i], keys[i])
                if target is None:
                    continue
                xs.append(_features(stats, toks[i], self.max_tokens, paths[i]))
                ys.append(target)
        if not xs:
            raise ValueError(
                f"brand: none of the {len(toks)} training brands is empty, a title prefix of at most "
                f"{self.max_tokens} tokens or a label shared by 2+ rows of a path; nothing to learn from"
            )
        x, y = np.concatenate(xs), np.concatenate(ys)
        valid = x[:, 3] >= 0
        # Candidates are scored one by one (a binary model) and compared with a softmax over a title's.
        self.model_ = HistGradientBoostingClassifier(
            max_iter=300,
            learning_rate=0.05,
            max_leaf_nodes=15,
            min_samples_leaf=50,
            early_stopping=False,
            random_state=self.seed,
        ).fit(x[valid], y[valid])
        self.stats_ = self._stats(toks, lengths, paths, keys, range(len(toks)))
        return self

    def predict(self, titles: list[str], paths: list[str] | None = None) -> list[str]:
        brands, _ = self.predict_with_confidence(titles, paths)
        return brands

    def predict_with_confidence(
        self, titles: list[str], paths: list[str] | None = None, none_threshold: float = 0.5
    ) -> tuple[list[str], np.ndarray]:
        """Brands and their probabilities; "no brand" wins only with probability ≥ ``none_threshold``.

        An empty brand field in scraped catalogs mostly means "not recorded" (their titles still start
        with a brand), so the "none" class is over-represented in training; a threshold above 0.5
        prefers the best title span unless the model is sure there is none.
        """
        if not titles:
            return [], np.zeros(0)
        toks = [tokens(t) for t in titles]
        paths = list(paths) if paths is not None else [""] * len(toks)
        x = np.stack(
            [_features(self.stats_, t, self.max_tokens, p) for t, p in zip(toks, paths, strict=True)]
        )
        scores = self.model_.decision_function(x.reshape(-1, N_FEATURES)).reshape(len(toks), -1)
        scores[x[:, :, 3] < 0] = -np.inf
        probs = np.exp(scores - scores.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        spans = probs.copy()
        spans[:, 0] = -1.0
        best = np.where(probs[:, 0] >= none_threshold, 0, spans.argmax(1))
        brands = []
        for t, k, p in zip(toks, best, paths, strict=True):
            if k == 0:
                brands.append(NO_BRAND)
            elif k <= self.max_tokens:
                brands.append(" ".join(t[:k]))
            else:
                brands.append(_path_candidates(self.stats_, p, t)[k - self.max_tokens - 1][0])
        return brands, probs[np.arange(len(toks)), best]

    def save(self, path: str | os.PathLike) -> None:
        """``{path}.json`` (lexicon and statistics) and ``{path}.skops`` (the trees, no pickle)."""
        import skops.io

        s = self.stats_
        data = {
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "stats": {
                "brand_count": dict(s.brand_count),
                "start_count": dict(s.start_count),
                "in_brand": dict(s.in_brand),
                "out_brand": dict(s.out_brand),
                "path_rows": dict(s.path_rows),
                "path_all": dict(s.path_all),
            },
            "path_other": {p: dict(c) for p, c in s.path_other.items()},
            "path_words": {p: dict(c) for p, c in s.path_words.items()},
        }
        atomic_write_text(Path(f"{path}.json"), json.dumps(data, ensure_ascii=False))
        atomic_write_bytes(Path(f"{path}.skops"), skops.io.dumps(self.model_))

    @classmethod
    def load(cls, path: str | os.PathLike) -> BrandExtractor:
        import skops.io

        with open(f"{path}.json", encoding="utf-8") as fh:
            data = json.load(fh)
        self = cls(max_tokens=int(data["max_tokens"]), seed=int(data["seed"]))
        self.stats_ = _Stats(**{k: Counter(v) for k, v in data["stats"].items()}, max_k=self.max_tokens)
        self.stats_.path_other = {p: Counter(c) for p, c in data["path_other"].items()}
        self.stats_.path_words = {p: Counter(c) for p, c in data["path_words"].items()}
        self.model_ = skops.io.load(f"{path}.skops", trusted=TRUSTED_TYPES)
        return self


TRUSTED_TYPES = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]
"""What a saved brand model may contain beyond skops' defaults; anything else is refused on load."""
