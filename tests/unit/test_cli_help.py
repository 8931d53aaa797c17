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
