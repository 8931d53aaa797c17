"""Listing heads end to end: train on image + title, predict (resumable) and evaluate with titles, and
the image-only checkpoint's refusal of titles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from taxonomist.inference.evaluate import INPUT_VIEWS
from taxonomist.inference.predictor import Predictor
from taxonomist.models.checkpoint import CheckpointError
from taxonomist.models.runtime import EXPORTS_DIR, MANIFEST

from .conftest import invoke, listing_config, make_catalog, tiny_config, tiny_sentence_encoder


@pytest.fixture(scope="module")
def listing_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("listing")
    catalog = make_catalog(root / "data", titles=True)
    cfg = listing_config(catalog, root / "cache", {"image_dropout": 0.2})
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    invoke("train", "-c", str(config), "-o", str(root / "ckpt"), "--quiet")
    return catalog, config, root / "ckpt"


def test_a_listing_checkpoint_records_its_inputs_and_predicts_with_and_without_titles(listing_run) -> None:
    catalog, _, ckpt = listing_run
    predictor = Predictor.from_pretrained(ckpt)
    assert predictor.checkpoint.inputs == ["image", "text"]
    # The record names the encoder's weights; on CPU it encodes on OpenVINO fp32, beside the
    # cross-fitted lexical probe saved with the heads, and answers as the torch encoder does.
    assert predictor.checkpoint.text["fingerprint"] == predictor.text.encoder.weights_fingerprint()
    assert predictor.text.encoder.runtime == "openvino" and predictor.text.probe is not None
    eager = Predictor.from_pretrained(ckpt, runtime="torch")
    assert eager.text.encoder.runtime == "torch"
    listing = ([str(catalog.parent / "images" / "1001.jpg")], ["Tops"])
    fast, slow = (
        predictor.predict(*listing, texts=["Acme Blue top"]),
        eager.predict(*listing, texts=["Acme Blue top"]),
    )
    for a, v in slow[0].attributes.items():
        assert fast[0].attributes[a].value == v.value
        assert fast[0].attributes[a].confidence == pytest.approx(v.confidence, abs=1e-3)
    image = str(catalog.parent / "images" / "1000.jpg")
    for texts in (["Acme Red top"], [""], [None], None, ["🔥" * 5000]):
        (pred,) = predictor.predict([image], ["Tops"], texts=texts)
        assert set(pred.attributes) == {"color", "fit"}
        assert all(0 <= v.confidence <= 1 for v in pred.attributes.values())


def test_listing_predict_reads_titles_resumes_and_fills_in_for_missing_images(listing_run, tmp_path) -> None:
    catalog, _, ckpt = listing_run
    frame = pd.read_csv(catalog, dtype={"sku": str})
    frame.loc[0, "sku"] = "missing-image"
    frame.loc[1, "title"] = None
    frame.loc[2, ["sku", "title"]] = ["missing-both", None]
    data = catalog.parent / "rows.csv"  # beside the images, which the catalog's path finds
    frame.to_csv(data, index=False)
    out = tmp_path / "out"
    args = ("predict", str(ckpt), "-o", str(out), "--data", str(data), "--quiet")
    invoke(*args)
    long = pd.read_csv(out / "predictions_long.csv", dtype={"id": str})
    assert "missing-image" not in set(long["id"])  # skipped and reported without allow_missing_image
    assert set(long["id"]) == set(frame["sku"].astype(str)) - {"missing-image", "missing-both"}
    invoke(*args)  # every chunk done: a rerun resumes, writing the same files
    assert pd.read_csv(out / "predictions_long.csv", dtype={"id": str}).equals(long)
    invoke(*args[:-1], "-o", str(tmp_path / "filled"), "--set", "predict.allow_missing_image=true")
    filled = pd.read_csv(tmp_path / "filled" / "predictions_long.csv", dtype={"id": str})
    assert "missing-image" in set(filled["id"])
    errors = pd.read_csv(tmp_path / "filled" / "errors.csv", dtype={"id": str}).set_index("id")
    assert "missing-image" in errors.index  # still reported
    # Neither image nor title: nothing to predict from, so an error row only, never a guess.
    assert "missing-both" not in set(filled["id"])
    assert errors.loc["missing-both", "detail"].endswith("the title is blank too: not predicted")
    assert "blank" not in errors.loc["missing-image", "detail"]
    # What each predicted row was predicted from: the summary says how sparse the listings were.
    summaries = {k: json.loads((tmp_path / k / "summary.json").read_text()) for k in ("out", "filled")}
    assert summaries["out"]["predicted_by_inputs"] == {"image + text": 117, "image": 1, "text": 0}
    assert summaries["filled"]["predicted_by_inputs"] == {"image + text": 117, "image": 1, "text": 1}
    # In memory, a listing without a photo (image None) gets what the batch job gave it.
    (alone,) = Predictor.from_pretrained(ckpt).predict(
        [None], [frame.loc[0, "type"]], texts=[frame.loc[0, "title"]]
    )
    batch = filled[filled["id"] == "missing-image"].set_index("attribute")
    assert set(alone.attributes) == set(batch.index)
    for attribute, v in alone.attributes.items():
        assert v.value == batch.loc[attribute, "value"]
        assert v.confidence == pytest.approx(batch.loc[attribute, "confidence"], abs=1e-4)
    with pytest.raises(ValueError, match=r"listings \[1\] have no image and a blank title"):
        Predictor.from_pretrained(ckpt).predict(
            [None, None], [frame.loc[0, "type"]] * 2, texts=[frame.loc[0, "title"], " "]
        )


def test_a_rerun_predicts_a_row_from_its_image_once_the_image_is_there(listing_run, tmp_path) -> None:
    """With allow_missing_image a row without its image is predicted from its title and reported; once
    the image is copied in, the same command predicts it from both: the row once, and no longer an error."""
    catalog, _, ckpt = listing_run
    frame = pd.read_csv(catalog, dtype={"sku": str}).head(6)
    (tmp_path / "images").mkdir()
    for sku in frame["sku"].iloc[1:]:
        (tmp_path / "images" / f"{sku}.jpg").symlink_to(catalog.parent / "images" / f"{sku}.jpg")
    data = tmp_path / "rows.csv"
    frame.to_csv(data, index=False)
    out = tmp_path / "out"
    args = ("predict", str(ckpt), "-o", str(out), "--data", str(data), "--images", str(tmp_path), "--quiet")
    args += ("--set", "predict.allow_missing_image=true", "--set", "predict.chunk_size=4")
    invoke(*args)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predicted_by_inputs"] == {"image + text": 5, "image": 0, "text": 1}
    sku = frame.at[0, "sku"]
    (tmp_path / "images" / f"{sku}.jpg").symlink_to(catalog.parent / "images" / f"{sku}.jpg")
    invoke(*args)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predicted_by_inputs"] == {"image + text": 6, "image": 0, "text": 0}
    assert (summary["errors"], summary["retried_rows"], summary["recovered_rows"]) == (0, 1, 1)
    assert pd.read_csv(out / "errors.csv").empty
    long = pd.read_csv(out / "predictions_long.csv", dtype={"id": str})
    assert not long.duplicated(["id", "attribute"]).any()
    assert list(dict.fromkeys(long["id"])) == frame["sku"].tolist()


def test_evaluate_views_predict_every_row_the_fused_model_scores(listing_run) -> None:
    """Every view scores the same rows: a title-less row with its image gone is predicted from its
    category alone (leaving it unpredicted would add a zero-F1 "no prediction" class to macro-F1)."""
    from taxonomist.data.catalog import CATEGORY, ID
    from taxonomist.inference.evaluate import input_views

    catalog, _, ckpt = listing_run
    predictor = Predictor.from_pretrained(ckpt)
    frame = pd.read_csv(catalog, dtype={"sku": str}).head(4).rename(columns={"sku": ID, "type": CATEGORY})
    texts = frame["title"].tolist()
    texts[1] = ""
    text = predictor.text_features(texts, frame[CATEGORY].tolist())
    features = np.ones((4, predictor.checkpoint.feature_dim), dtype=np.float32)
    views = input_views(predictor, features, frame, texts, text)
    assert set(views) == {"text_blanked", "image_missing", "text_probe"}
    for view in views.values():
        assert view[ID].tolist() == frame[ID].tolist() and view["color"].notna().all()


def test_a_chunk_of_unreadable_images_only_is_reported_not_fatal(listing_run, tmp_path) -> None:
    from typer.testing import CliRunner

    from taxonomist.cli.main import app

    catalog, _, ckpt = listing_run
    frame = pd.read_csv(catalog, dtype={"sku": str}).head(3)
    frame["sku"] = ["gone-1", "gone-2", "gone-3"]
    frame.to_csv(catalog.parent / "gone.csv", index=False)
    out = tmp_path / "out"
    args = ["predict", str(ckpt), "-o", str(out), "--data", str(catalog.parent / "gone.csv"), "-q"]
    result = CliRunner().invoke(app, args)
    # Every row failed: the job says so (not a crash inside the text features), after writing its outputs.
    assert "3 of 3 rows failed" in str(result.exception) + result.output
    assert len(pd.read_csv(out / "errors.csv")) == 3


def test_listing_evaluate_reads_titles_and_scores_each_input_alone(listing_run, tmp_path) -> None:
    """Issue 18: evaluate reports the fused model beside each input alone and the lexical probe, on the
    same rows; the blank-title view is what predict gives those rows without their titles."""
    from taxonomist.inference.predictor import wide_named_frame
    from taxonomist.metrics import attribute_score

    catalog, _, ckpt = listing_run
    out = invoke("evaluate", str(ckpt), "--output", str(tmp_path), "--report", "--quiet")
    assert "text, every image missing" in out
    summary = json.loads((tmp_path / "evaluation.json").read_text())
    views = summary["scores_by_inputs"]
    assert list(views) == ["fused", "text_blanked", "image_missing", "text_probe"]
    assert views["fused"]["score"] == pytest.approx(summary["score"])  # every image read
    # Titles name the colour: the probe reads it; the shape (fit) is in the image only.
    assert views["text_probe"]["per_attribute"]["color"] >= 0.9
    assert "| text only: the lexical probe |" in (tmp_path / "evaluation.md").read_text()
    assert "image, every text blanked" in (tmp_path / "report.html").read_text()
    # Each view's interval, and the fused model's gain over each other view on the same resamples.
    for view, scores in views.items():
        interval = scores["interval"]
        assert interval["low"] <= scores["score"] <= interval["high"]
        if view == "fused":
            assert "fused_minus_this" not in scores
            continue
        gain = scores["fused_minus_this"]
        assert gain["value"] == pytest.approx(views["fused"]["score"] - scores["score"])
        assert gain["low"] <= gain["value"] <= gain["high"]
        assert f"fused − {INPUT_VIEWS[view]}: {gain['value']:+.4f}" in " ".join(out.split())

    scored = set(pd.read_csv(tmp_path / "predictions.csv", dtype={"id": str})["id"])
    frame = pd.read_csv(catalog, dtype={"sku": str}).rename(columns={"sku": "id", "type": "category"})
    frame = frame[frame["id"].isin(scored)].reset_index(drop=True)
    predictor = Predictor.from_pretrained(ckpt)
    images = [str(catalog.parent / "images" / f"{i}.jpg") for i in frame["id"]]
    preds = predictor.predict(images, frame["category"].tolist(), frame["id"].tolist(), texts=None)
    blank = attribute_score(frame, wide_named_frame(preds, ["color", "fit"]), predictor.schema.categories)
    assert views["text_blanked"]["score"] == pytest.approx(blank.score)


def test_an_image_only_checkpoint_refuses_titles(tiny_run, tmp_path) -> None:
    catalog, config = tiny_run
    invoke("train", "-c", str(config), "-o", str(tmp_path / "ckpt"), "--quiet")
    predictor = Predictor.from_pretrained(tmp_path / "ckpt")
    image = str(catalog.parent / "images" / "1000.jpg")
    with pytest.raises(ValueError, match="trained on images only"):
        predictor.predict([image], ["Tops"], texts=["Acme Red top"])
    assert predictor.predict([image], ["Tops"], texts=[""])  # no text at all is no conflict
    with pytest.raises(CheckpointError, match=r"images \[1\] are None.*never learned"):
        predictor.predict([image, None], ["Tops", "Tops"])


def _post(checkpoint: Path, image: Path, **form: object):
    from fastapi.testclient import TestClient

    from taxonomist.serve import create_app

    with TestClient(create_app(checkpoint, max_wait_ms=5)) as client:
        files = [("image", ("1000.jpg", image.read_bytes(), "image/jpeg"))]
        return client.post("/v1/predict", files=files, data={"category": "Tops", **form})


def test_serve_reads_an_optional_title(listing_run) -> None:
    catalog, _, ckpt = listing_run
    image = catalog.parent / "images" / "1000.jpg"
    with_title = _post(ckpt, image, title="Acme Red top")
    assert with_title.status_code == 200, with_title.text
    direct = Predictor.from_pretrained(ckpt).predict([str(image)], ["Tops"], texts=["Acme Red top"])[0]
    served = with_title.json()["predictions"][0]["attributes"]
    assert {a: v["value"] for a, v in served.items()} == {a: v.value for a, v in direct.attributes.items()}
    assert _post(ckpt, image).status_code == 200  # no title: predicted from the image
    too_long = _post(ckpt, image, title="x" * 5000)
    assert too_long.status_code == 422 and "title" in too_long.text


def _post_titles(checkpoint: Path, max_images_per_request: int = 16, **form: object):
    from fastapi.testclient import TestClient

    from taxonomist.serve import create_app

    app = create_app(checkpoint, max_wait_ms=5, max_images_per_request=max_images_per_request)
    with TestClient(app) as client:
        return client.post("/v1/predict", data=form)


def test_serve_predicts_listings_without_a_photo_from_their_titles(listing_run) -> None:
    from taxonomist.serve.model import AttributeModel

    catalog, _, ckpt = listing_run
    titles, categories = ["Acme Red top", "Acme Blue bag"], ["Tops", "Bags"]
    answer = _post_titles(ckpt, category=categories, title=titles, id=["t1", "b1"])
    assert answer.status_code == 200, answer.text
    direct = Predictor.from_pretrained(ckpt).predict([None, None], categories, texts=titles)
    for served, want in zip(answer.json()["predictions"], direct, strict=True):
        assert set(served["attributes"]) == set(want.attributes)
        for a, v in want.attributes.items():
            assert served["attributes"][a]["value"] == v.value
            assert served["attributes"][a]["confidence"] == pytest.approx(v.confidence, abs=1e-4)
    assert [p["id"] for p in answer.json()["predictions"]] == ["t1", "b1"]
    # Listings with and without a photo batched into one forward get what each gets alone.
    model = AttributeModel.load(ckpt)
    image = (catalog.parent / "images" / "1000.jpg").read_bytes()
    with_photo = model.prepare(image, "Tops", name="1000.jpg", title="Acme Red top")
    mixed = model.predict_batch([with_photo, model.prepare_title("Bags", "Acme Blue bag")])
    alone = model.predict_batch([with_photo]) + model.predict_batch(
        [model.prepare_title("Bags", "Acme Blue bag")]
    )
    for got, want in zip(mixed, alone, strict=True):
        assert {a: v.value for a, v in got.items()} == {a: v.value for a, v in want.items()}
        assert all(got[a].confidence == pytest.approx(v.confidence, abs=1e-5) for a, v in want.items())
    blank = _post_titles(ckpt, category="Tops", title=["Acme Red top", " "])
    assert blank.status_code == 422 and "titles [1] are blank" in blank.text
    assert _post_titles(ckpt, category="Tops").status_code == 422  # neither images nor titles
    too_many = _post_titles(ckpt, max_images_per_request=1, category="Tops", title=titles)
    assert too_many.status_code == 413 and "at most 1 per request" in too_many.text


def test_serve_refuses_a_title_for_an_image_only_model(tiny_run, tmp_path) -> None:
    catalog, config = tiny_run
    invoke("train", "-c", str(config), "-o", str(tmp_path / "ckpt"), "--quiet")
    image = catalog.parent / "images" / "1000.jpg"
    refused = _post(tmp_path / "ckpt", image, title="Acme Red top")
    assert refused.status_code == 422 and "images only" in refused.text
    assert _post(tmp_path / "ckpt", image, title="").status_code == 200
    no_photo = _post_titles(tmp_path / "ckpt", category="Tops", title="Acme Red top")
    assert no_photo.status_code == 422 and "needs an image per listing" in no_photo.text


def test_rows_without_a_title_get_what_the_image_recipe_predicts(listing_run, tmp_path) -> None:
    """text.image_fallback (default): the listing checkpoint carries the heads the image recipe trains on
    the same rows, and a blank title gets exactly their answer and confidence."""
    from taxonomist.training.heads import train

    catalog, config, ckpt = listing_run
    cfg = yaml.safe_load(config.read_text())
    cfg["heads"]["inputs"] = ["image"]
    train(_config(tmp_path / "image.yaml", cfg), tmp_path / "image", progress=False)
    image_only, listing = Predictor.from_pretrained(tmp_path / "image"), Predictor.from_pretrained(ckpt)
    frame = pd.read_csv(catalog, dtype={"sku": str}).head(12)
    paths = [str(catalog.parent / "images" / f"{sku}.jpg") for sku in frame["sku"]]
    categories = frame["type"].tolist()
    expected = image_only.predict(paths, categories)
    for texts in (None, [""] * len(paths)):
        for want, got in zip(expected, listing.predict(paths, categories, texts=texts), strict=True):
            for attribute, value in want.attributes.items():
                assert got.attributes[attribute].value == value.value
                assert got.attributes[attribute].confidence == pytest.approx(value.confidence, abs=1e-5)
    titled = listing.predict(paths, categories, texts=frame["title"].tolist())
    assert any(  # with their titles, the fused heads answer (and their confidences differ)
        got.attributes[a].confidence != pytest.approx(want.attributes[a].confidence, abs=1e-5)
        for want, got in zip(expected, titled, strict=True)
        for a in want.attributes
    )


def test_listing_members_train_from_their_own_seeds_and_share_the_image_fallback(
    listing_run, tmp_path
) -> None:
    """heads.members for listing heads: one checkpoint of seeds 0, 1 predicting their mean probability;
    a blank title still gets the image recipe's answer, and evaluate scores it as training reported."""
    import json

    from taxonomist.models.build import load_heads_checkpoint
    from taxonomist.models.fusion import ListingEnsemble
    from taxonomist.training.heads import train

    catalog, config, single = listing_run
    cfg = yaml.safe_load(config.read_text())
    cfg["heads"]["members"] = 2
    result = train(_config(tmp_path / "members.yaml", cfg), tmp_path / "members", progress=False)
    assert len(result.history.best_epochs) == 2
    checkpoint, model = load_heads_checkpoint(tmp_path / "members")
    assert isinstance(model, ListingEnsemble) and checkpoint.heads["members"] == 2
    first, second = (m.state_dict() for m in model.members)
    assert not torch.equal(first["fuse.weight"], second["fuse.weight"])
    assert all(torch.equal(v, second[k]) for k, v in first.items() if k.startswith("image_only."))
    # Seed 0's member is the single run's model: same rows, seed and fallback.
    _, alone = load_heads_checkpoint(single)
    assert all(torch.equal(v, first[k]) for k, v in alone.state_dict().items())
    frame = pd.read_csv(catalog, dtype={"sku": str}).head(8)
    paths = [str(catalog.parent / "images" / f"{sku}.jpg") for sku in frame["sku"]]
    categories = frame["type"].tolist()
    ensemble, one = Predictor.from_pretrained(tmp_path / "members"), Predictor.from_pretrained(single)
    blank = ensemble.predict(paths, categories, texts=[""] * len(paths))
    for want, got in zip(one.predict(paths, categories, texts=[""] * len(paths)), blank, strict=True):
        for attribute, value in want.attributes.items():
            assert got.attributes[attribute].value == value.value
            assert got.attributes[attribute].confidence == pytest.approx(value.confidence, abs=1e-5)
    titled = ensemble.predict(paths, categories, texts=frame["title"].tolist())
    assert all(0 <= v.confidence <= 1 for p in titled for v in p.attributes.values())
    invoke("evaluate", str(tmp_path / "members"), "--output", str(tmp_path / "eval"), "-q")
    trained = json.loads((tmp_path / "members" / "metrics.json").read_text())["test_score"]
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["score"] == pytest.approx(trained)
    invoke(
        "bench",
        str(tmp_path / "members"),
        "-o",
        str(tmp_path / "bench"),
        "--batch-sizes",
        "1",
        "--seconds",
        "0.2",
    )
    assert json.loads((tmp_path / "bench" / "bench.json").read_text())["images_per_s_batch1"] > 0


