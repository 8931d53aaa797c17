"""The attributes benchmark's docs read its batching figures the same from a fresh run and from disk."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def attributes(request: pytest.FixtureRequest):
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling ``common``
    request.addfinalizer(lambda: sys.path.remove(str(BENCHMARKS)))
    spec = importlib.util.spec_from_file_location("attributes_benchmark", BENCHMARKS / "attributes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_batching_gain_of_a_fresh_run_and_of_its_results_file(attributes) -> None:
    backbone = torch.nn.Conv2d(3, 2, 3)
    backbone.preprocess = SimpleNamespace(size=8)
    predictor = SimpleNamespace(backbone=backbone, device=torch.device("cpu"))
    rates = attributes.backbone_throughput(predictor, batch_sizes=(1, 4), seconds=0.01)
    fresh = {"backbone_images_per_s_by_batch": rates}
    reloaded = json.loads(json.dumps(fresh))
    assert attributes.batching_gain(fresh) == attributes.batching_gain(reloaded)
    assert attributes.batching_gain(fresh) == max(rates.values()) / rates["1"]
