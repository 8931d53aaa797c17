"""Terminal tables print catalog names as they are: square brackets are data, never rich markup."""

from __future__ import annotations

import pandas as pd
import pytest
from rich.console import Console

from taxonomist.cli.main import calibration_table
from taxonomist.cli.tables import attribute_table, score_table
from taxonomist.config import CatalogConfig
from taxonomist.data.prepare import load_catalog
from taxonomist.metrics import attribute_score
from taxonomist.report.inspection import inspect_catalog

NAMES = ["Kurtas [women]", "Tops [/]", "size [bold red]cm", "[/x] odd"]


def _printed(*renderables) -> str:
    console = Console(width=200, force_terminal=False)
    with console.capture() as captured:
        for r in renderables:
            console.print(r)
    return captured.get()


@pytest.mark.parametrize("name", NAMES)
def test_score_tables_print_bracketed_names_verbatim(name: str) -> None:
    truth = pd.DataFrame({"id": ["1", "2"], "category": [name] * 2, name: ["x", "y"]})
    report = attribute_score(truth, truth.copy(), {name: [name]})
    out = _printed(score_table(report, "test split"), attribute_table(report))
    assert out.count(name) == 2  # the category row and the attribute row


def test_calibration_table_prints_bracketed_attribute_verbatim() -> None:
    stats = dict.fromkeys(
        ("temperature", "ece_before", "ece_after", "cross_entropy_before", "cross_entropy_after"), 1.0
    )
    assert "size [/]" in _printed(calibration_table({"size [/]": stats}))


def test_inspect_prints_bracketed_values_verbatim(tmp_path) -> None:
    frame = pd.DataFrame(
        {"id": [str(i) for i in range(6)], "category": ["Tops [/x]"] * 6, "pattern": ["Solid [/] plain"] * 6}
    )
    path = tmp_path / "catalog [v2].csv"
    frame.to_csv(path, index=False)
    cfg = CatalogConfig(
        path=str(path),
        layout="generic",
        id_column="id",
        category_column="category",
        attributes=["pattern"],
        min_rows_per_category=1,
    )
    report = inspect_catalog(load_catalog(cfg), check_images=False, progress=False)
    console = Console(width=200, force_terminal=False)
    with console.capture() as captured:
        report.print(console)
    out = captured.get()
    assert "Tops [/x]" in out
    assert "catalog [v2].csv" in out
