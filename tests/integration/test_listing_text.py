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

from taxonomist.data.images import load_image
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
    with pytest.raises(RuntimeError, match="now loads other weights or another tokenizer"):
        predict()


@pytest.fixture(scope="module")
def two_column_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(catalog, checkpoint) of listing heads read from ``title`` and ``description``, trained to predict
    without the image too (a tiny sentence encoder keeps it quick)."""
    root = tmp_path_factory.mktemp("columns")
    catalog = make_catalog(root / "data", titles=True)
    frame = pd.read_csv(catalog)
    frame["description"] = [
        f"{t.split()[1].lower()} cotton" if i % 3 else None for i, t in enumerate(frame["title"])
    ]
    frame.to_csv(catalog, index=False)
    encoder = tiny_sentence_encoder(root / "encoder", [*frame["title"], "red blue green cotton"])
    text = {"encoder": str(encoder), "max_length": 32, "image_dropout": 0.3}
    cfg = listing_config(catalog, root / "cache", text, epochs=3)
    cfg["catalog"]["text_columns"] = ["title", "description"]
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    invoke("train", "-c", str(root / "config.yaml"), "-o", str(root / "ckpt"), "-q")
    return catalog, root / "ckpt"


def _values(pred) -> dict[str, tuple[str, float]]:
    return {a: (v.value, round(v.confidence, 4)) for a, v in pred.attributes.items()}


def test_predict_takes_each_text_column_of_a_model_trained_on_several(two_column_run) -> None:
    """Such a model learned from "title | description": a title alone is another input, so a plain list
    is refused, and per-column texts are joined as the catalog joined them for training."""
    from taxonomist.data.catalog import join_texts

    catalog, ckpt = two_column_run
    predictor = Predictor.from_pretrained(ckpt, runtime="torch")
    assert predictor.text_columns == ["title", "description"]
    image = [str(catalog.parent / "images" / "1000.jpg")]
    with pytest.raises(ValueError, match=r"columns \['title', 'description'\], joined: pass texts=\{'title'"):
        predictor.predict(image, ["Tops"], texts=["Acme Red top"])
    columns = {"title": [" Acme  Red top", None, ""], "description": ["red\tcotton", "silk", None]}
    joined = predictor.listing_texts(columns, 3)
    assert joined == join_texts(pd.DataFrame(columns)).tolist() == ["Acme Red top | red cotton", "silk", ""]
    (both,) = predictor.predict(
        image, ["Tops"], texts={"title": ["Acme Red top"], "description": ["red cotton"]}
    )
    (title_only,) = predictor.predict(image, ["Tops"], texts={"title": ["Acme Red top"]})  # no description
    features, _ = predictor.pixel_features([predictor.backbone.preprocess(load_image(image[0]))])
    for texts, pred in ((["Acme Red top | red cotton"], both), (["Acme Red top"], title_only)):
        (expected,) = predictor.predict_rows(
            features, ["Tops"], ["0"], predictor.text_features(texts, ["Tops"])
        )
        assert _values(pred) == _values(expected)
    (no_photo,) = predictor.predict([None], ["Tops"], texts={"description": ["red cotton"]})
    assert set(no_photo.attributes) == {"color", "fit"}
    for texts, message in (
        ({"title": ["a"], "colour": ["red"]}, r"columns \['colour'\] this checkpoint did not learn"),
        ({"title": ["a", "b"]}, r"texts\['title'\] must be a list of 1 texts.*got 2"),
        ({"description": "red cotton"}, "got one string"),
    ):
        with pytest.raises(ValueError, match=message):
            predictor.predict(image, ["Tops"], texts=texts)
    # Regression: columns of a sorted or filtered frame (pandas Series with labels) were read by label.
    frame = pd.DataFrame(columns).iloc[::-1]
    assert predictor.listing_texts({c: frame[c] for c in columns}, 3) == joined[::-1]
    kept = frame.iloc[:1]
    assert predictor.listing_texts({c: kept[c] for c in columns}, 1) == [""]
    # A checkpoint from before the columns were recorded reads a list as the whole listing text.
    meta_path = ckpt / META_FILE
    saved = meta_path.read_text()
    meta = json.loads(saved)
    del meta["text"]["text_columns"]
    meta_path.write_text(json.dumps(meta))
    try:
        older = Predictor.from_pretrained(ckpt, runtime="torch")
        assert older.text_columns == []
        (joined_pred,) = older.predict(image, ["Tops"], texts=["Acme Red top | red cotton"])
        assert _values(joined_pred) == _values(both)
    finally:
        meta_path.write_text(saved)


def _serve(checkpoint: Path, files: list | None = None, **form: object):
    from fastapi.testclient import TestClient

    from taxonomist.serve import create_app

    with TestClient(create_app(checkpoint, max_wait_ms=5, max_images_per_request=4)) as client:
        return client.post("/v1/predict", files=files, data=form), client.get("/openapi.json").json()


def test_serve_takes_a_form_field_per_further_text_column(two_column_run) -> None:
    catalog, ckpt = two_column_run
    predictor = Predictor.from_pretrained(ckpt)
    path = catalog.parent / "images" / "1000.jpg"
    files = [("image", ("1000.jpg", path.read_bytes(), "image/jpeg"))]
    texts = {"title": ["Acme Red top"], "description": ["red cotton"]}
    answer, openapi = _serve(ckpt, files, category="Tops", title="Acme Red top", description="red cotton")
    assert answer.status_code == 200, answer.text
    assert "send `title` as `title` and the form fields `description`" in openapi["info"]["description"]
    (direct,) = predictor.predict([str(path)], ["Tops"], texts=texts)
    served = answer.json()["predictions"][0]["attributes"]
    assert {a: (v["value"], round(v["confidence"], 4)) for a, v in served.items()} == _values(direct)

    # Listings without a photo: a description alone is text enough; blank in every column is not.
    answer, _ = _serve(ckpt, category="Tops", description=["red cotton", "blue cotton"])
    assert answer.status_code == 200, answer.text
    direct = predictor.predict(
        [None, None], ["Tops"] * 2, texts={"description": ["red cotton", "blue cotton"]}
    )
    for got, want in zip(answer.json()["predictions"], direct, strict=True):
        assert {a: v["value"] for a, v in got["attributes"].items()} == {
            a: v.value for a, v in want.attributes.items()
        }
    blank, _ = _serve(ckpt, category="Tops", title=["a", ""], description=["", " "])
    assert blank.status_code == 422 and "titles [1] are blank" in blank.text

    for form, message in (
        ({"description": "x" * 2001}, "description texts [0] are over 2000 characters"),
        ({"description": ["red", "blue"]}, "send one description per image (1), not 2"),
    ):
        refused, _ = _serve(ckpt, files, category="Tops", **form)
        assert refused.status_code == 422 and message in refused.text, refused.text
    upload = [*files, ("description", ("d.txt", b"red cotton", "text/plain"))]
    refused, _ = _serve(ckpt, upload, category="Tops")
    assert refused.status_code == 422 and "description must be a text field" in refused.text


def test_a_row_set_aside_for_its_id_does_not_count_the_used_row_as_predicted_without_its_image(
    two_column_run, tmp_path: Path
) -> None:
    """Regression: a repeated id's errors.csv row shares the used row's id, so summary.json's
    predicted_by_inputs counted that row, predicted from image and text, under "text" (no image)."""
    catalog, ckpt = two_column_run
    frame = pd.read_csv(catalog, dtype=str).head(4)
    data = tmp_path / "rows.csv"
    pd.concat([frame, frame.iloc[[0]]], ignore_index=True).to_csv(data, index=False)
    out = tmp_path / "out"
    invoke("predict", str(ckpt), "-o", str(out), "--data", str(data), "--images", str(catalog.parent), "-q")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["error_reasons"] == {"duplicate-id": 1}
    assert summary["predicted_by_inputs"] == {"image + text": 4, "image": 0, "text": 0}
