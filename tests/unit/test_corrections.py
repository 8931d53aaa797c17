"""catalog.corrections: reviewed labels merged over the catalog's, decisions winning."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from taxonomist.config import CatalogConfig
from taxonomist.data.catalog import CatalogError
from taxonomist.data.prepare import load_catalog


def _config(tmp_path: Path, corrections: pd.DataFrame) -> CatalogConfig:
    pd.DataFrame(
        {"sku": ["1", "2", "3"], "type": ["Tops", "Tops", "Bags"], "color": ["red", None, "blue"]}
    ).to_csv(tmp_path / "catalog.csv", index=False)
    corrections.to_csv(tmp_path / "reviewed.csv", index=False)
    return CatalogConfig(
        path=str(tmp_path / "catalog.csv"),
        id_column="sku",
        category_column="type",
        attributes=["color"],
        min_rows_per_category=0,
        corrections=str(tmp_path / "reviewed.csv"),
    )


def test_decisions_win_and_new_items_are_added(tmp_path: Path) -> None:
    reviewed = pd.DataFrame(
        {
            "sku": ["1", "2", "3", "9"],
            "type": ["Tops", "Tops", "Bags", "Bags"],
            "color": ["green", "blue", None, "red"],  # 3: not reviewed, keeps its label
            "image_path": ["a", "b", "c", "d"],  # not an attribute: ignored
        }
    )
    frame = load_catalog(_config(tmp_path, reviewed)).frame.set_index("id")
    assert frame["color"].to_dict() == {"1": "green", "2": "blue", "3": "blue", "9": "red"}
    assert frame.loc["9", "category"] == "Bags" and "image_path" not in frame.columns


def test_corrections_must_name_the_catalog_columns(tmp_path: Path) -> None:
    wrong = pd.DataFrame({"id": ["1"], "category": ["Tops"], "color": ["red"]})
    with pytest.raises(CatalogError, match=r"catalog's columns \['sku', 'type'\]"):
        load_catalog(_config(tmp_path, wrong))
    unknown = pd.DataFrame({"sku": ["7"], "type": ["Hats"], "color": ["red"]})
    with pytest.raises(CatalogError, match="Hats"):
        load_catalog(_config(tmp_path, unknown))


def test_missing_file_under_the_data_dir_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAXONOMIST_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(CatalogError, match=r"TAXONOMIST_DATA_DIR.*datasets") as err:
        load_catalog(CatalogConfig(path="{data_dir}/fashion/styles.csv"))
    assert "does not exist" in str(err.value)
    with pytest.raises(CatalogError) as elsewhere:
        load_catalog(CatalogConfig(path=str(tmp_path / "styles.csv")))
    assert "TAXONOMIST_DATA_DIR" not in str(elsewhere.value)


def test_a_correction_under_another_category_than_its_items_is_refused_by_line(tmp_path: Path) -> None:
    # Item 3 is a bag in the catalog: a "Tops" colour (from an export of an older catalog) is not its to take.
    moved = pd.DataFrame({"sku": ["1", "3"], "type": ["Tops", "Tops"], "color": ["green", "white"]})
    with pytest.raises(
        CatalogError, match=r"1 corrections .* line 3 \(id '3'\) says 'Tops', the catalog 'Bags'"
    ):
        load_catalog(_config(tmp_path, moved))
    unnamed = pd.DataFrame({"sku": ["3"], "type": [None], "color": ["white"]})
    with pytest.raises(CatalogError, match=r"line 2 \(id '3'\) says None, the catalog 'Bags'"):
        load_catalog(_config(tmp_path, unnamed))


def test_a_correction_folds_its_category_like_the_catalog(tmp_path: Path) -> None:
    # "Tops " in a hand-edited file is the catalog's "Tops", as it would be in the catalog itself.
    spaced = pd.DataFrame({"sku": ["1", "9"], "type": ["Tops ", " Bags"], "color": ["green", "black"]})
    catalog = load_catalog(_config(tmp_path, spaced))
    frame = catalog.frame.set_index("id")
    assert frame.loc["1", "color"] == "green"
    assert frame.loc["9", "category"] == "Bags"


def test_a_whole_catalog_review_trains_a_run_on_some_categories(tmp_path: Path) -> None:
    """catalog.categories keeps Tops: the review's bags (3 known, 9 new) are left out, not a failure."""
    reviewed = pd.DataFrame(
        {"sku": ["1", "3", "9"], "type": ["Tops", "Bags", "Bags"], "color": ["green"] * 3}
    )
    config = dataclasses.replace(_config(tmp_path, reviewed), categories=["Tops"])
    with pytest.warns(
        UserWarning, match=r"2 reviewed items of categories this run leaves out \(\['Bags'\]\)"
    ):
        frame = load_catalog(config).frame.set_index("id")
    assert frame["color"].to_dict() == {"1": "green", "2": None}
    small = dataclasses.replace(config, categories=[], min_rows_per_category=2)  # Bags has one row
    with pytest.warns(UserWarning, match="2 reviewed items"):  # counted, not dropped unsaid
        assert load_catalog(small).frame.set_index("id")["color"].to_dict() == {"1": "green", "2": None}


def test_the_row_limit_samples_the_corrected_catalog_and_adds_no_rows(tmp_path: Path) -> None:
    """A reviewed item the limit's sample leaves out was appended as a new item: 2 rows asked, 4 given."""
    reviewed = pd.DataFrame(
        {"sku": ["1", "2", "3"], "type": ["Tops", "Tops", "Bags"], "color": ["green"] * 3}
    )
    config = dataclasses.replace(_config(tmp_path, reviewed), limit=2)
    limited = load_catalog(config).frame
    assert len(limited) == 2 and set(limited["color"]) == {"green"}
    assert limited["id"].is_unique
