"""Listing heads (image ⊕ text): what each modality can teach, modality dropout, blank and odd titles,
text feature cache keys, and the catalog's text columns."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from taxonomist.config import CatalogConfig, ConfigError, TrainConfig, load_config
from taxonomist.data.catalog import TEXT, CatalogError, read_generic
from taxonomist.data.labels import MISSING
from taxonomist.data.prepare import load_catalog
from taxonomist.data.schema import Schema
from taxonomist.features.text import (
    LexicalProbe,
    LexicalView,
    TextFeatures,
    embed_texts,
    text_cache,
    text_key,
)
from taxonomist.models.fusion import (
    HAS_IMAGE,
    HAS_TEXT,
    ListingEnsemble,
    ListingHeads,
    listing_heads,
    modality_dropout,
)
from taxonomist.models.heads import AttributeHeads, allowed_masks
from taxonomist.training.heads import FeatureSet, fit_heads, predict_logits, set_text

N = 600
WORDS = ["alpha", "bravo", "charlie", "delta"]


def _schema() -> Schema:
    return Schema({"Tops": {"label": ["no", "yes"]}})


def _data(rule: str, seed: int) -> tuple[FeatureSet, np.ndarray]:
    """Image bit in an 8-d feature, text bit in the title's word; ``rule`` picks what decides the label."""
    rng = np.random.default_rng(seed)
    image_bit, text_bit = rng.integers(0, 2, N), rng.integers(0, 2, N)
    label = {"image": image_bit, "text": text_bit, "both": image_bit ^ text_bit}[rule]
    features = rng.normal(size=(N, 8)).astype(np.float32)
    features[:, 0] += 3 * (2 * image_bit - 1)
    dense = rng.normal(size=(N, 4)).astype(np.float32)  # an uninformative "sentence embedding"
    titles = [f"{WORDS[2 * t + rng.integers(0, 2)]} item {rng.integers(0, 50)}" for t in text_bit]
    data = FeatureSet.build(features, np.zeros(N, dtype=np.int64), {"label": label})
    return data, np.array(titles, dtype=object), dense


def _listing_set(data: FeatureSet, titles, dense, lexical: LexicalView) -> FeatureSet:
    set_text(data, TextFeatures(dense, lexical.transform(list(titles)), np.ones(len(titles), dtype=bool)))
    return data


def _accuracy(model, data: FeatureSet, **hide) -> float:
    z = predict_logits(model, data, **hide)["label"]
    return float((z.argmax(1) == data.labels["label"]).float().mean())


def _train(rule: str, inputs: str, text_dropout: float = 0.0) -> tuple[object, FeatureSet]:
    torch.manual_seed(0)
    (train, titles, dense), (val, val_titles, val_dense) = _data(rule, 0), _data(rule, 1)
    masks = allowed_masks(_schema(), ["Tops"])
    cfg = TrainConfig(epochs=25, batch_size=64, lr=0.01, patience=25)
    if inputs == "image":
        model = AttributeHeads(8, masks, hidden=[32], category_dim=2, dropout=0.0)
    else:
        lexical = LexicalView().fit(list(titles))
        train, val = (
            _listing_set(train, titles, dense, lexical),
            _listing_set(val, val_titles, val_dense, lexical),
        )
        model = ListingHeads(8, 4, masks, hidden=[32], category_dim=2, dropout=0.0, lexical_dim=lexical.dim)
        if inputs == "text":  # a text-only model: every image hidden
            for data in (train, val):
                data.present[:, HAS_IMAGE] = False
    score = lambda z: float((z["label"].argmax(1) == val.labels["label"]).float().mean())  # noqa: E731
    fit_heads(model, train, val, score, cfg, progress=False, text_dropout=text_dropout)
    return model, val


