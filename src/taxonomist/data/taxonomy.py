"""Taxonomies (trees of valid label paths, brands per path) and the title datasets labelled with them.

Every taxonomy method in taxonomist predicts through :class:`Taxonomy`, so a path that is not in the
tree can never leave a model: classifiers vote over its paths, heads mask children by parent, and
generation is constrained to (or snapped onto) them.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from taxonomist.io import atomic_write_json

ID = "id"
TITLE = "title"
BRAND = "brand"
NO_BRAND = ""
PATH_SEP = " > "
FLIPKART_SEP = ">>"
DEFAULT_LEVELS = ("supergroup", "group", "module")

_SPACE = re.compile(r"\s+")
_JOINERS = frozenset("\u200c\u200d")
"""ZWNJ and ZWJ: format characters that spell Indic words and join emoji sequences, so kept."""
_LOOSE_JOINERS = re.compile(r"(?<!\S)[\u200c\u200d]+|[\u200c\u200d]+(?!\S)")
"""A joiner at a word's edge joins nothing: dropped, so a title of joiners alone is still blank."""


class TaxonomyError(ValueError):
    """A taxonomy or title file that cannot be read, or a path that does not fit the tree."""


def normalize_text(text: object) -> str:
    """Canonical form of a title or label: NFKC, control and format characters as spaces (but ZWJ and
    ZWNJ within a word, which are spelling), single spaces, trimmed.

    NFKC folds full-width and compatibility characters that scraped catalogs mix in, so the same title
    embeds (and caches) the same way whichever way it was typed.

    Any scalar missing value (None, NaN of any float type, ``pd.NA``, ``NaT``: what a "string" column's
    ``tolist()`` holds) is "", never the text "<NA>" or "nan", which would read as a title. Bytes are
    decoded as UTF-8, not written as "b'...'"; other bytes raise ValueError rather than embed mojibake.
    """
    if not isinstance(text, str):
        if isinstance(text, bytes | bytearray):
            text = _decoded(bytes(text))
        elif text is None or (pd.api.types.is_scalar(text) and pd.isna(text)):
            return ""
    text = unicodedata.normalize("NFKC", str(text))
    if not text.isprintable():  # rare: the per-character scan below is the slow part of prediction
        text = "".join(" " if unicodedata.category(c)[0] == "C" and c not in _JOINERS else c for c in text)
        text = _LOOSE_JOINERS.sub("", text)
    return _SPACE.sub(" ", text).strip()


def _decoded(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"a text given as bytes must be UTF-8: {data[:40]!r} is not ({err.reason} at byte {err.start}); "
            "decode it to str first"
        ) from None


def normalize_brand(brand: object) -> str:
    """Brand key for comparison: normalized text, case-folded (``FabHomeDecor`` == ``fabhomedecor``)."""
    return normalize_text(brand).casefold()


