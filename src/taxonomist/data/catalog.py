"""Catalog readers: every layout becomes one frame shape (id, category, one column per named attribute).

Downstream code only sees :class:`Catalog`; the layout (Meesho positional ``attr_k`` or a generic table
with named columns) is resolved here, once.
"""

from __future__ import annotations

import dataclasses
import os
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from taxonomist.config import CatalogConfig
from taxonomist.data.schema import Schema

ID = "id"
CATEGORY = "category"
TEXT = "text"
MEESHO_MAX_ATTRS = 10
DATA_DIR_ENV = "TAXONOMIST_DATA_DIR"
DEFAULT_DATA_DIR = "../shared/datasets"
LISTED_CATEGORIES = 10
"""Categories named in a message before the rest are only counted."""


class CatalogError(ValueError):
    """A catalog file that cannot be read as the configured layout."""


def data_dir() -> Path:
    """Root of the shared datasets: ``$TAXONOMIST_DATA_DIR`` or ``../shared/datasets``."""
    return Path(os.environ.get(DATA_DIR_ENV, DEFAULT_DATA_DIR))


def expand_path(path: str | os.PathLike) -> Path:
    """Expand ``{data_dir}`` and ``~`` so configs stay portable across machines."""
    return Path(os.path.expanduser(str(path).replace("{data_dir}", str(data_dir()))))


def not_found(what: str, path: str | os.PathLike) -> str:
    """The message "<what> not found: <path>", naming TAXONOMIST_DATA_DIR where the path lies under the
    data folder (the usual cause: ``{data_dir}`` resolved against another working directory than intended)."""
    message = f"{what} not found: {path}"
    root = data_dir()
    if Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root)):
        message += (
            f" ({{data_dir}} is {root}{'' if root.is_dir() else ', which does not exist'}: set "
            f"{DATA_DIR_ENV} to the folder holding the datasets)"
        )
    return message


class _Id(str):
    """An id that formats as text, or as a number when the template asks for one (``{id:06d}``)."""

    def __format__(self, spec: str) -> str:
        if spec and spec[-1] in "dxXob":
            return format(int(self), spec)
        return super().__format__(spec)


def format_image_path(template: str, item_id: str, category: str = "") -> str:
    return template.format(id=_Id(item_id), category=category)


@dataclass
class Catalog:
    """Rows of (id, category, named attribute labels) plus where their images live."""

    frame: pd.DataFrame
    attributes: list[str]
    image_root: Path | None = None
    image_template: str = "images/{id}.jpg"
    attributes_by_category: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""
    dropped_categories: dict[str, int] = field(default_factory=dict)
    """Rows per category left out for having fewer than ``min_rows_per_category`` rows."""
    min_rows_per_category: int = 0

    def __post_init__(self) -> None:
        unknown_fields = template_fields(self.image_template) - {"id", "category"}
        if unknown_fields:
            raise CatalogError(
                f"image template {self.image_template!r} uses {sorted(unknown_fields)}; only {{id}} and "
                "{category} are filled in"
            )
        missing = {ID, CATEGORY, *self.attributes} - set(self.frame.columns)
        if missing:
            raise CatalogError(f"{self.source or 'catalog'}: missing columns {sorted(missing)}")
        dups = self.frame[ID][self.frame[ID].duplicated()]
        if len(dups):
            raise CatalogError(
                f"{self.source or 'catalog'}: {len(dups)} duplicated ids, e.g. {dups.iloc[:5].tolist()}"
            )
        if not self.attributes_by_category:
            self.attributes_by_category = {
                str(c): [a for a in self.attributes if rows[a].notna().any()]
                for c, rows in self.frame.groupby(CATEGORY, sort=False)
            }

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def ids(self) -> list[str]:
        return self.frame[ID].tolist()

    @property
    def categories(self) -> list[str]:
        return list(self.attributes_by_category)

    def image_path(self, item_id: str, category: str = "") -> Path:
        rel = format_image_path(self.image_template, item_id, category)
        return (self.image_root / rel) if self.image_root is not None else Path(rel)

    def image_paths(self) -> list[Path]:
        return [self.image_path(i, c) for i, c in zip(self.frame[ID], self.frame[CATEGORY], strict=True)]

    def infer_schema(self) -> Schema:
        return Schema.infer(self.frame, self.attributes_by_category, attributes=self.attributes)

    def subset(self, mask_or_index) -> Catalog:
        """Same catalog restricted to some rows (a boolean mask or positional indices)."""
        frame = (
            self.frame.loc[mask_or_index] if _is_bool_mask(mask_or_index) else self.frame.iloc[mask_or_index]
        )
        return Catalog(
            frame.reset_index(drop=True),
            list(self.attributes),
            self.image_root,
            self.image_template,
            {c: list(a) for c, a in self.attributes_by_category.items()},
            self.source,
            dict(self.dropped_categories),
            self.min_rows_per_category,
        )


