"""Missing-label policies on real Meesho rows, checked against slow per-row reference implementations."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest

from taxonomist.data.catalog import Catalog, read_meesho, read_table
from taxonomist.data.policies import POLICIES, PolicyResult, apply_policy, dynamic_fill, similar_mode

MEN = "Men Tshirts"
SAREES = "Sarees"


@pytest.fixture(scope="module")
def catalog(meesho_dir: Path) -> Catalog:
    return read_meesho(meesho_dir)


@pytest.fixture(scope="module")
def lengths(meesho_dir: Path) -> pd.Series:
    """The raw ``len`` column by id (``read_meesho`` does not keep it)."""
    raw = read_table(meesho_dir / "train.csv")
    return raw.set_index("id")["len"]


def _slice(catalog: Catalog, category: str, n: int) -> pd.DataFrame:
    return catalog.frame[catalog.frame["category"] == category].head(n).reset_index(drop=True)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _slow_mode(values: Sequence[str]) -> str | None:
    if not values:
        return None
    return min(Counter(values).items(), key=lambda kv: (-kv[1], kv[0]))[0]


def _ref_dynamic_fill(frame: pd.DataFrame, attrs: list[str], fill_value: str = "no") -> list[list]:
    """Row by row, one category: the seed's recipe spelled out."""
    records = frame[attrs].to_dict("records")
    modes = {a: _slow_mode([r[a] for r in records if not _missing(r[a])]) for a in attrs}
    has_len = "len" in frame.columns
    out = []
    for row, record in zip(frame.itertuples(index=False), records, strict=True):
        length = int(row.len) if has_len else len(attrs)
        out.append(
            [
                record[a] if not _missing(record[a]) else (modes[a] if pos <= length else fill_value)
                for pos, a in enumerate(attrs, start=1)
            ]
        )
    return out


def _ref_similar_mode(
    frame: pd.DataFrame, attrs: list[str], max_nans: int = 3
) -> tuple[list[str], list[list]]:
    """Row by row, one category: scan every row for candidates agreeing on the row's known labels."""
    records = [[None if _missing(v) else v for v in r] for r in frame[attrs].itertuples(index=False)]
    ids, out = [], []
    for item_id, record in zip(frame["id"], records, strict=True):
        holes = [j for j, v in enumerate(record) if v is None]
        if len(holes) > max_nans:
            continue
        known = [(j, v) for j, v in enumerate(record) if v is not None]
        filled = list(record)
        for j in holes:
            similar = [o[j] for o in records if o[j] is not None and all(o[k] == v for k, v in known)]
            filled[j] = _slow_mode(similar) or _slow_mode([o[j] for o in records if o[j] is not None])
        ids.append(item_id)
        out.append(filled)
    return ids, out


def _rows(result: PolicyResult, attrs: list[str]) -> list[list]:
    return [[None if _missing(v) else v for v in r] for r in result.frame[attrs].itertuples(index=False)]


def _assert_same(left: pd.DataFrame, right: pd.DataFrame) -> None:
    """``DataFrame.equals``: same cells, missing where missing; ``assert_frame_equal`` is slow on objects."""
    assert list(left.columns) == list(right.columns)
    assert left.equals(right)


def _n_missing(frame: pd.DataFrame, attributes_by_category) -> int:
    return sum(
        int(frame.loc[frame["category"] == c, attrs].isna().to_numpy().sum())
        for c, attrs in attributes_by_category.items()
    )


def _inapplicable_untouched(before: pd.DataFrame, after: pd.DataFrame, attributes_by_category) -> None:
    attributes = [c for c in before.columns if c not in ("id", "category", "len")]
    for category, attrs in attributes_by_category.items():
        others = [a for a in attributes if a not in attrs]
        assert after.loc[after["category"] == category, others].isna().all().all(), category


def test_mask_leaves_everything_identical(catalog: Catalog) -> None:
    before = catalog.frame.copy()
    result = apply_policy("mask", catalog.frame, catalog.attributes_by_category)
    _assert_same(result.frame, before)
    assert (result.filled, result.dropped, result.policy) == (0, 0, "mask")
    _assert_same(catalog.frame, before)


