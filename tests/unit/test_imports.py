"""Importing taxonomist has no side effects on the interpreter, and the environment needs no taxonomist."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _python(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_import_taxonomist_installs_no_import_hook() -> None:
    _python("import sys; before = list(sys.meta_path); import taxonomist; assert sys.meta_path == before")


def test_transformers_models_import_without_taxonomist() -> None:
    """Regression: peft (any transformers model) failed to import on CPU torch unless taxonomist, which then
    installed the torchvision fix on import, was imported first; the fix is the environment's now."""
    pytest.importorskip("peft")
    _python("import sys, peft; assert 'taxonomist' not in sys.modules")
