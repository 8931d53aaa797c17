"""Rich tables the commands print: scores per category and attribute, and one evaluation's summary."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from taxonomist.inference.evaluate import INPUT_VIEWS

console = Console()


def score_table(report, title: str) -> Table:
    table = Table(title=title)
    for col in ("category", "f1_micro", "f1_macro", "harmonic", "n_rows"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for row in report.per_category.itertuples():
        table.add_row(  # names are data, never markup: "Kurtas [women]" prints as it is
            Text(str(row.category)),
            f"{row.f1_micro:.4f}",
            f"{row.f1_macro:.4f}",
            f"{row.harmonic:.4f}",
            str(row.n_rows),
        )
    table.add_section()
    table.add_row("[bold]score[/bold]", "", "", f"[bold]{report.score:.4f}[/bold]", "")
    return table


def attribute_table(report) -> Table:
    table = Table(title="per attribute")
    for col in ("attribute", "accuracy", "harmonic", "n"):
        table.add_column(col, justify="left" if col == "attribute" else "right")
    for row in report.per_attribute.itertuples():
        table.add_row(Text(str(row.attribute)), f"{row.accuracy:.4f}", f"{row.harmonic:.4f}", str(row.n))
    return table


def inputs_table(evaluation) -> Table:
    """Listing heads: the same rows scored with both inputs, each alone, and by the lexical probe."""
    table = Table(title="inputs (rows with a readable image; per attribute in evaluation.md)")
    intervals = evaluation.input_intervals
    level = f"{next(iter(intervals.values())).level:.0%} " if intervals else ""
    for col in ("inputs", "score", *([f"{level}interval"] if intervals else [])):
        table.add_column(col, justify="left" if col == "inputs" else "right")
    for view, report in evaluation.inputs.items():
        interval = intervals.get(view)
        span = [] if interval is None else [interval.span()]
        table.add_row(INPUT_VIEWS[view], f"{report.score:.4f}", *span)
    return table


def gain_lines(evaluation) -> list[str]:
    """The fused model's gain over each other view, with its paired interval: one line each."""
    return [
        f"fused − {INPUT_VIEWS[view]}: {g.value:+.4f} ({g.level:.0%} paired interval {g.span(signed=True)})"
        for view, g in evaluation.input_gains.items()
    ]


def show_evaluation(evaluation, split: str, notes: list[str], report_dir: Path | None, model: str) -> None:
    """An evaluation's score tables and notes, and (``report_dir``) its HTML report, as `evaluate` and
    `vlm evaluate` print them."""
    console.print(score_table(evaluation.report, f"{split} split"))
    console.print(attribute_table(evaluation.report))
    if evaluation.interval_note:
        console.print(evaluation.interval_note, highlight=False)
    if evaluation.inputs:
        console.print(inputs_table(evaluation))
        for line in gain_lines(evaluation):
            console.print(line, highlight=False)
    for note in notes:
        console.print(note, style="yellow", markup=False, highlight=False)
    if report_dir is not None:
        from taxonomist.report.evaluation import write_evaluation_report

        page = write_evaluation_report(evaluation, report_dir, model=model)
        console.print(f"report: {page}", soft_wrap=True)  # a path to copy, never wrapped
