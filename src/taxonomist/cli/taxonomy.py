"""``taxonomist taxonomy train | evaluate | predict``: titles → taxonomy path + brand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from taxonomist.cli.options import (
    ConfigOpt,
    JobOutputOpt,
    PredictRuntimeOpt,
    QuietOpt,
    SetOpt,
    resolve_config,
)
from taxonomist.config import TaxonomyConfig
from taxonomist.io import atomic_write_text

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()

MethodOpt = Annotated[
    str | None,
    typer.Option(
        help="retrieval | heads | lexical | seq2seq | ensemble | soft | vote (default: predict.method)."
    ),
]
EncoderPrecisionOpt = Annotated[
    Literal["fp32", "bf16", "int8"],
    typer.Option(
        help="The sentence encoder's numerics: fp32 (torch's), bf16 (OpenVINO) or int8 (ONNX Runtime "
        "dynamic quantization, no calibration)."
    ),
]


def reports_table(reports: dict, titles_per_s: dict, invalid: dict, title: str) -> Table:
    table = Table(title=title)
    for col in ("method", "path acc", "item acc", "brand acc", "hier. F1", "titles/s", "invalid"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for method, r in reports.items():
        table.add_row(
            method,
            f"{r.path_accuracy:.4f}",
            "-" if r.item_accuracy is None else f"{r.item_accuracy:.4f}",
            "-" if r.brand_accuracy is None else f"{r.brand_accuracy:.4f}",
            f"{r.hierarchical_f1:.4f}",
            f"{titles_per_s.get(method, 0):,.0f}",
            str(invalid.get(method, 0)),
        )
    return table


@app.command()
def train(
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint directory.")] = Path(
        "runs/taxonomy"
    ),
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    data: Annotated[str | None, typer.Option(help="Titles file (data.path).")] = None,
    layout: Annotated[str | None, typer.Option(help="flipkart | indoml (data.layout).")] = None,
    limit: Annotated[int | None, typer.Option(help="Use N rows (data.limit).")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Fit retrieval, heads, lexical (and seq2seq if configured); choose the ensemble and score on dev."""
    from taxonomist.training.taxonomy import train as train_taxonomy

    cfg = resolve_config(
        config, overrides, TaxonomyConfig, **{"data.path": data, "data.layout": layout, "data.limit": limit}
    )
    report = train_taxonomy(cfg, output, progress=not quiet)
    console.print(
        reports_table(report.reports, report.titles_per_s, report.invalid, f"dev ({report.n_dev} titles)")
    )
    console.print(
        f"train titles {report.n_train} · test titles kept for `taxonomy evaluate` {report.n_test} · "
        f"skipped rows {report.skipped} · dev paths not in the taxonomy {report.dev_unseen_paths} · "
        f"chosen on dev: {report.ensemble} ensemble, brand none threshold {report.brand_none_threshold} · "
        f"seconds {report.train_seconds} · checkpoint {output}"
    )


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint directory.")],
    data: Annotated[
        str | None, typer.Option(help="Labelled titles (default: the run's own split, see --split).")
    ] = None,
    split: Annotated[
        Literal["test", "dev"], typer.Option(help="Which part of the run's split to score without --data.")
    ] = "test",
    layout: Annotated[str | None, typer.Option(help="flipkart | indoml")] = None,
    output: Annotated[Path | None, typer.Option(help="Write metrics JSON here.")] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            help="Folder for report.html (self-contained): scores per method and level, sibling "
            "confusions, the surest wrong paths with titles, and predictions.csv."
        ),
    ] = None,
    runtime: PredictRuntimeOpt = "auto",
    precision: EncoderPrecisionOpt = "fp32",
    quiet: QuietOpt = False,
) -> None:
    """Score every method of a checkpoint on labelled titles (by default the run's untouched test split)."""
    from taxonomist.config import load_config
    from taxonomist.inference.taxonomy import load_model
    from taxonomist.training.taxonomy import evaluate_model, load_titles, split_part

    model = load_model(checkpoint, runtime=runtime, precision=precision)
    cfg = load_config(checkpoint / "config.yaml", cls=TaxonomyConfig)
    if data is None:
        titles = split_part(load_titles(cfg), cfg, split)
        what = f"{split} split, {len(titles.frame)} titles"
    else:
        cfg.data.path, cfg.data.limit = data, None
        cfg.data.layout = layout or cfg.data.layout  # type: ignore[assignment]
        titles = load_titles(cfg)
        what = f"{len(titles.frame)} titles"
    result = evaluate_model(model, titles, progress=not quiet)
    console.print(reports_table(result["reports"], result["titles_per_s"], result["invalid"], what))
    if output:
        payload = {m: r.to_dict() for m, r in result["reports"].items()}
        split_name = split if data is None else None
        atomic_write_text(
            output,
            json.dumps(
                {"split": split_name, "methods": payload, "titles_per_s": result["titles_per_s"]}, indent=1
            ),
        )
    if report is not None:
        from taxonomist.report.taxonomy import write_taxonomy_report

        page = write_taxonomy_report(
            titles.frame,
            result["predictions"],
            result["reports"],
            titles.levels,
            report,
            model=checkpoint.name,
        )
        console.print(f"report: {page}", soft_wrap=True)


@app.command()
def predict(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint directory.")],
    data: Annotated[Path, typer.Option(help="CSV/Parquet with a title column.")],
    output: JobOutputOpt,
    title_column: Annotated[str, typer.Option(help="Column holding the titles.")] = "title",
    id_column: Annotated[
        str | None,
        typer.Option(help="Column holding row ids; must exist (default: the 'id' column, else row number)."),
    ] = None,
    method: MethodOpt = None,
    runtime: PredictRuntimeOpt = "auto",
    precision: EncoderPrecisionOpt = "fp32",
    encoding: Annotated[str, typer.Option(help="The CSV's text encoding (latin-1, cp1252, ...).")] = "utf-8",
    quiet: QuietOpt = False,
) -> None:
    """Predict a path and brand for every title; empty titles are skipped into errors.csv."""
    from taxonomist.config import load_config
    from taxonomist.inference.taxonomy import DEFAULT_CHUNK_SIZE, TaxonomyPredictor

    run_config = checkpoint / "config.yaml"  # the training run's record, when the folder has it
    chunk_size = (
        load_config(run_config, cls=TaxonomyConfig).predict.chunk_size if run_config.is_file() else None
    )
    predictor = TaxonomyPredictor.from_pretrained(
        checkpoint, chunk_size=chunk_size or DEFAULT_CHUNK_SIZE, runtime=runtime, precision=precision
    )
    summary = predictor.predict_file(
        data,
        output,
        title_column=title_column,
        id_column=id_column,
        method=method,
        progress=not quiet,
        encoding=encoding,
    )
    console.print_json(json.dumps(summary))