def test_drop_keeps_only_fully_labelled_rows(catalog: Catalog) -> None:
    frame, abc = catalog.frame, catalog.attributes_by_category
    before = frame.copy()
    result = apply_policy("drop", frame, abc)
    expected = sum(int(rows[abc[c]].notna().all(axis=1).sum()) for c, rows in frame.groupby("category"))
    assert len(result.frame) == expected
    assert result.dropped == len(frame) - expected
    assert _n_missing(result.frame, abc) == 0
    assert result.frame.index.equals(pd.RangeIndex(expected))
    assert "6" not in set(result.frame["id"])  # Men Tshirts id 6 lacks neck and pattern
    _assert_same(frame, before)


def test_dynamic_fill_real_rows_get_category_mode(catalog: Catalog, lengths: pd.Series) -> None:
    frame, abc = catalog.frame, catalog.attributes_by_category
    with_len = frame.assign(len=frame["id"].map(lengths))
    before = with_len.copy()
    result = dynamic_fill(with_len, abc)
    _assert_same(with_len, before)
    assert result.filled == _n_missing(frame, abc)
    assert _n_missing(result.frame, abc) == 0
    _inapplicable_untouched(frame, result.frame, abc)
    by_id = result.frame.set_index("id")
    men = frame[frame["category"] == MEN]
    # id 6 (len 5) lacks neck and pattern: both get the Men Tshirts mode, computed here by Counter.
    assert lengths["6"] == "5"
    for attr in ("neck", "pattern"):
        assert by_id.loc["6", attr] == _slow_mode(men[attr].dropna().tolist())
    assert by_id.loc["6", ["neck", "pattern"]].tolist() == ["polo", "solid"]
    assert by_id.loc["12", "print_or_pattern_type"] == "solid"
    assert by_id.loc["7433", ["blouse_pattern", "ornamentation", "pallu_details"]].tolist() == [
        "same as saree",
        "jacquard",
        "woven design",
    ]
    assert by_id.loc["6", "color"] == "multicolor"  # labelled cells are kept


@pytest.mark.parametrize("category", [MEN, SAREES])
def test_dynamic_fill_matches_reference(catalog: Catalog, category: str) -> None:
    attrs = catalog.attributes_by_category[category]
    part = _slice(catalog, category, 2000)
    result = dynamic_fill(part, {category: attrs})
    assert _rows(result, attrs) == _ref_dynamic_fill(part, attrs)
    assert result.filled == int(part[attrs].isna().to_numpy().sum())


def test_dynamic_fill_beyond_len_gets_fill_value(catalog: Catalog) -> None:
    attrs = catalog.attributes_by_category[SAREES]
    part = _slice(catalog, SAREES, 1500).assign(len="10")
    part.loc[part.index % 2 == 0, "len"] = "5"  # pretend half the rows use only their first 5 attributes
    result = dynamic_fill(part, {SAREES: attrs}, fill_value="NA_")
    assert _rows(result, attrs) == _ref_dynamic_fill(part, attrs, fill_value="NA_")
    short = result.frame[part["len"] == "5"]
    tail = attrs[5:]
    was_missing = part.loc[part["len"] == "5", tail].isna().to_numpy()
    assert was_missing.any()
    assert (short[tail].to_numpy()[was_missing] == "NA_").all()
    long_rows = result.frame[part["len"] == "10"]
    assert not (long_rows[attrs].to_numpy() == "NA_").any()


def test_dynamic_fill_reads_categorical_label_columns() -> None:
    """Regression: writing the mode or ``fill_value`` into a pandas categorical column raised TypeError
    (cannot setitem a new category); the result must equal that of the same labels as plain strings."""
    labels = {"color": ["red", "red", None], "fit": [None, "slim", None]}
    plain = pd.DataFrame({"category": ["t"] * 3, "len": ["2", "2", "1"], **labels})
    categorical = plain.astype({a: "category" for a in labels})
    result = dynamic_fill(categorical, {"t": list(labels)})
    expected = dynamic_fill(plain, {"t": list(labels)})
    assert result.frame[list(labels)].astype(object).values.tolist() == [
        ["red", "slim"],
        ["red", "slim"],
        ["red", "no"],
    ]
    assert result.filled == expected.filled == 3
    pd.testing.assert_frame_equal(result.frame.astype(object), expected.frame.astype(object))


