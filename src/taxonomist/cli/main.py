"""taxonomist: product listings (images, titles) to catalog data. Each command maps its flags onto one
typed library function; settings come from a YAML config (-c), --set section.key=value and the flags."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from taxonomist.cli.export import export
from taxonomist.cli.options import (
    ConfigOpt,
    ImagesOpt,
    JobFailed,
    JobOutputOpt,
    PrecisionDefaultOpt,
    PredictDataOpt,
    PredictRuntimeOpt,
    QuietOpt,
    SetOpt,
    end_job,
    resolve_config,
)
from taxonomist.cli.review import review
from taxonomist.cli.serve import serve
from taxonomist.cli.tables import attribute_table, score_table, show_evaluation
from taxonomist.cli.taxonomy import app as taxonomy_app
from taxonomist.cli.vlm import app as vlm_app
from taxonomist.cli.vlm import evaluate as vlm_evaluate
from taxonomist.cli.vlm import is_vlm_dir
from taxonomist.cli.vlm import predict as vlm_predict
from taxonomist.config import RunConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
MAX_NOTES = 20
"""Data-report notes printed after training; the rest stay in data_report.json."""
app.add_typer(taxonomy_app, name="taxonomy", help="Titles → taxonomy path + brand.")
app.add_typer(vlm_app, name="vlm", help="Vision-language models: attributes as constrained JSON, captions.")
app.command()(serve)
app.command()(review)
app.command()(export)


def data_report_table(report) -> Table:
    """The data step's counts and every note on what it left out, masked or found suspicious."""
    table = Table(title=f"data ({escape(str(report.source))})", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    parts = " · ".join(f"{name} {n}" for name, n in report.parts.items())
    table.add_row("rows", f"{report.rows_read} read · {report.rows_kept} kept ({parts})")
    duplicates = report.split.get("duplicate_image_rows", 0)
    if duplicates:
        grouped = "kept in one part" if report.split.get("group_duplicate_images") else "NOT grouped"
        table.add_row("duplicate images", f"{duplicates} rows share an image with another row ({grouped})")
    notes = report.notes()
    for note in notes[:MAX_NOTES]:
        table.add_row("note", Text(note))  # notes name categories and values: data, not markup
    if len(notes) > MAX_NOTES:
        table.add_row("note", f"… and {len(notes) - MAX_NOTES} more in data_report.json")
    if not notes:
        table.add_row("note", "nothing dropped, masked or suspicious")
    return table


def calibration_table(calibration: dict[str, dict[str, float]]) -> Table:
    table = Table(title="calibration (dev; after = cross-fitted temperature)")
    for col in ("attribute", "T", "ECE before", "ECE after", "CE before", "CE after"):
        table.add_column(col, justify="left" if col == "attribute" else "right")
    for attribute, c in calibration.items():
        table.add_row(
            Text(attribute),
            f"{c['temperature']:.2f}",
            f"{c['ece_before']:.4f}",
            f"{c['ece_after']:.4f}",
            f"{c['cross_entropy_before']:.4f}",
            f"{c['cross_entropy_after']:.4f}",
        )
    return table


@app.command()
def train(
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint directory.")] = Path(
        "runs/heads"
    ),
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    data: Annotated[str | None, typer.Option(help="Catalog file or folder (catalog.path).")] = None,
    images: ImagesOpt = None,
    backbone: Annotated[str | None, typer.Option(help="Backbone name or HF id/dir (backbone.name).")] = None,
    policy: Annotated[
        Literal["mask", "dynamic-fill", "similar-mode", "drop"] | None,
        typer.Option(help="What to do with missing labels while training (missing_labels.policy)."),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Passes over the training rows (train.epochs).")] = None,
    limit: Annotated[int | None, typer.Option(help="Use N rows (catalog.limit).")] = None,
    corrections: Annotated[
        str | None,
        typer.Option(
            help="Reviewed labels (the CSV `taxonomist review` exports) merged over the catalog's; a "
            "decision wins over the original label (catalog.corrections)."
        ),
    ] = None,
    recipe: Annotated[
        Literal["heads", "finetune"],
        typer.Option(help="heads: frozen backbone, cached features; finetune: the backbone trains too."),
    ] = "heads",
    quiet: QuietOpt = False,
) -> None:
    """Train an attribute model into a checkpoint directory that predict/evaluate/bench all read."""
    from taxonomist.training.heads import train as train_heads

    cfg = resolve_config(
        config,
        overrides,
        **{
            "catalog.path": data,
            "catalog.image_root": images,
            "backbone.name": backbone,
            "missing_labels.policy": policy,
            "train.epochs": epochs,
            "catalog.limit": limit,
            "catalog.corrections": corrections,
        },
    )
    if recipe == "finetune":
        from taxonomist.training.finetune import train as train_finetune

        ft = train_finetune(cfg, output, progress=not quiet)
        console.print(
            f"phase 1 score {ft.score_phase1:.4f} · phase 2 score {ft.score_phase2:.4f} · "
            f"{ft.images_per_s_train:.1f} train img/s · epochs {len(ft.epochs)} · checkpoint {output}"
        )
        return
    result = train_heads(cfg, output, progress=not quiet)
    if result.data is not None:
        console.print(data_report_table(result.data))
    console.print(score_table(result.report, f"dev ({result.n_dev} rows; picked epoch and temperatures)"))
    if result.test_report is not None:
        console.print(score_table(result.test_report, f"test ({result.n_test} rows; reported only)"))
    console.print(attribute_table(result.report))
    console.print(calibration_table(result.calibration))
    console.print(
        f"train rows {result.n_train} · {result.policy} · embed {result.embed_seconds:.1f}s · "
        f"heads {result.train_seconds:.1f}s (best epoch {'/'.join(map(str, result.history.best_epochs))}) · "
        f"image errors {result.image_errors} · checkpoint {output}"
    )
    features = json.loads((output / "taxonomist.json").read_text(encoding="utf-8")).get("features", {})
    console.print(
        f"features computed on {features.get('runtime', 'torch')} {features.get('precision', 'fp32')} "
        f"(embed.runtime={cfg.embed.runtime}); predict and serve use the same precision by default"
    )


@app.command("self-train")
def self_train(
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder (resumable).")] = Path(
        "runs/self-train"
    ),
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    rounds: Annotated[
        int | None, typer.Option(help="Pseudo-labelling rounds after the first fit (self_training.rounds).")
    ] = None,
    labeled_fraction: Annotated[
        float | None,
        typer.Option(
            help="Share of rows whose labels are used; the rest count as unlabeled "
            "(self_training.labeled_fraction)."
        ),
    ] = None,
    images: ImagesOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Heads on a labeled fraction, then rounds of view-consistent, confident pseudo-labels (listing
    titles join the teacher's views where catalog.text_columns names them)."""
    from taxonomist.training.self_training import self_train as run_self_training

    cfg = resolve_config(
        config,
        overrides,
        **{
            "self_training.rounds": rounds,
            "self_training.labeled_fraction": labeled_fraction,
            "catalog.image_root": images,
        },
    )
    report = run_self_training(cfg, output, progress=not quiet)
    table = Table(
        title=f"self-training {report.student} ({report.n_fit} labeled, {report.n_pool} unlabeled rows)"
    )
    for col in ("round", "dev score", "test score", "pseudo-labels", "precision", "supervised acc."):
        table.add_column(col, justify="right")
    for r in report.rounds:
        precision = r.get("pseudo_label_precision", {}).get("all")
        accuracy = r.get("supervised_accuracy_same_items", {}).get("all")
        table.add_row(
            str(r["round"]),
            f"{r['dev_score']:.4f}",
            "" if r["test_score"] is None else f"{r['test_score']:.4f}",
            str(sum(r.get("n_pseudo", {}).values())),
            "" if precision is None else f"{precision:.4f}",
            "" if accuracy is None else f"{accuracy:.4f}",
        )
    console.print(table)
    if report.text_view is not None:
        accuracy = ", ".join(
            f"{a} {v:.3f}" for a, v in report.text_view["dev_accuracy"].items() if v is not None
        )
        console.print(f"teacher also reads titles; their accuracy on dev: {accuracy}")
    console.print(
        f"best round (dev score) {report.best_round} · checkpoint {output}/round-{report.best_round}"
    )


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint directory.")],
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="'test': the part the training run held out from every choice (the default); 'dev': the "
            "part its choices were made on; 'all': every row of the catalog, with none of training's row "
            "filters (the default with --data)."
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            help="Folder for evaluation.json/.md, errors.csv and predictions.csv (the scored rows); with "
            "--report, default CHECKPOINT/evaluation-SPLIT."
        ),
    ] = None,
    data: Annotated[str | None, typer.Option(help="Labelled catalog to score (catalog.path).")] = None,
    images: ImagesOpt = None,
    report: Annotated[
        bool,
        typer.Option(
            "--report",
            help="Also write report.html (self-contained): scores beside a majority baseline, confusion "
            "matrices, reliability diagrams, per-class scores, most confident errors with images.",
        ),
    ] = False,
    resamples: Annotated[
        int,
        typer.Option(
            help="Bootstrap resamples of the scored rows (within each category) for the score's 95% "
            "interval, and for listing heads the paired interval of each input's gain; 0: none."
        ),
    ] = 1000,
    quiet: QuietOpt = False,
) -> None:
    """Score a checkpoint with the competition metric on a labelled catalog (VLMs: see `vlm evaluate`).

    Rows not scored as predicted (unreadable images, unknown categories, blank or repeated ids) are listed
    with their line in errors.csv; the score is given with the unreadable images counted wrong and
    without them."""
    from taxonomist.inference.evaluate import evaluate as run_evaluate

    split = split or ("all" if data else "test")
    if report and output is None:
        output = checkpoint / f"evaluation-{split}"
    if is_vlm_dir(checkpoint):
        if data or images:
            raise typer.BadParameter("VLM folders: set the data in the config (vlm evaluate -c)")
        vlm_evaluate(checkpoint, config, overrides, split, output, report, quiet)
        return

    cfg = _checkpoint_config(
        checkpoint, config, overrides, **{"catalog.path": data, "catalog.image_root": images}
    )
    evaluation = run_evaluate(
        checkpoint, cfg, split=split, output=output, progress=not quiet, resamples=resamples
    )
    notes = list(evaluation.notes)
    if evaluation.baseline is not None:
        notes.insert(0, f"majority-class baseline score {evaluation.baseline.score:.4f}")
    if len(evaluation.errors) and output is None:
        notes.append("--output FOLDER writes them to errors.csv, with line numbers")
    show_evaluation(evaluation, split, notes, output if report else None, checkpoint.name)
    failure = evaluation.failure(cfg.predict.max_error_share)
    if failure:
        where = f"; see {output / 'errors.csv'}" if output is not None else ""
        hint = (
            "; point --images at the folder the images are in"
            if evaluation.error_reasons.get("missing")
            else ""
        )
        raise JobFailed(failure + where + hint)


