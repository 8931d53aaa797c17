"""Title classifier for attributes: the self-training recipe's text view."""

from __future__ import annotations

import numpy as np
import pytest

from taxonomist.data.labels import MISSING
from taxonomist.features.text import LexicalProbe
from taxonomist.models.text_attributes import UNSEEN_LOG_PROB, TextAttributeClassifier
from taxonomist.training.self_training import with_text_view

M = MISSING
COLORS = ["red", "blue", "green"]


def titles(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    color = rng.integers(0, 2, size=n)  # green (code 2) is never in a title
    nouns = rng.choice(["shirt", "tee", "top", "tunic"], size=n)
    return [f"Brand {COLORS[c].title()} {noun}" for c, noun in zip(color, nouns, strict=True)], color


def test_learns_values_named_in_titles_and_keeps_unseen_values_finite() -> None:
    texts, color = titles(60)
    category = np.zeros(60, dtype=np.int64)
    color = np.where(np.arange(60) % 10 == 0, M, color)  # some titles without a colour label
    labels = {"color": color, "fit": np.full(60, M), "kind": np.zeros(60)}
    model = TextAttributeClassifier().fit(
        texts, category, labels, {"color": 3, "fit": 2, "kind": 2}, n_categories=1
    )
    out = model.log_probs(["Other Blue tunic", "Other Red shirt"], np.zeros(2, dtype=np.int64))
    assert out["color"].shape == (2, 3)
    assert out["color"].argmax(1).tolist() == [1, 0]
    np.testing.assert_allclose(np.exp(out["color"][:, :2]).sum(1), 1.0)  # the seen values share all mass
    assert (out["color"][:, 2] == UNSEEN_LOG_PROB).all()  # never labeled: unlikely, not impossible
    assert (out["fit"] == 0).all()  # no labels at all: no opinion
    assert out["kind"][:, 0].tolist() == [0.0, 0.0] and (out["kind"][:, 1] == UNSEEN_LOG_PROB).all()


def test_vocabulary_texts_only_fit_the_ngrams() -> None:
    texts, color = titles(40)
    unlabeled = ["Brand Teal kaftan"] * 5
    args = (texts, np.zeros(40, dtype=np.int64), {"color": color}, {"color": 3})
    model = TextAttributeClassifier().fit(*args, n_categories=1, vocabulary_texts=texts + unlabeled)
    assert "kaftan" in model.words_.vocabulary_
    assert "kaftan" not in TextAttributeClassifier().fit(*args, n_categories=1).words_.vocabulary_


def test_text_view_multiplies_opinions_and_renormalises() -> None:
    image = {"color": np.array([[0.6, 0.4, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])}
    text = {"color": np.array([[0.2, 0.8, 0.0], [0.5, 0.5, 0.0], [0.3, 0.7, 0.0], [0.0, 1.0, 0.0]])}
    out = with_text_view(image, text)["color"]
    # Row 0: 0.12 vs 0.32 → the title overturns a weak image opinion; row 1: no information added.
    np.testing.assert_allclose(out[0], [0.12 / 0.44, 0.32 / 0.44, 0.0])
    np.testing.assert_allclose(out[1], [0.5, 0.5, 0.0])
    # Row 2: attribute does not apply; row 3: the views share no value. Neither may get a pseudo-label.
    assert (out[2:] == 0).all()


def test_category_is_a_feature() -> None:
    # Same title, different category → different value: only the category one-hot can tell them apart.
    texts = ["Plain item"] * 40
    category = np.repeat([0, 1], 20)
    model = TextAttributeClassifier().fit(texts, category, {"kind": category}, {"kind": 2}, n_categories=2)
    assert model.log_probs(["Plain item"] * 2, np.array([0, 1]))["kind"].argmax(1).tolist() == [0, 1]


@pytest.mark.parametrize("n_titled", [0, 1, 3])
def test_the_cross_fitted_probe_trains_with_few_or_no_titles(n_titled: int) -> None:
    """Folds without a titled row (or whose titles share no n-gram) once stopped training with sklearn's
    "empty vocabulary": such a fold's model reads the category alone."""
    n = 200
    rng = np.random.default_rng(0)
    texts = [""] * n
    for i in rng.choice(n, n_titled, replace=False):
        texts[i] = f"Acme Red top {i}"
    category = np.arange(n) % 2
    labels = {"color": np.where(category == 0, 0, rng.integers(1, 3, n))}
    features = LexicalProbe({"color": 3}, 2).fit_transform(texts, category, labels)
    assert features.shape == (n, 3) and np.isfinite(features).all()
    np.testing.assert_allclose(features.sum(1), 1.0, atol=1e-5)
    assert (features[category == 0].argmax(1) == 0).all()  # the category still speaks


def test_titles_without_words_leave_the_word_ngrams_out() -> None:
    texts = ["!!", "?", "", "--"] * 5
    model = TextAttributeClassifier().fit(
        texts, np.zeros(20, dtype=np.int64), {"c": np.arange(20) % 2}, {"c": 2}, 1
    )
    assert model.words_ is None and model.chars_ is not None
    assert np.isfinite(model.log_probs(["!!", "new title"], np.zeros(2, dtype=np.int64))["c"]).all()


def test_word_ngrams_keep_non_latin_words() -> None:
    """sklearn's default word pattern dropped Hindi and Thai words, or kept fragments ("เส", "อย"): a
    vowel sign or tone mark is not ``\\w``."""
    texts = ["लाल सूती कुर्ती", "नीली सूती कुर्ती", "เสื้อยืด สีแดง", "เสื้อยืด สีฟ้า", "Navy Blue Shirt"] * 2
    model = TextAttributeClassifier().fit(
        texts, np.zeros(10, dtype=np.int64), {"c": np.arange(10) % 2}, {"c": 2}, 1
    )
    words = set(model.words_.vocabulary_)
    assert {"लाल", "कुर्ती", "सूती कुर्ती", "เสื้อยืด", "สีแดง", "navy blue"} <= words
    assert not {"เส", "อย"} & words
