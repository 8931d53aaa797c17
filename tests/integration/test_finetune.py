"""Recipe ``finetune`` end to end on the tiny synthetic catalog: train, resume, phase 2, predict, bench,
and two-process data parallel (gloo) against one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from taxonomist.cli.main import app
from taxonomist.config import load_config
from taxonomist.io import ResumeError
from taxonomist.training.finetune import FinetuneModel, build_heads, phase_two

from .conftest import listing_config, make_catalog, tiny_config

pytestmark = pytest.mark.integration

FT = {
    "epochs": 2,
    "batch_size": 16,
    "num_workers": 0,
    "max_steps_per_epoch": 3,
    "phase2_epochs": 2,
    "augment_p": 0.5,
}


def _config(tmp_path: Path, **finetune: object) -> Path:
    catalog = make_catalog(tmp_path / "data", n=80)
    cfg = tiny_config(catalog, tmp_path / "cache")
    cfg["finetune"] = {**FT, **finetune}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(config: Path, out: Path, *sets: str):
    args = ["train", "--recipe", "finetune", "-c", str(config), "-o", str(out), "-q"]
    return CliRunner().invoke(app, [*args, *(x for s in sets for x in ("--set", s))])


def test_finetune_trains_resumes_predicts_and_benches(tmp_path: Path) -> None:
    config = _config(tmp_path)
    out = tmp_path / "run"
    result = _train(config, out, "finetune.epochs=1")
    assert result.exit_code == 0, result.output
    first = json.loads((out / "metrics.json").read_text())
    assert first["resumed_from_epoch"] == 0 and len(first["epochs"]) == 1
    assert 0 <= first["warm_start_score"] <= 1  # LP-FT: heads fitted on frozen features first
    # A rerun with more epochs continues from the saved state instead of starting over.
    result = _train(config, out, "finetune.epochs=2")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == 1 and [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    # Regression: a rerun with other settings took the saved epochs as its own and trained nothing.
    result = _train(config, out, "finetune.epochs=3", "finetune.backbone_lr=0.01")
    assert isinstance(result.exception, ResumeError) and "other settings" in str(result.exception)
    # Phase 2 keeps a head only if its attribute did not get worse.
    for attribute, kept in metrics["phase2_kept"].items():
        if kept:
            assert (
                metrics["per_attribute_phase2"][attribute]
                >= metrics["per_attribute_phase1"][attribute] - 1e-9
            )
    assert metrics["images_per_s_train"] > 0
    assert (out / "backbone.safetensors").exists()
    # Confidences are calibrated as the heads recipe's: a temperature per attribute fitted on dev from
    # the fine-tuned network's logits. Without a prior correction the values are the argmax's.
    from taxonomist.inference.predictor import Predictor

    temperatures = Predictor.from_pretrained(out).checkpoint.temperatures
    assert set(temperatures) == set(metrics["per_attribute_phase2"]) == set(metrics["calibration"])
    assert all(t > 0 for t in temperatures.values())
    assert metrics["class_balance"] == dict.fromkeys(temperatures, 0.0)
    assert metrics["dev_score"] == pytest.approx(metrics["score_phase2"])

    pred = tmp_path / "pred"
    result = CliRunner().invoke(app, ["predict", str(out), "-o", str(pred), "-q"])
    assert result.exit_code == 0, result.output
    assert (pred / "predictions.csv").exists()

    result = CliRunner().invoke(
        app, ["bench", str(out), "-o", str(tmp_path / "bench"), "--batch-sizes", "1,4", "--seconds", "0.2"]
    )
    assert result.exit_code == 0, result.output
    bench = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert bench["params_total"] > 0 and bench["gflops_per_image"] > 0
    assert bench["images_per_s_batch1"] > 0 and bench["latency_ms_p95"] >= bench["latency_ms_p50"]
    assert "gflops" in (tmp_path / "bench" / "bench.md").read_text().lower()


def test_a_rerun_on_an_edited_catalog_is_refused_not_resumed(tmp_path: Path) -> None:
    """Regression: the resume check compared settings only, so a rerun after the catalog's labels were
    corrected continued the epochs trained on the old labels as if they were its own."""
    import pandas as pd

    config = _config(tmp_path, phase2_epochs=0, epochs=1, max_steps_per_epoch=2)
    out = tmp_path / "run"
    assert _train(config, out).exit_code == 0
    catalog = tmp_path / "data" / "catalog.csv"
    frame = pd.read_csv(catalog, dtype=str)
    frame["color"] = frame["color"].map({"red": "blue", "blue": "red", "green": "green"})  # same schema
    frame.to_csv(catalog, index=False)
    result = _train(config, out, "finetune.epochs=2")
    assert isinstance(result.exception, ResumeError) and "other data" in str(result.exception)


def test_attention_head_recipe_with_mmd(tmp_path: Path) -> None:
    config = _config(tmp_path, head="attention", mmd=True, phase2_epochs=1, epochs=1)
    result = _train(config, tmp_path / "run")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics["score_phase2"] <= 1
    # Regression: predict failed with "model.safetensors does not fit taxonomist.json", as if the files
    # came from two runs; no predictor runs attention heads, and the error now says that.
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), "-o", str(tmp_path / "pred"), "-q"])
    assert result.exit_code != 0
    assert "attention heads" in str(result.exception) and "finetune.head: mlp" in str(result.exception)


def test_mmd_trains_past_a_validation_batch_of_one_row(tmp_path: Path) -> None:
    """Regression: 20 validation rows in batches of 19 left a last batch of one row, and the unbiased
    MMD's ValueError stopped training at the second step."""
    from taxonomist.data.prepare import prepare_catalog

    config = _config(tmp_path, mmd=True, batch_size=19, phase2_epochs=0, epochs=1)
    assert len(prepare_catalog(load_config(config)).split.dev) == 20
    result = _train(config, tmp_path / "run")
    assert result.exit_code == 0, repr(result.exception)


