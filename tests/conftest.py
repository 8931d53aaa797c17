"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from taxonomist.data.catalog import DATA_DIR_ENV, data_dir


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
