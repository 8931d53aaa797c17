"""Catalog readers: every layout becomes one frame shape (id, category, one column per named attribute).

Downstream code only sees :class:`Catalog`; the layout (Meesho positional ``attr_k`` or a generic table
with named columns) is resolved here, once.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import os
import string
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from taxonomist.data.schema import Schema
from taxonomist.data.taxonomy import normalize_text

ID = "id"
CATEGORY = "category"
TEXT = "text"
MEESHO_MAX_ATTRS = 10
DATA_DIR_ENV = "TAXONOMIST_DATA_DIR"
DEFAULT_DATA_DIR = "../shared/datasets"
LISTED_CATEGORIES = 10
"""Categories named in a message before the rest are only counted."""
REJECTED_COLUMNS = ["line", "id", "category", "reason", "detail"]
"""A row read but not usable (blank id or category, an id the image template cannot take, duplicated id):
``line`` is its line in the file."""

BadRows = Literal["raise", "report"]
"""What a reader does with rows that have a blank id or category, an id the image template cannot take
(``SKU-7`` for ``{id:06d}``) or a repeated id: refuse the file (training, where a row's labels must be
unambiguous) or keep them aside in :attr:`Catalog.rejected` (predicting, evaluating, inspecting: the
rest of the file is still worth doing)."""


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
            try:
                number = int(self)
            except ValueError:
                raise CatalogError(
                    f"id {str(self)!r} is not a whole number, which {{id:{spec}}} needs"
                ) from None
            return format(number, spec)
        return super().__format__(spec)


def format_image_path(template: str, item_id: str, category: str = "") -> str:
    """``template`` filled in for one row; a :class:`CatalogError` where the id does not fit it."""
    return template.format(id=_Id(item_id), category=category)


def _template_misfits(ids: pd.Series, categories: pd.Series, template: str) -> dict[int, str]:
    """line → why ``template`` cannot be filled in with that row's id (``SKU-7`` for ``{id:06d}``), so
    such a row is one bad row, not a crash of the job that builds every image path."""
    misfits = {}
    for line, item_id, category in zip(ids.index, ids, categories, strict=True):
        try:
            format_image_path(template, item_id, category)
        except CatalogError as err:
            misfits[line] = f"{err} (image_template {template!r})"
    return misfits


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
    lines: list[int] | None = None
    """The line each row starts on in the source file (a CSV's header is line 1, unless blank lines
    precede it; Parquet: the row number from 1), so reports can point at it; None for frames built in
    memory."""
    rejected: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=REJECTED_COLUMNS))
    """Rows the reader kept aside (see :data:`BadRows`), with line and reason."""
    text_note: str | None = None
    """Where a read for prediction found named text columns missing (``text_optional``): one line for
    the user saying what the listings are predicted from instead."""

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
        if self.lines is not None and len(self.lines) != len(self.frame):
            raise ValueError(f"{len(self.lines)} line numbers for {len(self.frame)} rows")
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

    def require_readable_images(self, readable: int, reasons: Mapping[str, int]) -> None:
        """Refuse to go on when none of the rows' images could be read, saying how many were looked for,
        why they failed and where: almost always a wrong image folder, not a catalog of bad files."""
        if readable or not len(self):
            return
        why = ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items(), key=lambda x: -x[1]))
        # The template as written: filling it in with "{id}" fails for a numeric field such as {id:06d}.
        where = self.image_root / self.image_template if self.image_root is not None else self.image_template
        raise CatalogError(
            f"{self.source or 'catalog'}: none of the {len(self)} images could be read ({why}); they were "
            f"looked for as {where} (e.g. {self.image_paths()[0]}); point --images (catalog.image_root) at "
            "the folder the image paths are relative to, or fix catalog.image_template"
        )

    def infer_schema(self) -> Schema:
        return Schema.infer(self.frame, self.attributes_by_category, attributes=self.attributes)

    def subset(self, mask_or_index) -> Catalog:
        """Same catalog restricted to some rows (a boolean mask or positional indices)."""
        positions = (
            np.flatnonzero(np.asarray(mask_or_index)) if _is_bool_mask(mask_or_index) else mask_or_index
        )
        frame = self.frame.iloc[positions]
        lines = None if self.lines is None else np.asarray(self.lines)[positions].tolist()
        return Catalog(
            frame.reset_index(drop=True),
            list(self.attributes),
            self.image_root,
            self.image_template,
            {c: list(a) for c, a in self.attributes_by_category.items()},
            self.source,
            dict(self.dropped_categories),
            self.min_rows_per_category,
            lines,
            self.rejected.copy(),
            self.text_note,
        )


def _is_bool_mask(obj) -> bool:
    return np.asarray(obj).dtype == np.bool_


def is_parquet(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in (".parquet", ".pq")


def read_table(path: str | os.PathLike, encoding: str = "utf-8") -> pd.DataFrame:
    """CSV or Parquet as strings, empty fields as missing (ids such as ``000123`` keep their zeros).

    ``encoding``: the CSV's text encoding (Parquet stores UTF-8). Parquet integer columns are read as
    nullable integers, never through float64, which would round ids above 2**53 when a cell is empty. A
    float column of whole numbers (an integer column that went through pandas with a gap) is read back as
    the integers it holds (id ``59263``, not ``59263.0``).
    """
    path = expand_path(path)
    if not path.is_file():
        raise CatalogError(not_found("catalog file", path))
    with _text_errors(path, encoding):
        try:
            if is_parquet(path):
                frame = pd.read_parquet(path, dtype_backend="numpy_nullable")
                integral = {c: "Int64" for c in frame.columns if _integral_floats(frame[c])}
                frame = frame.astype(integral)
                return frame.astype({c: "string" for c in frame.columns}).astype(object).where(frame.notna())
            # keep_default_na=False: a label like "NA" (a brand) is data; only empty fields are missing.
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding=encoding)
        except UnicodeDecodeError:
            raise  # a ValueError, but _text_errors words it
        except (pd.errors.ParserError, OSError, ValueError) as err:
            raise CatalogError(f"{path}: cannot be read as a table ({err})") from err


@contextlib.contextmanager
def _text_errors(path: Path, encoding: str) -> Iterator[None]:
    """A CSV's decoding failures, whichever parser reads it, as one line saying how to set the encoding."""
    try:
        yield
    except UnicodeDecodeError as err:
        raise CatalogError(
            f"{path}: not valid {encoding} text ({err}); set the file's encoding with "
            "--set catalog.encoding=latin-1 (or cp1252, ...)"
        ) from err
    except LookupError as err:
        raise CatalogError(f"catalog.encoding: {err}") from err


