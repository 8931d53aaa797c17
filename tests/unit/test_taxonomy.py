"""Taxonomy tree, readers, text normalization, metrics, parent masking, beam search, vote, brand spans."""

from __future__ import annotations

import inspect
import json
import re
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from taxonomist.data.taxonomy import (
    Taxonomy,
    TaxonomyError,
    normalize_brand,
    normalize_text,
    parse_flipkart_tree,
    read_flipkart,
    read_indoml,
)
from taxonomist.metrics.taxonomy import hierarchical_f1, invalid_paths, taxonomy_report
from taxonomist.models.brand import BrandExtractor
from taxonomist.models.taxonomy import (
    LEGACY_TOKEN_PATTERN,
    LexicalClassifier,
    PathPrediction,
    RetrievalClassifier,
    beam_search,
    hierarchical_loss,
    hierarchical_vote,
    level_parents,
    prediction_from_log_probs,
    sibling_log_softmax,
    soft_vote,
)
from tests.conftest import require_dataset

PATHS = [
    ("Men", "Shoes", "Casual"),
    ("Men", "Shoes", "Formal"),
    ("Men", "Shirts", "Casual"),
    ("Women", "Shoes", "Casual"),
    ("Women", "Bags", "Clutches"),
]


@pytest.fixture
def tax() -> Taxonomy:
    return Taxonomy.from_paths(PATHS, brands=["Bata", "Bata", "Arrow", "Liza", ""])


def test_normalize_text() -> None:
    assert normalize_text("  Ｗｏｍｅｎ's\tShoes\n ") == "Women's Shoes"  # full-width folded by NFKC
    assert normalize_text("a\u200b b\x00c") == "a b c"  # zero-width space and NUL: noise, as spaces
    assert normalize_text(None) == "" and normalize_text(float("nan")) == ""
    # pandas' and numpy's missing values are no title, not the titles "<NA>", "nan" and "NaT".
    assert [normalize_text(v) for v in (pd.NA, np.float32("nan"), pd.NaT, np.datetime64("NaT"))] == [""] * 4
    assert normalize_text(pd.Series(["Red top", None], dtype="string").tolist()[1]) == ""
    assert normalize_text(b" Red\ttop ") == "Red top" and normalize_text("café".encode()) == "café"
    with pytest.raises(ValueError, match="must be UTF-8"):
        normalize_text("café".encode("latin-1"))
    assert normalize_text(0) == "0" and normalize_text(np.float64(1.5)) == "1.5"
    assert normalize_brand(" FabHomeDecor ") == normalize_brand("fabhomedecor")


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        (
            "\U0001f468\u200d\U0001f469\u200d\U0001f467",
            "\U0001f468\u200d\U0001f469\u200d\U0001f467",
        ),  # one emoji
        ("\u0915\u094d\u200d\u0937", "\u0915\u094d\u200d\u0937"),  # Devanagari half form: a ZWJ spelling
        ("\u0928\u094d\u200c\u0939", "\u0928\u094d\u200c\u0939"),  # ZWNJ keeps the virama visible
        ("\u2764\ufe0f Kurta", "\u2764\ufe0f Kurta"),  # a variation selector (Mn) picks emoji style
        ("\u200d", ""),  # joiners that join nothing are dropped: still a blank title
        (" \u200c Kurta\u200d \x07", "Kurta"),
        ("a\x00\u200db\u00ad", "a b"),  # controls and other format characters stay noise
    ],
)
def test_normalize_text_keeps_joiners_within_words(raw: str, normal: str) -> None:
    """Regression: ZWJ/ZWNJ (category Cf) were spaces, splitting emoji sequences and Indic words."""
    assert normalize_text(raw) == normal


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.characters(codec="ascii"))
    | st.text().filter(lambda t: not {"\u200c", "\u200d"} & set(t))
)
def test_normalize_text_without_joiners_is_unchanged(text: str) -> None:
    """ASCII titles, and any title without a joiner, normalise exactly as before joiners were kept."""
    nfkc = unicodedata.normalize("NFKC", text)
    before = "".join(" " if unicodedata.category(c)[0] == "C" else c for c in nfkc)
    assert normalize_text(text) == re.sub(r"\s+", " ", before).strip()


