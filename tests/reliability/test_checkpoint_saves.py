"""A checkpoint saved over an earlier one is this run's alone, or (after a crash mid-save) none at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from taxonomist.data.schema import Schema
from taxonomist.inference.predictor import Predictor
from taxonomist.models.build import load_heads_checkpoint
from taxonomist.models.checkpoint import BACKBONE_FILE, CheckpointError

from .conftest import Tiny


def test_retraining_with_a_pretrained_backbone_drops_the_old_backbone_file(
    cli, tiny: Tiny, tmp_path: Path
) -> None:
    """Regression: a run with a random-init backbone left backbone.safetensors, and a pretrained run
    into the same folder loaded it with its heads: "backbone now loads other weights"."""
    run = tiny.copy_checkpoint(tmp_path / "run")
    assert (run / BACKBONE_FILE).is_file()  # the tiny run's backbone is random-init, so it is saved
    code, _, err = cli("train", "-c", tiny.config, "-o", run, "-q", "--set", "backbone.pretrained=true")
    assert code == 0, err
    assert not (run / BACKBONE_FILE).exists()
    Predictor.from_pretrained(run, runtime="torch")


def test_a_crash_mid_save_leaves_no_checkpoint_that_loads(
    tiny: Tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: files were written one by one, so a crash after the weights left them beside the
    earlier run's temperatures and corrections, and the folder loaded without a word."""
    run = tiny.copy_checkpoint(tmp_path / "run")
    checkpoint, model = load_heads_checkpoint(run)

    def crash(self, path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(Schema, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(run, model, Predictor.from_pretrained(run, runtime="torch").backbone.state_dict())
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="its save did not finish: train again"):
        load_heads_checkpoint(run)
