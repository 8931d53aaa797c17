from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from taxonomist.metrics import AttributeReport, attribute_score, cross_entropy

NAN = np.nan


def _frames(true_values: list, pred_values: list, attribute: str = "color", category: str = "Sarees"):
    ids = [str(i) for i in range(len(true_values))]
    y_true = pd.DataFrame({"id": ids, "category": category, attribute: true_values})
    y_pred = pd.DataFrame({"id": ids, "category": category, attribute: pred_values})
    return y_true, y_pred


def test_hand_computed_single_pair() -> None:
    # true a a a b / pred a a b b
    # micro = accuracy = 3/4
    # class a: tp=2 fp=0 fn=1 -> F1 = 2*2/(2*2+0+1) = 4/5
    # class b: tp=1 fp=1 fn=0 -> F1 = 2*1/(2*1+1+0) = 2/3
    # macro = (4/5 + 2/3)/2 = 11/15
    # harmonic = 2*(3/4)*(11/15) / (3/4 + 11/15) = (33/30) / (89/60) = 66/89
    y_true, y_pred = _frames(["a", "a", "a", "b"], ["a", "a", "b", "b"])
    report = attribute_score(y_true, y_pred, {"Sarees": ["color"]})
    row = report.pairs.iloc[0]
    assert row["n"] == 4
    assert row["f1_micro"] == pytest.approx(3 / 4)
    assert row["f1_macro"] == pytest.approx(11 / 15)
    assert row["harmonic"] == pytest.approx(66 / 89)
    assert row["accuracy"] == pytest.approx(3 / 4)
    assert report.score == pytest.approx(66 / 89)
    assert report.skipped == []


def test_null_prediction_counts_as_wrong_class() -> None:
    # true a b / pred a <none>: micro = 1/2
    # labels {a, b, <none>}: F1 a = 1, F1 b = 0 (fn), F1 <none> = 0 (fp) -> macro = 1/3
    # harmonic = 2*(1/2)*(1/3) / (1/2 + 1/3) = (1/3)/(5/6) = 2/5
    y_true, y_pred = _frames(["a", "b"], ["a", None])
    report = attribute_score(y_true, y_pred, {"Sarees": ["color"]})
    assert report.pairs.iloc[0]["f1_micro"] == pytest.approx(0.5)
    assert report.pairs.iloc[0]["f1_macro"] == pytest.approx(1 / 3)
    assert report.score == pytest.approx(0.4)


def test_missing_prediction_column_is_all_wrong() -> None:
    y_true, y_pred = _frames(["a", "b"], ["a", "b"])
    report = attribute_score(y_true, y_pred.drop(columns="color"), {"Sarees": ["color"]})
    assert report.score == 0.0


def test_unlabeled_rows_are_not_scored() -> None:
    # Row 1 has no true label, so its (wrong) prediction does not count: score is perfect.
    y_true, y_pred = _frames(["a", NAN, "b"], ["a", "b", "b"])
    report = attribute_score(y_true, y_pred, {"Sarees": ["color"]})
    assert report.pairs.iloc[0]["n"] == 2
    assert report.score == pytest.approx(1.0)


def _catalog() -> tuple[pd.DataFrame, pd.DataFrame, dict[str, list[str]]]:
    mapping = {"Men Tshirts": ["color", "neck"], "Sarees": ["color", "pattern"], "Kurtis": ["fit"]}
    y_true = pd.DataFrame(
        {
            "id": ["1", "2", "3", "4", "5"],
            "category": ["Men Tshirts"] * 3 + ["Sarees"] * 2,
            "color": ["black", "white", "black", "red", "blue"],
            "neck": ["round", NAN, "polo", NAN, NAN],
            "pattern": [NAN] * 5,
            "fit": [NAN] * 5,
        }
    )
    y_pred = pd.DataFrame(
        {
            "id": ["1", "2", "3", "4", "5"],
            "category": ["Men Tshirts"] * 3 + ["Sarees"] * 2,
            "color": ["black", "white", "white", "red", "red"],
            "neck": ["round", "round", "polo", NAN, NAN],
            "pattern": [NAN, NAN, NAN, "zari", NAN],
            "fit": [NAN] * 5,
        }
    )
    return y_true, y_pred, mapping


# Pairs of _catalog():
#   (Men Tshirts, color): true b w b / pred b w w -> micro 2/3; F1 black = 2/3, F1 white = 2/3 -> h = 2/3
#   (Men Tshirts, neck):  rows 1, 3 both right -> h = 1
#   (Sarees, color): true red blue / pred red red -> micro 1/2; F1 red = 2/3, blue = 0 -> macro 1/3 -> h = 2/5
#   (Sarees, pattern), (Kurtis, fit): no labels -> skipped
# score = (2/3 + 1 + 2/5) / 3 = 31/45
CATALOG_SCORE = 31 / 45


