"""Options and config loading shared by every command group, so flags mean the same everywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console

from taxonomist.config import ConfigError, RunConfig, load_config

if TYPE_CHECKING:
    from taxonomist.inference.predictor import PredictSummary

T = TypeVar("T")


class JobFailed(RuntimeError):
    """A batch job that wrote its outputs but did not do its work (every row, or most, failed)."""


def end_job(
    console: Console, summary: PredictSummary, max_error_share: float, missing_hint: str = ""
) -> None:
    """A predict job's summary as JSON, then :class:`JobFailed` (exit status 2) when every row, or more
    than ``max_error_share`` of them, failed; ``missing_hint`` ends the message where images were missing."""
    console.print_json(json.dumps(summary.to_dict()))
    failure = summary.failure(max_error_share)
    if failure:
        if missing_hint and summary.error_reasons.get("missing"):
            failure += missing_hint
        raise JobFailed(failure)


ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML run config.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override a config value: section.key=value (repeatable). The value is read as YAML (5, 1e-3, "
        "true, null, \\[a, b]), but a text setting takes it as typed (N/A #tbd, 0, yes) and a value in "
        "quotes ('null') as the text inside them.",
    ),
]
"""A text setting takes the value as typed: YAML would drop ``#`` comments and turn ``0`` or ``yes`` into a
number or bool (see :func:`taxonomist.config.apply_overrides`)."""
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
JobOutputOpt = Annotated[
    Path, typer.Option("--output", "-o", file_okay=False, help="Output folder (resumable).")
]
"""``file_okay=False``: an existing file there is a usage error naming it, not a FileExistsError later."""
PredictDataOpt = Annotated[str | None, typer.Option(help="Catalog to predict (catalog.path).")]
PredictRuntimeOpt = Annotated[
    str,
    typer.Option(
        help="auto (the fastest installed: ONNX Runtime/OpenVINO on CPU), torch, onnxruntime, openvino."
    ),
]
PrecisionDefaultOpt = Annotated[
    str | None, typer.Option(help="fp32, bf16 or int8 (an int8 export must exist); default: the heads' own.")
]
ImagesOpt = Annotated[
    str | None,
    typer.Option(
        "--images",
        help="Folder the image paths (catalog.image_template, e.g. images/{id}.jpg) are relative to "
        "(catalog.image_root). Default: the folder of the catalog file (meesho layout: the dataset folder).",
    ),
]


def resolve_config(
    config: Path | None,
    overrides: list[str] | None,
    cls: type[T] = RunConfig,
    *,
    base: Path | None = None,
    **flags: object,
) -> T:
    """``base`` (a run's saved config), the ``--config`` file on top, then ``--set`` overrides, then explicit
    flags (``{"section.key": value}``; None = not given). Flag values are typed already, so they are set as
    given rather than re-parsed as YAML (a placeholder ``0`` or a path with ``#`` stays what was typed), and
    checked like every other setting. Errors become CLI usage errors."""
    values = {key: value for key, value in flags.items() if value is not None}
    try:
        return load_config(config, overrides, cls=cls, base=base, values=values)
    except ConfigError as err:
        raise typer.BadParameter(str(err)) from err