@dataclass
class Taxonomy:
    """The valid paths of a label tree (all of the same depth) and the brands seen under each path."""

    levels: list[str]
    paths: list[tuple[str, ...]]
    brands: dict[tuple[str, ...], list[str]]

    def __post_init__(self) -> None:
        depth = len(self.levels)
        bad = [p for p in self.paths if len(p) != depth or any(not x for x in p)]
        if bad:
            raise TaxonomyError(f"paths must have {depth} non-empty levels {self.levels}; got {bad[:3]}")
        self.paths = sorted(set(self.paths))
        self._index = {p: i for i, p in enumerate(self.paths)}
        # Vocabulary per level: a child keyed by its full prefix, so "Kids > Shoes" != "Men > Shoes".
        self.nodes: list[list[tuple[str, ...]]] = [
            sorted({p[: k + 1] for p in self.paths}) for k in range(depth)
        ]
        self._node_index = [{n: i for i, n in enumerate(nodes)} for nodes in self.nodes]
        # Derived once: every prediction indexes these, and the tree never changes after construction.
        self._path_nodes = np.array(
            [[self._node_index[k][p[: k + 1]] for k in range(depth)] for p in self.paths], dtype=np.int64
        ).reshape(len(self.paths), depth)
        self._path_nodes.flags.writeable = False
        self._parents = [np.zeros(0, dtype=np.int64)] + [
            np.array([self._node_index[k - 1][n[:-1]] for n in self.nodes[k]], dtype=np.int64)
            for k in range(1, depth)
        ]
        for parents in self._parents:
            parents.flags.writeable = False

    @classmethod
    def from_paths(
        cls,
        paths: Iterable[Sequence[str]],
        levels: Sequence[str] = DEFAULT_LEVELS,
        brands: Iterable[str] | None = None,
    ) -> Taxonomy:
        paths = [tuple(normalize_text(x) for x in p) for p in paths]
        by_path: dict[tuple[str, ...], Counter] = {p: Counter() for p in paths}
        if brands is not None:
            for p, b in zip(paths, brands, strict=True):
                if normalize_text(b):
                    by_path[p][normalize_text(b)] += 1
        return cls(
            list(levels), list(by_path), {p: [b for b, _ in c.most_common()] for p, c in by_path.items()}
        )

    @classmethod
    def from_frame(
        cls, frame: pd.DataFrame, levels: Sequence[str], brand_column: str | None = BRAND
    ) -> Taxonomy:
        missing = [c for c in levels if c not in frame.columns]
        if missing:
            raise TaxonomyError(f"taxonomy columns {missing} not found; columns are {list(frame.columns)}")
        brands = frame[brand_column] if brand_column and brand_column in frame.columns else None
        return cls.from_paths(frame[list(levels)].itertuples(index=False, name=None), levels, brands)

    @property
    def depth(self) -> int:
        return len(self.levels)

    def __len__(self) -> int:
        return len(self.paths)

    def __contains__(self, path: object) -> bool:
        return tuple(path) in self._index  # type: ignore[arg-type]

    def path_id(self, path: Sequence[str]) -> int:
        """Index of a path in :attr:`paths`, or -1 when the tree does not hold it."""
        return self._index.get(tuple(path), -1)

    def node_id(self, level: int, prefix: Sequence[str]) -> int:
        return self._node_index[level].get(tuple(prefix[: level + 1]), -1)

    def path_node_ids(self) -> np.ndarray:
        """``(n_paths, depth)`` node index of every path at every level (read-only)."""
        return self._path_nodes

    def parent_ids(self, level: int) -> np.ndarray:
        """For each node of ``level`` (>= 1), the index of its parent node one level up (read-only)."""
        return self._parents[level]

    def snap(self, path: Sequence[str]) -> tuple[str, ...]:
        """The valid path closest to ``path``: longest valid prefix first, then the most similar labels.

        PRMAS's label correction: a generator's near miss ("Mens Footwear") lands on the real node
        ("Men's Footwear") instead of leaving an invalid path in the output.
        """
        path = tuple(normalize_text(x) for x in path)[: self.depth]
        if path in self._index:
            return path
        candidates = self.paths
        for k in range(len(path)):
            narrowed = [p for p in candidates if p[k] == path[k]]
            if not narrowed:
                break
            candidates = narrowed
        return max(candidates, key=lambda p: (_similarity(p, path), -self._index[p]))

    def to_dict(self) -> dict:
        return {
            "levels": self.levels,
            "paths": [list(p) for p in self.paths],
            "brands": [self.brands.get(p, []) for p in self.paths],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Taxonomy:
        paths = [tuple(p) for p in data["paths"]]
        brands = data.get("brands") or [[] for _ in paths]
        return cls(list(data["levels"]), paths, dict(zip(paths, (list(b) for b in brands), strict=True)))

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_dict(), ensure_ascii=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Taxonomy:
        """A taxonomy JSON saved by :meth:`save`, or a CSV/Parquet of level columns (+ ``brand``)."""
        path = Path(path)
        if not path.is_file():
            raise TaxonomyError(f"taxonomy file not found: {path}")
        if path.suffix == ".json":
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        frame = _read_table(path)
        levels = [c for c in frame.columns if c not in (BRAND, "retailer", ID, TITLE)]
        return cls.from_frame(frame, levels, BRAND)


def _similarity(a: Sequence[str], b: Sequence[str]) -> float:
    """Mean character-trigram Jaccard similarity of labels at the same level."""

    def grams(s: str) -> set[str]:
        s = f"  {s.casefold()} "
        return {s[i : i + 3] for i in range(len(s) - 2)}

    scores = []
    for x, y in zip(a, b, strict=False):
        gx, gy = grams(x), grams(y)
        scores.append(len(gx & gy) / max(1, len(gx | gy)))
    return float(np.mean(scores)) if scores else 0.0


def _read_table(path: Path, **kwargs) -> pd.DataFrame:
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=str, keep_default_na=False, **kwargs)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise TaxonomyError(f"{path}: cannot read ({err})") from err


@dataclass
class TitleDataset:
    """Rows of (id, title, one column per level, brand); brand ``""`` means the product has none."""

    frame: pd.DataFrame
    levels: list[str]
    skipped: pd.DataFrame
    """Rows left out by the reader, with a ``reason`` column (e.g. a category tree too shallow)."""

    def paths(self) -> list[tuple[str, ...]]:
        return list(self.frame[self.levels].itertuples(index=False, name=None))

    def taxonomy(self) -> Taxonomy:
        return Taxonomy.from_frame(self.frame, self.levels, BRAND)

    def subset(self, rows: np.ndarray) -> TitleDataset:
        return TitleDataset(self.frame.iloc[rows].reset_index(drop=True), self.levels, self.skipped.iloc[:0])