def test_multi_category_score_and_skipped_pairs() -> None:
    y_true, y_pred, mapping = _catalog()
    report = attribute_score(y_true, y_pred, mapping)
    assert isinstance(report, AttributeReport)
    assert report.score == pytest.approx(CATALOG_SCORE)
    assert list(report.pairs.columns) == [
        "category",
        "attribute",
        "n",
        "f1_micro",
        "f1_macro",
        "harmonic",
        "accuracy",
    ]
    assert list(zip(report.pairs["category"], report.pairs["attribute"], strict=True)) == [
        ("Men Tshirts", "color"),
        ("Men Tshirts", "neck"),
        ("Sarees", "color"),
    ]
    assert report.pairs["harmonic"].tolist() == pytest.approx([2 / 3, 1.0, 0.4])
    assert report.skipped == [("Sarees", "pattern"), ("Kurtis", "fit")]


def test_per_category_table() -> None:
    y_true, y_pred, mapping = _catalog()
    table = attribute_score(y_true, y_pred, mapping).per_category.set_index("category")
    assert list(table.index) == ["Men Tshirts", "Sarees"]
    # Men Tshirts: mean of (2/3, 1) for micro, macro and harmonic = 5/6; 3 rows.
    assert table.loc["Men Tshirts", "f1_micro"] == pytest.approx(5 / 6)
    assert table.loc["Men Tshirts", "f1_macro"] == pytest.approx(5 / 6)
    assert table.loc["Men Tshirts", "harmonic"] == pytest.approx(5 / 6)
    assert table.loc["Men Tshirts", "n_rows"] == 3
    # Sarees: only color is scored -> micro 1/2, macro 1/3, harmonic 2/5; 2 rows.
    assert table.loc["Sarees", ["f1_micro", "f1_macro", "harmonic"]].tolist() == pytest.approx(
        [0.5, 1 / 3, 0.4]
    )
    assert table.loc["Sarees", "n_rows"] == 2


def test_per_attribute_table() -> None:
    y_true, y_pred, mapping = _catalog()
    table = attribute_score(y_true, y_pred, mapping).per_attribute.set_index("attribute")
    # color: 2 of 3 right on Men Tshirts + 1 of 2 on Sarees -> accuracy 3/5; harmonic (2/3 + 2/5)/2 = 8/15
    assert table.loc["color", "accuracy"] == pytest.approx(3 / 5)
    assert table.loc["color", "harmonic"] == pytest.approx(8 / 15)
    assert table.loc["color", "n"] == 5
    assert table.loc["neck", ["accuracy", "harmonic"]].tolist() == pytest.approx([1.0, 1.0])
    assert table.loc["neck", "n"] == 2


def test_join_on_id_with_shuffled_predictions() -> None:
    y_true, y_pred, mapping = _catalog()
    shuffled = y_pred.sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert shuffled["id"].tolist() != y_pred["id"].tolist()
    extra = pd.DataFrame({"id": ["99"], "category": ["Sarees"], "color": ["red"]})
    shuffled = pd.concat([shuffled, extra], ignore_index=True)  # unlabeled predictions are ignored
    assert attribute_score(y_true, shuffled, mapping).score == pytest.approx(CATALOG_SCORE)


def test_integer_ids_match_string_ids() -> None:
    y_true, y_pred, mapping = _catalog()
    y_pred["id"] = y_pred["id"].astype(int)
    assert attribute_score(y_true, y_pred, mapping).score == pytest.approx(CATALOG_SCORE)


def test_missing_prediction_ids_raise_naming_them() -> None:
    y_true, y_pred, mapping = _catalog()
    with pytest.raises(ValueError, match=r"no prediction.*'2'.*'4'"):
        attribute_score(y_true, y_pred[~y_pred["id"].isin(["2", "4"])], mapping)


def test_duplicated_ids_raise() -> None:
    y_true, y_pred, mapping = _catalog()
    with pytest.raises(ValueError, match="y_pred has duplicated ids: '1'"):
        attribute_score(y_true, pd.concat([y_pred, y_pred.iloc[:1]]), mapping)
    with pytest.raises(ValueError, match="y_true has duplicated ids"):
        attribute_score(pd.concat([y_true, y_true.iloc[:1]]), y_pred, mapping)


def test_accepts_schema_like_mapping() -> None:
    # Schema.categories maps category -> {attribute: values}; iterating it gives attribute names.
    y_true, y_pred, _ = _catalog()
    nested = {
        "Men Tshirts": {"color": ["black", "white"], "neck": ["round", "polo"]},
        "Sarees": {"color": []},
    }
    assert attribute_score(y_true, y_pred, nested).score == pytest.approx(CATALOG_SCORE)