def test_tree_nodes_are_keyed_by_prefix(tax: Taxonomy) -> None:
    assert tax.depth == 3 and len(tax) == 5
    # "Shoes" under Men and under Women are different nodes; "Casual" appears under three parents.
    assert ("Men", "Shoes") in tax.nodes[1] and ("Women", "Shoes") in tax.nodes[1]
    assert len(tax.nodes[2]) == 5 and tax.nodes[2] == tax.paths
    parents = tax.parent_ids(2)
    for child, parent in zip(tax.nodes[2], parents, strict=True):
        assert tax.nodes[1][parent] == child[:2]
    assert ("Men", "Shoes", "Casual") in tax and ("Men", "Bags", "Casual") not in tax
    assert tax.brands[("Men", "Shoes", "Casual")] == ["Bata"]


def test_taxonomy_rejects_ragged_paths() -> None:
    with pytest.raises(TaxonomyError, match="3 non-empty levels"):
        Taxonomy(["a", "b", "c"], [("x", "y")], {})


def test_taxonomy_save_load_round_trip(tax: Taxonomy, tmp_path) -> None:
    tax.save(tmp_path / "t.json")
    back = Taxonomy.load(tmp_path / "t.json")
    assert back.paths == tax.paths and back.brands == tax.brands and back.levels == tax.levels
    pd.DataFrame(PATHS, columns=["supergroup", "group", "module"]).assign(brand="x").to_csv(
        tmp_path / "t.csv", index=False
    )
    assert Taxonomy.load(tmp_path / "t.csv").paths == tax.paths


def test_snap_to_nearest_valid_path(tax: Taxonomy) -> None:
    assert tax.snap(("Men", "Shoes", "Formal")) == ("Men", "Shoes", "Formal")
    assert tax.snap(("Men", "Shoes", "Formall")) == ("Men", "Shoes", "Formal")
    assert tax.snap(("Women", "Shoe", "Casual")) == ("Women", "Shoes", "Casual")
    assert tax.snap(("Kids", "Bags", "Clutch")) == ("Women", "Bags", "Clutches")
    assert tax.snap(("Men",)) in tax


def test_parse_flipkart_tree() -> None:
    assert parse_flipkart_tree('["Footwear >> Women\'s Footwear >> Ballerinas >> AW"]') == [
        "Footwear",
        "Women's Footwear",
        "Ballerinas",
        "AW",
    ]
    assert parse_flipkart_tree('["broken >> json') == ["broken", "json"]
    assert parse_flipkart_tree("") == []


def test_read_flipkart_skips_shallow_trees_and_keeps_na_brand(tmp_path) -> None:
    rows = pd.DataFrame(
        {
            "uniq_id": ["a", "b", "c", "d"],
            "product_name": ["Alisha Shorts", "Paper Weight", "", "NA Watch"],
            "product_category_tree": [
                '["Clothing >> Women >> Shorts >> Alisha"]',
                '["Eternal Paper Weight..."]',
                '["A >> B >> C"]',
                '["Watches >> Wrist Watches >> NA Wrist Watches"]',
            ],
            "brand": ["Alisha", "", "X", "NA"],
        }
    )
    rows.to_csv(tmp_path / "products.csv", index=False)
    data = read_flipkart(tmp_path)
    assert data.frame["id"].tolist() == ["a", "d"]
    assert data.frame.loc[1, "brand"] == "NA"  # the literal brand, not a missing value
    assert data.paths()[0] == ("Clothing", "Women", "Shorts")
    assert sorted(data.skipped["reason"]) == ["category tree has fewer than 3 levels", "empty title"]
    assert data.skipped["line"].tolist() == [3, 4]
    with pytest.raises(TaxonomyError, match="not found"):
        read_flipkart(tmp_path / "missing.csv")


def test_read_indoml_needs_text_and_levels(tmp_path) -> None:
    frame = pd.DataFrame(
        {
            "title": ["t1", "t2"],
            "supergroup": ["a", "a"],
            "group": ["b", ""],
            "module": ["c", "c"],
            "brand": ["x", "y"],
        }
    )
    frame.to_csv(tmp_path / "f.csv", index=False)
    data = read_indoml(tmp_path / "f.csv")
    assert len(data.frame) == 1 and data.skipped["reason"].tolist() == ["empty taxonomy level"]
    frame.drop(columns="title").to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(TaxonomyError, match="no text column"):
        read_indoml(tmp_path / "labels.csv")


