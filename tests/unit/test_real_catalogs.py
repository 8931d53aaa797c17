"""The shared datasets read as the benchmark and demo expect (skipped locally without them; never in CI)."""

from pathlib import Path

import pytest

from taxonomist.config import CatalogConfig
from taxonomist.data.catalog import TEXT
from taxonomist.data.prepare import load_catalog
from taxonomist.data.tokens import word_pattern
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


@pytest.mark.parametrize(("min_letters", "old"), [(1, r"(?u)\b\w+\b"), (2, r"(?u)\b\w\w+\b")])
def test_fashion_titles_give_the_same_word_ngrams_as_before(
    fashion_dir: Path, min_letters: int, old: str
) -> None:
    """The mark-aware word patterns change nothing on the benchmark's English titles, so recorded
    numbers stand: same tokens, vocabulary and TF-IDF rows as the patterns they replaced."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    catalog = load_catalog(
        CatalogConfig(path=str(fashion_dir / "styles.csv"), text_columns=["productDisplayName"])
    )
    titles = catalog.frame[TEXT].tolist()[:2000]
    before, after = (
        TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), token_pattern=p).fit(titles)
        for p in (old, word_pattern(min_letters))
    )
    assert after.vocabulary_ == before.vocabulary_ and len(before.vocabulary_) > 2000
    assert (after.transform(titles) != before.transform(titles)).nnz == 0