def test_similar_mode_full_catalog(catalog: Catalog) -> None:
    frame, abc = catalog.frame, catalog.attributes_by_category
    before = frame.copy()
    result = similar_mode(frame, abc)
    _assert_same(frame, before)
    too_sparse = sum(
        int((rows[abc[c]].isna().sum(axis=1) > 3).sum()) for c, rows in frame.groupby("category")
    )
    assert result.dropped == too_sparse
    assert len(result.frame) == len(frame) - too_sparse
    assert result.filled == _n_missing(frame, abc) - _n_missing(
        frame[~frame["id"].isin(result.frame["id"])], abc
    )
    assert _n_missing(result.frame, abc) == 0
    _inapplicable_untouched(frame, result.frame, abc)
    kept = set(result.frame["id"])
    assert "5530" not in kept and "7436" not in kept  # 4 and 8 missing labels
    by_id = result.frame.set_index("id")
    # id 6 = multicolor / ? / ? / default / long sleeves: similar rows say round + printed, not the
    # category-wide polo + solid that dynamic-fill uses.
    assert by_id.loc["6", ["neck", "pattern"]].tolist() == ["round", "printed"]
    assert by_id.loc["12", "print_or_pattern_type"] == "default"
    assert by_id.loc["7435", ["ornamentation", "pallu_details"]].tolist() == ["jacquard", "same as saree"]


@pytest.mark.parametrize(("category", "n", "max_nans"), [(MEN, 3000, 3), (SAREES, 1200, 3), (MEN, 1000, 1)])
def test_similar_mode_matches_reference(catalog: Catalog, category: str, n: int, max_nans: int) -> None:
    attrs = catalog.attributes_by_category[category]
    part = _slice(catalog, category, n)
    result = similar_mode(part, {category: attrs}, max_nans=max_nans)
    ids, expected = _ref_similar_mode(part, attrs, max_nans)
    assert result.frame["id"].tolist() == ids
    assert _rows(result, attrs) == expected
    assert result.dropped == n - len(ids)
    assert result.filled == int(part.loc[part["id"].isin(ids), attrs].isna().to_numpy().sum())


def test_similar_mode_falls_back_to_column_mode(catalog: Catalog) -> None:
    """Real id 6 (multicolor, neck/pattern missing) among real rows of other colours has no similar rows."""
    attrs = catalog.attributes_by_category[MEN]
    men = catalog.frame[catalog.frame["category"] == MEN]
    complete = men[men[attrs].notna().all(axis=1)]
    others = complete[complete["color"] != "multicolor"].head(200)
    row6 = men[men["id"] == "6"]
    part = pd.concat([row6, others], ignore_index=True)
    column_mode = _slow_mode(others["neck"].tolist())
    result = similar_mode(part, {MEN: attrs}).frame.set_index("id")
    assert result.loc["6", "neck"] == column_mode
    assert result.loc["6", "pattern"] == _slow_mode(others["pattern"].tolist())

    # One real row agreeing on all of id 6's labels, with a neck other than the column mode, wins.
    twin = complete[
        (complete["color"] == "multicolor")
        & (complete["print_or_pattern_type"] == "default")
        & (complete["sleeve_length"] == "long sleeves")
        & (complete["neck"] != column_mode)
    ].head(1)
    assert len(twin) == 1
    result = similar_mode(pd.concat([part, twin], ignore_index=True), {MEN: attrs}).frame.set_index("id")
    assert result.loc["6", "neck"] == twin["neck"].iloc[0]
    assert result.loc["6", "pattern"] == twin["pattern"].iloc[0]


def test_unknown_policy_lists_valid_names(catalog: Catalog) -> None:
    with pytest.raises(ValueError, match="unknown missing-label policy") as err:
        apply_policy("fill-everything", catalog.frame, catalog.attributes_by_category)
    for name in POLICIES:
        assert name in str(err.value)


def test_summary_is_one_line(catalog: Catalog) -> None:
    part = _slice(catalog, MEN, 500)
    summary = apply_policy("similar-mode", part, catalog.attributes_by_category).summary()
    assert "\n" not in summary and summary.startswith("similar-mode")


def test_sarees_remap_copies_color_into_first_attribute(meesho_dir: Path, catalog: Catalog) -> None:
    remapped = read_meesho(meesho_dir, remaps={SAREES: {"attr_1": "attr_4"}})
    first = remapped.attributes_by_category[SAREES][0]
    assert first == "blouse_pattern"
    sarees = remapped.frame[remapped.frame["category"] == SAREES]
    assert sarees[first].equals(sarees["color"])
    assert sarees[first].notna().sum() > 10_000
    original = catalog.frame[catalog.frame["category"] == SAREES]
    assert sarees["color"].equals(original["color"])
    assert not original["blouse_pattern"].equals(original["color"])
    by_id = remapped.frame.set_index("id")
    assert by_id.loc["7433", "blouse_pattern"] == "cream"
