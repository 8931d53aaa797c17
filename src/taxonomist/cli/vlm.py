"""``taxonomist vlm export | train | evaluate | predict | improve | random-model``: vision-language models.

The task (attributes or captions) travels with the model, so the same predict and evaluate commands serve
both; ``taxonomist predict`` / ``evaluate`` hand VLM folders over to these as well.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from taxonomist.cli.options import (
    ConfigOpt,
    ImagesOpt,
    JobOutputOpt,
    PredictDataOpt,
    QuietOpt,
    SetOpt,
    end_job,
    resolve_config,
)
from taxonomist.cli.tables import show_evaluation
from taxonomist.config import PredictConfig, VLMConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()


def is_vlm_dir(path: Path) -> bool:
    from taxonomist.models.vlm import read_metadata, resolve_model_dir

    return bool(read_metadata(resolve_model_dir(path)))


def model_config(
    model_dir: Path, config: Path | None, overrides: list[str] | None, **flags: object
) -> VLMConfig:
    """The run's own config.yaml (data, split, prompts), with a user config, ``--set`` and flags on top."""
    saved = model_dir / "config.yaml"
    return resolve_config(config, overrides, VLMConfig, base=saved if saved.is_file() else None, **flags)


@app.command()
def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="LLaMA-Factory dataset_dir.")],
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    formatting: Annotated[Literal["sharegpt", "alpaca"], typer.Option("--format")] = "sharegpt",
    name: Annotated[str, typer.Option(help="Dataset name in dataset_info.json.")] = "taxonomist",
) -> None:
    """Catalog → chat examples → ShareGPT/Alpaca JSON + dataset_info.json (train as NAME, val as NAME_val)."""
    from taxonomist.data.chat import export_llamafactory, readable_examples, validate_llamafactory
    from taxonomist.data.prepare import build_examples

    cfg = resolve_config(config, overrides, VLMConfig)
    train_examples, val_examples, _ = build_examples(cfg)
    # As `vlm train` does: an example whose image cannot be read is left out and counted, not fatal.
    (train_examples, train_errors), (val_examples, val_errors) = map(
        readable_examples, (train_examples, val_examples)
    )
    for error in (train_errors + val_errors)[:5]:
        console.print(f"left out {error.id}: {error.reason} image {error.path}", markup=False, soft_wrap=True)
    if len(train_errors) + len(val_errors) > 5:
        console.print(f"… {len(train_errors) + len(val_errors)} examples left out in all", markup=False)
    export_llamafactory(train_examples, output, name=name, formatting=formatting)
    export_llamafactory(val_examples, output, name=f"{name}_val", formatting=formatting)
    counts = validate_llamafactory(output)
    console.print(f"{counts} → {output} (LLaMA-Factory: dataset_dir={output}, dataset={name})")


@app.command()
def train(
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder (adapter/, merged/).")] = Path(
        "runs/vlm"
    ),
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    model: Annotated[str | None, typer.Option(help="Hub id or folder (model.name).")] = None,
    quiet: QuietOpt = False,
) -> None:
    """LoRA (or QLoRA with model.quantization=4bit) SFT; resumes from the run folder's last checkpoint."""
    from taxonomist.training.vlm_sft import train_sft

    cfg = resolve_config(config, overrides, VLMConfig, **{"model.name": model})
    report = train_sft(cfg, output, progress=not quiet)
    console.print_json(json.dumps(report.to_dict()))