@app.command()
def predict(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint directory.")],
    output: JobOutputOpt,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    data: PredictDataOpt = None,
    images: ImagesOpt = None,
    min_confidence: Annotated[
        float | None,
        typer.Option(help="Between 0 and 1: a value less confident than this is written as the placeholder."),
    ] = None,
    placeholder: Annotated[
        str | None,
        typer.Option(help="Value written where confidence is below --min-confidence (predict.placeholder)."),
    ] = None,
    engine: Annotated[
        Literal["local", "ray"], typer.Option(help="ray: sharded Parquet on Ray actors (docs/ray.md).")
    ] = "local",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster (ray engine); default: a local Ray.")
    ] = None,
    num_actors: Annotated[
        int | None, typer.Option(help="Ray actors; default one per GPU, else per CPU.")
    ] = None,
    gpus_per_actor: Annotated[
        float | None, typer.Option(help="Default 1 where there are GPUs, else 0.")
    ] = None,
    runtime: PredictRuntimeOpt = "auto",
    precision: PrecisionDefaultOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Predict attributes for every row of a catalog: Meesho layout + long layout with confidences.

    Every row is predicted or reported in errors.csv with its line and reason: the training run's row
    filters (categories, minimum rows, limit, remaps) do not apply; rows of categories the model does not
    know, unreadable images, blank ids or categories, ids the image template cannot take and repeated ids
    are errors. Images are looked up under --images (default: the catalog file's folder) as
    catalog.image_template. When every row, or more than predict.max_error_share of them, failed, the
    command ends with exit status 2."""
    from taxonomist.cli.inputs import record_input
    from taxonomist.data.prepare import load_for_prediction
    from taxonomist.features.build import embed_options
    from taxonomist.inference.predictor import Predictor

    if is_vlm_dir(checkpoint):
        if engine != "local":
            raise typer.BadParameter("VLM folders predict with the local engine")
        vlm_predict(checkpoint, output, config, overrides, data, quiet, images)
        return

    cfg = _checkpoint_config(
        checkpoint,
        config,
        overrides,
        **{
            "catalog.path": data,
            "catalog.image_root": images,
            "predict.min_confidence": min_confidence,
            "predict.placeholder": placeholder,
        },
    )
    catalog = load_for_prediction(cfg.catalog, text="text" in cfg.heads.inputs)
    if catalog.text_note:
        console.print(f"note: {catalog.text_note}", style="yellow", markup=False, soft_wrap=True)
    if engine == "ray":
        from taxonomist.inference.predictor import with_row_errors
        from taxonomist.inference.ray_engine import predict_with_ray, read_ray_output

        summary = predict_with_ray(
            checkpoint,
            catalog,
            output,
            batch_size=cfg.embed.batch_size,
            shard_rows=cfg.predict.chunk_size,
            num_actors=num_actors,
            num_gpus_per_actor=gpus_per_actor,
            num_cpus_per_actor=max(1, cfg.embed.num_workers),
            decode_workers=cfg.embed.num_workers,
            max_pixels=cfg.embed.max_pixels,
            min_confidence=cfg.predict.min_confidence,
            placeholder=cfg.predict.placeholder,
            address=address,
            progress=not quiet,
            runtime=runtime,
            precision=precision,
            allow_missing_image=cfg.predict.allow_missing_image,
        )
        record_input(output, cfg.catalog, checkpoint)  # only once the folder was accepted as this job's
        # The shards' errors with their lines, and the rows the shards never saw, as the local engine writes.
        errors = read_ray_output(output, "errors")
        end_job(console, with_row_errors(summary, catalog, errors, output), cfg.predict.max_error_share)
        return
    predictor = Predictor.from_pretrained(
        checkpoint, device=cfg.embed.device, runtime=runtime, precision=precision
    )
    if not quiet:
        console.print(f"runtime: {predictor.runtime} on {predictor.device}")
    summary = predictor.predict_catalog(
        catalog,
        output,
        **embed_options(cfg.embed),
        min_confidence=cfg.predict.min_confidence,
        placeholder=cfg.predict.placeholder,
        chunk_size=cfg.predict.chunk_size,
        progress=not quiet,
        allow_missing_image=cfg.predict.allow_missing_image,
    )
    # `review OUTPUT` finds images, titles and the schema through it; written only after the folder's
    # manifest accepted this job, so a refused rerun leaves the finished job's record as it was.
    record_input(output, cfg.catalog, checkpoint)
    missing_hint = (
        f"; images were looked for as {catalog.image_root or Path()}/{catalog.image_template}: "
        "point --images at the folder they are in"
    )
    end_job(console, summary, cfg.predict.max_error_share, missing_hint)


@app.command()
def embed(
    config: ConfigOpt = None, overrides: SetOpt = None, images: ImagesOpt = None, quiet: QuietOpt = False
) -> None:
    """Compute and cache backbone features for a catalog, so later training runs start warm."""
    from taxonomist.data.prepare import load_catalog
    from taxonomist.features.build import embed_options, runtime_options
    from taxonomist.features.embed import embed_catalog, runtime_backbone
    from taxonomist.models.build import build_backbone

    cfg = resolve_config(config, overrides, **{"catalog.image_root": images})
    catalog = load_catalog(cfg.catalog, seed=cfg.train.seed)
    backbone = runtime_backbone(build_backbone(cfg.backbone), **runtime_options(cfg.embed))
    result = embed_catalog(catalog, backbone, **embed_options(cfg.embed), progress=not quiet)
    console.print(
        f"{len(catalog)} images: {result.cached} cached, {result.computed} computed, "
        f"{len(result.errors)} errors in {result.seconds:.1f}s (backbone {backbone.fingerprint()})"
    )


@app.command()
def inspect(
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Report folder.")] = Path("runs/inspect"),
    check_images: Annotated[
        bool, typer.Option("--check-images/--no-images", help="Also hash and decode every image.")
    ] = True,
    images: ImagesOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Before training: rows, gaps, class balance, out-of-schema values, duplicates, unreadable images."""
    from taxonomist.data.catalog import CatalogError, expand_path
    from taxonomist.data.prepare import DATA_REPORT, load_catalog, prepare_catalog
    from taxonomist.data.schema import Schema
    from taxonomist.io import atomic_write_text
    from taxonomist.report.inspection import inspect_catalog

    cfg = resolve_config(config, overrides, **{"catalog.image_root": images})
    catalog = load_catalog(cfg.catalog, seed=cfg.train.seed, bad_rows="report")
    schema = Schema.load(expand_path(cfg.catalog.schema)) if cfg.catalog.schema else None
    report = inspect_catalog(
        catalog,
        schema=schema,
        check_images=check_images,
        num_workers=cfg.embed.num_workers,
        progress=not quiet,
    )
    report.print(console)
    console.print(f"report: {report.save(output)}", soft_wrap=True)
    # What ``train`` would drop, mask or flag, split by split: the same data step, the same report.
    try:
        data = prepare_catalog(cfg).report
    except CatalogError as err:  # e.g. duplicate ids, which inspect reports but train refuses
        console.print(f"train would refuse this catalog: {err}", style="yellow", markup=False)
        return
    console.print(data_report_table(data))
    atomic_write_text(output / DATA_REPORT, data.to_json())


@app.command()
def bench(
    checkpoint: Annotated[Path, typer.Argument(help="Attribute checkpoint directory.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder for bench.json/.md.")] = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes to try.")] = "1,8,32",
    seconds: Annotated[float, typer.Option(help="Timing window per batch size.")] = 2.0,
    title_tokens: Annotated[
        int,
        typer.Option(
            min=0,
            help="Listing checkpoints: tokens of the title read with each image (fashion titles: 10 on "
            "average, 13 at the 90th percentile); 0 = listings without a title.",
        ),
    ] = 16,
    runtime: PredictRuntimeOpt = "auto",
    precision: PrecisionDefaultOpt = None,
) -> None:
    """Efficiency report: params, weight MB, GFLOPs/image, images/s (batch 1, best), latency, memory.

    Timed on the runtime and precision predict and serve run (the same choices, default auto at the
    heads' precision); params, weight MB and GFLOPs are counted on the torch fp32 modules. A listing
    checkpoint is measured per listing: its image and a title through its sentence encoder."""
    from taxonomist.inference.efficiency import measure_efficiency
    from taxonomist.inference.predictor import ImagesToLogits, Predictor
    from taxonomist.io import atomic_write_json, atomic_write_text

    try:  # before the checkpoint is loaded: a typo should not wait for it
        sizes = tuple(int(b) for b in batch_sizes.split(","))
    except ValueError:
        raise typer.BadParameter(
            f"{batch_sizes!r} is not a comma-separated list of whole numbers", param_hint="--batch-sizes"
        ) from None
    if min(sizes) < 1:
        raise typer.BadParameter(
            f"batch sizes must be at least 1, got {batch_sizes!r}", param_hint="--batch-sizes"
        )
    predictor = Predictor.from_pretrained(checkpoint, runtime=runtime, precision=precision)
    # A runtime's graphs hold nothing torch can count: the torch modules give params and FLOPs.
    counted = predictor
    if predictor.runtime != "torch fp32":
        counted = Predictor.from_pretrained(checkpoint, device="cpu", runtime="torch", precision="fp32")
    try:
        timed = ImagesToLogits(predictor, title_tokens=title_tokens)
        model = timed if counted is predictor else ImagesToLogits(counted, title_tokens=title_tokens)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--title-tokens") from None
    report = measure_efficiency(
        model,
        predictor.backbone.preprocess.size,
        batch_sizes=sizes,
        seconds=seconds,
        inputs=timed.inputs,
        timed=timed,
        runtime=timed.runtime,
    )
    output = output or checkpoint
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output / "bench.json", report.to_dict(), indent=1)
    atomic_write_text(output / "bench.md", report.to_markdown() + "\n")
    console.print(report.to_markdown())
    console.print(
        f"timed on {report.runtime}, as predict runs it (--runtime, --precision); params, weight MB and "
        "GFLOPs counted on torch fp32",
        markup=False,
    )