def test_real_indoml_hierarchy_loads() -> None:
    folder = require_dataset("indoml-2024-taxonomy")
    tax = Taxonomy.load(folder / "hierarchy.csv")
    assert tax.levels == ["supergroup", "group", "module"]
    assert len(tax.nodes[0]) == 32
    assert sum(len(b) for b in tax.brands.values()) == 12885


def test_real_flipkart_reader() -> None:
    folder = require_dataset("flipkart-products")
    data = read_flipkart(folder)
    assert len(data.frame) + len(data.skipped) == 16000
    assert (data.frame[["supergroup", "group", "module"]] != "").all().all()
    everything = pd.concat([data.frame, data.skipped])
    assert (everything["brand"] == "").mean() == pytest.approx(0.293, abs=0.001)  # the README's figure


# -- metrics ---------------------------------------------------------------------------------------------
def test_taxonomy_report_hand_computed() -> None:
    levels = ["supergroup", "group", "module"]
    true = pd.DataFrame(
        [("A", "B", "C", "x"), ("A", "B", "D", "y"), ("E", "F", "G", ""), ("A", "B", "C", "Zed")],
        columns=[*levels, "brand"],
    )
    pred = pd.DataFrame(
        [("A", "B", "C", "X"), ("A", "B", "C", "y"), ("E", "F", "G", "w"), ("E", "F", "G", "zed")],
        columns=[*levels, "brand"],
    )
    r = taxonomy_report(true, pred, levels)
    assert r.path_accuracy == pytest.approx(2 / 4)
    # branded rows: 0 (path ok, brand ok case-folded), 1 (path wrong), 3 (path wrong, brand ok)
    assert r.n_branded == 3
    assert r.item_accuracy == pytest.approx(1 / 3)
    assert r.brand_accuracy == pytest.approx(3 / 3)
    assert r.no_brand_accuracy == pytest.approx(0.0)
    assert r.per_level_accuracy == {"supergroup": 0.75, "group": 0.75, "module": 0.5}
    # hF: nodes overlap 3 + 2 + 3 + 0 = 8 of 12 each side.
    assert r.hierarchical_f1 == pytest.approx(8 / 12)


@pytest.mark.parametrize("side", ["true", "predicted"])
def test_taxonomy_report_names_the_row_missing_a_level(side: str) -> None:
    """Regression: a missing level (None) reached sklearn's f1_score, which failed sorting str and float.
    No title reader keeps such a row, so a caller's frame is refused, naming the level and row."""
    good = pd.DataFrame({"g": ["x", "y"], "m": ["p", "q"]})
    holed = pd.DataFrame({"g": ["x", "y"], "m": ["p", None]})
    true, pred = (holed, good) if side == "true" else (good, holed)
    with pytest.raises(ValueError, match=rf"{side} level 'm' is missing in row 1 \(1 of 2 rows"):
        taxonomy_report(true, pred, ["g", "m"], brand=None)


def test_hierarchical_f1_partial_credit_needs_same_parent() -> None:
    assert hierarchical_f1([("A", "B")], [("A", "B")]) == 1.0
    assert hierarchical_f1([("A", "B")], [("C", "B")]) == 0.0  # same label under another parent
    assert hierarchical_f1([("A", "B")], [("A", "C")]) == pytest.approx(0.5)


def test_invalid_paths_counted(tax: Taxonomy) -> None:
    pred = pd.DataFrame([("Men", "Shoes", "Casual"), ("Men", "Bags", "Casual")], columns=["a", "b", "c"])
    valid = set(tax.paths)
    assert invalid_paths(pred, ["a", "b", "c"], ["t1", "t2"], lambda _, p: p in valid) == 1


# -- parent masking and beam search -------------------------------------------------------------------------
def test_sibling_log_softmax_normalises_within_each_parent(tax: Taxonomy) -> None:
    parents = level_parents(tax)[2]
    logits = torch.randn(4, len(tax.nodes[2]))
    lp = sibling_log_softmax(logits, parents)
    for p in parents.unique():
        mass = lp[:, parents == p].exp().sum(1)
        assert torch.allclose(mass, torch.ones(4), atol=1e-5)