@app.command()
def evaluate(
    model_dir: Annotated[Path, typer.Argument(help="Run folder or model folder.")],
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    split: Annotated[
        Literal["test", "dev", "all"],
        typer.Option(help="Attributes: test (held out from every choice), dev, or all rows; captions: val."),
    ] = "test",
    output: Annotated[
        Path | None,
        typer.Option(
            help="Folder for evaluation.json/.md and predictions.csv; with --report, default "
            "MODEL_DIR/evaluation-SPLIT."
        ),
    ] = None,
    report: Annotated[
        bool,
        typer.Option(
            "--report",
            help="Attributes: also write report.html (self-contained) with the same tables and figures as "
            "a heads checkpoint's.",
        ),
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Attributes: competition metric beside a majority baseline, validity, confidence ECE. Captions:
    BLEU-4, ROUGE-L, CIDEr, FGD."""
    from taxonomist.inference.evaluate import evaluate_vlm

    if report and output is None:
        output = model_dir / f"evaluation-{split}"
    cfg = model_config(model_dir, config, overrides)
    summary, evaluation = evaluate_vlm(model_dir, cfg, split=split, output=output, progress=not quiet)
    if evaluation is None:
        table = Table(title=f"captions ({summary['n']} images, {summary['failed']} failed)")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in summary.items():
            if isinstance(value, int | float) and key not in ("n", "failed"):
                table.add_row(key, f"{value:.4f}")
        console.print(table)
    else:
        ece, baseline = summary.get("ece"), summary.get("baseline_score")
        line = (
            f"valid outputs {summary['valid_fraction']:.1%} · ECE {'–' if ece is None else f'{ece:.4f}'} · "
            f"majority-class baseline {'–' if baseline is None else f'{baseline:.4f}'}"
        )
        show_evaluation(evaluation, split, [line], output if report else None, model_dir.name)
    if output is not None:
        console.print(f"evaluation: {output / 'evaluation.md'}")


@app.command()
def predict(
    model_dir: Annotated[Path, typer.Argument(help="Run folder or model folder.")],
    output: JobOutputOpt,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    data: PredictDataOpt = None,
    quiet: QuietOpt = False,
    images: ImagesOpt = None,
) -> None:
    """Attributes (Meesho + long layouts with confidences) or captions for every catalog row; the training
    run's row filters do not apply. Rows with a blank id or category or a repeated id are rows of
    errors.csv too, each with its line; when every row, or more than predict.max_error_share of them,
    failed, the command ends with exit status 2."""
    import pandas as pd

    from taxonomist.cli.inputs import record_input
    from taxonomist.data.catalog import CATEGORY, ID, TEXT
    from taxonomist.data.prepare import load_for_prediction
    from taxonomist.inference.predictor import with_row_errors
    from taxonomist.inference.vlm import VLMPredictor
    from taxonomist.models.build import build_decoding

    cfg = model_config(model_dir, config, overrides, **{"catalog.path": data, "catalog.image_root": images})
    predictor = VLMPredictor.from_pretrained(model_dir, decoding=build_decoding(cfg.generate))
    asks_title = predictor.task == "attributes" and bool(predictor.prompts.title)
    catalog = load_for_prediction(cfg.catalog, text=asks_title)  # asked as the model was trained
    if catalog.text_note:
        console.print(f"note: {catalog.text_note}", style="yellow", markup=False, soft_wrap=True)
    categories = catalog.frame[CATEGORY].astype(str).tolist() if predictor.task == "attributes" else None
    titled = asks_title and TEXT in catalog.frame.columns
    summary = predictor.predict_file(
        catalog.frame[ID].astype(str).tolist(),
        catalog.image_paths(),
        categories or [None] * len(catalog),
        output,
        progress=not quiet,
        titles=catalog.frame[TEXT].tolist() if titled else None,
        attribute_order=catalog.attributes_by_category,
    )
    record_input(output, cfg.catalog, model_dir)  # once the folder's manifest accepted this job
    errors = pd.read_csv(output / "errors.csv", dtype=str, keep_default_na=False)
    end_job(console, with_row_errors(summary, catalog, errors, output), PredictConfig().max_error_share)


@app.command()
def improve(
    model_dir: Annotated[Path, typer.Argument(help="Starting model: an SFT run folder or a model folder.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder (round-k/, progress.json).")],
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    pool: Annotated[
        str | None,
        typer.Option(help="Unlabeled catalog (same layout as catalog.path); default: the training split."),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Self-consistency rounds: sample K reasoning chains per unlabeled image, vote, build
    (chosen, rejected) pairs, DPO with LoRA, score on the dev part; resumable, best round kept."""
    import dataclasses

    import numpy as np

    from taxonomist.data.catalog import ID
    from taxonomist.data.prepare import load_catalog, prepare_catalog
    from taxonomist.improve.vlm_dpo import IMAGE_PATH, usable_pool
    from taxonomist.improve.vlm_dpo import improve as run_improve
    from taxonomist.models.vlm import resolve_model_dir

    cfg = model_config(model_dir, config, overrides)
    data = prepare_catalog(cfg)
    catalog = data.catalog
    frame = catalog.frame.assign(**{IMAGE_PATH: [str(p) for p in catalog.image_paths()]})
    train_idx, val_idx = data.split.train, data.split.dev  # rounds are chosen on dev, never on test
    if pool is None:
        # The training split's labels stay in the frame only to measure the vote, never to train.
        unlabeled = frame.iloc[train_idx].reset_index(drop=True)
    else:
        pool_cfg = dataclasses.replace(
            cfg.catalog, path=pool, attributes=[], min_rows_per_category=0, limit=None
        )
        pool_catalog = load_catalog(pool_cfg)
        unlabeled = pool_catalog.frame.assign(**{IMAGE_PATH: [str(p) for p in pool_catalog.image_paths()]})
        held_out = frame[ID].iloc[np.concatenate([data.split.dev, data.split.test])].astype(str)
        unlabeled, notes = usable_pool(unlabeled, held_out.tolist(), list(data.schema.categories))
        for note in notes:
            console.print(f"note: {note}", style="yellow", markup=False, soft_wrap=True)
    report = run_improve(
        cfg,
        resolve_model_dir(model_dir),
        unlabeled,
        frame.iloc[val_idx].reset_index(drop=True),
        output,
        progress=not quiet,
    )
    console.print_json(json.dumps(report.to_dict(), default=str))


@app.command("random-model")
def random_model(
    output: Annotated[Path, typer.Option("--output", "-o", help="Model folder to write.")],
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    size: Annotated[
        Literal["tiny", "2b"], typer.Option(help="tiny (CPU smoke) or Qwen2-VL-2B shapes.")
    ] = "tiny",
) -> None:
    """A random-weight Qwen2-VL with a tokenizer trained on the config's schema and prompts: runs every
    VLM command offline (smoke tests, throughput benchmarks); its answers are valid but meaningless."""
    from taxonomist.data.prepare import load_catalog
    from taxonomist.models.vlm import random_vlm, write_metadata

    cfg = resolve_config(config, overrides, VLMConfig)
    corpus = [cfg.prompt.system, cfg.prompt.attributes, cfg.prompt.caption]
    schema = None
    if cfg.task == "attributes":
        schema = load_catalog(cfg.catalog, seed=cfg.train.seed).infer_schema()
        corpus.append(json.dumps(schema.to_dict()))
    random_vlm(output, corpus, size=size)
    write_metadata(
        output,
        {
            "task": cfg.task,
            "schema": schema.to_dict() if schema else None,
            "model": {"min_pixels": cfg.model.min_pixels, "max_pixels": cfg.model.max_pixels},
        },
    )
    console.print(f"random {size} Qwen2-VL ({cfg.task}) → {output}")
