"""The shared datasets read as the benchmark and demo expect (skipped locally without them; never in CI)."""

from pathlib import Path

import pytest

from taxonomist.config import CatalogConfig
from taxonomist.data.prepare import load_catalog
from tests.conftest import require_dataset


@pytest.fixture(scope="module")
def fashion_dir() -> Path:
    return require_dataset("fashion-product-images")


def test_fashion_catalog_default_config(fashion_dir: Path) -> None:
    catalog = load_catalog(CatalogConfig(path=str(fashion_dir / "styles.csv")))
    counts = catalog.frame["category"].value_counts().to_dict()
    # The four masterCategories with >= 500 rows, as the README of the dataset lists them.
    assert counts == {"Apparel": 15585, "Accessories": 8249, "Footwear": 6773, "Personal Care": 1739}
    assert catalog.attributes == ["gender", "subCategory", "articleType", "baseColour", "season", "usage"]
    assert all(p.is_file() for p in catalog.image_paths()[:50])
    schema = catalog.infer_schema()
    assert "Navy Blue" in schema.allowed("Apparel", "baseColour")
