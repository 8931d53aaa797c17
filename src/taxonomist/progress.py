"""One progress style for every long loop: count, rate and ETA, quiet when not wanted.

On a terminal that is a rich bar. Elsewhere (a log file, a scheduler, a pipe) rich would draw nothing
until the end, so a plain line per task goes to stderr every ``TAXONOMIST_PROGRESS_INTERVAL`` seconds
(default 10) and once more when the loop ends: enough to follow a job in its log, never a flood.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TextIO

from rich import get_console
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

INTERVAL_ENV = "TAXONOMIST_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 10.0


class ProgressSettingError(ValueError):
    """``$TAXONOMIST_PROGRESS_INTERVAL`` is no positive number of seconds: a setting, not a bug."""


class _Rate(TextColumn):
    def __init__(self, unit: str) -> None:
        super().__init__("")
        self.unit = unit

    def render(self, task):  # type: ignore[override]
        speed = task.finished_speed or task.speed
        return f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s"


def progress_bar(
    unit: str = "it",
    disable: bool = False,
    *,
    console: Console | None = None,
    interval: float | None = None,
    stream: TextIO | None = None,
) -> Progress:
    """A progress display counting ``unit``s (rows, images: what the user has, not internal chunks).

    ``console`` decides whether output is a terminal (default: rich's, on stdout); when it is not, plain
    lines go to ``stream`` (default stderr) every ``interval`` seconds (default: ``$TAXONOMIST_PROGRESS_
    INTERVAL`` or 10).
    """
    console = console or get_console()
    if disable or console.is_terminal:
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            _Rate(unit),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            disable=disable,
            transient=False,
        )
    if interval is None:
        interval = _interval_from_env()
    return PlainProgress(unit, interval=interval, stream=stream, console=console)


def _interval_from_env() -> float:
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    try:
        return float(raw) if raw else DEFAULT_INTERVAL_S
    except ValueError:  # "30s" ended a job in a traceback that did not name the variable
        raise ProgressSettingError(
            f"{INTERVAL_ENV} must be a positive number of seconds, got {raw!r}"
        ) from None


class PlainProgress(Progress):
    """Tracks tasks like a rich bar (rate and ETA included) but reports them as plain text lines."""

    def __init__(self, unit: str, *, interval: float, stream: TextIO | None, console: Console) -> None:
        if not interval > 0:
            raise ProgressSettingError(f"{INTERVAL_ENV} must be a positive number of seconds, got {interval}")
        super().__init__(console=console, disable=True)
        self.unit = unit
        self.interval = interval
        self.stream = stream
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._report, name="taxonomist-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stopping.set()
            self._thread.join()
            self._thread = None
            self.write_lines()

    def _report(self) -> None:
        while not self._stopping.wait(self.interval):
            self.write_lines()

    def write_lines(self) -> None:
        stream = self.stream or sys.stderr
        for task in self.tasks:
            print(plain_line(task, self.unit), file=stream, flush=True)


def plain_line(task: Task, unit: str) -> str:
    """``predict: 1,024/32,000 (3.2%) · 45.1 row/s · elapsed 0:00:22 · eta 0:11:50``."""
    done = f"{task.completed:,.0f}"
    if task.total is not None:
        done += f"/{task.total:,.0f} ({task.percentage:.1f}%)"
    speed = task.finished_speed or task.speed
    parts = [f"{task.description}: {done}", f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s"]
    parts.append(f"elapsed {_clock(task.finished_time if task.finished else task.elapsed)}")
    if not task.finished:
        remaining = task.time_remaining
        parts.append(f"eta {_clock(remaining)}" if remaining is not None else "eta -")
    return " · ".join(parts)


def _clock(seconds: float | None) -> str:
    return str(timedelta(seconds=round(seconds or 0)))


@contextmanager
def timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    """Record the wall-clock seconds of the ``with`` block as ``seconds[key]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = time.perf_counter() - start
