"""A listing checkpoint's text encoder: what its fingerprint (the title-embedding cache's key, checked when
a checkpoint loads) covers, and checkpoints that recorded the older fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from taxonomist.inference.predictor import Predictor
from taxonomist.models.checkpoint import META_FILE
from taxonomist.models.text import FINGERPRINT_SCHEME, TextEncoder

from .conftest import invoke, listing_config, make_catalog, tiny_sentence_encoder

CORPUS = [f"Acme {c} {k} {i}" for c in ("Red", "Blue", "Green") for k in ("top", "bag") for i in range(20)]


@pytest.fixture
def encoder_folder(tmp_path: Path) -> Path:
    return tiny_sentence_encoder(tmp_path / "encoder", CORPUS)


def _edit_json(path: Path, **values: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def test_the_text_fingerprint_covers_every_weight_and_the_tokenizer(encoder_folder: Path, tmp_path) -> None:
    """Scheme 1 hashed each tensor's first 4096 bytes and no tokenizer: a change elsewhere kept the
    fingerprint, so cached title embeddings of the old encoder were served for the new one."""
    encoder = TextEncoder(str(encoder_folder), max_length=32)
    before, legacy = encoder.weights_fingerprint(), encoder.weights_fingerprint(1)
    title = ["ACME RED TOP"]
    embedded = encoder.encode(title)
    encoder.encode(["Acme Red top", "Acme Blue bag " * 40])  # tokenizing moves the tokenizer's own state
    encoder.save(tmp_path / "copy")  # a checkpoint's copy of a local encoder
    copy = TextEncoder(str(encoder_folder), path=tmp_path / "copy", max_length=32)
    assert copy.weights_fingerprint() == before

    words = encoder.transformer.embeddings.word_embeddings.weight
    assert words.numel() * words.element_size() > 4096
    with torch.no_grad():
        words[-1] += 0.5  # past the tensor's first 4096 bytes
    assert encoder.weights_fingerprint(1) == legacy  # the audit's finding
    assert encoder.weights_fingerprint() != before

    for file, setting in (
        ("sentence_bert_config.json", {"do_lower_case": True}),
        ("tokenizer_config.json", {"truncation_side": "left"}),
    ):
        original = (encoder_folder / file).read_text()
        _edit_json(encoder_folder / file, **setting)
        changed = TextEncoder(str(encoder_folder), max_length=32)
        if "do_lower_case" in setting:  # the embedding changes: a cached one would be stale
            assert not np.allclose(changed.encode(title), embedded)
        assert changed.weights_fingerprint(1) == legacy, setting
        assert changed.weights_fingerprint() != before, setting
        (encoder_folder / file).write_text(original)
    with pytest.raises(ValueError, match="scheme 3"):
        encoder.weights_fingerprint(3)


def test_a_checkpoint_with_the_older_fingerprint_loads_and_predicts_the_same(tmp_path: Path) -> None:
    """Checkpoints trained before scheme 2 record a scheme-1 fingerprint and no scheme: they are checked
    with the scheme they were written with, so they still load, and predict as before."""
    catalog = make_catalog(tmp_path / "data", titles=True)
    encoder = tiny_sentence_encoder(tmp_path / "encoder", pd.read_csv(catalog)["title"].tolist())
    cfg = listing_config(catalog, tmp_path / "cache", {"encoder": str(encoder), "max_length": 32}, epochs=3)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    invoke("train", "-c", str(tmp_path / "config.yaml"), "-o", str(tmp_path / "ckpt"), "-q")
    meta_path = tmp_path / "ckpt" / META_FILE
    meta = json.loads(meta_path.read_text())
    assert meta["text"]["fingerprint_scheme"] == FINGERPRINT_SCHEME
    image = [str(catalog.parent / "images" / "1000.jpg")]

    def predict() -> dict[str, tuple[str, float]]:
        (pred,) = Predictor.from_pretrained(tmp_path / "ckpt", runtime="torch").predict(
            image, ["Tops"], texts=["Acme Red top"]
        )
        return {a: (v.value, v.confidence) for a, v in pred.attributes.items()}

    expected = predict()
    loaded = TextEncoder(str(encoder), max_length=32)
    del meta["text"]["fingerprint_scheme"]
    meta["text"]["fingerprint"] = loaded.weights_fingerprint(1)
    meta_path.write_text(json.dumps(meta))
    assert predict() == expected
    meta["text"]["fingerprint"] = loaded.weights_fingerprint()  # a scheme-2 key read as scheme 1
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(RuntimeError, match="now loads other weights"):
        predict()