@pytest.mark.parametrize("rule", ["image", "text", "both"])
def test_fused_heads_learn_what_either_modality_or_only_both_together_decide(rule: str) -> None:
    fused, val = _train(rule, "fused")
    assert _accuracy(fused, val) > 0.95
    image_only, image_val = _train(rule, "image")
    text_only, text_val = _train(rule, "text")
    image_acc, text_acc = _accuracy(image_only, image_val), _accuracy(text_only, text_val)
    if rule == "both":  # the XOR of the two bits: neither view alone beats a coin
        assert max(image_acc, text_acc) < 0.65
    else:
        assert (image_acc if rule == "image" else text_acc) > 0.95
        assert (text_acc if rule == "image" else image_acc) < 0.65


def test_modality_dropout_teaches_the_blank_title_case() -> None:
    """The label is in the image; text names nothing useful. With text dropout the heads still answer
    from the image when every title is blank."""
    dropped, val = _train("image", "fused", text_dropout=0.5)
    assert _accuracy(dropped, val, hide="text") > 0.95
    assert _accuracy(dropped, val) > 0.95


def test_modality_dropout_keeps_one_input_a_row_has() -> None:
    present = torch.tensor([[True, True]] * 2000 + [[True, False]] * 500 + [[False, True]] * 500)
    out = modality_dropout(present, 0.5, 0.5, torch.Generator().manual_seed(0))
    assert not (out & ~present).any()  # never invents an input
    assert out.any(1).all()
    both = out[:2000]
    assert 0.4 < both[:, HAS_TEXT].float().mean() < 0.6
    assert out[2000:2500, HAS_IMAGE].all() and out[2500:, HAS_TEXT].all()


def _with_rows_missing(data: FeatureSet, absent: int, n: int, label: int) -> FeatureSet:
    """``data`` and, after its rows, copies of its first ``n`` without input ``absent``, all labelled
    ``label``."""
    from scipy import sparse

    rows = torch.arange(n)
    present = data.present[rows].clone()
    present[:, absent] = False
    return FeatureSet(
        torch.cat([data.features, data.features[rows]]),
        torch.cat([data.category, data.category[rows]]),
        {"label": torch.cat([data.labels["label"], torch.full((n,), label)])},
        torch.cat([data.text, data.text[rows]]),
        torch.cat([data.present, present]),
        sparse.vstack([data.lexical, data.lexical[:n]], format="csr"),
    )


@pytest.mark.parametrize(("view", "absent"), [("text", HAS_TEXT), ("image", HAS_IMAGE)])
def test_rows_left_with_no_input_have_no_say_in_that_views_calibration(view: str, absent: int) -> None:
    """Dev is scored once with every image hidden ("text" only) and once with every title hidden: a row
    without a title has nothing left in the first, and prediction refuses such a row. Its category-only
    guess used to pull the text-only temperature (and prior correction) towards its own answers."""
    from taxonomist.training.heads import fit_calibration

    model, val = _train(view, "fused", text_dropout=0.3)  # the label is in the view's input
    cfg = load_config(values={"text.image_dropout": 0.3, "train.class_balance": "dev"})

    def fitted(dev: FeatureSet):
        def score(z: dict[str, torch.Tensor], rows: np.ndarray | None = None) -> float:
            keep = torch.arange(len(dev)) if rows is None else torch.as_tensor(rows)
            return float((z["label"][keep].argmax(1) == dev.labels["label"][keep]).float().mean())

        return fit_calibration(cfg, model, val, dev, score)

    base, more = fitted(val), fitted(_with_rows_missing(val, absent, 400, 1))
    assert base.temperatures_by_inputs[view]["label"] < 5  # a view that answers, not a flat one
    assert more.temperatures_by_inputs[view] == base.temperatures_by_inputs[view]
    assert more.strengths_by_inputs[view] == base.strengths_by_inputs[view]
    assert more.adjustment_by_inputs.get(view) == base.adjustment_by_inputs.get(view)


