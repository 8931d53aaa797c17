"""Shared test fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
from PIL import Image

from taxonomist.data.catalog import DATA_DIR_ENV, data_dir

# pytest-xdist runs one worker per core: a worker's torch ops each spreading over every core would only
# oversubscribe the machine (a tiny VLM step took 1-3 s instead of 0.04 s with two workers competing).
torch.set_num_threads(1)

SOLID_COLOURS = {"red": (200, 30, 30), "blue": (30, 40, 200)}


def solid_colour_images(folder: Path, ids: Iterable[int], size: tuple[int, int]) -> list[str]:
    """One solid JPEG per id in ``folder``, red and blue in turn (red first): products whose colour
    label is the pixels themselves. The colours, in ``ids`` order."""
    folder.mkdir(parents=True, exist_ok=True)
    colours = []
    for n, i in enumerate(ids):
        colour = "red" if n % 2 == 0 else "blue"
        Image.new("RGB", size, SOLID_COLOURS[colour]).save(folder / f"{i}.jpg")
        colours.append(colour)
    return colours


def require_dataset(name: str) -> Path:
    """A shared dataset directory; skipped when absent, but a failure under CI, which must never skip."""
    path = data_dir() / name
    if not path.is_dir():
        message = f"{name} data not found at {path.resolve()}; set {DATA_DIR_ENV}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def meesho_dir() -> Path:
    return require_dataset("meesho-visual-taxonomy")