def warn_rows_left_out(path: str | os.PathLike, frame: pd.DataFrame, keep: pd.Series, reason: str) -> None:
    """Count and name the rows of ``frame`` (read by :func:`read_lined_table`: indexed by line) a reader
    leaves out where ``keep`` is false, so none is dropped unsaid; ``reason`` follows "N of M rows"."""
    lines = frame.index[~keep].tolist()
    if lines:
        warnings.warn(
            f"{path}: {len(lines)} of {len(frame)} rows {reason}, e.g. lines {lines[:5]}", stacklevel=3
        )


def read_lined_table(
    path: str | os.PathLike, encoding: str = "utf-8", *, skip_malformed: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`read_table` indexed by each row's line in the file, for messages and errors.csv: a CSV
    row's is the physical line it starts on (quoted fields may span lines, blank lines are skipped, so
    the row position is not enough); a Parquet row's is its row number from 1.

    Also returns the CSV records with more fields than the header (an unquoted comma in a title) as
    :data:`REJECTED_COLUMNS` rows, reason ``malformed-row``, when ``skip_malformed`` (reads for
    prediction: one bad row never stops the job); otherwise such a record fails the file, naming it.
    """
    path = expand_path(path)
    none = pd.DataFrame(columns=REJECTED_COLUMNS)
    if path.is_file() and is_parquet(path):
        frame = read_table(path, encoding)
        return frame.set_axis(pd.RangeIndex(1, len(frame) + 1)), none
    records = _csv_records(path, encoding) if path.is_file() else []
    width = records[0][1] if records else 0
    over = [(line, n) for line, n in records[1:] if n > width]
    if over and not skip_malformed:
        line, n = over[0]
        raise CatalogError(
            f"{path}: {len(over)} rows have more fields than the header's {width}, e.g. line {line} ({n}); "
            "quote fields that hold commas"
        )
    if over:
        frame, lines = _frame_without(path, encoding, {line for line, _ in over})
        malformed = pd.DataFrame(
            [
                {"line": line, "reason": MALFORMED, "detail": f"{n} fields, the header has {width}"}
                for line, n in over
            ],
            columns=REJECTED_COLUMNS,
        )
        return frame.set_axis(pd.Index(lines)), malformed
    frame = read_table(path, encoding)
    lines = [line for line, _ in records[1:]]
    if len(lines) != len(frame):  # pandas and the csv module split the file differently
        raise CatalogError(
            f"{path}: cannot tell which line each row starts on ({len(frame)} rows read, {len(lines)} "
            "records found); check the file's quoting"
        )
    return frame.set_axis(pd.Index(lines)), none


MALFORMED = "malformed-row"


def _with_malformed(rejected: pd.DataFrame, malformed: pd.DataFrame) -> pd.DataFrame:
    """Rows set aside, in line order, with the records that could not be read as rows."""
    if not len(malformed):
        return rejected
    both = pd.concat([rejected, malformed], ignore_index=True) if len(rejected) else malformed
    return both.sort_values("line", kind="stable").reset_index(drop=True)


def _csv_scan(path: Path, encoding: str) -> Iterator[tuple[int, list[str]]]:
    """(line it starts on, fields) of each record of a CSV, the header first, skipping the lines
    ``pd.read_csv`` skips: blank or whitespace-only lines (outside quotes)."""
    with _text_errors(path, encoding), path.open(encoding=encoding, newline="") as file:
        last = [""]

        def remember() -> Iterator[str]:
            for line in file:
                last[0] = line
                yield line

        reader = csv.reader(remember())
        end = 0
        limit = csv.field_size_limit(2**31 - 1)  # a long description is one field, not an error
        try:
            for fields in reader:
                start, end = end + 1, reader.line_num
                if start < end or last[0].strip(" \t\r\n"):
                    yield start, fields
        except csv.Error as err:
            raise CatalogError(f"{path}: cannot be read as a table (line {end + 1}: {err})") from err
        finally:
            csv.field_size_limit(limit)


def _csv_records(path: Path, encoding: str) -> list[tuple[int, int]]:
    """(line it starts on, number of fields) of each record, the header first."""
    return [(line, len(fields)) for line, fields in _csv_scan(path, encoding)]


def _frame_without(path: Path, encoding: str, skipped: set[int]) -> tuple[pd.DataFrame, list[int]]:
    """The CSV's rows less the records starting on ``skipped`` lines, as :func:`read_table` reads rows
    (text, empty fields missing, short rows padded), and each kept row's line: pandas cannot leave
    out a record it cannot parse and still say where the others start."""
    scanned = _csv_scan(path, encoding)
    _, header = next(scanned)
    header = [header[0].removeprefix("\ufeff"), *header[1:]] if header else header
    rows, lines = [], []
    for line, fields in scanned:
        if line not in skipped:
            rows.append([f if f != "" else np.nan for f in fields] + [np.nan] * (len(header) - len(fields)))
            lines.append(line)
    return pd.DataFrame(rows, columns=header, dtype=object), lines


def _integral_floats(column: pd.Series) -> bool:
    if not pd.api.types.is_float_dtype(column):
        return False
    values = column.dropna().to_numpy(dtype=float)
    whole = np.isfinite(values).all() and (values == np.round(values)).all() and (abs(values) < 2**63).all()
    return bool(whole and len(values))


def set_aside_bad_rows(
    raw: pd.DataFrame,
    id_column: str,
    category_column: str,
    source: str,
    bad_rows: BadRows,
    image_template: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(usable rows; rejected rows as :data:`REJECTED_COLUMNS`). ``raw`` is indexed by each row's line in
    the file (:func:`read_lined_table`), and the usable rows keep that index.

    A blank id or category, or an id ``image_template`` cannot take (``SKU-7`` for ``{id:06d}``), makes
    a row unusable; of the usable rows repeating an id, the first is kept (a rejected row never claims
    its id, so a valid row after it is still used). With ``bad_rows="raise"`` such a row fails the whole
    file instead, naming the lines.
    """
    ids, cats = raw[id_column], raw[category_column]
    blank_id = ids.isna() | (ids.astype(str).str.strip() == "")
    blank_cat = cats.isna() | (cats.astype(str).str.strip() == "")
    misfits = _template_misfits(ids[~(blank_id | blank_cat)], cats[~(blank_id | blank_cat)], image_template)
    bad_id = raw.index.isin(list(misfits))
    usable = ~(blank_id | blank_cat | bad_id)
    duplicate = ids.where(usable).duplicated(keep="first") & usable
    if bad_rows == "raise":  # repeated ids are refused by Catalog itself
        blank = blank_id | blank_cat
        if blank.any():
            lines = raw.index[blank][:5].tolist()
            raise CatalogError(
                f"{source}: {int(blank.sum())} rows without id or category, e.g. lines {lines}"
            )
        if misfits:
            line, why = next(iter(misfits.items()))
            raise CatalogError(f"{source}: {len(misfits)} rows with a bad id, e.g. line {line}: {why}")
        return raw, pd.DataFrame(columns=REJECTED_COLUMNS)
    first = {}
    for line, item_id in ids[usable].items():
        first.setdefault(item_id, line)
    rejected = []
    for line in raw.index[~usable | duplicate]:
        item_id, category = ids.at[line], cats.at[line]
        if blank_id.at[line]:
            reason, detail = "blank-id", f"no value in the id column {id_column!r}"
        elif blank_cat.at[line]:
            reason, detail = "blank-category", f"no value in the category column {category_column!r}"
        elif line in misfits:
            reason, detail = "bad-id", misfits[line]
        else:
            reason, detail = "duplicate-id", f"id {item_id!r} is also on line {first[item_id]}, which is used"
        rejected.append((int(line), item_id, category, reason, detail))
    return raw[usable & ~duplicate], pd.DataFrame(rejected, columns=REJECTED_COLUMNS)