def test_child_only_under_predicted_parent(tax: Taxonomy) -> None:
    """A child with a huge logit under a weak parent must lose to the best child of the strong parent."""
    parents = level_parents(tax)
    men, women = tax.node_id(0, ("Men",)), tax.node_id(0, ("Women",))
    lg0 = torch.zeros(1, 2)
    lg0[0, men], lg0[0, women] = 5.0, 0.0
    lg1 = torch.zeros(1, len(tax.nodes[1]))
    lg2 = torch.zeros(1, len(tax.nodes[2]))
    lg2[0, tax.node_id(2, ("Women", "Bags", "Clutches"))] = 50.0
    lg2[0, tax.node_id(2, ("Men", "Shoes", "Formal"))] = 1.0
    log_probs = [sibling_log_softmax(lg, p) for lg, p in zip([lg0, lg1, lg2], parents, strict=True)]
    greedy = beam_search(log_probs, parents, width=1)
    assert greedy.paths(tax) == [("Men", "Shoes", "Formal")]
    conf = greedy.level_confidence[0]
    assert 0 < conf[2] <= conf[1] <= conf[0] <= 1
    exact = beam_search(log_probs, parents, width=10)
    assert exact.paths(tax)[0] in tax


def test_beam_search_matches_exhaustive_scoring(tax: Taxonomy) -> None:
    torch.manual_seed(0)
    parents = level_parents(tax)
    logits = [torch.randn(16, len(n)) * 3 for n in tax.nodes]
    log_probs = [sibling_log_softmax(lg, p) for lg, p in zip(logits, parents, strict=True)]
    pred = beam_search(log_probs, parents, width=10)
    nodes = torch.from_numpy(tax.path_node_ids().copy())
    scores = sum(log_probs[k][:, nodes[:, k]] for k in range(tax.depth))
    assert pred.path_ids.tolist() == scores.argmax(1).tolist()
    assert np.allclose(pred.confidence, scores.max(1).values.exp().numpy(), atol=1e-5)


def test_hierarchical_loss_ignores_other_parents(tax: Taxonomy) -> None:
    parents = level_parents(tax)
    target = torch.from_numpy(tax.path_node_ids()[[tax.path_id(("Men", "Shoes", "Casual"))]])
    logits = [torch.zeros(1, len(n)) for n in tax.nodes]
    base = hierarchical_loss(logits, target, parents)
    logits[2][0, tax.node_id(2, ("Women", "Bags", "Clutches"))] = 100.0  # a child of another parent
    assert torch.allclose(hierarchical_loss(logits, target, parents), base)


# -- retrieval and vote ------------------------------------------------------------------------------------
def test_retrieval_votes_valid_paths_with_level_confidence(tax: Taxonomy) -> None:
    emb = np.eye(5, dtype=np.float32)
    train = np.concatenate([emb, emb + 0.01])
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    path_ids = np.tile(np.arange(5), 2)
    knn = RetrievalClassifier(k=4, temperature=0.1).fit(train, path_ids, tax)
    pred = knn.predict(emb)
    assert pred.path_ids.tolist() == list(range(5))
    assert (pred.level_confidence[:, 0] >= pred.level_confidence[:, 2]).all()
    with pytest.raises(ValueError, match="path of the taxonomy"):
        RetrievalClassifier().fit(train, np.full(10, 7), tax)


def test_vote_is_hierarchy_compliant(tax: Taxonomy) -> None:
    pid = tax.path_id
    a = PathPrediction(np.array([pid(("Men", "Shoes", "Casual"))]), np.array([[0.9, 0.8, 0.4]]))
    b = PathPrediction(np.array([pid(("Men", "Shoes", "Formal"))]), np.array([[0.9, 0.7, 0.6]]))
    c = PathPrediction(np.array([pid(("Women", "Shoes", "Casual"))]), np.array([[0.95, 0.9, 0.9]]))
    voted = hierarchical_vote([a, b, c], tax)
    # Men wins the top level 2:1; among Men voters the module tie goes to the higher confidence.
    assert voted.paths(tax) == [("Men", "Shoes", "Formal")]
    assert voted.level_confidence[0, 0] == pytest.approx((0.9 + 0.9) / 3)