def parse_flipkart_tree(tree: str) -> list[str]:
    """``'["A >> B >> C"]'`` → ``["A", "B", "C"]`` (the JSON-list-of-one-string format of the dump)."""
    text = tree.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError:
            items = [text.strip("[]").strip('"')]
        text = items[0] if items else ""
    return [normalize_text(x) for x in text.split(FLIPKART_SEP) if normalize_text(x)]


def read_flipkart(
    path: str | os.PathLike, depth: int = 3, levels: Sequence[str] | None = None
) -> TitleDataset:
    """flipkart-products ``products.csv``: the first ``depth`` levels of the category tree, plus brand.

    Rows whose tree is shallower than ``depth`` are skipped and reported: a one-level tree in this dump
    is the product's own name, not a category, and a path must have every level to be scored.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "products.csv"
    if not path.is_file():
        raise TaxonomyError(f"flipkart products file not found: {path}")
    raw = _read_table(path)
    need = ["uniq_id", "product_name", "product_category_tree"]
    missing = [c for c in need if c not in raw.columns]
    if missing:
        raise TaxonomyError(f"{path}: missing column(s) {missing}; columns are {list(raw.columns)}")
    levels = list(levels or (DEFAULT_LEVELS if depth == 3 else [f"level_{k + 1}" for k in range(depth)]))
    if len(levels) != depth:
        raise TaxonomyError(f"{len(levels)} level names given for depth {depth}")
    trees = raw["product_category_tree"].map(parse_flipkart_tree)
    titles = raw["product_name"].map(normalize_text)
    frame = pd.DataFrame({ID: raw["uniq_id"].map(normalize_text), TITLE: titles})
    for k, name in enumerate(levels):
        frame[name] = trees.map(lambda t, k=k: t[k] if len(t) > k else "")
    brand = raw["brand"] if BRAND in raw.columns else pd.Series("", index=raw.index)
    frame[BRAND] = brand.map(normalize_text)
    reason = np.where(trees.map(len) < depth, f"category tree has fewer than {depth} levels", "")
    reason = np.where(titles == "", "empty title", reason)
    return _split_skipped(frame, reason, levels, path)


def read_indoml(path: str | os.PathLike, text_column: str | None = None) -> TitleDataset:
    """IndoML layout: ``supergroup, group, module, brand`` (+ a text column when the file has titles).

    The shared IndoML folder holds only the label tree (``hierarchy.csv``); it loads with
    :meth:`Taxonomy.load`. Files with a text column (``title``, ``description`` or ``text``) become
    training data.
    """
    path = Path(path)
    if not path.is_file():
        raise TaxonomyError(f"IndoML file not found: {path}")
    raw = _read_table(path)
    levels = list(DEFAULT_LEVELS)
    missing = [c for c in [*levels, BRAND] if c not in raw.columns]
    if missing:
        raise TaxonomyError(f"{path}: missing IndoML column(s) {missing}; columns are {list(raw.columns)}")
    text_column = text_column or next((c for c in (TITLE, "description", "text") if c in raw.columns), None)
    if text_column is None or text_column not in raw.columns:
        raise TaxonomyError(
            f"{path}: no text column (title/description/text); for a label tree use Taxonomy.load"
        )
    frame = pd.DataFrame(
        {
            ID: raw[ID].map(normalize_text) if ID in raw.columns else raw.index.astype(str),
            TITLE: raw[text_column].map(normalize_text),
        }
    )
    for name in levels:
        frame[name] = raw[name].map(normalize_text)
    frame[BRAND] = raw[BRAND].map(normalize_text)
    empty_level = (frame[levels] == "").any(axis=1).to_numpy()
    reason = np.where(empty_level, "empty taxonomy level", "")
    reason = np.where(frame[TITLE] == "", "empty title", reason)
    return _split_skipped(frame, reason, levels, path)


def _split_skipped(frame: pd.DataFrame, reason: np.ndarray, levels: list[str], path: Path) -> TitleDataset:
    bad = reason != ""
    skipped = frame[bad].assign(reason=reason[bad], line=np.flatnonzero(bad) + 2, file=str(path))
    kept = frame[~bad].reset_index(drop=True)
    if kept.empty:
        raise TaxonomyError(f"{path}: no usable rows ({Counter(reason[bad]).most_common(3)})")
    return TitleDataset(kept, levels, skipped.reset_index(drop=True))
