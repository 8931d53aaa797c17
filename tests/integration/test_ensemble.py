"""``heads.members``: image heads trained from several seeds, saved, loaded, exported as one model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from taxonomist.config import ConfigError, load_config
from taxonomist.inference.predictor import Predictor
from taxonomist.models.build import load_heads_checkpoint
from taxonomist.models.heads import AttributeHeads, HeadsEnsemble
from taxonomist.training import finetune, self_training

from .conftest import invoke, make_catalog, tiny_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(checkpoint, config, images) of a three-member run on the tiny catalog."""
    root = tmp_path_factory.mktemp("ensemble")
    catalog = make_catalog(root / "data")
    settings = tiny_config(catalog, root / "cache")
    settings["heads"]["members"] = 3
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(settings))
    output = invoke("train", "-c", str(config), "-o", str(root / "run"))
    assert "best epoch " in output and "/" in output.split("best epoch ")[1].split(")")[0]
    return root / "run", config, catalog.parent / "images"


def test_members_train_from_their_own_seeds_and_load_as_one_model(
    ensemble_run: tuple[Path, Path, Path],
) -> None:
    run, _, _ = ensemble_run
    checkpoint, model = load_heads_checkpoint(run)
    assert isinstance(model, HeadsEnsemble) and len(model.members) == 3
    assert checkpoint.heads["members"] == 3
    first, second = (m.state_dict() for m in model.members[:2])
    assert not torch.equal(first["trunk.0.weight"], second["trunk.0.weight"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["member_histories"]) == 3
    assert len(json.loads((run / "taxonomist.json").read_text())["metrics"]["member_best_epochs"]) == 3


def test_ensemble_predicts_on_torch_and_on_its_onnx_export(ensemble_run: tuple[Path, Path, Path]) -> None:
    run, _, images = ensemble_run
    paths, categories = [images / f"{1000 + i}.jpg" for i in range(6)], ["Tops", "Bags"] * 3
    on_torch = Predictor.from_pretrained(run, runtime="torch").predict(paths, categories)
    exported = Predictor.from_pretrained(run, runtime="onnxruntime").predict(paths, categories)
    for a, b in zip(on_torch, exported, strict=True):
        for attribute, value in a.attributes.items():
            assert b.attributes[attribute].value == value.value
            assert abs(b.attributes[attribute].confidence - value.confidence) < 1e-4


def test_a_single_member_stays_the_plain_heads(tmp_path: Path) -> None:
    catalog = make_catalog(tmp_path / "data", n=40)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config(catalog, tmp_path / "cache", epochs=2)))
    invoke("train", "-c", str(config), "-o", str(tmp_path / "run"), "-q")
    _, model = load_heads_checkpoint(tmp_path / "run")
    assert type(model) is AttributeHeads


def test_recipes_that_train_one_network_refuse_members(ensemble_run: tuple[Path, Path, Path]) -> None:
    _, config, _ = ensemble_run
    cfg = load_config(config)
    with pytest.raises(ConfigError, match=r"heads\.members > 1"):
        finetune.train(cfg, "unused")
    with pytest.raises(ConfigError, match=r"heads\.members > 1"):
        self_training.self_train(cfg, "unused")


def test_evaluate_scores_an_ensemble_run_as_training_reported(
    ensemble_run: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    run, _, _ = ensemble_run
    invoke("evaluate", str(run), "--report", "--output", str(tmp_path), "-q")
    trained = json.loads((run / "metrics.json").read_text())["test_score"]
    evaluated = json.loads((tmp_path / "evaluation.json").read_text())["score"]
    assert evaluated == pytest.approx(trained, abs=1e-6)
    assert (tmp_path / "report.html").is_file()
