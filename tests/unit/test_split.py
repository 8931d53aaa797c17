import numpy as np
import pandas as pd
import pytest

from taxonomist.data.split import split_per_category, split_train_dev_test


def parts(split, n):
    part = np.full(n, -1)
    for p, rows in enumerate((split.train, split.dev, split.test)):
        assert (part[rows] == -1).all(), "a row is in two parts"
        part[rows] = p
    assert (part >= 0).all(), "a row is in no part"
    return part


def test_three_parts_per_stratum_are_seeded_and_disjoint():
    strata = pd.Series(["a"] * 50 + ["b"] * 30 + ["c"])
    split = split_train_dev_test(strata, dev_fraction=0.1, test_fraction=0.2, seed=3)
    part = parts(split, len(strata))
    a = part[:50]
    assert (np.bincount(a, minlength=3) == [35, 5, 10]).all()
    assert part[-1] == 0, "a one-row stratum keeps its row for training"
    again = split_train_dev_test(strata, dev_fraction=0.1, test_fraction=0.2, seed=3)
    assert (again.test == split.test).all()
    other = split_train_dev_test(strata, dev_fraction=0.1, test_fraction=0.2, seed=4)
    assert not np.array_equal(other.test, split.test)


def test_groups_never_straddle_parts_even_across_strata():
    strata = pd.Series(["a", "b"] * 60)
    groups = pd.Series(np.arange(120) // 4)  # each group spans both strata
    part = parts(split_train_dev_test(strata, 0.2, 0.2, seed=0, groups=groups), 120)
    assert pd.DataFrame({"g": groups, "p": part}).groupby("g").p.nunique().max() == 1
    assert set(part) == {0, 1, 2}


def test_a_stratum_whose_groups_another_placed_still_keeps_a_training_row():
    """Regression: when every image of a small category was shared with rows a larger category had put
    in dev or test, the small one got no training row and dropped out of the model."""
    strata = pd.Series(["A"] * 10 + ["B"] * 2)
    groups = pd.Series([f"g{i}" for i in range(10)] + ["g0", "g1"])
    for seed in range(20):
        part = parts(split_train_dev_test(strata, 0.2, 0.2, seed=seed, groups=groups), len(strata))
        assert (part[10:] == 0).any(), f"seed {seed}: B has no training row"
        assert part[10] == part[0] and part[11] == part[1]  # groups still never straddle parts


@pytest.mark.parametrize(("dev", "test"), [(-0.1, 0.1), (0.5, 0.5), (0.1, 1.0)])
def test_bad_fractions_are_refused(dev, test):
    with pytest.raises(ValueError, match="fraction"):
        split_train_dev_test(pd.Series(["a"] * 10), dev, test)


@pytest.mark.parametrize("n_groups", [2, 6])
def test_groups_of_another_length_than_strata_are_refused(n_groups):
    """Regression: six group keys for four rows returned positions 4 and 5, rows that do not exist."""
    with pytest.raises(ValueError, match=f"groups has {n_groups} rows, strata 4"):
        split_train_dev_test(pd.Series(["a"] * 4), 0.25, 0.25, groups=pd.Series(range(n_groups)) % 4)


def test_rows_without_a_group_key_are_each_a_group_of_their_own():
    """Regression: a missing key factorized to -1, which indexed the last group: every keyless row was
    joined to it, so 4 of 8 rows went to a 25% test part."""
    strata = pd.Series(list("aaaabbbb"))
    groups = pd.Series(["x", "y", None, None, "z", "w", None, "q"])
    for seed in range(5):
        split = split_train_dev_test(strata, 0.25, 0.25, seed=seed, groups=groups)
        assert [len(p) for p in (split.train, split.dev, split.test)] == [4, 2, 2], f"seed {seed}"


def test_rows_of_a_missing_stratum_land_in_a_part():
    """Regression: groupby dropped the missing stratum, so its rows were in no part, silently."""
    parts(split_train_dev_test(pd.Series(["a", "a", None, "b", "b", "b"]), 0.2, 0.2, seed=0), 6)


def test_split_per_category_keeps_rows_of_a_missing_category():
    """Regression: groupby dropped the missing category, so its row was in neither part, silently."""
    train, val = split_per_category(pd.DataFrame({"category": ["a", "a", None, "b"]}), 0.5, seed=0)
    assert sorted([*train, *val]) == [0, 1, 2, 3]
