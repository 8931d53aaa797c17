"""The offline kit's requirement check: what a lent GPU machine would lack is found before device time."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "offline_kit", Path(__file__).resolve().parents[2] / "benchmarks" / "offline_kit.py"
)
offline_kit = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(offline_kit)


def wheel(directory: Path, name: str, version: str, requires: list[str]) -> Path:
    path = directory / f"{name}-{version}-py3-none-any.whl"
    metadata = [f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}-{version}.dist-info/METADATA", "\n".join(metadata))
    return path


def test_unmet_requirements(tmp_path: Path) -> None:
    have_file = tmp_path / "have.txt"
    have_file.write_text("numpy==2.5.2\nhuggingface-hub==0.20.0\ntorch\n")
    have = offline_kit.read_have(have_file)
    assert have == {"numpy": "2.5.2", "huggingface-hub": "0.20.0", "torch": None}
    wheels = [
        wheel(
            tmp_path,
            "fancy_lib",
            "1.0",
            [
                "numpy>=1.17",  # there, new enough
                "huggingface-hub<3.0,>=1.31.0",  # there, too old
                "torch",  # there, version unknown: accepted
                "Tiny-Helper>=0.2",  # in the kit (name normalised)
                "missing-pkg",  # nowhere
                "backport; python_version < '3.8'",  # not for the target Python
                "docs-tool; extra == 'docs'",  # an extra
            ],
        ),
        wheel(tmp_path, "tiny_helper", "0.3", []),
    ]
    unmet = offline_kit.unmet_requirements(wheels, have, "3.12")
    assert unmet == {wheels[0].name: ["huggingface-hub<3.0,>=1.31.0", "missing-pkg"]}


@pytest.mark.parametrize("text", ["a, b c\nd", "# the image's packages\na\nb  # why b\nc\nd"])
def test_read_have_plain_names(tmp_path: Path, text: str) -> None:
    (tmp_path / "have.txt").write_text(text)
    assert offline_kit.read_have(tmp_path / "have.txt") == dict.fromkeys("abcd")