def test_a_blank_title_is_the_same_input_whatever_its_features_say() -> None:
    masks = allowed_masks(_schema(), ["Tops"])
    model = ListingHeads(8, 4, masks, hidden=[16], category_dim=2, lexical_dim=10, lexical_width=4).eval()
    image, category = torch.randn(3, 8), torch.zeros(3, dtype=torch.long)
    present = torch.tensor([[True, False]] * 3)
    bag = (torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2]), torch.ones(3))
    empty = (torch.tensor([], dtype=torch.long), torch.tensor([0, 0, 0]), torch.tensor([]))
    a = model(image, torch.randn(3, 4), category, present, bag)["label"]
    b = model(image, torch.zeros(3, 4), category, present, empty)["label"]
    torch.testing.assert_close(a, b)


def test_rows_without_text_are_scored_by_the_frozen_image_fallback_heads() -> None:
    masks = allowed_masks(_schema(), ["Tops"])
    torch.manual_seed(0)
    image_heads = AttributeHeads(8, masks, hidden=[16], category_dim=2, dropout=0.0).eval()
    model = ListingHeads(8, 4, masks, hidden=[16], category_dim=2, dropout=0.0, image_fallback=True)
    model.set_image_fallback(image_heads)
    image, text, category = torch.randn(4, 8), torch.randn(4, 4), torch.zeros(4, dtype=torch.long)
    present = torch.tensor([[True, True], [True, False], [False, True], [True, False]])
    alone = image_heads(image, category)["label"]
    out = model.eval()(image, text, category, present)["label"]
    torch.testing.assert_close(out[[1, 3]], alone[[1, 3]])  # no title: the image heads' answer
    assert not torch.allclose(out[[0, 2]], alone[[0, 2]])  # a title (or no image): the fused heads
    # Training never routes through the fallback, and leaves its trained weights alone.
    assert not torch.allclose(model.train()(image, text, category, present)["label"][1], alone[1])
    assert not any(p.requires_grad for p in model.image_only.parameters())
    with pytest.raises(ValueError, match="image_fallback"):
        ListingHeads(8, 4, masks, hidden=[16]).set_image_fallback(image_heads)


def test_a_listing_ensemble_is_the_mean_probability_and_keeps_the_shared_fallback_answer() -> None:
    schema = Schema({"Tops": {"label": ["no", "yes", "maybe"]}, "Bags": {"size": ["s", "m"]}})
    masks = allowed_masks(schema, ["Tops", "Bags"])
    torch.manual_seed(0)
    image_heads = AttributeHeads(8, masks, hidden=[16], category_dim=2).eval()
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        member = ListingHeads(8, 4, masks, hidden=[16], category_dim=2, image_fallback=True)
        member.set_image_fallback(image_heads)
        members.append(member.eval())
    ensemble = ListingEnsemble(members).eval()
    image, text, category = torch.randn(4, 8), torch.randn(4, 4), torch.tensor([0, 0, 1, 0])
    present = torch.tensor([[True, True], [True, False], [True, True], [False, True]])
    out = ensemble(image, text, category, present)
    expected = torch.stack([torch.softmax(m(image, text, category, present)["label"], 1) for m in members])
    torch.testing.assert_close(torch.softmax(out["label"], 1), expected.mean(0))
    # No title: every member answers with the shared image heads, so the ensemble does too.
    torch.testing.assert_close(
        torch.softmax(out["label"][1], 0), torch.softmax(image_heads(image, category)["label"][1], 0)
    )
    assert (out["label"][2] < -1e8).all()  # Bags have no label, in every member
    assert listing_heads(ensemble) is members[0] and listing_heads(members[1]) is members[1]
    assert listing_heads(image_heads) is None