def _is_bool_mask(obj) -> bool:
    return np.asarray(obj).dtype == np.bool_


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """CSV or Parquet as strings, empty fields as missing (ids such as ``000123`` keep their zeros)."""
    path = expand_path(path)
    if not path.is_file():
        raise CatalogError(not_found("catalog file", path))
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
            return frame.astype({c: "string" for c in frame.columns}).astype(object).where(frame.notna())
        # keep_default_na=False: a label like "NA" (a brand) is data; only empty fields are missing.
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as err:
        raise CatalogError(f"{path}: cannot be read as a table ({err})") from err


def apply_remaps(frame: pd.DataFrame, remaps: Mapping[str, Mapping[str, str]], category_col: str) -> None:
    """Per-category column copies, in place: ``{"Sarees": {"attr_1": "attr_4"}}`` sets attr_1 from attr_4."""
    for category, mapping in remaps.items():
        rows = frame[category_col] == category
        if not rows.any():
            raise CatalogError(f"remap names category {category!r}, which has no rows")
        for target, source in mapping.items():
            for col in (target, source):
                if col not in frame.columns:
                    raise CatalogError(f"remap for {category!r} names unknown column {col!r}")
            frame.loc[rows, target] = frame.loc[rows, source]


def _finish(
    frame: pd.DataFrame, categories: Sequence[str] | None, min_rows: int, source: str
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The category filters; also the rows per category that ``min_rows`` left out, for reports."""
    if categories:
        unknown = set(categories) - set(frame[CATEGORY].unique())
        if unknown:
            raise CatalogError(f"categories not in the catalog: {sorted(unknown)}")
        frame = frame[frame[CATEGORY].isin(categories)]
    counts = frame[CATEGORY].value_counts()
    small = counts[counts < min_rows]
    dropped = {str(c): int(n) for c, n in small.items()}
    if len(frame) and len(small) == len(counts):
        raise CatalogError(
            f"{source}: every category has fewer than catalog.min_rows_per_category={min_rows} rows "
            f"({describe_counts(dropped)}), so no rows are left; lower it to keep small categories, e.g. "
            f"--set catalog.min_rows_per_category={min(dropped.values())}"
        )
    frame = frame[~frame[CATEGORY].isin(small.index)]
    return frame.reset_index(drop=True), dropped


def describe_counts(counts: Mapping[str, int], limit: int = LISTED_CATEGORIES) -> str:
    """``Bags: 12, Tops: 3 … and 40 more categories``: largest first, cut to ``limit`` names."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    text = ", ".join(f"{c}: {n}" for c, n in ranked[:limit])
    return text + (f" … and {len(ranked) - limit} more categories" if len(ranked) > limit else "")


def read_generic(
    path: str | os.PathLike,
    *,
    id_column: str = "id",
    category_column: str = "category",
    attributes: Sequence[str] = (),
    image_root: str | os.PathLike | None = None,
    image_template: str = "images/{id}.jpg",
    remaps: Mapping[str, Mapping[str, str]] | None = None,
    categories: Sequence[str] | None = None,
    min_rows_per_category: int = 0,
    text_column: str | None = None,
    labels: bool = True,
) -> Catalog:
    """Any CSV/Parquet with an id column, a category column and named attribute columns.

    ``text_column`` (listing text such as a title) lands in column ``text``, missing text as "".
    ``labels=False`` reads no attribute columns at all (predicting needs none, and then a stray column
    cannot clash with the names the id, category and text columns get).
    """
    path = expand_path(path)
    raw = read_table(path)
    named = ((id_column, ID), (category_column, CATEGORY), (text_column, TEXT))
    for col, what in named:
        if col is not None and col not in raw.columns:
            raise CatalogError(f"{path}: no {what} column {col!r} (columns: {list(raw.columns)})")
    special = {id_column, category_column, text_column}
    inferred = labels and not attributes
    if not labels:
        attributes = []
    elif inferred:
        attributes = [c for c in raw.columns if c not in special]
    else:
        attributes = list(attributes)
    missing = [a for a in attributes if a not in raw.columns]
    if missing:
        raise CatalogError(f"{path}: attribute columns not found: {missing} (columns: {list(raw.columns)})")
    for col, name in named:
        if col is not None and name in attributes:
            fix = (
                "list the attribute columns in catalog.attributes without it"
                if inferred
                else "leave it out of catalog.attributes"
            )
            raise CatalogError(
                f"{path}: an attribute column is named {name!r}, the name the {name} column {col!r} gets; "
                f"rename it or {fix}"
            )
    if remaps:
        apply_remaps(raw, remaps, category_column)
    bad = raw[category_column].isna() | raw[id_column].isna()
    if bad.any():
        rows = (raw.index[bad][:5] + 2).tolist()  # +2: header line and 1-based numbering
        raise CatalogError(f"{path}: {int(bad.sum())} rows without id or category, e.g. lines {rows}")
    frame = raw[[id_column, category_column, *attributes]].rename(
        columns={id_column: ID, category_column: CATEGORY}
    )
    if text_column is not None:
        frame[TEXT] = raw[text_column].fillna("").astype(str)
    frame, dropped = _finish(frame, categories, min_rows_per_category, str(path))
    root = expand_path(image_root) if image_root is not None else path.parent
    return Catalog(
        frame,
        attributes,
        root,
        image_template,
        source=str(path),
        dropped_categories=dropped,
        min_rows_per_category=min_rows_per_category,
    )


def read_meesho(
    root: str | os.PathLike,
    *,
    split: str = "train",
    image_template: str | None = None,
    remaps: Mapping[str, Mapping[str, str]] | None = None,
    categories: Sequence[str] | None = None,
    min_rows_per_category: int = 0,
) -> Catalog:
    """Meesho Visual Taxonomy: ``{split}.csv`` (positional attr_k) + ``category_attributes.parquet``.

    Positional columns are renamed per category to the attribute names the parquet lists, so a head
    learns "color" rather than "attr_1 of whichever category".
    """
    root = expand_path(root)
    table = read_table(root / f"{split}.csv")
    names = read_meesho_attribute_names(root / "category_attributes.parquet")
    if "Category" not in table.columns or "id" not in table.columns:
        raise CatalogError(f"{root / f'{split}.csv'}: expected columns id, Category, len, attr_1..attr_10")
    positional = [f"attr_{k}" for k in range(1, MEESHO_MAX_ATTRS + 1)]
    for col in positional:
        if col not in table.columns:
            table[col] = None
    if remaps:
        apply_remaps(table, remaps, "Category")
    unknown = set(table["Category"].unique()) - set(names)
    if unknown:
        raise CatalogError(f"{root}: categories without an attribute list: {sorted(unknown)}")
    attributes = list(dict.fromkeys(a for attrs in names.values() for a in attrs))
    parts = []
    for category, rows in table.groupby("Category", sort=False):
        attrs = names[str(category)]
        part = pd.DataFrame({ID: rows["id"].to_numpy(), CATEGORY: rows["Category"].to_numpy()})
        for k, attr in enumerate(attrs, start=1):
            part[attr] = rows[f"attr_{k}"].to_numpy()
        parts.append(part.set_index(rows.index))
    frame = pd.concat(parts).sort_index().reindex(columns=[ID, CATEGORY, *attributes])
    frame = frame.astype(object).where(frame.notna(), None)
    frame, dropped = _finish(frame, categories, min_rows_per_category, str(root / f"{split}.csv"))
    kept = [c for c in names if c in set(frame[CATEGORY])]
    template = image_template or f"{split}_images/{{id:06d}}.jpg"
    return Catalog(
        frame,
        attributes,
        root,
        template,
        {c: list(names[c]) for c in kept},
        source=str(root / f"{split}.csv"),
        dropped_categories=dropped,
        min_rows_per_category=min_rows_per_category,
    )


def read_meesho_attribute_names(path: str | os.PathLike) -> dict[str, list[str]]:
    """category → attribute names in attr_k order, from ``category_attributes.parquet``."""
    path = expand_path(path)
    if not path.is_file():
        raise CatalogError(not_found("Meesho attribute list", path))
    table = pd.read_parquet(path)
    need = {"Category", "Attribute_list"}
    if not need <= set(table.columns):
        raise CatalogError(f"{path}: expected columns {sorted(need)}, got {list(table.columns)}")
    return {str(r.Category): [str(a) for a in r.Attribute_list] for r in table.itertuples()}


def template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def load_catalog(cfg: CatalogConfig, *, seed: int = 0, labels: bool = True) -> Catalog:
    """The configured layout's reader, then the optional seeded row limit (for quick runs).

    ``labels=False``: the generic layout reads no attribute columns (see :func:`read_generic`).
    """
    common = {
        "remaps": cfg.remaps or None,
        "categories": cfg.categories or None,
        "min_rows_per_category": cfg.min_rows_per_category,
    }
    if cfg.layout == "meesho":
        if cfg.text_column is not None:
            raise CatalogError("the meesho layout has no listing text: leave catalog.text_column unset")
        catalog = read_meesho(cfg.path, image_template=cfg.image_template, **common)
    else:
        catalog = read_generic(
            cfg.path,
            id_column=cfg.id_column,
            category_column=cfg.category_column,
            attributes=cfg.attributes,
            image_root=cfg.image_root,
            image_template=cfg.image_template or "images/{id}.jpg",
            text_column=cfg.text_column,
            labels=labels,
            **common,
        )
    if cfg.image_root is not None and cfg.layout == "meesho":
        catalog.image_root = expand_path(cfg.image_root)
    if cfg.limit is not None and cfg.limit < len(catalog):
        keep = np.sort(np.random.default_rng(seed).permutation(len(catalog))[: cfg.limit])
        catalog = catalog.subset(keep)
    if cfg.corrections and labels:
        catalog = apply_corrections(catalog, cfg.corrections, *catalog_columns(cfg))
    return catalog


def catalog_columns(cfg: CatalogConfig) -> tuple[str, str]:
    """The id and category column names of the configured catalog file, as its own header spells them."""
    return ("id", "Category") if cfg.layout == "meesho" else (cfg.id_column, cfg.category_column)


def apply_corrections(
    catalog: Catalog, path: str | os.PathLike, id_column: str, category_column: str
) -> Catalog:
    """``catalog`` with the reviewed labels of ``path`` merged in: each non-empty reviewed value replaces
    the catalog's label; reviewed items the catalog lacks are appended (their images are found the same
    way as the catalog's). Columns other than the catalog's attributes are ignored."""
    table = read_table(path)
    missing = [c for c in (id_column, category_column) if c not in table.columns]
    if missing:
        raise CatalogError(
            f"{path}: corrections need the catalog's columns {missing} (as `taxonomist review` exports them)"
        )
    table = table.rename(columns={id_column: ID, category_column: CATEGORY})
    if table[ID].duplicated().any():
        dups = table.loc[table[ID].duplicated(), ID].head(5).tolist()
        raise CatalogError(f"{path}: duplicated ids {dups}")
    attributes = [a for a in catalog.attributes if a in table.columns]
    frame = catalog.frame.set_index(catalog.frame[ID].astype(str), drop=False)
    table = table.set_index(table[ID].astype(str), drop=False)
    known = table.index.isin(frame.index)
    for attribute in attributes:
        given = table.loc[known, attribute].dropna()
        frame.loc[given.index, attribute] = given
    new = table.loc[~known, [ID, CATEGORY, *attributes]].reindex(columns=frame.columns)
    unknown = sorted(set(new[CATEGORY]) - set(catalog.attributes_by_category))
    if unknown:
        raise CatalogError(f"{path}: corrections of categories the catalog does not have: {unknown}")
    merged = pd.concat([frame, new]).reset_index(drop=True)
    merged = merged.astype(object).where(merged.notna(), None)
    return dataclasses.replace(catalog, frame=merged)


def load_for_prediction(cfg: CatalogConfig) -> Catalog:
    """Every row of ``cfg.path`` with only what predicting reads: id, category, image.

    A run's saved catalog settings carry its training-time choices: the categories it kept, its minimum
    rows per category, its row limit, per-category remaps, label and text columns. Applied to a file to
    predict they would drop rows silently or fail on columns that file need not have, so only the settings
    that say how to read a row remain. Rows of categories a model does not know are kept: predictors report
    them as errors.
    """
    reading = dataclasses.replace(
        cfg,
        attributes=[],
        categories=[],
        min_rows_per_category=0,
        remaps={},
        schema=None,
        limit=None,
        text_column=None,
    )
    return load_catalog(reading, labels=False)