def fold_categories(categories: pd.Series) -> list[object]:
    """ "Tops " and "Tops" from an export are one category (the same rule as titles: whitespace runs fold)."""
    return [" ".join(c.split()) if isinstance(c, str) else c for c in categories]


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
    """The category filters; also the rows per category that ``min_rows`` left out, for reports. The
    frame keeps its index (the rows' lines)."""
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
    return frame[~frame[CATEGORY].isin(small.index)], dropped


def _lines_and_frame(frame: pd.DataFrame) -> tuple[list[int], pd.DataFrame]:
    """Split the line-number index (see :func:`set_aside_bad_rows`) off a frame."""
    return [int(i) for i in frame.index], frame.reset_index(drop=True)


def describe_counts(counts: Mapping[str, int], limit: int = LISTED_CATEGORIES) -> str:
    """``Bags: 12, Tops: 3 … and 40 more categories``: largest first, cut to ``limit`` names."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    text = ", ".join(f"{c}: {n}" for c, n in ranked[:limit])
    return text + (f" … and {len(ranked) - limit} more categories" if len(ranked) > limit else "")


def missing_text_note(
    source: object, absent: Sequence[str], kept: Sequence[str], *, partly: bool = False
) -> str:
    """The one line that says what listings lacking text columns (``absent``, as they are to be named) are
    predicted from: the ``kept`` columns, or the image; ``partly``: only some rows lack them."""
    if partly:
        rest = "those rows read it as blank"
    elif kept:
        rest = f"the listing text is read from {list(kept)} alone"
    else:
        rest = "every listing is predicted from its image"
    return f"{source}: no text column {', '.join(absent)}: {rest}"


def join_text(parts: Iterable[object]) -> str:
    """One listing's text columns, in the catalog's order, as its model reads them: the normalised
    non-empty texts joined with " | " (title | description); none → "". Training and every predicting
    path (``Predictor.predict``, serve) join with this, so a model sees the text it learned from."""
    return " | ".join(t for t in map(normalize_text, parts) if t)


def join_texts(columns: pd.DataFrame) -> pd.Series:
    """:func:`join_text` of each row of ``columns``."""
    return pd.Series([join_text(row) for row in columns.to_numpy()], index=columns.index, dtype=object)


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
    encoding: str = "utf-8",
    bad_rows: BadRows = "raise",
    text_columns: Sequence[str] = (),
    text_optional: bool = False,
) -> Catalog:
    """Any CSV/Parquet with an id column, a category column and named attribute columns.

    ``text_columns`` (listing text such as a title and a description; ``text_column``: one of them) are
    normalised (:func:`normalize_text`) and joined into column ``text``, missing text as "".
    ``text_optional``: a text column the file lacks reads as blank in every row instead of an error, noted
    in :attr:`Catalog.text_note`; for rows to predict or score, which a listing model can read without
    titles (blank titles: from the image), never for training rows, where a missing column is a mistake.
    ``labels=False`` reads no attribute columns at all (predicting needs none, and then a stray column
    cannot clash with the names the id, category and text columns get). ``bad_rows``: see :data:`BadRows`.
    """
    path = expand_path(path)
    raw, malformed = read_lined_table(path, encoding, skip_malformed=bad_rows == "report")
    text_columns = list(dict.fromkeys([*([text_column] if text_column is not None else []), *text_columns]))
    absent = [c for c in text_columns if c not in raw.columns] if text_optional else []
    text_note = None
    if absent:
        text_columns = [c for c in text_columns if c not in absent]
        text_note = missing_text_note(path, list(map(repr, absent)), text_columns)
    named = ((id_column, ID), (category_column, CATEGORY), *((c, TEXT) for c in text_columns))
    for col, what in named:
        if col is not None and col not in raw.columns:
            raise CatalogError(f"{path}: no {what} column {col!r} (columns: {list(raw.columns)})")
    special = {id_column, category_column, *text_columns}
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
    raw[category_column] = fold_categories(raw[category_column])
    if remaps:
        apply_remaps(raw, remaps, category_column)
    raw, rejected = set_aside_bad_rows(raw, id_column, category_column, str(path), bad_rows, image_template)
    rejected = _with_malformed(rejected, malformed)
    frame = raw[[id_column, category_column, *attributes]].rename(
        columns={id_column: ID, category_column: CATEGORY}
    )
    if text_columns:
        frame[TEXT] = join_texts(raw[text_columns])
    elif absent:
        frame[TEXT] = ""
    frame, dropped = _finish(frame, categories, min_rows_per_category, str(path))
    lines, frame = _lines_and_frame(frame)
    root = expand_path(image_root) if image_root is not None else path.parent
    return Catalog(
        frame,
        attributes,
        root,
        image_template,
        source=str(path),
        dropped_categories=dropped,
        min_rows_per_category=min_rows_per_category,
        lines=lines,
        rejected=rejected,
        text_note=text_note,
    )


def read_meesho(
    root: str | os.PathLike,
    *,
    split: str = "train",
    image_template: str | None = None,
    remaps: Mapping[str, Mapping[str, str]] | None = None,
    categories: Sequence[str] | None = None,
    min_rows_per_category: int = 0,
    bad_rows: BadRows = "raise",
    encoding: str = "utf-8",
) -> Catalog:
    """Meesho Visual Taxonomy: ``{split}.csv`` (positional attr_k) + ``category_attributes.parquet``.

    Positional columns are renamed per category to the attribute names the parquet lists, so a head
    learns "color" rather than "attr_1 of whichever category".
    """
    root = expand_path(root)
    table, malformed = read_lined_table(root / f"{split}.csv", encoding, skip_malformed=bad_rows == "report")
    names = read_meesho_attribute_names(root / "category_attributes.parquet")
    if "Category" not in table.columns or "id" not in table.columns:
        raise CatalogError(f"{root / f'{split}.csv'}: expected columns id, Category, len, attr_1..attr_10")
    template = image_template or f"{split}_images/{{id:06d}}.jpg"
    table, rejected = set_aside_bad_rows(
        table, "id", "Category", str(root / f"{split}.csv"), bad_rows, template
    )
    rejected = _with_malformed(rejected, malformed)
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
    lines, frame = _lines_and_frame(frame)
    kept = [c for c in names if c in set(frame[CATEGORY])]
    return Catalog(
        frame,
        attributes,
        root,
        template,
        {c: list(names[c]) for c in kept},
        source=str(root / f"{split}.csv"),
        dropped_categories=dropped,
        min_rows_per_category=min_rows_per_category,
        lines=lines,
        rejected=rejected,
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


def read_catalog(
    path: str | os.PathLike,
    *,
    layout: Literal["generic", "meesho"] = "generic",
    id_column: str = ID,
    category_column: str = CATEGORY,
    attributes: Sequence[str] = (),
    image_root: str | os.PathLike | None = None,
    image_template: str | None = None,
    categories: Sequence[str] = (),
    min_rows_per_category: int = 0,
    remaps: Mapping[str, Mapping[str, str]] | None = None,
    limit: int | None = None,
    text_columns: Sequence[str] = (),
    corrections: str | os.PathLike | None = None,
    encoding: str = "utf-8",
    seed: int = 0,
    labels: bool = True,
    bad_rows: BadRows = "raise",
    text_optional: bool = False,
) -> Catalog:
    """``layout``'s reader, then the optional seeded row ``limit`` (for quick runs) and the reviewed
    ``corrections``.

    ``labels=False``: the generic layout reads no attribute columns (see :func:`read_generic`).
    ``bad_rows``: see :data:`BadRows`. The meesho layout takes the dataset folder (its ``train.csv``) or
    one of its CSVs, such as ``test.csv``, whose stem names the split (images under ``test_images/``).
    ``text_optional``: see :func:`read_generic`.
    """
    common = {
        "remaps": remaps or None,
        "categories": categories or None,
        "min_rows_per_category": min_rows_per_category,
        "bad_rows": bad_rows,
    }
    if layout == "meesho":
        if text_columns:
            raise CatalogError("the meesho layout has no listing text: leave catalog.text_columns unset")
        path = expand_path(path)
        root, split = (path.parent, path.stem) if path.suffix.lower() == ".csv" else (path, "train")
        catalog = read_meesho(root, split=split, image_template=image_template, encoding=encoding, **common)
    else:
        catalog = read_generic(
            path,
            id_column=id_column,
            category_column=category_column,
            attributes=attributes,
            image_root=image_root,
            image_template=image_template or "images/{id}.jpg",
            text_columns=text_columns,
            text_optional=text_optional,
            labels=labels,
            encoding=encoding,
            **common,
        )
    if image_root is not None and layout == "meesho":
        catalog.image_root = expand_path(image_root)
    if corrections and labels:
        # Before the row limit: a reviewed item the sample leaves out is the catalog's, not a new item.
        columns = source_columns(layout, id_column, category_column)
        catalog = apply_corrections(catalog, corrections, *columns, categories=categories)
    if limit is not None and limit < len(catalog):
        keep = np.sort(np.random.default_rng(seed).permutation(len(catalog))[:limit])
        catalog = catalog.subset(keep)
    return catalog


def source_columns(layout: str, id_column: str, category_column: str) -> tuple[str, str]:
    """The id and category column names of a catalog file, as its own header spells them."""
    return ("id", "Category") if layout == "meesho" else (id_column, category_column)


def apply_corrections(
    catalog: Catalog,
    path: str | os.PathLike,
    id_column: str,
    category_column: str,
    *,
    categories: Sequence[str] = (),
) -> Catalog:
    """``catalog`` with the reviewed labels of ``path`` merged in: each non-empty reviewed value replaces
    the catalog's label; reviewed items the catalog lacks are appended (their images are found the same
    way as the catalog's). Columns other than the catalog's attributes are ignored. A reviewed item must
    keep the category the catalog gives it: its values were picked from that category's allowed values,
    so one under another category (an export from an older catalog) fails the merge, naming its line.

    Reviewed items of categories the reader left out, those outside ``categories`` (catalog.categories)
    or with too few rows (:attr:`Catalog.dropped_categories`), are left out too: a review of the whole
    catalog then trains a run on some of its categories. Other categories the catalog lacks fail."""
    table, _ = read_lined_table(path)
    missing = [c for c in (id_column, category_column) if c not in table.columns]
    if missing:
        raise CatalogError(
            f"{path}: corrections need the catalog's columns {missing} (as `taxonomist review` exports them)"
        )
    table = table.rename(columns={id_column: ID, category_column: CATEGORY})
    table[CATEGORY] = fold_categories(table[CATEGORY])
    if table[ID].duplicated().any():
        dups = table.loc[table[ID].duplicated(), ID].head(5).tolist()
        raise CatalogError(f"{path}: duplicated ids {dups}")
    attributes = [a for a in catalog.attributes if a in table.columns]
    frame = catalog.frame.set_index(catalog.frame[ID].astype(str), drop=False)
    lines = table.index
    table = table.set_index(table[ID].astype(str), drop=False)
    known = table.index.isin(frame.index)
    moved = [
        f"line {line} (id {item!r}) says {given if isinstance(given, str) else None!r}, "
        f"the catalog {frame.at[item, CATEGORY]!r}"
        for line, item, given in zip(
            lines[known], table.index[known], table.loc[known, CATEGORY], strict=True
        )
        if given != frame.at[item, CATEGORY]
    ]
    if moved:
        raise CatalogError(
            f"{path}: {len(moved)} corrections name another category than the catalog's row of their id, "
            f"so their values may not be allowed there: {'; '.join(moved[:5])}; correct their category "
            "or leave them out"
        )
    for attribute in attributes:
        given = table.loc[known, attribute].dropna()
        frame.loc[given.index, attribute] = given
    new = table.loc[~known, [ID, CATEGORY, *attributes]].reindex(columns=frame.columns)
    left_out = new[CATEGORY].isin(catalog.dropped_categories)
    if categories:
        left_out |= ~new[CATEGORY].isin(categories)
    if left_out.any():
        warnings.warn(
            f"{path}: {int(left_out.sum())} reviewed items of categories this run leaves out "
            f"({sorted(set(new.loc[left_out, CATEGORY]))}) are not merged",
            stacklevel=2,
        )
    new = new[~left_out]
    unknown = sorted(set(new[CATEGORY]) - set(catalog.attributes_by_category))
    if unknown:
        raise CatalogError(f"{path}: corrections of categories the catalog does not have: {unknown}")
    merged = pd.concat([frame, new]).reset_index(drop=True)
    merged = merged.astype(object).where(merged.notna(), None)
    # Line numbers name rows of the catalog file; appended rows come from the corrections file instead.
    lines = catalog.lines if len(new) == 0 else None
    return dataclasses.replace(catalog, frame=merged, lines=lines)