# -- brand ---------------------------------------------------------------------------------------------------
def test_brand_extractor_finds_unseen_brands_and_no_brand(tmp_path) -> None:
    rng = np.random.default_rng(0)
    words = ["Solid", "Printed", "Women's", "Men's", "Analog", "Shirt", "Watch", "Cotton"]
    syllables = ["ka", "ro", "zi", "mu", "tel", "van", "po", "shi"]
    # Many brands seen once or twice, as in real catalogs, so cross-fitting meets unseen brands.
    brands = [
        " ".join("".join(rng.choice(syllables, 2)).title() for _ in range(1 + (j % 3 == 0)))
        for j in range(150)
    ]
    brands[0] = "Fab Home"
    titles, labels = [], []
    for i in range(400):
        brand = brands[i % len(brands)] if i % 5 else ""
        rest = " ".join(rng.choice(words, 3))
        titles.append(f"{brand} {rest}".strip())
        labels.append(brand)
    model = BrandExtractor(max_tokens=3).fit(titles, labels)
    pred = model.predict(["Zorba Kraft Solid Men's Shirt", "Printed Cotton Shirt", "Fab Home Analog Watch"])
    assert pred == ["Zorba Kraft", "", "Fab Home"]
    model.save(tmp_path / "brand")
    back = BrandExtractor.load(tmp_path / "brand")
    assert back.predict(["Zorba Kraft Solid Men's Shirt"]) == ["Zorba Kraft"]
    assert model.predict([]) == []


def test_hierarchical_loss_smoothing_stays_finite_and_matches_plain_ce(tax: Taxonomy) -> None:
    """Label smoothing once spread onto masked children, giving a 1e8 loss that hid the real one."""
    parents = level_parents(tax)
    targets = torch.from_numpy(tax.path_node_ids().copy())
    logits = [torch.randn(len(targets), len(n)) for n in tax.nodes]
    smoothed = hierarchical_loss(logits, targets, parents, label_smoothing=0.1)
    assert 0 < float(smoothed) < 20
    top = torch.nn.functional.cross_entropy(logits[0], targets[:, 0], label_smoothing=0.1)
    only_top = hierarchical_loss(logits[:1], targets, parents[:1], label_smoothing=0.1)
    assert torch.allclose(only_top, top)


def test_prediction_from_log_probs_level_mass(tax: Taxonomy) -> None:
    probs = np.array([[0.4, 0.3, 0.0, 0.2, 0.1]])  # paths in sorted order
    pred = prediction_from_log_probs(np.log(probs + 1e-12), tax)
    assert pred.path_ids.tolist() == [0]
    men = [i for i, p in enumerate(tax.paths) if p[0] == tax.paths[0][0]]
    assert pred.level_confidence[0, 0] == pytest.approx(probs[0, men].sum())
    assert pred.level_confidence[0, 2] == pytest.approx(0.4)


def test_soft_vote_uses_full_distributions(tax: Taxonomy) -> None:
    """Two methods whose top paths differ, but both give a third path most of the rest: it wins."""
    a = np.log(np.array([[0.45, 0.0, 0.0, 0.4, 0.15]]) + 1e-6)
    b = np.log(np.array([[0.0, 0.0, 0.0, 0.4, 0.6]]) + 1e-6)
    assert soft_vote([a, b], tax).path_ids.tolist() == [3]


def test_lexical_classifier_round_trip(tax: Taxonomy, tmp_path) -> None:
    titles = [
        f"{w} item {i}"
        for i in range(6)
        for w in ("casual sneaker", "formal oxford", "casual shirt", "ballet flat", "clutch bag")
    ]
    path_ids = np.tile(np.arange(5), 6)
    model = LexicalClassifier().fit(titles, path_ids, tax)
    test = ["blue casual sneaker", "leather clutch bag"]
    pred = model.predict(test, tax)
    assert pred.path_ids.tolist() == [0, 4]
    model.save(tmp_path / "lex")
    back = LexicalClassifier.load(tmp_path / "lex")
    assert np.allclose(back.path_log_probs(test), model.path_log_probs(test))
    assert np.allclose(np.exp(model.path_log_probs(test)).sum(1), 1.0, atol=1e-4)


def test_retrieval_path_log_probs_are_vote_shares(tax: Taxonomy) -> None:
    train = np.eye(5, dtype=np.float32)
    knn = RetrievalClassifier(k=1).fit(train, np.arange(5), tax)
    shares = np.exp(knn.path_log_probs(train[:2]))
    assert shares.argmax(1).tolist() == [0, 1]
    assert shares.max(1) == pytest.approx([1.0, 1.0], abs=1e-3)