def test_class_balance_chosen_on_dev_is_recorded_and_applied_at_prediction(listing_run, tmp_path) -> None:
    import json

    from taxonomist.models.build import load_heads_checkpoint
    from taxonomist.training.heads import BALANCE_CHOICES, train

    _, config, _ = listing_run
    cfg = yaml.safe_load(config.read_text())
    cfg["train"]["class_balance"] = "dev"
    result = train(_config(tmp_path / "balance.yaml", cfg), tmp_path / "run", progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["class_balance"] == result.class_balance
    assert set(result.class_balance) == {"color", "fit"}
    assert any(s > 0 for s in result.class_balance.values())  # so evaluate below must apply one
    assert set(result.class_balance.values()) <= set(BALANCE_CHOICES)
    checkpoint, _ = load_heads_checkpoint(tmp_path / "run")
    assert set(checkpoint.logit_adjustment) == {a for a, s in result.class_balance.items() if s > 0}
    assert checkpoint.metrics["class_balance"] == result.class_balance
    invoke("evaluate", str(tmp_path / "run"), "--output", str(tmp_path / "eval"), "-q")
    evaluated = json.loads((tmp_path / "eval" / "evaluation.json").read_text())["score"]
    assert evaluated == pytest.approx(metrics["test_score"])
    # The export's parity check scores it too: as listings without a title, and with the rows' titles.
    output = invoke("export", str(tmp_path / "run"), "--runtime", "openvino", "--parity-rows", "20", "-q")
    assert "openvino fp32" in output
    export = tmp_path / "run" / EXPORTS_DIR / "openvino-fp32" / MANIFEST
    parity = json.loads(export.read_text())["parity"]
    assert parity["passed"] and set(parity["with_text"]) == {"torch", "export"}
    assert parity["with_text"]["torch"] > parity["torch_score"]  # the titles name the colour

    # Rows without a title (or, trained with image dropout, without an image) get the strengths chosen
    # for them on dev, every attribute its own.
    assert cfg["text"]["image_dropout"] > 0
    by_inputs = metrics["class_balance_by_inputs"]
    assert set(by_inputs) == set(checkpoint.logit_adjustment_by_inputs) == {"image", "text"}
    assert all(set(strengths) == {"color", "fit"} for strengths in by_inputs.values())

    # The correction chooses values; the probabilities (and so the confidences) stay the calibrated ones.
    predictor = Predictor.from_pretrained(tmp_path / "run")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(64, checkpoint.feature_dim)).astype(np.float32)
    categories = [predictor.categories[i % len(predictor.categories)] for i in range(64)]
    ids = [str(i) for i in range(64)]
    text = predictor.text_features(["red slim shirt" if i % 4 else "" for i in range(64)], categories)
    probs = predictor.predict_features(features, categories, text)
    present = predictor.inputs_present(text, 64)
    with pytest.raises(ValueError, match="pass present"):
        predictor.decode(probs, ids, categories)  # which rows had a title decides their correction
    corrected = predictor.decode(probs, ids, categories, present=present)
    # The one-call path gives each row the correction of the inputs it has, as does a ranking reused.
    assert predictor.predict_rows(features, categories, ids, text) == corrected
    ranked = predictor.ranked(probs, present)
    assert predictor.decode(probs, ids, categories, ranked=ranked) == corrected
    predictor.checkpoint.logit_adjustment, predictor.checkpoint.logit_adjustment_by_inputs = {}, {}
    unchanged = predictor.predict_features(features, categories, text)
    assert all(np.array_equal(p, probs[a]) for a, p in unchanged.items())
    plain = predictor.decode(probs, ids, categories)
    changed = 0
    for row, (with_it, without) in enumerate(zip(corrected, plain, strict=True)):
        for attribute, value in with_it.attributes.items():
            k = predictor.schema.values(attribute).index(value.value)
            assert value.confidence == pytest.approx(float(probs[attribute][row, k]))
            assert value.alternatives[0][0] == value.value
            changed += value.value != without.attributes[attribute].value
    assert changed  # the correction did choose differently somewhere


