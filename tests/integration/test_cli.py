"""End to end through the console script's functions: train → evaluate → predict → resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from taxonomist.cli.main import app
from taxonomist.data.schema import SchemaError
from taxonomist.inference.predictor import Predictor
from taxonomist.io import ResumeError
from taxonomist.models.checkpoint import checkpoint_version

from .conftest import invoke

pytestmark = pytest.mark.integration
runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tiny_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Trained once per module; tests only read the checkpoint."""
    catalog, config = tiny_run
    ckpt = tmp_path_factory.mktemp("run") / "ckpt"
    out = invoke("train", "-c", str(config), "-o", str(ckpt), "-q")
    assert "score" in out
    return catalog, config, ckpt


def test_train_writes_a_self_contained_checkpoint(trained: tuple[Path, Path, Path]) -> None:
    _, _, ckpt = trained
    assert {"model.safetensors", "taxonomist.json", "schema.json", "config.yaml", "metrics.json"} <= {
        p.name for p in ckpt.iterdir()
    }
    metrics = json.loads((ckpt / "metrics.json").read_text())
    # Colour is trivially visible in the pixels: the heads must learn it.
    color = {r["attribute"]: r for r in metrics["report"]["per_attribute"]}["color"]
    assert color["accuracy"] >= 0.9
    assert set(metrics["calibration"]) == {"color", "fit"}
    meta = json.loads((ckpt / "taxonomist.json").read_text())
    assert meta["preprocess"]["size"] == 64 and meta["categories"] == ["Bags", "Tops"]