def _checkpoint_config(
    checkpoint: Path, config: Path | None, overrides: list[str] | None, **flags: object
) -> RunConfig:
    """The run's saved config, with a user config, overrides and flags on top (each setting a user file
    leaves out keeps the run's value: the data layout, the split, the embedding settings)."""
    if not checkpoint.is_dir():
        what = "not a directory" if checkpoint.exists() else "no such checkpoint directory"
        raise typer.BadParameter(f"{checkpoint}: {what}")
    saved = checkpoint / "config.yaml"
    if not saved.is_file():
        if config is None:
            raise typer.BadParameter(f"{checkpoint}: no config.yaml beside the checkpoint; pass --config")
        saved = None
    return resolve_config(config, overrides, base=saved, **flags)


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that describe a bad input (file, folder, setting, catalog, checkpoint), not a bug: the CLI
    prints their one-line message instead of a traceback. Imported here, on the error path only, so that
    startup does not pay for torch."""
    from taxonomist.config import ConfigError
    from taxonomist.data.catalog import CatalogError
    from taxonomist.data.images import ImageLoadError
    from taxonomist.data.schema import SchemaError
    from taxonomist.data.taxonomy import TaxonomyError
    from taxonomist.inference.taxonomy import TaxonomyCheckpointError
    from taxonomist.io import ResumeError
    from taxonomist.models.checkpoint import CheckpointError
    from taxonomist.progress import ProgressSettingError

    return (
        JobFailed,
        ConfigError,
        CatalogError,
        SchemaError,
        TaxonomyError,
        CheckpointError,
        TaxonomyCheckpointError,
        ResumeError,
        ImageLoadError,
        ProgressSettingError,
        FileNotFoundError,
        NotADirectoryError,
    )


VERBOSE_ENV = "TAXONOMIST_VERBOSE"
_QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # downloads and "Loading checkpoint shards"
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DATASETS_VERBOSITY": "error",
    "TQDM_DISABLE": "1",  # any other library's tqdm bar
}
_NOISY_MODULES = r"(torch|transformers|peft|trl|accelerate|sentence_transformers|datasets|sklearn)(\.|$)"


def quiet_third_party() -> None:
    """Other libraries' progress bars and warnings would drown taxonomist's own bar and one-line messages;
    they stay quiet unless ``TAXONOMIST_VERBOSE=1`` (or the library's own variable) asks for them."""
    if os.environ.get(VERBOSE_ENV, "").lower() in ("1", "true", "yes"):
        return
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", category=UserWarning, module=_NOISY_MODULES)
    warnings.filterwarnings("ignore", category=FutureWarning, module=_NOISY_MODULES)


def main(args: list[str] | None = None) -> None:
    """Console entry point (``taxonomist`` and ``python -m taxonomist.cli``): user-input errors end as
    ``error: <message>`` with exit status 2, like a usage error; anything else keeps its traceback."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_third_party()
    try:
        status = app(args=args, prog_name="taxonomist", standalone_mode=False)
    except typer.Abort:  # Ctrl-C, as typer reports it
        print("Aborted!", file=sys.stderr)
        raise SystemExit(1) from None
    except typer.TyperException as err:  # a bad flag, value or missing argument: one line, not a box
        ctx = getattr(err, "ctx", None)
        if type(err).__name__ == "NoArgsIsHelpError":  # a command group called bare: its help
            print(err.format_message(), file=sys.stderr)
        else:
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            print(f"error: {err.format_message()}{hint}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except Exception as err:
        if not isinstance(err, user_errors()):
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if isinstance(status, int) and status:  # typer.Exit(code) returns its code outside standalone mode
        raise SystemExit(status)
