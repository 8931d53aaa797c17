"""``taxonomist export RUN``: the run's model on ONNX Runtime or OpenVINO, checked against torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from taxonomist.cli.options import ConfigOpt, QuietOpt, SetOpt, resolve_config

console = Console()

RuntimeOpt = Annotated[
    str,
    typer.Option(help="auto (the fastest installed for the precision), onnxruntime or openvino."),
]
PrecisionOpt = Annotated[
    str, typer.Option(help="fp32 (torch's numbers), bf16 (OpenVINO) or int8 (needs --calibrate).")
]


def export(
    run: Annotated[Path, typer.Argument(help="Checkpoint (run) directory.")],
    runtime: RuntimeOpt = "auto",
    precision: PrecisionOpt = "fp32",
    calibrate: Annotated[
        int, typer.Option(help="int8: calibrate on this many training rows of the run's catalog.")
    ] = 0,
    parity_rows: Annotated[
        int, typer.Option(help="Validation rows the parity report scores (0 = no check).")
    ] = 1000,
    tolerance: Annotated[
        float, typer.Option(help="Refuse the export when its score drops more than this below torch's.")
    ] = 0.005,
    force: Annotated[bool, typer.Option(help="Rebuild even when a finished export exists.")] = False,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Export a run for fast CPU inference into RUN/exports; predict, evaluate, serve and review load it."""
    from taxonomist.inference.export import ExportRefused, export_run

    saved = run / "config.yaml"
    cfg = resolve_config(config, overrides, base=saved if saved.is_file() else None)
    try:
        folder, manifest = export_run(
            run,
            cfg,
            runtime=runtime,
            precision=precision,
            calibration_rows=calibrate,
            parity_rows=parity_rows,
            tolerance=tolerance,
            force=force,
            progress=not quiet,
        )
    except ExportRefused as err:
        console.print(str(err), markup=False)
        raise typer.Exit(1) from err
    except (ImportError, ValueError) as err:
        raise typer.BadParameter(str(err)) from err
    console.print(f"exported {manifest['runtime']} {manifest['precision']} → {folder}")
    if "parity" in manifest:
        console.print_json(json.dumps(manifest["parity"]))