def test_evaluate_matches_training_report(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Evaluate remakes the training run's parts: test by default, dev on request, same scores."""
    _, _, ckpt = trained
    metrics = json.loads((ckpt / "metrics.json").read_text())
    assert metrics["selection_split"] == "dev" and metrics["test_score"] is not None
    for split, key in (("test", "test_score"), ("dev", "dev_score")):
        invoke("evaluate", str(ckpt), "--split", split, "--output", str(tmp_path / split), "-q")
        evaluation = json.loads((tmp_path / split / "evaluation.json").read_text())
        assert evaluation["split"] == split and evaluation["split_matches_training"] is True
        assert evaluation["score"] == pytest.approx(metrics[key], abs=1e-6)
        interval = evaluation["score_interval"]
        assert interval["value"] == pytest.approx(evaluation["score"])
        assert interval["low"] <= interval["value"] <= interval["high"] and interval["low"] < interval["high"]
        assert interval["level"] == 0.95 and interval["resamples"] == 1000
    invoke("evaluate", str(ckpt), "--resamples", "0", "--output", str(tmp_path / "none"), "-q")
    assert json.loads((tmp_path / "none" / "evaluation.json").read_text())["score_interval"] is None
    report = json.loads((ckpt / "data_report.json").read_text())
    assert report["parts"]["dev"] + report["parts"]["test"] + report["parts"]["train"] == 120
    out = invoke("evaluate", str(ckpt), "--report", "-q")
    folder = ckpt / "evaluation-test"  # --report's default output
    evaluation = json.loads((folder / "evaluation.json").read_text())
    assert evaluation["score"] == pytest.approx(metrics["test_score"], abs=1e-6)
    assert "scores_by_inputs" not in evaluation  # image-only heads: nothing to take away
    assert f"report: {folder / 'report.html'}" in out and "majority-class baseline" in out
    assert "(95% CI" in out and "95% interval (bootstrap)" in (folder / "report.html").read_text()
    scored = pd.read_csv(folder / "predictions.csv", dtype={"id": str})
    assert {"label", "predicted", "confidence", "confidence_before", "correct", "path"} <= set(scored.columns)
    # The scored rows agree with the score: every labelled (item, attribute) of the test part.
    assert scored.groupby("attribute").size().sum() == sum(p["n"] for p in evaluation["pairs"])
    assert (folder / "reliability.png").is_file() and (folder / "confusion_color.png").is_file()


def test_predict_layouts_are_valid_for_each_category(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, _, ckpt = trained
    out = tmp_path / "pred"
    invoke("predict", str(ckpt), "-o", str(out), "-q")
    wide = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    long = pd.read_csv(out / "predictions_long.csv", dtype={"id": str})
    assert len(wide) == 120 and wide["id"].is_unique
    assert list(wide.columns[:4]) == ["id", "Category", "len", "attr_1"]
    schema = json.loads((ckpt / "schema.json").read_text())["categories"]
    for row in long.itertuples():
        assert row.value in schema[row.category][row.attribute]
        assert 0 < row.confidence <= 1
    bags = wide[wide["Category"] == "Bags"]
    assert (
        set(bags["len"]) == {"1"} and set(bags["attr_1"]) <= {"red", "blue"} and set(bags["attr_2"]) == {""}
    )


def test_min_confidence_writes_placeholder(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """The placeholder replaces exactly the values less confident than the threshold (one in [0, 1]:
    the median confidence, so both sides have values)."""
    _, _, ckpt = trained
    invoke("predict", str(ckpt), "-o", str(tmp_path / "all"), "-q")
    plain = pd.read_csv(tmp_path / "all" / "predictions_long.csv", dtype={"id": str})
    threshold = float(plain["confidence"].median())
    out = tmp_path / "pred"
    args = ["--min-confidence", str(threshold), "--placeholder", "unsure", "-q"]
    invoke("predict", str(ckpt), "-o", str(out), *args)
    long = pd.read_csv(out / "predictions_long.csv", dtype={"id": str})
    unsure = long["value"] == "unsure"
    assert (unsure == (long["confidence"] < threshold)).all()
    assert unsure.any() and not unsure.all()
    assert (long.loc[~unsure, "value"] == plain.loc[~unsure, "value"]).all()


def test_bad_images_are_reported_not_fatal(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    catalog, _, ckpt = trained
    data = tmp_path / "data"
    shutil.copytree(catalog.parent, data)  # the shared catalog stays intact for other tests
    (data / "images" / "1003.jpg").write_bytes(b"not a jpeg")
    (data / "images" / "1004.jpg").unlink()
    out = tmp_path / "pred"
    invoke("predict", str(ckpt), "-o", str(out), "-q", "--data", str(data / "catalog.csv"))
    errors = pd.read_csv(out / "errors.csv", dtype=str).set_index("id")
    assert errors.loc["1003", "reason"] == "corrupt" and errors.loc["1004", "reason"] == "missing"
    wide = pd.read_csv(out / "predictions.csv", dtype=str)
    assert len(wide) == 118 and not {"1003", "1004"} & set(wide["id"])


def test_python_api_and_unknown_category(trained: tuple[Path, Path, Path]) -> None:
    catalog, _, ckpt = trained
    predictor = Predictor.from_pretrained(ckpt)
    [pred] = predictor.predict([catalog.parent / "images" / "1001.jpg"], ["Bags"], ids=["1001"])
    assert set(pred.attributes) == {"color"} and pred.attributes["color"].value in {"red", "blue"}
    with pytest.raises(SchemaError, match="unknown categories \\['Shoes'\\]"):
        predictor.predict([catalog.parent / "images" / "1001.jpg"], ["Shoes"])
    # Regressions: checked before any decoding, and no images is no predictions.
    image = catalog.parent / "images" / "1001.jpg"
    assert predictor.predict([], []) == []
    with pytest.raises(TypeError, match="images must be a list"):
        predictor.predict(str(image), ["Bags"])
    with pytest.raises(TypeError, match="categories must be a list"):
        predictor.predict([image], "Bags")
    with pytest.raises(ValueError, match="1 images, 1 categories and 2 ids"):
        predictor.predict([image], ["Bags"], ids=["a", "b"])


def test_pil_input_sees_the_pixels_of_its_file(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Regression: PIL inputs skipped the loader, so a 16-bit PNG came out white and EXIF was ignored."""
    catalog, _, ckpt = trained
    predictor = Predictor.from_pretrained(ckpt)
    rgb = np.asarray(Image.open(catalog.parent / "images" / "1001.jpg").convert("L"), dtype=np.uint16)
    path = tmp_path / "wide.png"
    Image.fromarray(rgb * 257).save(path)  # 16-bit grayscale, values up to 65535
    seen: list[torch.Tensor] = []
    predictor.backbone.register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
    by_path, by_image = (predictor.predict([x], ["Bags"])[0] for x in (path, Image.open(path)))
    torch.testing.assert_close(seen[1], seen[0])  # the network sees the same pixels
    assert by_image.attributes == by_path.attributes


def test_checkpoint_version_is_its_content(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """A copy elsewhere keeps its version; outputs written inside the folder do not change it."""
    _, _, ckpt = trained
    version = Predictor.from_pretrained(ckpt).version
    copy = shutil.copytree(ckpt, tmp_path / "copy")
    (copy / "notes.txt").write_text("mine")
    assert Predictor.from_pretrained(copy).version == version
    (copy / "schema.json").write_text((copy / "schema.json").read_text() + " ")
    assert checkpoint_version(copy) != version


def test_predictor_device_choice(trained: tuple[Path, Path, Path]) -> None:
    catalog, _, ckpt = trained
    images = [catalog.parent / "images" / f"{i}.jpg" for i in (1001, 1002)]
    cpu = Predictor.from_pretrained(ckpt, device="cpu")
    assert cpu.device == torch.device("cpu")
    expected = cpu.predict(images, ["Bags", "Bags"])
    auto = Predictor.from_pretrained(ckpt)  # the GPU when there is one
    assert auto.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert [p.attributes["color"].value for p in auto.predict(images, ["Bags", "Bags"])] == [
        p.attributes["color"].value for p in expected
    ]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_predict_catalog_matches_cpu(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Batch prediction with backbone and heads on the GPU: same values, confidences within float noise."""
    _, _, ckpt = trained
    invoke("predict", str(ckpt), "-o", str(tmp_path / "cpu"), "-q", "--set", "embed.device=cpu")
    invoke("predict", str(ckpt), "-o", str(tmp_path / "gpu"), "-q", "--set", "embed.device=cuda")
    a = pd.read_csv(tmp_path / "cpu" / "predictions_long.csv", dtype={"id": str})
    b = pd.read_csv(tmp_path / "gpu" / "predictions_long.csv", dtype={"id": str})
    pd.testing.assert_frame_equal(a.drop(columns="confidence"), b.drop(columns="confidence"))
    assert (a["confidence"] - b["confidence"]).abs().max() < 1e-3


def test_predict_resumes_after_kill_9(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, _, ckpt = trained
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    invoke("predict", str(ckpt), "-o", str(clean), "-q", "--set", "predict.chunk_size=4")
    cmd = [sys.executable, "-m", "taxonomist.cli", "predict", str(ckpt), "-o", str(crashed), "-q"]
    cmd += ["--set", "predict.chunk_size=4"]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list((crashed / "parts").glob("done-*.parquet"))) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    killed = proc.returncode == -signal.SIGKILL
    done_before = len(list((crashed / "parts").glob("done-*.parquet")))
    invoke("predict", str(ckpt), "-o", str(crashed), "-q", "--set", "predict.chunk_size=4")
    a = pd.read_csv(clean / "predictions_long.csv", dtype={"id": str})
    b = pd.read_csv(crashed / "predictions_long.csv", dtype={"id": str})
    pd.testing.assert_frame_equal(a, b)
    assert b.groupby(["id", "attribute"]).size().max() == 1
    summary = json.loads((crashed / "summary.json").read_text())
    assert "predicted_by_inputs" not in summary  # image-only heads: every row from its image
    if killed:
        assert 0 < done_before < 30 and summary["resumed_chunks"] == done_before


def test_embed_fills_the_cache_then_hits_it(tiny_run: tuple[Path, Path]) -> None:
    _, config = tiny_run
    invoke("embed", "-c", str(config), "-q")
    out = invoke("embed", "-c", str(config), "-q")
    assert "120 cached, 0 computed, 0 errors" in out


def test_inspect_writes_a_report(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    _, config = tiny_run
    out = invoke("inspect", "-c", str(config), "-o", str(tmp_path / "report"), "-q")
    assert "report:" in out
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["rows"] == 120
    assert (tmp_path / "report" / "index.html").is_file()


def test_bad_config_is_a_clear_cli_error(tiny_run: tuple[Path, Path]) -> None:
    _, config = tiny_run
    result = runner.invoke(app, ["train", "-c", str(config), "--set", "train.epoch=3"])
    assert result.exit_code != 0
    assert "unknown config key" in result.output


def test_training_is_reproducible_cold_or_warm_cache(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    """The embedding pass (cold cache) must not shift the RNG that initialises the heads."""
    _, config = tiny_run
    cold = ["--set", f"embed.cache_dir={tmp_path / 'fresh-cache'}"]
    invoke("train", "-c", str(config), "-o", str(tmp_path / "a"), "-q", *cold)
    invoke("train", "-c", str(config), "-o", str(tmp_path / "b"), "-q", *cold)
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a["history"] == b["history"]


def test_predict_new_rows_skips_unknown_categories(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """A small new catalog: training-time filters don't apply; an unknown category is reported, not fatal."""
    catalog, _, ckpt = trained
    new = pd.DataFrame({"sku": ["1001", "1002", "1003"], "type": ["Bags", "Tops", "Shoes"]})
    new.to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "pred"
    overrides = ["--set", f"catalog.image_root={catalog.parent}", "--set", "catalog.min_rows_per_category=50"]
    invoke("predict", str(ckpt), "-o", str(out), "--data", str(tmp_path / "new.csv"), "-q", *overrides)
    wide = pd.read_csv(out / "predictions.csv", dtype=str)
    assert wide["id"].tolist() == ["1001", "1002"]
    errors = pd.read_csv(out / "errors.csv", dtype=str)
    assert errors.to_dict("records")[0]["reason"] == "unknown-category"
    assert "Shoes" in errors["detail"].iat[0]


def test_predict_refuses_to_resume_another_job(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Regression: a rerun into the same folder with other rows (same count) or another model silently
    returned the first run's predictions."""
    catalog, config, ckpt = trained
    rows = pd.read_csv(catalog, dtype=str)
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    rows.iloc[:10].to_csv(first, index=False)
    rows.iloc[10:20].to_csv(second, index=False)
    out = tmp_path / "out"
    images = ["--images", str(catalog.parent)]  # the rows' images stay beside the original catalog
    invoke("predict", str(ckpt), "--data", str(first), "-o", str(out), "-q", *images)
    first.write_text(second.read_text())  # same file name, other rows
    with pytest.raises(ResumeError, match="holds a finished job with other input rows; to start afresh"):
        invoke("predict", str(ckpt), "--data", str(first), "-o", str(out), "-q", *images)

    retrained = tmp_path / "retrained"
    invoke("train", "-c", str(config), "-o", str(retrained), "-q", "--set", "train.epochs=1")
    invoke("predict", str(ckpt), "--data", str(second), "-o", str(tmp_path / "b"), "-q", *images)
    with pytest.raises(ResumeError, match="holds a finished job with other model"):
        invoke("predict", str(retrained), "--data", str(second), "-o", str(tmp_path / "b"), "-q", *images)


def test_predict_resumes_whether_the_data_path_is_relative_or_absolute(
    trained: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the manifest held the path as typed, so the same job rerun by absolute path was refused."""
    catalog, _, ckpt = trained
    out = tmp_path / "out"
    monkeypatch.chdir(catalog.parent)
    invoke("predict", str(ckpt), "--data", catalog.name, "-o", str(out), "-q")
    again = json.loads(invoke("predict", str(ckpt), "--data", str(catalog), "-o", str(out), "-q"))
    assert again["resumed_chunks"] == -(-again["rows"] // 16) > 0  # every chunk of 16 rows
