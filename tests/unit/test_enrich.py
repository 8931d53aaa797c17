"""Retrieval enrichment: the nearest corpus product's text is appended; only the corpus is cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from taxonomist.data.catalog import CatalogError
from taxonomist.features.enrich import SEPARATOR, Enricher
from taxonomist.models.text import TextEncoder

ENCODER = "all-MiniLM-L6-v2"  # the offline package


def test_enrich_appends_nearest_text_and_caches_only_the_corpus(tmp_path: Path) -> None:
    encoder = TextEncoder()  # the offline all-MiniLM-L6-v2 package
    titles = ["Stainless steel chef knife", "Cotton bath towel set", "Wireless router dual band"]
    texts = ["kitchen, cutlery", "home, bath linen", "computers, networking"]
    enricher = Enricher(titles, texts, encoder, k=1, cache_dir=str(tmp_path))
    shards = sorted(tmp_path.rglob("*.keys.npy"))
    assert len(shards) == 1
    out = enricher.enrich(["Netgear WiFi router", "Bamboo hand towel"])
    assert out == [
        f"Netgear WiFi router{SEPARATOR}computers, networking",
        f"Bamboo hand towel{SEPARATOR}home, bath linen",
    ]
    assert sorted(tmp_path.rglob("*.keys.npy")) == shards  # predicting writes nothing to the cache
    again = Enricher(titles, texts, encoder, k=1, cache_dir=str(tmp_path))
    assert sorted(tmp_path.rglob("*.keys.npy")) == shards  # the corpus is read back, not re-embedded
    assert again.enrich([]) == []


def test_corpus_rows_are_never_dropped_unreported(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.csv"
    corpus.write_text("title,description\nChef knife,kitchen\nBath towel, soft,home\nRouter,networking\n")
    with pytest.raises(CatalogError, match="line 3"):  # an unquoted comma: not silently skipped
        Enricher.from_file(corpus, title_column="title", text_columns=["description"], encoder=ENCODER)
    cache = str(tmp_path / "cache")
    corpus.write_text("title,description\nChef knife,kitchen\n,orphan text\n  ,home\nRouter,\n")
    with pytest.warns(UserWarning, match=r"2 of 4 rows of the corpus have no 'title'.*lines \[3, 4\]"):
        enricher = Enricher.from_file(
            corpus, title_column="title", text_columns=["description"], encoder=ENCODER, cache_dir=cache
        )
    assert enricher.texts == ["kitchen", ""]
    corpus.write_text("title,description\n,orphan text\n")
    with pytest.raises(ValueError, match="no corpus row has a 'title'"):
        Enricher.from_file(corpus, title_column="title", text_columns=["description"], encoder=ENCODER)