def test_agrees_with_sklearn_on_random_data() -> None:
    rng = np.random.default_rng(0)
    n = 400
    values = {"color": list("abcdef"), "size": ["S", "M", "L"]}
    mapping = {"x": ["color", "size"], "y": ["color"]}
    category = rng.choice(["x", "y"], size=n)
    truth = {"id": np.arange(n).astype(str), "category": category}
    pred = {"id": np.arange(n).astype(str), "category": category}
    for attr, vals in values.items():
        t = rng.choice(vals, size=n).astype(object)
        p = np.where(rng.random(n) < 0.6, t, rng.choice(vals, size=n)).astype(object)
        t[rng.random(n) < 0.2] = None
        p[rng.random(n) < 0.1] = None
        truth[attr], pred[attr] = t, p
    y_true, y_pred = pd.DataFrame(truth), pd.DataFrame(pred)
    report = attribute_score(y_true, y_pred, mapping)

    harmonics = []
    for cat, attrs in mapping.items():
        for attr in attrs:
            rows = (y_true["category"] == cat) & y_true[attr].notna()
            t = y_true.loc[rows, attr].to_numpy()
            p = y_pred.loc[rows, attr].fillna("<none>").to_numpy()
            mi = f1_score(t, p, average="micro")
            ma = f1_score(t, p, average="macro")
            got = report.pairs.set_index(["category", "attribute"]).loc[(cat, attr)]
            assert got["f1_micro"] == pytest.approx(mi)
            assert got["f1_macro"] == pytest.approx(ma)
            # Independent check of macro-F1 over the union of true and predicted labels.
            labels = np.union1d(t, p)
            per_class = [2 * np.sum((t == c) & (p == c)) / (np.sum(t == c) + np.sum(p == c)) for c in labels]
            assert got["f1_macro"] == pytest.approx(np.mean(per_class))
            harmonics.append(2 * mi * ma / (mi + ma))
    assert report.score == pytest.approx(np.mean(harmonics))


def test_all_pairs_skipped_gives_nan_score() -> None:
    y_true, y_pred = _frames([NAN, NAN], ["a", "b"])
    report = attribute_score(y_true, y_pred, {"Sarees": ["color"]})
    assert math.isnan(report.score)
    assert report.skipped == [("Sarees", "color")]
    assert report.per_category.empty
    assert report.to_dict()["score"] is None


def test_to_dict_is_json_and_keeps_score_unrounded() -> None:
    y_true, y_pred, mapping = _catalog()
    report = attribute_score(y_true, y_pred, mapping)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["score"] == report.score
    assert data["skipped"] == [["Sarees", "pattern"], ["Kurtis", "fit"]]
    assert data["per_category"][0]["category"] == "Men Tshirts"
    assert data["pairs"][2]["harmonic"] == 0.4


def test_markdown_contains_score_and_tables() -> None:
    y_true, y_pred, mapping = _catalog()
    text = attribute_score(y_true, y_pred, mapping).to_markdown(include_pairs=True)
    assert f"{CATALOG_SCORE:.4f}" in text  # 0.6889
    assert "| category | f1_micro | f1_macro | harmonic | n_rows |" in text
    assert "| Men Tshirts | 0.8333 | 0.8333 | 0.8333 | 3 |" in text
    assert "| attribute | accuracy | harmonic | n | n_categories |" in text
    assert "### Per (category, attribute)" in text
    assert "|---|---:|---:|---:|---:|" in text


def test_cross_entropy_hand_case() -> None:
    probs = {
        "color": np.array([[0.5, 0.5], [0.25, 0.75], [0.9, 0.1]]),
        "size": np.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]]),
        "fit": np.array([[0.3, 0.7]]),
    }
    labels = {
        "color": np.array([0, 1, -1]),  # (ln 2 + ln 4/3) / 2; the -1 row is ignored
        "size": np.array([1, 2]),  # p=0 clipped to 1e-12 -> (-ln 1e-12 + ln 2) / 2
        "fit": np.array([-1]),  # no labels -> NaN, left out of the mean
    }
    out = cross_entropy(probs, labels)
    color = (math.log(2) + math.log(4 / 3)) / 2
    size = (-math.log(1e-12) + math.log(2)) / 2
    assert out["color"] == pytest.approx(color)
    assert out["size"] == pytest.approx(size)
    assert math.isnan(out["fit"])
    assert out["mean"] == pytest.approx((color + size) / 2)


def test_cross_entropy_p_half_is_ln2() -> None:
    out = cross_entropy({"a": np.full((4, 2), 0.5)}, {"a": np.array([0, 1, 1, 0])})
    assert out["a"] == pytest.approx(math.log(2))
    assert out["mean"] == pytest.approx(math.log(2))


def test_cross_entropy_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        cross_entropy({"a": np.full((4, 2), 0.5)}, {"a": np.array([0, 1])})
    with pytest.raises(ValueError, match="labels outside"):
        cross_entropy({"a": np.full((2, 2), 0.5)}, {"a": np.array([0, 2])})
