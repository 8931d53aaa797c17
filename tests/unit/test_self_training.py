"""Self-training of the heads: pseudo-label selection, precision, round artifacts and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from taxonomist.cli.main import app
from taxonomist.config import BackboneConfig, ConfigError, EmbedConfig, load_config
from taxonomist.data.catalog import Catalog, CatalogError
from taxonomist.data.labels import MISSING
from taxonomist.data.prepare import load_catalog, prepare_catalog
from taxonomist.features.build import embed_options
from taxonomist.features.embed import embed_catalog, view_fingerprint
from taxonomist.io import ResumeError
from taxonomist.models.build import build_backbone, load_heads_checkpoint
from taxonomist.training import self_training
from taxonomist.training.self_training import (
    agreement_with_truth,
    cap_per_value,
    partition,
    select_pseudo_labels,
    self_train,
)
from tests.integration.conftest import listing_config, make_catalog, tiny_config

M = MISSING


def test_pseudo_labels_need_view_agreement_and_calibrated_confidence() -> None:
    original = {
        "color": np.array(
            [
                [0.95, 0.05, 0.0],  # confident, the flip agrees → kept
                [0.95, 0.05, 0.0],  # confident, but the flip's argmax differs → dropped
                [0.60, 0.40, 0.0],  # views agree, mean 0.65 < threshold → dropped
                [0.0, 0.0, 0.0],  # attribute does not apply to the row's category → never
                [0.10, 0.0, 0.90],  # views agree, mean exactly the threshold → kept
            ]
        )
    }
    flipped = {
        "color": np.array(
            [
                [0.91, 0.09, 0.0],
                [0.45, 0.55, 0.0],
                [0.70, 0.30, 0.0],
                [0.0, 0.0, 0.0],
                [0.10, 0.0, 0.90],
            ]
        )
    }
    codes, confidence = select_pseudo_labels([original, flipped], 0.9)
    assert codes["color"].tolist() == [0, M, M, M, 2]
    np.testing.assert_allclose(confidence["color"], [0.93, 0, 0, 0, 0.9])
    # Without the agreement rule row 1's mean (0.70 for value 0) still misses 0.9, but clears 0.68.
    loose, _ = select_pseudo_labels([original, flipped], 0.68, require_agreement=False)
    assert loose["color"].tolist() == [0, 0, M, M, 2]
    strict, _ = select_pseudo_labels([original, flipped], 0.68)
    assert strict["color"].tolist() == [0, M, M, M, 2]


def test_value_cap_keeps_the_most_confident_share_of_each_value() -> None:
    codes = {"color": np.array([0, 0, 0, 0, 1, M, 2, 2])}
    confidence = {"color": np.array([0.7, 0.9, 0.8, 0.95, 0.6, 0.0, 0.99, 0.98])}
    capped = cap_per_value(codes, confidence, 0.5)
    # value 0: 2 of 4 kept (0.95, 0.9); value 1: ceil(0.5) = its only row; value 2: 1 of 2.
    assert capped["color"].tolist() == [M, 0, M, 0, 1, M, 2, M]
    assert cap_per_value(codes, confidence, 1.0)["color"].tolist() == codes["color"].tolist()


def test_precision_counts_only_selected_cells_with_a_known_label() -> None:
    selected = {"a": np.array([1, 2, M, 0, 1]), "b": np.array([M, 3, 3, M, M])}
    truth = {"a": np.array([1, 0, 2, M, 1]), "b": np.array([0, 3, 1, 2, M])}
    out = agreement_with_truth(selected, truth, selected)
    # a: rows 0, 1, 4 are scored (row 3 has no truth): 2 of 3 right; b: rows 1, 2: 1 of 2.
    assert out == {"a": pytest.approx(2 / 3), "b": 0.5, "all": pytest.approx(3 / 5)}
    other = {"a": np.array([0, 0, 0, 0, 0]), "b": np.array([3, 3, 3, 3, 3])}
    assert agreement_with_truth(other, truth, selected) == {"a": pytest.approx(1 / 3), "b": 0.5, "all": 0.4}
    assert agreement_with_truth(selected, truth, {"a": np.full(5, M), "b": np.full(5, M)})["all"] is None


def test_partition_is_disjoint_and_rows_without_labels_join_the_pool() -> None:
    frame = pd.DataFrame(
        {
            "id": [str(i) for i in range(40)],
            "category": ["A"] * 20 + ["B"] * 20,
            "color": ["red"] * 38 + [None, None],
            "fit": ["slim"] * 20 + [None] * 20,
        }
    )
    by_cat = {"A": ["color", "fit"], "B": ["color"]}
    parts = partition(frame, by_cat, 0.5, 0.25, seed=0)
    rows = np.concatenate([parts.fit, parts.dev, parts.pool])
    assert sorted(rows.tolist()) == list(range(40))
    assert {38, 39} <= set(parts.pool.tolist())
    assert len(parts.fit) + len(parts.dev) == 19  # half of 20 + half of the 18 labeled B rows
    everything = partition(frame, by_cat, 1.0, 0.25, seed=0)
    assert everything.pool.tolist() == [38, 39]


def test_partition_draws_a_category_s_only_labeled_row() -> None:
    """Regression: 40% of one row rounds to none, so the row was hidden in the pool; the schema, inferred
    from the drawn rows, then lacked the category and self-train failed with a KeyError on its name."""
    frame = pd.DataFrame(
        {
            "id": [str(i) for i in range(23)],
            "category": ["A"] * 20 + ["C"] * 3,
            "color": ["red"] * 21 + [None, None],
        }
    )
    parts = partition(frame, {"A": ["color"], "C": ["color"]}, 0.4, 0.3, seed=0)
    assert 20 in parts.fit.tolist() and {21, 22} <= set(parts.pool.tolist())
    assert len(parts.fit) + len(parts.dev) == 8 + 1


def test_hflip_view_encodes_the_mirrored_image_and_is_cached_apart(tmp_path: Path) -> None:
    img = np.full((32, 32, 3), 255, dtype=np.uint8)
    img[:, :8] = (200, 20, 20)  # an asymmetric product: mirroring it changes the pixels
    (tmp_path / "images").mkdir()
    Image.fromarray(img).save(tmp_path / "images" / "1.png")
    Image.fromarray(img[:, ::-1]).save(tmp_path / "images" / "2.png")
    catalog = Catalog(
        pd.DataFrame({"id": ["1", "2"], "category": ["A", "A"]}), [], tmp_path, "images/{id}.png", {"A": []}
    )
    backbone = build_backbone(BackboneConfig(pretrained=False, size=32, color_features=False))
    cfg = EmbedConfig(num_workers=0, cache_dir=str(tmp_path / "cache"))
    original = embed_catalog(catalog, backbone, **embed_options(cfg), progress=False)
    flipped = embed_catalog(catalog, backbone, **embed_options(cfg), progress=False, view="hflip")
    assert flipped.computed == 2  # the original view's cache entries are not the mirrored view's
    np.testing.assert_allclose(flipped.features, original.features[::-1], rtol=1e-4, atol=1e-12)
    assert view_fingerprint(backbone, "hflip") != view_fingerprint(backbone)
    assert embed_catalog(catalog, backbone, **embed_options(cfg), progress=False, view="hflip").cached == 2


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("self-train")
    raw = tiny_config(make_catalog(root / "data"), root / "cache", epochs=15, patience=15)
    raw["self_training"] = {"labeled_fraction": 0.4, "dev_fraction": 0.3, "threshold": 0.6}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_rounds_write_artifacts_and_a_rerun_resumes_after_the_last_finished_round(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["self-train", "-c", str(config), "-o", str(out), "--rounds", "1", "-q"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    for k in (0, 1):
        assert {"model.safetensors", "taxonomist.json", "config.yaml", "metrics.json"} <= {
            p.name for p in (out / f"round-{k}").iterdir()
        }
    progress = json.loads((out / "progress.json").read_text())
    assert [r["round"] for r in progress["rounds"]] == [0, 1]
    round1 = progress["rounds"][1]
    assert sum(round1["n_pseudo"].values()) > 0

    # Precision in the record = the parquet's pseudo-labels checked against the hidden catalog labels.
    cfg = load_config(config)
    catalog = load_catalog(cfg.catalog)
    truth = catalog.frame.set_index("id")
    pseudo = pd.read_parquet(out / "round-1" / "pseudo_labels.parquet")
    known = pseudo[[pd.notna(truth.at[i, a]) for i, a in zip(pseudo["id"], pseudo["attribute"], strict=True)]]
    right = [
        truth.at[i, a] == v for i, a, v in zip(known["id"], known["attribute"], known["value"], strict=True)
    ]
    assert round1["pseudo_label_precision"]["all"] == pytest.approx(np.mean(right))
    # Pseudo-labels are only ever given to rows outside the labeled part of the training split.
    data = prepare_catalog(cfg)
    train_frame = data.catalog.frame.iloc[self_training.training_rows(data)].reset_index(drop=True)
    parts = partition(train_frame, catalog.attributes_by_category, 0.4, 0.3, cfg.self_training.seed)
    assert set(pseudo["id"]) <= set(train_frame["id"].iloc[parts.pool])

    # A killed run is a run whose progress.json names fewer rounds: a rerun fits only the missing ones.
    mtime = (out / "round-1" / "model.safetensors").stat().st_mtime_ns
    calls = []
    fit = self_training.fit_heads
    monkeypatch.setattr(self_training, "fit_heads", lambda *a, **k: calls.append(1) or fit(*a, **k))
    cfg.self_training.rounds = 2
    report = self_train(cfg, out, progress=False)
    assert len(calls) == 1 and [r["round"] for r in report.rounds] == [0, 1, 2]
    assert (out / "round-1" / "model.safetensors").stat().st_mtime_ns == mtime
    assert report.rounds[1] == round1
    assert report.best_round == int(np.argmax([r["dev_score"] for r in report.rounds]))

    cfg.self_training.threshold = 0.99
    with pytest.raises(ResumeError):
        self_train(cfg, out, progress=False)
    # Regression: the text and embed settings were left out, so rounds of another title model resumed.
    cfg.self_training.threshold = 0.6
    cfg.text.fusion = "gated"
    with pytest.raises(ResumeError):
        self_train(cfg, out, progress=False)


def test_title_view_teaches_the_image_student(tmp_path: Path) -> None:
    # 240 rows: with the test part held out too, 120 leave the student about nine dev rows to pick epochs.
    catalog = make_catalog(tmp_path / "data", n=240, titles=True)
    raw = tiny_config(catalog, tmp_path / "cache", epochs=15, patience=15)
    raw["catalog"]["text_column"] = "title"
    raw["backbone"]["color_features"] = False  # random features: the images alone hardly tell colours apart
    raw["self_training"] = {"labeled_fraction": 0.4, "dev_fraction": 0.3, "threshold": 0.6, "rounds": 1}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    with_titles = self_train(load_config(path), tmp_path / "titles", progress=False)
    images_only = self_train(
        load_config(path, ["self_training.text_view=false"]), tmp_path / "images", progress=False
    )
    assert images_only.text_view is None
    assert with_titles.text_view["dev_accuracy"]["color"] == 1.0  # every title names the colour
    # The titles' opinion reaches the pseudo-labels: colour cells the images alone cannot label, all
    # right, where round 0 gets about half of those same cells wrong; the student learns colour from them.
    title_round, image_round = with_titles.rounds[1], images_only.rounds[1]
    assert title_round["n_pseudo"]["color"] > image_round["n_pseudo"]["color"]
    assert title_round["pseudo_label_precision"]["color"] == 1.0
    assert title_round["supervised_accuracy_same_items"]["color"] < 0.8
    color_score = title_round["test_per_attribute"]["color"]
    assert color_score > image_round["test_per_attribute"]["color"] + 0.1
    # The student is the image heads alone: its checkpoint predicts from images, as round 0's does.
    _, student = load_heads_checkpoint(tmp_path / "titles" / "round-1")
    _, supervised = load_heads_checkpoint(tmp_path / "titles" / "round-0")
    assert student.state_dict().keys() == supervised.state_dict().keys()


def test_the_fused_student_reads_titles_and_its_rounds_are_listing_checkpoints(tmp_path: Path) -> None:
    """heads.inputs [image, text]: every round trains listing heads; the teacher (the fused model on each
    image view with the title) labels colour cells the images alone cannot, and the round checkpoints
    predict from a listing's title."""
    from taxonomist.inference.predictor import Predictor

    catalog = make_catalog(tmp_path / "data", n=240, titles=True)
    raw = listing_config(catalog, tmp_path / "cache", {"probe_folds": 2}, epochs=15, patience=15)
    raw["backbone"]["color_features"] = False  # random features: the images alone hardly tell colours apart
    raw["self_training"] = {"labeled_fraction": 0.4, "dev_fraction": 0.3, "threshold": 0.6, "rounds": 1}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    fused = self_train(load_config(path), tmp_path / "fused", progress=False)
    images = self_train(
        load_config(path, ["heads.inputs=[image]", "self_training.text_view=false"]),
        tmp_path / "images",
        progress=False,
    )
    assert (fused.student, images.student) == ("listing heads", "image heads")
    assert fused.text_view is None  # the teacher reads the title itself: no separate title classifier
    fused_round, image_round = fused.rounds[1], images.rounds[1]
    assert fused_round["n_pseudo"]["color"] > image_round["n_pseudo"]["color"]
    assert fused_round["pseudo_label_precision"]["color"] >= 0.95  # measured against the hidden labels
    assert fused_round["test_per_attribute"]["color"] > image_round["test_per_attribute"]["color"] + 0.1
    predictor = Predictor.from_pretrained(tmp_path / "fused" / "round-1")
    assert predictor.checkpoint.inputs == ["image", "text"] and predictor.text.probe is not None
    assert predictor.checkpoint.temperatures_by_inputs["image"]  # blank titles keep calibrated confidences
    image = str(catalog.parent / "images" / "1000.jpg")
    (blue,) = predictor.predict([image], ["Tops"], texts=["Acme Blue top"])
    (red,) = predictor.predict([image], ["Tops"], texts=["Acme Red top"])
    assert (blue.attributes["color"].value, red.attributes["color"].value) == ("blue", "red")
    # A rerun resumes from the round checkpoints (listing heads loaded back with their text features).
    again = self_train(load_config(path), tmp_path / "fused", progress=False)
    assert again.rounds == fused.rounds