def test_the_fallback_leaves_the_fused_layers_initial_weights_as_they_were() -> None:
    masks = allowed_masks(_schema(), ["Tops"])
    torch.manual_seed(0)
    plain = ListingHeads(8, 4, masks, hidden=[16], category_dim=2).state_dict()
    torch.manual_seed(0)
    with_fallback = ListingHeads(8, 4, masks, hidden=[16], category_dim=2, image_fallback=True).state_dict()
    assert all(torch.equal(v, with_fallback[k]) for k, v in plain.items())


@pytest.mark.parametrize("fusion", ["concat", "gated"])
def test_both_fusions_give_finite_masked_logits(fusion: str) -> None:
    schema = Schema({"Tops": {"label": ["no", "yes"]}, "Bags": {"size": ["s", "m"]}})
    masks = allowed_masks(schema, ["Tops", "Bags"])
    model = ListingHeads(8, 4, masks, hidden=[16, 8], category_dim=2, fusion=fusion).eval()
    present = torch.tensor([[True, True], [True, False], [False, True]])
    out = model(torch.randn(3, 8), torch.randn(3, 4), torch.tensor([0, 1, 0]), present)
    assert torch.isfinite(out["label"]).all()
    assert (out["label"][1] < -1e8).all()  # Bags have no label


def test_the_probe_adds_its_weighted_log_probabilities_on_rows_with_text() -> None:
    """Residual stacking: the heads start from the text probe's answer (weight 1) where a row has text
    and ignore it where it has none; masked values stay masked."""
    schema = Schema({"Tops": {"label": ["no", "yes"]}, "Bags": {"size": ["s", "m", "l"]}})
    masks = allowed_masks(schema, ["Tops", "Bags"])  # label: 2 values, size: 3 values
    torch.manual_seed(0)
    model = ListingHeads(8, 4 + 5, masks, hidden=[16], category_dim=2, probe_offset=4).eval()
    plain = ListingHeads(8, 4 + 5, masks, hidden=[16], category_dim=2).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "probe_weight"})
    probe = torch.tensor([[0.9, 0.1, 0.2, 0.3, 0.5], [0.2, 0.8, 0.6, 0.2, 0.2]])
    text = torch.cat([torch.randn(2, 4), probe], dim=1)
    image, category = torch.randn(2, 8), torch.tensor([0, 1])
    with_text = torch.tensor([[True, True], [True, True]])
    out, base = model(image, text, category, with_text), plain(image, text, category, with_text)
    torch.testing.assert_close(out["label"][0], base["label"][0] + probe[0, :2].log())
    torch.testing.assert_close(out["size"][1], base["size"][1] + probe[1, 2:].log())
    assert (out["label"][1] < -1e8).all() and (out["size"][0] < -1e8).all()
    without = torch.tensor([[True, False], [True, False]])
    torch.testing.assert_close(
        model(image, text, category, without)["label"], plain(image, text, category, without)["label"]
    )
    with pytest.raises(ValueError, match="probe"):
        ListingHeads(8, 6, masks, hidden=[16], probe_offset=4)  # 5 probe columns do not fit


class _CountingEncoder:
    """Stands in for the sentence encoder: a text's length and first code point, counting calls."""

    dim = 2

    def __init__(self, name: str = "fake") -> None:
        self.name, self.calls = name, []

    def fingerprint(self) -> str:
        return self.name

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.array([[len(t), ord(t[0])] for t in texts], dtype=np.float32)


def test_text_embeddings_are_cached_by_encoder_and_text(tmp_path: Path) -> None:
    encoder = _CountingEncoder()
    cache = text_cache(encoder, tmp_path)
    first = embed_texts(["red shirt", "", "red shirt", "blue bag"], encoder, cache=cache)
    assert encoder.calls == [["red shirt", "blue bag"]]  # blanks are not encoded, duplicates once
    assert (first[1] == 0).all() and (first[0] == first[2]).all()
    again = embed_texts(["blue bag", "red shirt"], encoder, cache=text_cache(encoder, tmp_path))
    assert len(encoder.calls) == 1
    np.testing.assert_array_equal(again, first[[3, 0]])
    other = _CountingEncoder("other-weights")
    embed_texts(["red shirt"], other, cache=text_cache(other, tmp_path))
    assert other.calls == [["red shirt"]]  # another encoder never reads these embeddings
    assert text_key("red shirt") != text_key("red shirt ")