def test_brand_path_labels_survive_save_and_load(tmp_path) -> None:
    """A path whose brand field holds something else (flipkart bras carry a colour) must predict that
    label after loading too: the per-path labels were once left out of the saved model."""
    rng = np.random.default_rng(0)
    makers = ["Kavo", "Zorin", "Lumi", "Tesa", "Vrin", "Oreka"]
    titles, brands, paths = [], [], []
    for i in range(300):
        maker = makers[i % len(makers)]
        if maker in ("Kavo", "Lumi", "Vrin"):
            titles.append(f"{maker} Women's Full Coverage Bra")
            brands.append(str(rng.choice(["black", "black", "white"])))
            paths.append("Clothing > Lingerie > Bras")
        else:
            titles.append(f"{maker} Solid Men's Shirt")
            brands.append(maker)
            paths.append("Clothing > Men > Shirts")
    model = BrandExtractor().fit(titles, brands, paths)
    test, test_paths = ["Lumi Women's Full Coverage Bra"], ["Clothing > Lingerie > Bras"]
    assert model.predict(test, test_paths) == ["black"]
    model.save(tmp_path / "brand")
    assert BrandExtractor.load(tmp_path / "brand").predict(test, test_paths) == ["black"]


def test_brand_without_anything_to_learn_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="none of the 2 training brands"):
        BrandExtractor().fit(["Plain blue shirt", "Red shoe"], ["Acme", "Zeta"])


def test_brand_none_threshold_prefers_a_span() -> None:
    titles = ["Printed Cotton Shirt"] * 30 + ["Kavo Solid Shirt"] * 10
    brands = [""] * 30 + ["Kavo"] * 10
    model = BrandExtractor().fit(titles, brands)
    assert model.predict(["Printed Cotton Shirt"]) == [""]
    forced, _ = model.predict_with_confidence(["Printed Cotton Shirt"], none_threshold=1.01)
    assert forced != [""]


def test_derived_tree_arrays_are_shared_and_read_only(tax: Taxonomy) -> None:
    """Computed once per tree (predictions index them on every call); callers cannot corrupt them."""
    assert tax.path_node_ids() is tax.path_node_ids()
    with pytest.raises(ValueError, match="read-only"):
        tax.path_node_ids()[0, 0] = 7
    with pytest.raises(ValueError, match="read-only"):
        tax.parent_ids(1)[0] = 7


def test_split_titles_is_seeded_disjoint_and_keeps_categories() -> None:
    """Train, dev and test never share a row, every top-level category is in each part in proportion,
    and the same seed gives the same parts (``taxonomy evaluate`` rebuilds the run's test split)."""
    from taxonomist.config import TaxonomyConfig
    from taxonomist.data.taxonomy import TitleDataset
    from taxonomist.training.taxonomy import split_part, split_titles

    levels = ["supergroup", "group", "module"]
    frame = pd.DataFrame(
        [(f"t{i}", f"title {i}", "Men" if i % 4 else "Women", "Shoes", f"M{i % 7}", "") for i in range(200)],
        columns=["id", "title", *levels, "brand"],
    )
    data = TitleDataset(frame, levels, frame.iloc[:0])
    cfg = TaxonomyConfig()
    cfg.train.dev_fraction, cfg.train.test_fraction = 0.1, 0.2
    split = split_titles(data, cfg)
    parts = [set(split.train), set(split.dev), set(split.test)]
    assert sum(map(len, parts)) == 200 and set.union(*parts) == set(range(200))
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert (len(split.dev), len(split.test)) == (20, 40)
    test = split_part(data, cfg, "test").frame
    assert (test["supergroup"] == "Women").sum() == 10  # 20% of the 50 Women rows
    again = split_titles(data, cfg)
    assert np.array_equal(again.test, split.test) and np.array_equal(again.dev, split.dev)
    cfg.train.seed = 1
    assert not np.array_equal(split_titles(data, cfg).test, split.test)


