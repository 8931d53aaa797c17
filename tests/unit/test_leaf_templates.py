"""Brand leaves: parents whose leaves are "<title's first words> <parent>" get them built from titles."""

from __future__ import annotations

import numpy as np
import pytest

from taxonomist.models.leaf_templates import LeafTemplates

WATCHES = ("Watches", "Wrist Watches")
TITLES = [
    "Lamex 4250 Analog Watch",
    "Sonata 77 Digital Watch",
    "Srushti Art Jewelry Led Digital Watch",
    "Titan Classic Analog Watch",
    "Alisha Solid Women's Cycling Shorts",
    "Alisha Printed Women's Leggings",
    "Mavi 237 Showpiece",
]
PATHS = [
    (*WATCHES, "Lamex Wrist Watches"),
    (*WATCHES, "Sonata Wrist Watches"),
    (*WATCHES, "Srushti Art Jewelry Wrist Watches"),
    (*WATCHES, "Analog Watches"),  # one leaf of four off the pattern: the parent is still templated
    ("Clothing", "Women's Clothing", "Shorts"),
    ("Clothing", "Women's Clothing", "Leggings"),
    ("Home Decor", "Showpieces", "Mavi Showpieces"),  # one row: under min_rows
]


@pytest.fixture
def fitted() -> LeafTemplates:
    return LeafTemplates(min_share=0.5, min_rows=2).fit(TITLES, PATHS)


def test_fit_keeps_parents_whose_leaves_follow_the_pattern(fitted: LeafTemplates) -> None:
    assert fitted.parents_ == {WATCHES: pytest.approx(0.75)}
    assert fitted.leaves_[WATCHES] == {
        "Lamex Wrist Watches",
        "Sonata Wrist Watches",
        "Srushti Art Jewelry Wrist Watches",
        "Analog Watches",
    }
    assert LeafTemplates(min_share=0.8, min_rows=2).fit(TITLES, PATHS).parents_ == {}
    assert ("Home Decor", "Showpieces") in LeafTemplates(min_share=0.5, min_rows=1).fit(
        TITLES, PATHS
    ).parents_


def test_unseen_brand_gets_its_own_leaf_known_spans_win(fitted: LeafTemplates) -> None:
    assert fitted.leaf("Xemex ST1025 New Generation Analog Watch", WATCHES) == "Xemex Wrist Watches"
    # A longer first-words span whose leaf training holds beats the one-word default.
    assert fitted.leaf("Srushti Art Jewelry Megnet Watch", WATCHES) == "Srushti Art Jewelry Wrist Watches"
    assert fitted.leaf("Xemex Watch", ("Clothing", "Women's Clothing")) is None  # not templated
    assert fitted.leaf("", WATCHES) is None


def test_rewrite_changes_only_templated_parents_and_scales_confidence(fitted: LeafTemplates) -> None:
    paths = [(*WATCHES, "Sonata Wrist Watches"), ("Clothing", "Women's Clothing", "Shorts")]
    confidence = np.array([[0.9, 0.8, 0.4], [0.9, 0.9, 0.9]])
    out, conf = fitted.rewrite(["Gesture 8062 Analog Watch", "Gesture Shorts"], paths, confidence)
    assert out == [(*WATCHES, "Gesture Wrist Watches"), paths[1]]
    assert conf[0].tolist() == pytest.approx([0.9, 0.8, 0.8 * 0.75])  # parent's times the parent's share
    assert conf[1].tolist() == [0.9, 0.9, 0.9] and confidence[0, 2] == 0.4  # input left as it was
    # A predicted leaf that already is the title's brand leaf stays, its confidence too.
    same, same_conf = fitted.rewrite(["Sonata 77 Watch"], paths[:1], confidence[:1])
    assert same == paths[:1] and same_conf.tolist() == confidence[:1].tolist()


def test_follows_says_which_unseen_paths_are_valid(fitted: LeafTemplates) -> None:
    assert fitted.follows("Xemex Analog Watch", (*WATCHES, "Xemex Wrist Watches"))
    assert not fitted.follows("Xemex Analog Watch", (*WATCHES, "Quartz Wrist Watches"))
    assert not fitted.follows("Alisha Shorts", ("Clothing", "Women's Clothing", "Alisha Women's Clothing"))


def test_save_load_round_trip(fitted: LeafTemplates, tmp_path) -> None:
    fitted.save(tmp_path / "leaf_templates.json")
    back = LeafTemplates.load(tmp_path / "leaf_templates.json")
    assert (back.min_share, back.min_rows, back.max_tokens) == (0.5, 2, 4)
    assert back.parents_ == fitted.parents_ and back.leaves_ == fitted.leaves_
