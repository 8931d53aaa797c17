"""--help reads as prose: no reST markup, every option says what it does, fixed choices are listed."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from taxonomist.cli.main import app


def _commands(command, path: list[str]) -> list[list[str]]:
    found = [path]
    for name, sub in getattr(command, "commands", {}).items():
        found += _commands(sub, [*path, name])
    return found


COMMANDS = _commands(typer.main.get_command(app), [])


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "taxonomist")
def test_help_is_prose(path: list[str]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "240", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    text = result.output
    assert not re.search(r"``|:func:|:class:|:mod:", text), text
    # An option row whose whole help is a config key ("train.epochs") says nothing about what it does.
    bare_key = re.compile(
        r"│ +--[a-z-]+(?: +-[a-zA-Z])? +(?:<[^>]+> +)?[a-z_]+\.[a-z_.]+ *(?:\[default[^]]*\])? *│"
    )
    assert not bare_key.search(text), text


def test_fixed_choices_are_listed() -> None:
    text = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "240", "NO_COLOR": "1"}).output
    assert "heads|finetune" in text and "mask|dynamic-fill|similar-mode|drop" in text


def test_third_party_noise_is_quiet_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import warnings

    from taxonomist.cli.main import quiet_third_party

    for key in (
        "TAXONOMIST_VERBOSE",
        "HF_HUB_DISABLE_PROGRESS_BARS",
        "TQDM_DISABLE",
        "TRANSFORMERS_VERBOSITY",
    ):
        monkeypatch.setenv(key, "")  # so that monkeypatch restores whatever the call below sets
        monkeypatch.delenv(key)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        warnings.warn_explicit(
            "pin_memory is set", UserWarning, "dataloader.py", 1, module="torch.utils.data"
        )
        warnings.warn_explicit("ours", UserWarning, "x.py", 1, module="taxonomist.data")
    assert [str(w.message) for w in caught] == ["ours"]
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and os.environ["TQDM_DISABLE"] == "1"

    monkeypatch.setenv("TAXONOMIST_VERBOSE", "1")
    monkeypatch.delenv("TQDM_DISABLE")
    quiet_third_party()
    assert "TQDM_DISABLE" not in os.environ


def test_an_unknown_split_is_one_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """`evaluate --split validation` (an unknown part) ended in a traceback."""
    from taxonomist.cli.main import main
    from taxonomist.config import RunConfig

    RunConfig().save(tmp_path / "config.yaml")
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", str(tmp_path), "--split", "validation", "-q"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --split must be one of test, dev, all") and "Traceback" not in err
