"""A tiny synthetic catalog whose labels are learnable from the pixels, and a config for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from taxonomist.cli.main import app

COLORS = {"red": (200, 30, 30), "blue": (30, 40, 200), "green": (30, 160, 50)}
SHAPES = ("wide", "tall")


def make_catalog(root: Path, n: int = 120, seed: int = 0, *, titles: bool = False) -> Path:
    """Products on white: colour → ``color`` label, aspect → ``fit``; two categories with own schemas.

    ``titles`` adds a ``title`` column that names the colour (also where the label is missing).
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        category = "Tops" if i % 2 == 0 else "Bags"
        color = rng.choice(list(COLORS) if category == "Tops" else ["red", "blue"])
        shape = rng.choice(SHAPES)
        img = np.full((48, 48, 3), 255, dtype=np.uint8)
        jitter = rng.integers(-20, 20, size=3)
        box = (slice(4, 44), slice(14, 34)) if shape == "tall" else (slice(14, 34), slice(4, 44))
        img[box] = np.clip(np.array(COLORS[color]) + jitter, 0, 255)
        Image.fromarray(img).save(root / "images" / f"{1000 + i}.jpg", quality=90)
        rows.append(
            {
                "sku": str(1000 + i),
                "type": category,
                "color": color if rng.random() > 0.1 else None,
                "fit": shape if category == "Tops" else None,
            }
        )
        if titles:
            rows[-1]["title"] = f"Acme {color.title()} {'top' if category == 'Tops' else 'bag'}"
    path = root / "catalog.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def tiny_config(catalog: Path, cache: Path, **train: object) -> dict:
    return {
        "catalog": {
            "path": str(catalog),
            "id_column": "sku",
            "category_column": "type",
            "attributes": ["color", "fit"],
            "min_rows_per_category": 0,
        },
        "backbone": {"name": "efficientnet-lite0", "pretrained": False, "size": 64},
        "embed": {"batch_size": 16, "num_workers": 0, "cache_dir": str(cache)},
        "heads": {"hidden": [32], "category_dim": 4, "dropout": 0.0},
        "train": {
            "epochs": 30,
            "batch_size": 32,
            "lr": 0.01,
            "dev_fraction": 0.25,
            "test_fraction": 0.1,
            "patience": 30,
            **train,
        },
        "predict": {"chunk_size": 16},
    }


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(catalog csv, config yaml) for a synthetic 120-product catalog, shared by a module's tests."""
    root = tmp_path_factory.mktemp("tiny")
    catalog = make_catalog(root / "data")
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config(catalog, root / "cache")))
    return catalog, config


def invoke(*args: str) -> str:
    """Run the CLI in-process; a non-zero exit fails the test with the command's output."""
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output
