from pathlib import Path

import pandas as pd
import pytest

from taxonomist.config import CatalogConfig
from taxonomist.data.catalog import CatalogError, format_image_path, read_catalog, read_generic, read_meesho
from taxonomist.data.prepare import load_catalog
from taxonomist.data.schema import Schema, SchemaError


def write_styles(path: Path) -> Path:
    frame = pd.DataFrame(
        {
            "pid": ["7", "8", "9", "10"],
            "kind": ["Shoes", "Shoes", "Bags", "Bags"],
            "color": ["Red", "Blue", "NA", None],
            "size": ["L", None, None, None],
        }
    )
    frame.to_csv(path / "styles.csv", index=False)
    return path / "styles.csv"


def test_generic_reader_names_columns_and_keeps_na_literal(tmp_path: Path) -> None:
    cat = read_generic(
        write_styles(tmp_path), id_column="pid", category_column="kind", attributes=["color", "size"]
    )
    assert list(cat.frame.columns) == ["id", "category", "color", "size"]
    assert cat.frame.loc[2, "color"] == "NA"  # a literal value, not a gap
    assert pd.isna(cat.frame.loc[3, "color"])
    assert cat.attributes_by_category == {"Shoes": ["color", "size"], "Bags": ["color"]}
    assert cat.image_path("7") == tmp_path / "images" / "7.jpg"


def test_generic_reader_errors_name_the_problem(tmp_path: Path) -> None:
    path = write_styles(tmp_path)
    with pytest.raises(CatalogError, match="no category column 'masterCategory'"):
        read_generic(path, id_column="pid", category_column="masterCategory")
    with pytest.raises(CatalogError, match=r"attribute columns not found: \['fabric'\]"):
        read_generic(path, id_column="pid", category_column="kind", attributes=["fabric"])
    with pytest.raises(CatalogError, match="not found"):
        read_generic(tmp_path / "missing.csv")


def test_text_column_is_kept_as_text_and_never_read_as_an_attribute(tmp_path: Path) -> None:
    path = tmp_path / "titles.csv"
    frame = pd.read_csv(write_styles(tmp_path), dtype=str)
    frame["title"] = ["Red trainers", None, "Tote", "Clutch"]
    frame.to_csv(path, index=False)
    cat = read_generic(path, id_column="pid", category_column="kind", text_column="title")
    assert cat.attributes == ["color", "size"]  # "every other column" leaves the text out
    assert cat.frame["text"].tolist() == ["Red trainers", "", "Tote", "Clutch"]
    with pytest.raises(CatalogError, match="no text column 'name'"):
        read_generic(path, id_column="pid", category_column="kind", text_column="name")
    frame.rename(columns={"size": "text"}).to_csv(path, index=False)
    with pytest.raises(CatalogError, match="named 'text'"):
        read_generic(path, id_column="pid", category_column="kind", text_column="title")


def test_meesho_layout_refuses_a_text_column(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no listing text"):
        load_catalog(CatalogConfig(path=str(tmp_path), layout="meesho", text_column="title"))


def test_duplicate_ids_rejected(tmp_path: Path) -> None:
    pd.DataFrame({"id": ["1", "1"], "category": ["a", "a"], "x": ["u", "v"]}).to_csv(
        tmp_path / "d.csv", index=False
    )
    with pytest.raises(CatalogError, match="duplicated ids"):
        read_generic(tmp_path / "d.csv")


def test_schema_infer_save_load(tmp_path: Path) -> None:
    cat = read_generic(
        write_styles(tmp_path), id_column="pid", category_column="kind", attributes=["color", "size"]
    )
    schema = cat.infer_schema()
    assert schema.allowed("Shoes", "color") == ["Red", "Blue"]
    assert schema.values("color") == ["Red", "Blue", "NA"]
    assert schema.is_valid("Bags", "color", "NA") and not schema.is_valid("Bags", "size", "L")
    for name in ("s.json", "s.yaml"):
        schema.save(tmp_path / name)
        assert Schema.load(tmp_path / name) == schema
    with pytest.raises(SchemaError, match="unknown category 'Hats'"):
        schema.attributes_of("Hats")


def test_image_template_zero_padding_and_category() -> None:
    assert format_image_path("train_images/{id:06d}.jpg", "42") == "train_images/000042.jpg"
    assert format_image_path("{category}/{id}.png", "x1", "Bags") == "Bags/x1.png"


def test_limit_is_seeded(tmp_path: Path) -> None:
    path = write_styles(tmp_path)
    cfg = CatalogConfig(
        path=str(path),
        id_column="pid",
        category_column="kind",
        attributes=[],
        limit=2,
        min_rows_per_category=0,
    )
    a, b = load_catalog(cfg, seed=1), load_catalog(cfg, seed=1)
    assert len(a) == 2 and a.ids == b.ids


def test_meesho_reader_names_positional_columns(meesho_dir: Path) -> None:
    cat = read_meesho(meesho_dir)
    assert len(cat) == 70213
    assert cat.attributes_by_category["Men Tshirts"] == [
        "color",
        "neck",
        "pattern",
        "print_or_pattern_type",
        "sleeve_length",
    ]
    row = cat.frame[cat.frame["id"] == "1"].iloc[
        0
    ]  # 1,Men Tshirts,5,multicolor,polo,solid,solid,short sleeves
    assert (row["color"], row["neck"], row["sleeve_length"]) == ("multicolor", "polo", "short sleeves")
    assert row["border"] is None
    assert str(cat.image_path("1")).endswith("train_images/000001.jpg")


def test_meesho_layout_reads_the_csv_it_is_given(tmp_path: Path) -> None:
    """Regression: ``--data <meesho>/test.csv`` opened ``test.csv/train.csv``, and the folder silently
    read the training rows, so a Meesho model could not predict the competition's test split."""
    pd.DataFrame({"Category": ["Tops"], "Attribute_list": [["color"]]}).to_parquet(
        tmp_path / "category_attributes.parquet"
    )
    pd.DataFrame({"id": [1], "Category": ["Tops"], "len": [1], "attr_1": ["red"]}).to_csv(
        tmp_path / "train.csv", index=False
    )
    pd.DataFrame({"id": [7, 8], "Category": ["Tops", "Tops"]}).to_csv(tmp_path / "test.csv", index=False)
    test = read_catalog(tmp_path / "test.csv", layout="meesho", bad_rows="report")
    assert test.source == str(tmp_path / "test.csv") and test.ids == ["7", "8"]
    assert test.image_paths()[0] == tmp_path / "test_images" / "000007.jpg"
    assert read_catalog(tmp_path, layout="meesho").ids == ["1"]  # the folder: its train.csv
