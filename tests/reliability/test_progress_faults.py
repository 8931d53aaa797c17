"""Progress people can follow: counts of rows or images with rate and ETA; off a terminal, plain lines
at a steady interval; and ``train`` goes on past images that are not files."""

from __future__ import annotations

import io
import os
import re
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from taxonomist.progress import INTERVAL_ENV, PlainProgress, progress_bar

from .conftest import Tiny, write_rows

PLAIN = re.compile(
    r"^predict: (\d+)/(\d+) \((\d+\.\d)%\) · (- row/s|[\d,.]+ row/s) · elapsed \S+( · eta \S+)?$"
)


def test_off_a_terminal_plain_lines_come_at_the_interval() -> None:
    stream = io.StringIO()
    bar = progress_bar("row", console=Console(file=io.StringIO()), interval=0.05, stream=stream)
    assert isinstance(bar, PlainProgress)
    with bar:
        task = bar.add_task("predict", total=100)
        for _ in range(4):
            bar.advance(task, 25)
            time.sleep(0.06)
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 4  # some while running, one at the end
    assert all(PLAIN.match(line) for line in lines), lines
    assert lines[-1].startswith("predict: 100/100 (100.0%) · ") and "eta" not in lines[-1]
    running = [line for line in lines[:-1] if "eta" in line]
    assert running and "row/s" in running[0]


def test_a_stalled_loop_still_reports() -> None:
    """Lines come from a timer, not from progress: a stuck job keeps saying where it is."""
    stream = io.StringIO()
    with progress_bar("row", console=Console(file=io.StringIO()), interval=0.02, stream=stream) as bar:
        bar.add_task("predict", total=10)
        time.sleep(0.15)
    assert stream.getvalue().count("predict: 0/10 (0.0%)") >= 3


def test_a_terminal_gets_the_rich_bar_and_quiet_gets_nothing() -> None:
    terminal = Console(file=io.StringIO(), force_terminal=True)
    assert not isinstance(progress_bar("row", console=terminal), PlainProgress)
    stream = io.StringIO()
    with progress_bar("row", disable=True, console=Console(file=io.StringIO()), stream=stream) as bar:
        bar.advance(bar.add_task("predict", total=1))
    assert stream.getvalue() == ""
    assert not any(t.name == "taxonomist-progress" for t in threading.enumerate())


def test_predict_counts_rows_in_its_log(cli, tiny: Tiny, tmp_path: Path, monkeypatch) -> None:
    """Regression: the bar counted 512-row chunks (0/2 for 45 s) and said nothing off a terminal."""
    monkeypatch.setenv(INTERVAL_ENV, "0.01")
    data = write_rows(tmp_path / "rows.csv", tiny.rows(10)[["sku", "type"]])
    args = ("-o", tmp_path / "out", "--data", data, "--images", tiny.images, "--set", "predict.chunk_size=4")
    code, _, err = cli("predict", tiny.checkpoint, *args)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("predict: ")]
    assert lines and lines[-1].startswith("predict: 10/10 (100.0%)")
    counts = {int(PLAIN.match(line).group(1)) for line in lines}
    assert counts <= {0, 4, 8, 10}  # rows, in steps of a chunk of 4


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_train_goes_on_past_a_fifo_and_lists_it(cli, tiny: Tiny, tmp_path: Path) -> None:
    rows = tiny.rows(24)
    bad = rows.at[3, "sku"]
    tiny.image_folder(tmp_path / "images", rows["sku"], fifos=[bad])
    data = write_rows(tmp_path / "catalog.csv", rows)
    code, _, err = cli("train", "-c", tiny.config, "--data", data, "-o", tmp_path / "run", "-q")
    assert code == 0, err
    errors = pd.read_csv(tmp_path / "run" / "image_errors.csv", dtype=str)
    assert errors[["id", "reason", "detail"]].values.tolist() == [[bad, "unreadable", "not a regular file"]]