def test_image_only_heads_are_the_same_whether_or_not_the_catalog_has_text(tmp_path) -> None:
    """Text in the catalog is read by listing heads only: image-only heads train to the same weights."""
    from safetensors.torch import load_file

    from taxonomist.training.heads import train

    catalog = make_catalog(tmp_path / "data", titles=True)
    weights = []
    for name, columns in (("plain", []), ("titled", ["title"])):
        cfg = tiny_config(catalog, tmp_path / "cache")
        cfg["catalog"]["text_columns"] = columns
        cfg["train"]["epochs"] = 5
        train(_config(tmp_path / f"{name}.yaml", cfg), tmp_path / name, progress=False)
        weights.append(load_file(str(tmp_path / name / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all((weights[0][k] == weights[1][k]).all() for k in weights[0])
    # Nor do they need the text column to score or predict a file (a self-train student's config names it).
    no_title = tmp_path / "data" / "no_title.csv"
    pd.read_csv(catalog, dtype={"sku": str}).drop(columns=["title"]).to_csv(no_title, index=False)
    out = invoke("evaluate", str(tmp_path / "titled"), "--data", str(no_title), "--quiet")
    assert "text column" not in out
    invoke("predict", str(tmp_path / "titled"), "-o", str(tmp_path / "p"), "--data", str(no_title), "-q")


def test_a_catalog_without_its_text_column_is_predicted_and_scored_from_the_images(
    listing_run, tmp_path
) -> None:
    """A listing checkpoint given a file without the title column reads every title as blank, says so,
    and predicts what it predicts for blank titles (the image recipe's answer), in predict and evaluate."""
    catalog, _, ckpt = listing_run
    frame = pd.read_csv(catalog, dtype={"sku": str}).head(20)
    data = catalog.parent / "no_title.csv"
    frame.drop(columns=["title"]).to_csv(data, index=False)
    note = "no text column 'title': every listing is predicted from its image"
    out = invoke("predict", str(ckpt), "-o", str(tmp_path / "p"), "--data", str(data), "--quiet")
    assert note in " ".join(out.split())
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["predicted_by_inputs"] == {"image + text": 0, "image": 20, "text": 0}
    assert summary["text_note"] == f"{data}: {note}"
    predicted = pd.read_csv(tmp_path / "p" / "predictions_long.csv", dtype={"id": str})
    images = [str(catalog.parent / "images" / f"{i}.jpg") for i in frame["sku"]]
    blank = Predictor.from_pretrained(ckpt).predict(images, frame["type"].tolist(), frame["sku"].tolist())
    assert predicted["value"].tolist() == [v.value for p in blank for v in p.attributes.values()]
    out = invoke("evaluate", str(ckpt), "--data", str(data), "--output", str(tmp_path / "e"), "--quiet")
    assert note in " ".join(out.split())
    assert note in (tmp_path / "e" / "evaluation.md").read_text()


def _config(path: Path, data: dict):
    from taxonomist.config import load_config

    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def test_bench_reports_a_listing_checkpoint_per_listing(listing_run, tmp_path) -> None:
    """The efficiency report counts a listing whole: its image and a title through the sentence encoder
    (it counted the image side alone, a fifth of the parameters), or, with --title-tokens 0, listings
    without a title (once a TypeError: the heads were called with the image-heads signature)."""
    from typer.testing import CliRunner

    from taxonomist.cli.main import app

    _, _, ckpt = listing_run
    args = ("bench", str(ckpt), "--batch-sizes", "1,2", "--seconds", "0.2")
    invoke(*args, "-o", str(tmp_path / "titled"))
    invoke(*args, "-o", str(tmp_path / "bare"), "--title-tokens", "0")
    titled, bare = (json.loads((tmp_path / k / "bench.json").read_text()) for k in ("titled", "bare"))
    assert titled["inputs"] == "image + title (16 tokens)" and titled["images_per_s_batch1"] > 0
    # timed as predict runs it, the title encoder included
    assert titled["runtime"] == "openvino fp32, title encoder openvino fp32"
    assert bare["inputs"] == "image (listing heads, no title)" and bare["images_per_s_batch1"] > 0
    encoder = Predictor.from_pretrained(ckpt, runtime="torch").text.encoder.model
    assert titled["params_total"] - bare["params_total"] == sum(p.numel() for p in encoder.parameters())
    assert titled["gflops_per_image"] > bare["gflops_per_image"]
    assert "| inputs | image + title (16 tokens) |" in (tmp_path / "titled" / "bench.md").read_text()
    result = CliRunner().invoke(app, [*args, "--title-tokens", "999"])
    assert result.exit_code == 2 and "over the encoder's 64" in result.output


def test_any_sentence_transformers_folder_as_the_text_encoder(tmp_path) -> None:
    """Issue 18: text.encoder takes any sentence-transformers model by id or folder (here a 2-layer BERT
    folder, 32-dim); the checkpoint records it, and its embeddings are cached under its own key."""
    from taxonomist.features.text import text_cache

    catalog = make_catalog(tmp_path / "data", titles=True)
    titles = pd.read_csv(catalog)["title"].tolist()
    encoder = tiny_sentence_encoder(tmp_path / "encoder", titles)
    cfg = listing_config(catalog, tmp_path / "cache", {"encoder": str(encoder), "max_length": 32}, epochs=5)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    invoke("train", "-c", str(config), "-o", str(tmp_path / "ckpt"), "-q")

    predictor = Predictor.from_pretrained(tmp_path / "ckpt")
    record = predictor.checkpoint.text
    assert record["encoder"] == str(encoder) and predictor.text.encoder.dim == 32
    assert record["dim"] == 32 + predictor.text.probe.dim  # the heads were built for this encoder
    assert record["fingerprint"] == predictor.text.encoder.weights_fingerprint()
    eager = Predictor.from_pretrained(tmp_path / "ckpt", runtime="torch")
    # Training embedded each distinct title once (torch fp32), under this encoder's own key.
    cache = text_cache(eager.text.encoder, tmp_path / "cache")
    assert cache.dir.name == f"text-{record['fingerprint']}" and len(cache) == len(set(titles))
    image = str(catalog.parent / "images" / "1000.jpg")
    (fast,), (slow,) = (p.predict([image], ["Tops"], texts=["Acme Red top"]) for p in (predictor, eager))
    for attribute, value in slow.attributes.items():
        assert fast.attributes[attribute].value == value.value
        assert fast.attributes[attribute].confidence == pytest.approx(value.confidence, abs=1e-3)
    out = invoke("evaluate", str(tmp_path / "ckpt"), "--output", str(tmp_path / "eval"), "-q")
    assert "text, every image missing" in out
    # Regression: the checkpoint held the encoder's path alone, so it broke once that folder moved.
    encoder.rename(tmp_path / "moved")
    (again,) = Predictor.from_pretrained(tmp_path / "ckpt").predict([image], ["Tops"], texts=["Acme Red top"])
    assert {a: v.value for a, v in again.attributes.items()} == {
        a: v.value for a, v in fast.attributes.items()
    }
