"""Bad inputs and faults, each checked at the row level: which rows were predicted, which were reported
with which reason and line, and the exit status. Every test has a timeout, so a hang fails instead of
stalling the suite. One tiny model is trained once per session."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from taxonomist.cli.main import main
from tests.integration.conftest import make_catalog, tiny_config

TIMEOUT_S = 60


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIMEOUT_S))


@dataclass(frozen=True)
class Tiny:
    """A trained tiny checkpoint and the synthetic catalog (ids 1000.., Tops/Bags alternating) it
    learned from."""

    catalog: Path
    config: Path
    checkpoint: Path

    @property
    def images(self) -> Path:
        return self.catalog.parent

    def rows(self, n: int) -> pd.DataFrame:
        """The first ``n`` rows (sku, type, labels), as text."""
        return pd.read_csv(self.catalog, dtype=str, keep_default_na=False).head(n)

    def image_folder(
        self, folder: Path, skus: Iterable[str], *, fifos: Iterable[str] = (), dev_zero: Iterable[str] = ()
    ) -> Path:
        """``folder`` with a link to each sku's image, except that ``fifos`` are FIFOs and ``dev_zero``
        links to /dev/zero: image files that are not regular files."""
        folder.mkdir()
        for sku in skus:
            os.symlink(self.images / "images" / f"{sku}.jpg", folder / f"{sku}.jpg")
        for sku in fifos:
            (folder / f"{sku}.jpg").unlink()
            os.mkfifo(folder / f"{sku}.jpg")
        for sku in dev_zero:
            (folder / f"{sku}.jpg").unlink()
            os.symlink("/dev/zero", folder / f"{sku}.jpg")
        return folder

    def copy_checkpoint(self, to: Path) -> Path:
        shutil.copytree(self.checkpoint, to)
        return to


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    root = tmp_path_factory.mktemp("reliability")
    catalog = make_catalog(root / "data", n=40)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config(catalog, root / "cache", epochs=3)))
    checkpoint = root / "ckpt"
    code, _, err = run_main(["train", "-c", str(config), "-o", str(checkpoint), "-q"])
    assert code == 0, err
    return Tiny(catalog, config, checkpoint)


def run_main(args: list[str]) -> tuple[int, str, str]:
    """The console entry point in-process (its user-error handler included): (exit status, stdout,
    stderr). Output is captured by pytest; callers read it through the ``cli`` fixture."""
    try:
        main(args)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        return code, "", ""
    return 0, "", ""


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """``cli("predict", ...)`` → (exit status, stdout, stderr) of ``taxonomist ...``."""

    def call(*args: str | Path) -> tuple[int, str, str]:
        capsys.readouterr()
        code, _, _ = run_main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return call


def write_rows(path: Path, rows: list[dict] | pd.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def read_errors(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "errors.csv", dtype=str, keep_default_na=False)


def predicted_ids(out: Path) -> list[str]:
    return pd.read_csv(out / "predictions.csv", dtype=str)["id"].tolist()
