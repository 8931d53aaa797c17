"""Options and config loading shared by every command group, so flags mean the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, TypeVar

import typer

from taxonomist.config import ConfigError, RunConfig, load_config

T = TypeVar("T")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML run config.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config value: section.key=value (repeatable)."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def resolve_config(
    config: Path | None, overrides: list[str] | None, cls: type[T] = RunConfig, **flags: object
) -> T:
    """File, then ``--set`` overrides, then explicit flags (``section.key=value``); errors as CLI errors."""
    extra = [f"{k}={v}" for k, v in flags.items() if v is not None]
    try:
        return load_config(config, [*(overrides or []), *extra], cls=cls)
    except ConfigError as err:
        raise typer.BadParameter(str(err)) from err
