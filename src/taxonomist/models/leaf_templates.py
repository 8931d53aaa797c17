"""Brand leaves: taxonomy leaves named after the product's brand, predicted for brands never seen.

Some catalog trees give each brand its own leaf under a group: flipkart files a Lamex watch under
Watches > Wrist Watches > Lamex Wrist Watches, a Mavi figurine under ... > Showpieces > Mavi Showpieces.
A classifier over the training paths cannot name the leaf of a brand it never saw and picks another
brand's; on flipkart most test titles whose path is missing from training are such leaves. Where most
training leaves under a parent are "<the title's first words> <parent>", :class:`LeafTemplates` builds
that leaf from the title itself: the longest first-words span whose leaf training already holds, else
the first word (the usual length of a brand here). The recipe keeps it only if dev path accuracy rises.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from taxonomist.io import atomic_write_text

TreePath = tuple[str, ...]


@dataclass
class LeafTemplates:
    """``fit(titles, paths)`` learns which parents name their leaves after the title's first words;
    ``rewrite`` fills those leaves in for predicted paths under them.

    ``min_share``: share of a parent's training rows that must follow the pattern; ``min_rows``: rows a
    parent needs to be judged; ``max_tokens``: longest first-words span tried.
    """

    min_share: float = 0.5
    min_rows: int = 2
    max_tokens: int = 4

    def candidates(self, title: str, parent: TreePath) -> list[str]:
        """The leaves "<first k words> <parent>" for k = 1 .. max_tokens."""
        words = title.split()
        return [f"{' '.join(words[:k])} {parent[-1]}" for k in range(1, min(self.max_tokens, len(words)) + 1)]

    def fit(self, titles: Sequence[str], paths: Sequence[Sequence[str]]) -> LeafTemplates:
        rows: Counter = Counter()
        templated: Counter = Counter()
        leaves: dict[TreePath, set[str]] = {}
        for title, path in zip(titles, paths, strict=True):
            if len(path) < 2:
                continue
            parent = tuple(path[:-1])
            rows[parent] += 1
            leaves.setdefault(parent, set()).add(path[-1])
            templated[parent] += path[-1] in self.candidates(title, parent)
        shares = {p: templated[p] / n for p, n in rows.items() if n >= self.min_rows}
        self.parents_: dict[TreePath, float] = {p: v for p, v in shares.items() if v >= self.min_share}
        """Templated parents → the share of their training rows that follow the pattern."""
        self.leaves_: dict[TreePath, set[str]] = {p: leaves[p] for p in self.parents_}
        return self

    def leaf(self, title: str, parent: TreePath) -> str | None:
        """The brand leaf of ``title`` under ``parent``, or None when ``parent`` is not templated."""
        if parent not in self.parents_:
            return None
        candidates = self.candidates(title, parent)
        if not candidates:
            return None
        known = [c for c in candidates if c in self.leaves_[parent]]
        return known[-1] if known else candidates[0]

    def rewrite(
        self, titles: Sequence[str], paths: Sequence[TreePath], level_confidence: np.ndarray
    ) -> tuple[list[TreePath], np.ndarray]:
        """Paths with brand leaves filled in, and their per-level confidence.

        A changed leaf's confidence is the parent's times the parent's share of templated rows: the
        chance that the leaf follows the pattern, given the parent is right.
        """
        out, confidence = [], np.array(level_confidence, dtype=np.float64, copy=True)
        for i, (title, path) in enumerate(zip(titles, paths, strict=True)):
            parent = tuple(path[:-1])
            leaf = self.leaf(title, parent)  # None for a parent fit never kept, () included
            if leaf is not None and leaf != path[-1]:
                path = (*parent, leaf)
                confidence[i, -1] = confidence[i, -2] * self.parents_[parent]
            out.append(tuple(path))
        return out, confidence

    def follows(self, title: str, path: Sequence[str]) -> bool:
        """Whether ``path`` is a brand leaf of ``title`` (a valid output though the tree lacks it)."""
        parent = tuple(path[:-1])
        return parent in self.parents_ and path[-1] in self.candidates(title, parent)

    # -- persistence -----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        state = {
            "min_share": self.min_share,
            "min_rows": self.min_rows,
            "max_tokens": self.max_tokens,
            "parents": [
                {"parent": list(p), "share": share, "leaves": sorted(self.leaves_[p])}
                for p, share in sorted(self.parents_.items())
            ],
        }
        atomic_write_text(Path(path), json.dumps(state, indent=1, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> LeafTemplates:
        state = json.loads(Path(path).read_text(encoding="utf-8"))
        out = cls(state["min_share"], state["min_rows"], state["max_tokens"])
        out.parents_ = {tuple(p["parent"]): float(p["share"]) for p in state["parents"]}
        out.leaves_ = {tuple(p["parent"]): set(p["leaves"]) for p in state["parents"]}
        return out