def test_none_threshold_chosen_on_dev_keeps_the_no_brand_floor() -> None:
    """The dev-chosen "no brand" threshold maximises item accuracy only among thresholds that keep the
    required share of brandless dev rows brandless."""
    from taxonomist.data.taxonomy import TitleDataset
    from taxonomist.models.taxonomy_model import TaxonomyModel
    from taxonomist.training.taxonomy import NONE_THRESHOLDS, choose_none_threshold

    levels = ["supergroup", "group", "module"]
    titles = ["Printed Cotton Shirt"] * 30 + ["Kavo Solid Shirt"] * 10
    brand = BrandExtractor().fit(titles, [""] * 30 + ["Kavo"] * 10)
    tax = Taxonomy.from_paths([("Men", "Shirts", "Casual")])
    model = TaxonomyModel(None, brand)  # type: ignore[arg-type]  # no encoder needed to pick brands
    model.taxonomy_ = tax
    # Dev: the same title twice, once with a brand (the best span) recorded and once really brandless.
    span = brand.predict_with_confidence(["Printed Cotton Shirt"], none_threshold=1.01)[0][0]
    dev = pd.DataFrame(
        {"title": ["Printed Cotton Shirt", "Printed Cotton Shirt"], "brand": [span, ""]}
    ).assign(supergroup="Men", group="Shirts", module="Casual")
    data = TitleDataset(dev, levels, dev.iloc[:0])
    predicted = dev[levels]
    grid = (0.5, 1.01)  # 1.01: "no brand" never wins
    assert choose_none_threshold(model, data, predicted, min_no_brand_accuracy=1.0, thresholds=grid) == 0.5
    assert choose_none_threshold(model, data, predicted, min_no_brand_accuracy=0.0, thresholds=grid) == 1.01
    assert choose_none_threshold(model, data, predicted, min_no_brand_accuracy=0.5) in NONE_THRESHOLDS


def test_read_manifest_is_a_plain_staticmethod() -> None:
    """Regression: ``@classmethod`` stacked over ``@staticmethod`` is a TypeError on Python 3.13 (which
    pyproject allows), so no taxonomy checkpoint would load there."""
    from taxonomist.models.taxonomy_model import TaxonomyModel

    assert isinstance(inspect.getattr_static(TaxonomyModel, "read_manifest"), staticmethod)


def test_scoring_no_rows_says_so() -> None:
    """Regression: an empty frame failed inside sklearn with "Found empty input array"."""
    empty = pd.DataFrame(columns=["supergroup", "group", "module", "brand"])
    with pytest.raises(ValueError, match="no rows to score"):
        taxonomy_report(empty, empty, ["supergroup", "group", "module"])


HINDI_TITLES = [f"{w} {i}" for i in range(6) for w in ("कमलों वाली साड़ी", "सूती कुर्ती", "चमड़े का जूता")]
"""Hindi titles: sklearn's default word pattern dropped "कुर्ती" (its vowel signs and virama are not
``\\w``) and kept the fragment "कमल" of "कमलों"."""


def test_lexical_classifier_reads_whole_non_latin_words(tax: Taxonomy, tmp_path: Path) -> None:
    model = LexicalClassifier().fit(HINDI_TITLES, np.tile(np.arange(3), 6), tax)
    assert {"कमलों", "कुर्ती", "सूती कुर्ती"} <= set(model.words_.vocabulary_)
    assert "कमल" not in model.words_.vocabulary_
    model.save(tmp_path / "lex")
    assert LexicalClassifier.load(tmp_path / "lex").words_.token_pattern == model.words_.token_pattern


def test_a_lexical_classifier_saved_without_its_word_pattern_keeps_the_old_one(
    tax: Taxonomy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files saved before the pattern was recorded: their vocabulary holds the old pattern's tokens."""
    monkeypatch.setattr("taxonomist.models.taxonomy.word_pattern", lambda _: LEGACY_TOKEN_PATTERN)
    old = LexicalClassifier().fit(HINDI_TITLES, np.tile(np.arange(3), 6), tax)
    monkeypatch.undo()
    assert "कमल" in old.words_.vocabulary_
    old.save(tmp_path / "lex")
    vocab_file = tmp_path / "lex.vocab.json"
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    del vocab["token_pattern"]
    vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
    loaded = LexicalClassifier.load(tmp_path / "lex")
    assert loaded.words_.token_pattern == LEGACY_TOKEN_PATTERN
    test = ["कमलों वाली साड़ी", "सूती कुर्ती"]
    np.testing.assert_array_equal(loaded.path_log_probs(test), old.path_log_probs(test))