def test_long_non_latin_and_emoji_titles(tmp_path: Path) -> None:
    titles = ["Ｔｓｈｉｒｔ  ＲＥＤ", "कुर्ता लाल", "红色 连衣裙 👗🔥", "x" * 20000, "Tshirt RED"]
    path = tmp_path / "c.csv"
    pd.DataFrame({"id": range(5), "category": "Tops", "title": titles, "label": "a"}).to_csv(
        path, index=False
    )
    catalog = read_generic(path, text_columns=["title"])
    texts = catalog.frame[TEXT].tolist()
    assert texts[0] == "Tshirt RED" == texts[4]  # NFKC folds full-width letters, spaces collapse
    lexical = LexicalView().fit(texts)
    rows = lexical.transform(texts)
    assert rows.shape[0] == 5 and np.isfinite(rows.data).all()
    assert rows[1].nnz > 0 and rows[2].nnz > 0  # Devanagari and CJK give n-grams too
    encoder = _CountingEncoder()
    out = embed_texts(texts, encoder, cache=text_cache(encoder, tmp_path))
    assert out.shape == (5, 2) and len(encoder.calls[0]) == 4  # the folded duplicate is encoded once


NON_LATIN = [
    "लाल सूती कुर्ती",
    "नीली सूती कुर्ती",
    "เสื้อยืด สีแดง",
    "เสื้อยืด สีฟ้า",
    "cafe\u0301 noir",
    "cafe\u0301 blanc",
]
"""Hindi (vowel signs, a virama), Thai (vowel and tone marks) and a decomposed accent: Python's ``\\w``
matches none of these marks."""


def test_lexical_words_keep_their_combining_marks() -> None:
    """The word n-grams once cut these words at every mark: "कुर्ती" became the letters क, र, त."""
    words = LexicalView(min_df=1).fit(NON_LATIN).vectorizers[1].vocabulary_
    assert {"कुर्ती", "लाल सूती", "เสื้อยืด", "สีแดง", "cafe\u0301", "cafe\u0301 noir"} <= set(words)
    assert not {"क", "र", "त", "ด"} & set(words)


