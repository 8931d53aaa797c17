"""Retrieval enrichment: the nearest corpus product's text is appended; only the corpus is cached."""

from __future__ import annotations

from pathlib import Path

from taxonomist.features.enrich import SEPARATOR, Enricher
from taxonomist.models.text import TextEncoder


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