def test_dev_score_leaves_out_unreadable_dev_images_as_evaluate_does(tmp_path: Path) -> None:
    """Regression: dev rows whose image could not be read were scored from blank pixels, so they chose
    the epoch, temperatures and prior correction, and metrics.json's dev_score (0.62 here) matched
    neither evaluate's score (0.47, those rows counted wrong) nor its score without them (0.75, what the
    heads recipe's dev_score is)."""
    from taxonomist.data.prepare import prepare_catalog

    config = _config(tmp_path, phase2_epochs=0, epochs=1)
    for item in prepare_catalog(load_config(config)).part("dev")["id"].tolist()[:6]:
        # Distinct bytes: identical files would be grouped as duplicates into one part.
        (tmp_path / "data" / "images" / f"{item}.jpg").write_bytes(f"not an image {item}".encode())
    out = tmp_path / "run"
    result = _train(config, out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    args = ["--split", "dev", "--resamples", "0", "--output", str(tmp_path / "ev"), "-q"]
    result = CliRunner().invoke(app, ["evaluate", str(out), *args])
    assert result.exit_code == 0, result.output
    evaluation = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert evaluation["score"] < evaluation["score_without_unreadable"]  # the rows are unreadable there
    assert metrics["dev_score"] == pytest.approx(evaluation["score_without_unreadable"], abs=1e-9)


def test_phase_two_changes_only_the_heads(tmp_path: Path) -> None:
    """Backbone, trunk and standardisation stay bit-identical; each attribute's own head moves."""
    from accelerate import Accelerator

    from taxonomist.data.prepare import load_catalog
    from taxonomist.data.schema import Schema
    from taxonomist.models.build import build_backbone

    cfg = load_config(_config(tmp_path))
    catalog = load_catalog(cfg.catalog)
    schema = Schema.infer(catalog.frame, catalog.attributes_by_category, attributes=catalog.attributes)
    categories = list(schema.categories)
    backbone = build_backbone(cfg.backbone)
    model = FinetuneModel(backbone, build_heads(cfg, backbone, schema, categories))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    previous = phase_two(model, catalog, catalog.frame, schema, categories, cfg, Accelerator(cpu=True))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "phase 2 trained nothing"
    assert all(k.startswith("heads.heads.") for k in changed), sorted(changed)
    assert set(previous) == set(model.heads.attributes)


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is exercised on Linux")
def test_two_process_data_parallel_matches_one_process(tmp_path: Path) -> None:
    """Same global batch on 1 and 2 processes (gloo): the loss trajectories agree within tolerance.

    Augmentation and dropout are off and BatchNorm is frozen; the masked loss is averaged over the
    labelled rows of the global batch, not of each process's shard (a per-process mean made the
    losses differ by 10-25%), and the partial last batch, which accelerate pads with repeated rows on
    two processes, is dropped (4 steps are asked, 3 full batches exist).
    """
    config = _config(tmp_path, augment_p=0.0, epochs=2, max_steps_per_epoch=4, phase2_epochs=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": os.environ.get("CI", "")}
    losses = {}
    for n in (1, 2):
        out = tmp_path / f"run{n}"
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port",
            str(29500 + n), "-m", "taxonomist.cli", "train", "--recipe", "finetune", "-c", str(config),
            "-o", str(out), "-q",
        ]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["num_processes"] == n
        losses[n] = [e["loss"] for e in metrics["epochs"]]
    assert len(losses[1]) == len(losses[2]) == 2
    for one, two in zip(losses[1], losses[2], strict=True):
        assert two == pytest.approx(one, rel=0.05)


def test_finetune_resumes_after_kill_9(tmp_path: Path) -> None:
    """Killed after its first epoch was checkpointed, a rerun continues at epoch 2, not from scratch."""
    import signal
    import time

    config = _config(tmp_path, epochs=3, phase2_epochs=0)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "taxonomist.cli", "train", "--recipe", "finetune", "-c", str(config)]
    cmd += ["-o", str(out), "-q"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    progress = out / "finetune_progress.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if progress.exists() and json.loads(progress.read_text())["epoch"] == 0:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    result = _train(config, out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == 1
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
    # Regression: the resumed epochs drew epoch 0's batch order again (the sampler's generator was
    # recreated from the seed), so a crash changed the result (by 5% here); now they are the uninterrupted
    # run's, up to the thread count the killed run used (OMP_NUM_THREADS=1).
    assert _train(config, tmp_path / "whole").exit_code == 0
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    resumed_losses = [e["loss"] for e in metrics["epochs"][1:]]
    assert resumed_losses == pytest.approx([e["loss"] for e in whole["epochs"][1:]], rel=5e-3)


def test_frozen_batchnorm_keeps_running_statistics() -> None:
    from taxonomist.models.backbones import create_backbone
    from taxonomist.training.finetune import _freeze_batchnorm

    backbone = create_backbone("efficientnet-lite0", pretrained=False, size=32)
    bn = next(m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    backbone.train()
    _freeze_batchnorm(backbone)
    backbone(torch.randn(4, 3, 32, 32) * 5).sum().backward()
    assert torch.equal(bn.running_mean, before)
    assert bn.weight.grad is not None  # the affine part still trains


def test_listing_heads_fine_tune_with_titles_and_predict_from_them(tmp_path: Path) -> None:
    """heads.inputs [image, text]: the backbone trains under the fused heads; the checkpoint is a listing
    checkpoint (no image fallback: its heads would read features fine-tuning moved), and the title
    decides what the tiny random backbone cannot see."""
    from taxonomist.inference.predictor import Predictor

    catalog = make_catalog(tmp_path / "data", n=120, titles=True)
    cfg = listing_config(catalog, tmp_path / "cache", {"probe_folds": 2}, epochs=20, patience=20)
    cfg["backbone"]["color_features"] = False
    cfg["finetune"] = {**FT, "max_steps_per_epoch": 2}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    result = _train(config, out, "train.class_balance=dev")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 2 and metrics["phase2_kept"] == {}  # phase 2: image heads only
    # Rows without a title get temperatures and prior-correction strengths fitted for them on dev.
    assert set(metrics["class_balance_by_inputs"]) == {"image"}
    assert {"color (image only)", "fit (image only)"} <= set(metrics["calibration"])
    assert metrics["per_attribute_phase1"]["color"] > 0.9  # the titles name the colour
    predictor = Predictor.from_pretrained(out)
    assert predictor.checkpoint.inputs == ["image", "text"] and predictor.text.probe is not None
    assert predictor.checkpoint.text["image_fallback"] is False
    assert set(predictor.checkpoint.temperatures_by_inputs["image"]) == {"color", "fit"}
    image = str(catalog.parent / "images" / "1000.jpg")
    (blue,) = predictor.predict([image], ["Tops"], texts=["Acme Blue top"])
    (red,) = predictor.predict([image], ["Tops"], texts=["Acme Red top"])
    assert (blue.attributes["color"].value, red.attributes["color"].value) == ("blue", "red")
    (blank,) = predictor.predict([image], ["Tops"], texts=[""])  # the trunk alone: still valid
    assert set(blank.attributes) == {"color", "fit"}


@pytest.mark.parametrize(
    ("values", "message"),
    [({"finetune.head": "attention"}, "finetune.head: mlp"), ({"finetune.warm_start": False}, "warm_start")],
)
def test_listing_fine_tuning_refuses_what_it_cannot_train(tmp_path: Path, values: dict, message: str) -> None:
    from taxonomist.config import ConfigError
    from taxonomist.training.finetune import train

    cfg = load_config(values={"heads.inputs": ["image", "text"], **values})
    with pytest.raises(ConfigError, match=message):
        train(cfg, tmp_path)