def test_a_lexical_view_saved_with_the_old_word_pattern_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint's view tokenizes as it was fitted: its vocabulary holds the old pattern's tokens."""
    monkeypatch.setattr("taxonomist.features.text.word_pattern", lambda _: r"(?u)\b\w+\b")
    old = LexicalView(min_df=1).fit(NON_LATIN)
    old.save(tmp_path)
    monkeypatch.undo()
    loaded = LexicalView.load(tmp_path)
    assert loaded.vectorizers[1].token_pattern == r"(?u)\b\w+\b"
    assert (loaded.transform(NON_LATIN) != old.transform(NON_LATIN)).nnz == 0


def test_text_columns_are_normalised_joined_and_may_be_blank(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    pd.DataFrame(
        {
            "id": [1, 2, 3],
            "category": "Tops",
            "title": ["Red\tshirt ", None, ""],
            "description": ["cotton", "silk  scarf", None],
            "label": "a",
        }
    ).to_csv(path, index=False)
    catalog = read_generic(path, text_columns=["title", "description"], attributes=["label"])
    assert catalog.frame[TEXT].tolist() == ["Red shirt | cotton", "silk scarf", ""]


def test_text_column_is_the_older_spelling_of_text_columns() -> None:
    assert CatalogConfig(text_column="title").text_columns == ["title"]
    with pytest.raises(ConfigError, match="both set"):
        CatalogConfig(text_column="title", text_columns=["description"])
    cfg = load_config(values={"catalog.text_column": "productDisplayName"})
    assert cfg.catalog.text_columns == ["productDisplayName"]


def test_the_meesho_layout_has_no_text(tmp_path: Path) -> None:
    cfg = CatalogConfig(path=str(tmp_path), layout="meesho", text_columns=["title"])
    with pytest.raises(CatalogError, match="no listing text"):
        load_catalog(cfg)


def test_prediction_reading_keeps_text_only_for_listing_heads(tmp_path: Path) -> None:
    from taxonomist.data.prepare import load_for_prediction

    path = tmp_path / "c.csv"
    pd.DataFrame({"id": [1], "category": "Tops", "title": ["Red shirt"]}).to_csv(path, index=False)
    cfg = CatalogConfig(path=str(path), category_column="category", text_columns=["title"])
    assert TEXT not in load_for_prediction(cfg).frame.columns
    assert load_for_prediction(cfg, text=True).frame[TEXT].tolist() == ["Red shirt"]
    assert dataclasses.replace(cfg, text_columns=[]).text_columns == []


def test_a_missing_text_column_reads_blank_for_prediction_but_fails_training_reads(tmp_path: Path) -> None:
    from taxonomist.data.prepare import load_for_prediction

    path = tmp_path / "c.csv"
    pd.DataFrame({"id": [1, 2], "category": "Tops", "title": ["Red shirt", None]}).to_csv(path, index=False)
    cfg = CatalogConfig(path=str(path), category_column="category", text_columns=["title", "description"])
    with pytest.raises(CatalogError, match="no text column 'description'"):
        load_catalog(cfg)  # training rows: a missing column is a mistake
    partial = load_for_prediction(cfg, text=True)
    assert partial.frame[TEXT].tolist() == ["Red shirt", ""]
    assert partial.text_note.endswith(
        "no text column 'description': the listing text is read from ['title'] alone"
    )
    blank = load_for_prediction(dataclasses.replace(cfg, text_columns=["description"]), text=True)
    assert blank.frame[TEXT].tolist() == ["", ""]
    assert blank.subset([1]).text_note.endswith("every listing is predicted from its image")
    assert load_for_prediction(cfg).text_note is None  # image-only heads never read text


def test_lexical_probe_is_cross_fitted_and_saved(tmp_path: Path) -> None:
    """A word that names the label in one row only: the final probe has learned it, but that row's
    stacked feature comes from a model that never saw it, so it stays near the prior (no leak)."""

    rng = np.random.default_rng(0)
    texts = [f"item{i} {'red' if i % 2 else 'blue'} shirt" for i in range(60)]
    labels = {"color": np.array([i % 2 for i in range(60)]), "tag": rng.integers(0, 3, 60)}
    labels["color"][7] = MISSING  # unlabelled rows are features only
    category = np.zeros(60, dtype=np.int64)
    probe = LexicalProbe({"color": 2, "tag": 3}, 1, C=20.0, folds=5)
    stacked = probe.fit_transform(texts, category, labels)
    assert stacked.shape == (60, 5) and np.allclose(stacked[:, :2].sum(1), 1, atol=1e-5)
    final = probe.transform(texts, category)
    # The colour word generalises across folds; the row-unique "item{i}" token cannot.
    assert (stacked[:, :2].argmax(1) == labels["color"])[labels["color"] != MISSING].mean() > 0.95
    in_sample = final[np.arange(60), 2 + labels["tag"]]
    held_out = stacked[np.arange(60), 2 + labels["tag"]]
    assert in_sample.mean() > held_out.mean() + 0.2  # memorised ids, not there when cross-fitted
    probe.save(tmp_path)
    loaded = LexicalProbe.load(tmp_path, {"color": 2, "tag": 3}, 1)
    np.testing.assert_allclose(loaded.transform(texts[:4], category[:4]), final[:4], rtol=1e-6)
