"""Pieces every benchmark script shares: each owns one ``## `` section of ``docs/benchmarks.md``."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def replace_section(path: Path, heading: str, text: str) -> None:
    """Swap one ``## `` section of the docs page in place (appended if new), keeping the others: each
    benchmark owns its own, and a rerun must not reorder the page."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    parts = old.split("\n## ")
    head, sections = parts[0], ["## " + p for p in parts[1:]]
    at = next((i for i, s in enumerate(sections) if s.startswith(heading)), len(sections))
    sections[at : at + 1] = [text]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head.rstrip() + "\n\n" + "\n".join(s.rstrip() + "\n" for s in sections), encoding="utf-8")


def sync() -> None:
    """Wait for queued GPU work, so a timer reads finished forwards (a no-op on CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def machine() -> str:
    """What a result was measured on: CPU, cores, torch, and the GPU where torch sees one."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {gpu}"


def score_table_head(order: list[str], first: str = "model") -> list[str]:
    """Header and rule of a docs score table: the model, its score, then one column per attribute."""
    return [
        f"| {first} | score | " + " | ".join(order) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in order) + " |",
    ]


def score_row(name: str, score: float, per_attr: dict, order: list[str]) -> str:
    """One model's row of :func:`score_table_head`'s table (nan where it lacks an attribute)."""
    return (
        f"| {name} | {score:.4f} | "
        + " | ".join(f"{per_attr.get(a, float('nan')):.4f}" for a in order)
        + " |"
    )