def test_a_labeled_draw_too_small_to_hold_out_dev_rows_is_refused(config: Path) -> None:
    """Regression: 2% of the training rows drew one labeled row per category, none was left for dev, and
    the first round failed in torch.cat on the empty dev part."""
    cfg = load_config(config, ["self_training.labeled_fraction=0.02"])
    with pytest.raises(ConfigError, match=r"hold out for dev \(labeled rows drawn: Bags: 1, Tops: 1\)"):
        self_training.prepare(cfg, progress=False)


def test_the_cli_table_leaves_the_test_score_blank_without_a_test_part(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run without a test part records its test score as None; the table printed it with ``:.4f``."""
    rounds = [{"round": 0, "dev_score": 0.5, "test_score": None}]
    report = self_training.SelfTrainingReport(str(tmp_path), rounds, 0, 4, 2, 0, 0, 0.0)
    monkeypatch.setattr(self_training, "self_train", lambda *a, **k: report)
    result = CliRunner().invoke(app, ["self-train", "-c", str(config), "-o", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    assert "0.5000" in result.output


def test_a_fused_student_refuses_warm_start(tmp_path: Path) -> None:
    cfg = load_config(values={"heads.inputs": ["image", "text"], "self_training.warm_start": True})
    with pytest.raises(ConfigError, match="warm_start"):
        self_train(cfg, tmp_path)


def test_the_data_report_counts_the_rows_self_training_fits_on(config: Path, tmp_path: Path) -> None:
    """Regression: the report described the shared split (train 95 / dev 40, 9 dropped) while the recipe
    fits on its own labeled part, whose policy drops were counted nowhere."""
    cfg = load_config(config, ["missing_labels.policy=drop", "self_training.rounds=0", "train.epochs=2"])
    report = self_train(cfg, tmp_path / "run", progress=False)
    written = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert set(written["parts"]) == {"fit", "dev", "pool", "test"}
    assert written["parts"]["fit"] == report.n_fit
    assert written["policy"]["policy"] == "drop" and written["policy"]["rows_dropped"] > 0
    dropped = written["dropped_rows"]["missing_label_policy"]
    assert sum(dropped.values()) == written["policy"]["rows_dropped"]


def test_a_policy_that_empties_a_category_s_fit_rows_is_refused_by_name(tmp_path: Path) -> None:
    """Regression: ``drop`` removed the one drawn Hats row (it lacks ``fit``) and, with no Hats dev row,
    the inferred schema lacked the category: prepare failed with ``KeyError: 'Hats'`` instead of saying
    which policy emptied which category, as the shared data step does for its train part."""
    path = make_catalog(tmp_path / "data")
    frame = pd.read_csv(path, dtype=str)
    hats = frame.iloc[:6].assign(
        sku=[str(5000 + i) for i in range(6)],
        type="Hats",
        color=["red", "blue", None, None, None, None],
        fit=["wide", None, "tall", None, None, None],
    )
    for old, new in zip(frame["sku"].iloc[:6], hats["sku"], strict=True):
        (tmp_path / "data" / "images" / f"{new}.jpg").write_bytes(
            (tmp_path / "data" / "images" / f"{old}.jpg").read_bytes()
        )
    pd.concat([frame, hats]).to_csv(path, index=False)
    raw = tiny_config(path, tmp_path / "cache")
    raw["self_training"] = {"labeled_fraction": 0.4, "dev_fraction": 0.3, "seed": 0}
    raw["missing_labels"] = {"policy": "drop"}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(CatalogError, match=r"policy=drop left no labeled fit row of \['Hats'\]"):
        self_training.prepare(load_config(config), progress=False)


def test_the_data_report_counts_rows_left_out_for_an_unreadable_image(tmp_path: Path) -> None:
    """Regression: rows whose image could not be read were left out of every part without a word: the
    report named 120 rows in its parts and no unreadable image while the rounds saw 100."""
    path = make_catalog(tmp_path / "data")
    for i in range(0, 120, 6):
        (tmp_path / "data" / "images" / f"{1000 + i}.jpg").unlink()
    raw = tiny_config(path, tmp_path / "cache")
    raw["self_training"] = {"labeled_fraction": 0.4, "dev_fraction": 0.3}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    data = self_training.prepare(load_config(config), progress=False)
    report = data.data_report
    seen = {"fit": len(data.fit), "dev": len(data.dev), "pool": len(data.pool_frame), "test": len(data.test)}
    assert sum(report.unreadable_images.values()) == 20
    assert {p: report.parts[p] - report.unreadable_images[p] for p in seen} == seen


def test_a_rerun_on_an_edited_catalog_is_refused_not_resumed(tmp_path: Path) -> None:
    """Regression: the resume check compared settings only, so after the catalog's labels were edited a
    rerun kept the rounds fitted on the old labels as its own, as fine-tuning did before 5cc8c40."""
    path = make_catalog(tmp_path / "data")
    raw = tiny_config(path, tmp_path / "cache", epochs=2, patience=2)
    raw["self_training"] = {"labeled_fraction": 0.4, "dev_fraction": 0.3, "rounds": 0}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    self_train(load_config(config), out, progress=False)
    self_train(load_config(config), out, progress=False)  # the same rows: resumes
    frame = pd.read_csv(path, dtype=str)
    frame["color"] = frame["color"].map({"red": "blue", "blue": "red"}).fillna(frame["color"])  # same schema
    frame.to_csv(path, index=False)
    with pytest.raises(ResumeError, match="other data"):
        self_train(load_config(config), out, progress=False)


@pytest.mark.parametrize("titles", [False, True])
def test_an_empty_pool_and_test_part_run_every_round(tmp_path: Path, titles: bool) -> None:
    """Regression: with every row labeled and labeled_fraction 1.0 the pool is empty (as documented), and
    with train.test_fraction 0 so is the test part; predicting either failed in torch.cat on no batch,
    and the title view's classifier failed in sklearn's tf-idf on no pool text."""
    path = make_catalog(tmp_path / "data", titles=titles)
    frame = pd.read_csv(path, dtype=str)
    frame.assign(color=frame["color"].fillna("red")).to_csv(path, index=False)
    raw = tiny_config(path, tmp_path / "cache", epochs=2, patience=2, test_fraction=0.0)
    if titles:
        raw["catalog"]["text_column"] = "title"
    raw["self_training"] = {"labeled_fraction": 1.0, "dev_fraction": 0.3, "rounds": 1}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    report = self_train(load_config(config), tmp_path / "run", progress=False)
    assert (report.n_pool, report.n_test) == (0, 0)
    assert (report.text_view is not None) == titles
    assert report.rounds[1]["n_pseudo"] == {"color": 0, "fit": 0}
    assert pd.read_parquet(tmp_path / "run" / "round-1" / "pseudo_labels.parquet").empty
    # Regression: no test part scored NaN, written as ``NaN`` (not JSON); the heads recipe writes null.
    strict = {"parse_constant": lambda name: pytest.fail(f"{name} is not JSON")}
    progress = json.loads((tmp_path / "run" / "progress.json").read_text(), **strict)
    for k in (0, 1):
        metrics = json.loads((tmp_path / "run" / f"round-{k}" / "metrics.json").read_text(), **strict)
        meta = json.loads((tmp_path / "run" / f"round-{k}" / "taxonomist.json").read_text(), **strict)
        assert metrics["test_score"] is None and meta["metrics"]["test_score"] is None
        assert progress["rounds"][k]["test_score"] is None
