"""Pieces every benchmark script shares: each owns one ``## `` section of ``docs/benchmarks.md``."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, heading: str, text: str) -> None:
    """Swap one ``## `` section of the docs page, keeping the others (each benchmark owns its own)."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    parts = old.split("\n## ")
    head, sections = parts[0], ["## " + p for p in parts[1:]]
    sections = [s for s in sections if not s.startswith(heading)] + [text]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head.rstrip() + "\n\n" + "\n".join(s.rstrip() + "\n" for s in sections), encoding="utf-8")
