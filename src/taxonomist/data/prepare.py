"""The one data step of every attribute recipe: load → clean labels → split → missing-label policy → schema.

Each step says what it left out or changed in a :class:`DataReport` (``data_report.json`` beside a
checkpoint), so no row, cell, category or attribute disappears without a line saying why. The split is
train/dev/test within each category: training rows fit, dev rows choose (epochs, temperatures,
thresholds), test rows are only reported on. The missing-label policy touches the training rows only, and
an inferred schema's vocabulary comes from them alone: dev/test values it lacks are reported and score as
wrong, as they would on new data.

It is also the data layer's builder: the one module of ``data`` that reads config sections, turning the
``catalog``, ``missing_labels`` and ``prompt`` sections into the plain arguments of the readers, the
policies and the chat examples (and a VLM config into its train / held-out examples).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from taxonomist.config import (
    CatalogConfig,
    ConfigError,
    MissingLabelConfig,
    PromptConfig,
    RunConfig,
    VLMConfig,
    section_arguments,
)
from taxonomist.data.captions import read_coco_captions, read_product_captions
from taxonomist.data.catalog import (
    CATEGORY,
    ID,
    TEXT,
    BadRows,
    Catalog,
    CatalogError,
    describe_counts,
    expand_path,
    read_catalog,
    source_columns,
)
from taxonomist.data.chat import ChatExample, ChatPrompts, attribute_examples, caption_examples
from taxonomist.data.images import ImageLoadError, content_hash
from taxonomist.data.policies import PolicyResult, apply_policy
from taxonomist.data.schema import Schema
from taxonomist.data.split import Split, split_train_dev_test

NULL_LIKE = frozenset({"", "nan", "none", "null", "n/a", "nat", "<na>", "-", "--"})
"""Label strings (case-folded, trimmed) that mean "no label". "NA" is not one: it is a brand in real
catalogs (see :func:`~taxonomist.data.catalog.read_table`)."""
PARTS = ("train", "dev", "test")
DATA_REPORT = "data_report.json"
"""Written beside every attribute checkpoint."""
EXAMPLE_CHARS = 40
"""Over-long labels are reported by their first characters."""

# Why rows were dropped (DataReport.dropped_rows) and cells masked (DataReport.masked_cells).
UNDER_MIN_ROWS = "category_under_min_rows"
OVER_LIMIT = "beyond_catalog_limit"
NO_LABELS = "category_without_labels"
NOT_IN_SCHEMA = "category_not_in_schema"
POLICY = "missing_label_policy"
MISSING = "missing"
NULL_LIKE_MASKED = "null_like"
OUTSIDE_SCHEMA = "outside_schema"
ATTRIBUTE_LEFT_OUT = "attribute_left_out"


@dataclass
class DataReport:
    """What the data step read, kept, dropped, masked and found suspicious (``data_report.json``)."""

    source: str = ""
    rows_read: int = 0
    rows_kept: int = 0
    parts: dict[str, int] = field(default_factory=dict)
    """Rows per part (train, dev, test) after every drop; the policy's drops come off train."""
    dropped_rows: dict[str, dict[str, int]] = field(default_factory=dict)
    """reason → category → rows."""
    masked_cells: dict[str, dict[str, int]] = field(default_factory=dict)
    """reason → attribute → label cells the model neither learns from nor is scored on as such."""
    policy: dict[str, Any] = field(default_factory=dict)
    left_out_categories: dict[str, str] = field(default_factory=dict)
    """category → why it is not in the schema."""
    left_out_attributes: dict[str, dict[str, str]] = field(default_factory=dict)
    """category → attribute → why it is not in that category's schema."""
    suspicious_labels: list[dict[str, Any]] = field(default_factory=list)
    """One record per (kind, attribute, value): kind, attribute, value, rows, action."""
    unseen_in_training: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    """part → attribute → value → rows: labels of dev/test that no training row has (scored as wrong)."""
    split: dict[str, Any] = field(default_factory=dict)
    """Settings that reproduce the parts, the duplicate-image groups and a digest of each part's ids."""
    unreadable_images: dict[str, int] = field(default_factory=dict)
    """part → rows whose image could not be read (filled in by recipes that read images)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataReport:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def load(cls, path: str | Path) -> DataReport:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def notes(self) -> list[str]:
        """One line per thing left out, masked or suspicious: the summary a run prints."""
        lines = []
        for reason, per_category in self.dropped_rows.items():
            if per_category:
                lines.append(f"dropped {sum(per_category.values())} rows: {reason} ({_counts(per_category)})")
        for reason, per_attribute in self.masked_cells.items():
            if per_attribute and reason != MISSING:
                lines.append(
                    f"masked {sum(per_attribute.values())} cells: {reason} ({_counts(per_attribute)})"
                )
        for category, reason in self.left_out_categories.items():
            lines.append(f"category {category!r} left out: {reason}")
        for category, attributes in self.left_out_attributes.items():
            for attribute, reason in attributes.items():
                lines.append(f"attribute {attribute!r} left out of {category!r}: {reason}")
        for item in self.suspicious_labels:
            lines.append(
                f"suspicious label ({item['kind']}) {item['attribute']}={item['value']!r} "
                f"in {item['rows']} rows: {item['action']}"
            )
        for part, per_attribute in self.unseen_in_training.items():
            for attribute, values in per_attribute.items():
                lines.append(
                    f"{part}: {sum(values.values())} {attribute} labels unseen in training, scored as wrong "
                    f"({_counts(values)})"
                )
        return lines


@dataclass
class PreparedData:
    """The parts of one catalog, ready for a recipe, and the report of how they were made."""

    catalog: Catalog
    """The kept rows, labels cleaned; ``attributes_by_category`` = what the schema covers."""
    schema: Schema
    split: Split
    """Positional rows of ``catalog.frame`` per part (before the policy)."""
    policy: PolicyResult
    """The missing-label policy applied to the training part: its frame is what heads train on."""
    report: DataReport

    def part(self, name: str) -> pd.DataFrame:
        """The rows of ``train``, ``dev`` or ``test`` with their true (gappy, cleaned) labels."""
        if name not in PARTS:
            raise ValueError(f"unknown part {name!r} (valid: {', '.join(PARTS)})")
        return self.catalog.frame.iloc[getattr(self.split, name)].reset_index(drop=True)

    @property
    def train(self) -> pd.DataFrame:
        """Training rows after the missing-label policy."""
        return self.policy.frame


# --- label cleaning ----------------------------------------------------------------------------------------


def clean_labels(
    frame: pd.DataFrame,
    attributes: Sequence[str],
    *,
    null_like_as_missing: bool = False,
    normalize_variants: bool = False,
    max_length: int = 100,
) -> tuple[pd.DataFrame, list[dict[str, Any]], dict[str, int]]:
    """(cleaned copy, suspicious-label records, null-like cells masked per attribute).

    Flags null-like tokens, case/whitespace variants of another value of the same attribute, and labels
    longer than ``max_length``; masks or merges the first two only when asked. A variant group's spelling
    is its most frequent one (ties: the first in sorted order).
    """
    out = frame.copy()
    found: list[dict[str, Any]] = []
    masked: dict[str, int] = {}
    if CATEGORY in out.columns:
        found.extend(_category_variants(out[CATEGORY]))
    for attribute in attributes:
        if attribute not in out.columns:
            continue
        present = out[attribute].notna()
        values = out.loc[present, attribute].astype(str)
        counts = values.value_counts()
        null = [v for v in counts.index if v.strip().casefold() in NULL_LIKE]
        for value in null:
            action = (
                "treated as missing"
                if null_like_as_missing
                else "kept as a value (catalog.null_like_as_missing)"
            )
            found.append(_record("null_like", attribute, value, counts[value], action))
        if null_like_as_missing and null:
            hit = present & out[attribute].astype(str).isin(null)
            out.loc[hit, attribute] = None
            masked[attribute] = int(hit.sum())
        real = counts.drop(null)
        keys = pd.Series([" ".join(v.split()).casefold() for v in real.index], index=real.index)
        mapping = {}
        for _, group in real.groupby(keys.to_numpy(), sort=True):
            if len(group) < 2:
                continue
            canonical = sorted(group.index, key=lambda v: (-group[v], v))[0]
            for variant in group.index.drop(canonical):
                action = (
                    f"merged into {canonical!r}"
                    if normalize_variants
                    else f"variant of {canonical!r}, kept apart (catalog.normalize_label_variants)"
                )
                found.append(
                    _record("case_or_whitespace_variant", attribute, variant, group[variant], action)
                )
                mapping[variant] = canonical
        if normalize_variants and mapping:
            out[attribute] = out[attribute].map(lambda v, m=mapping: m.get(v, v) if isinstance(v, str) else v)
        for value in real.index:
            if len(value) > max_length:
                shown = f"{value[:EXAMPLE_CHARS]}… ({len(value)} characters)"
                action = f"kept; longer than catalog.max_label_length={max_length}"
                found.append(_record("over_long", attribute, shown, real[value], action))
    return out, found, masked


def _category_variants(categories: pd.Series) -> list[dict[str, Any]]:
    """Categories that differ only in case ("Tops", "tops"): flagged, never merged, since categories
    are matched exactly (whitespace is folded when the catalog is read)."""
    counts = categories.astype(str).value_counts()
    found = []
    for _, group in counts.groupby([c.casefold() for c in counts.index], sort=True):
        canonical = sorted(group.index, key=lambda v: (-group[v], v))[0]
        for variant in group.index.drop(canonical):
            action = f"case variant of {canonical!r}: trained and predicted as a category of its own"
            found.append(_record("case_or_whitespace_variant", CATEGORY, variant, group[variant], action))
    return found


def _record(kind: str, attribute: str, value: str, rows: int, action: str) -> dict[str, Any]:
    return {"kind": kind, "attribute": attribute, "value": value, "rows": int(rows), "action": action}


# --- duplicate images --------------------------------------------------------------------------------------


def image_groups(catalog: Catalog) -> pd.Series:
    """A group key per row: the image's content digest (as the feature cache keys it), or the row's own
    key where the image cannot be read, so only byte-identical images share a group."""
    keys = []
    for row, path in enumerate(catalog.image_paths()):
        digest = None
        if path.is_file():  # regular files only: a FIFO or device would block the read
            try:
                digest = content_hash(path)
            except ImageLoadError:
                digest = None
        keys.append(digest if digest is not None else f"row:{row}")
    return pd.Series(keys, index=catalog.frame.index)


# --- the step ----------------------------------------------------------------------------------------------


def prepare(
    catalog: Catalog,
    *,
    dev_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    group_duplicate_images: bool = True,
    policy: str = "mask",
    policy_settings: Mapping[str, Any] | None = None,
    schema: Schema | None = None,
    null_like_as_missing: bool = False,
    normalize_label_variants: bool = False,
    max_label_length: int = 100,
    over_limit: Mapping[str, int] | None = None,
) -> PreparedData:
    """Clean, split, apply the policy to training rows and build the schema; report every drop and mask.

    ``schema`` (a supplied file) fixes the categories and values: rows of other categories are dropped and
    labels outside it masked, both reported. Without it the schema is inferred from the training part;
    an attribute with no training label in a category, and a category with no label at all, are left
    out (reported) instead of becoming empty heads. ``over_limit`` = rows per category a row limit left
    out before this step (for the report).
    """
    report = DataReport(source=catalog.source)
    over_limit = dict(over_limit or {})
    report.rows_read = len(catalog) + sum(catalog.dropped_categories.values()) + sum(over_limit.values())
    dropped: dict[str, dict[str, int]] = {
        UNDER_MIN_ROWS: dict(catalog.dropped_categories),
        OVER_LIMIT: over_limit,
    }
    frame, report.suspicious_labels, null_masked = clean_labels(
        catalog.frame,
        catalog.attributes,
        null_like_as_missing=null_like_as_missing,
        normalize_variants=normalize_label_variants,
        max_length=max_label_length,
    )
    catalog = dataclasses.replace(catalog, frame=frame)
    declared, kept = _usable_rows(catalog, schema, report, dropped)
    catalog = catalog.subset(kept)
    groups = image_groups(catalog) if group_duplicate_images else None
    split = split_train_dev_test(catalog.frame[CATEGORY], dev_fraction, test_fraction, seed, groups)
    covers = (
        {c: a for c, a in declared.items() if c in set(catalog.frame[CATEGORY])}
        if schema is not None
        else _trained_attributes(catalog.frame, split.train, declared, report)
    )
    late = ~catalog.frame[CATEGORY].astype(str).isin(list(covers)).to_numpy()
    for category, n in _per_category(catalog.frame[late]).items():
        dropped[NO_LABELS][category] = dropped[NO_LABELS].get(category, 0) + n
    if late.any():
        split = _keep_rows(split, ~late)
        groups = None if groups is None else groups[~late].reset_index(drop=True)
        catalog = catalog.subset(~late)
    catalog = dataclasses.replace(catalog, attributes_by_category=covers)

    if not len(split.dev):  # it picks the epoch and fits the temperatures: nothing trains without it
        sizes = describe_counts(_per_category(catalog.frame))
        raise ConfigError(
            f"{catalog.source}: train.dev_fraction={dev_fraction} gives no category a dev row ({sizes}); "
            "raise it"
        )
    parts = {name: catalog.frame.iloc[getattr(split, name)].reset_index(drop=True) for name in PARTS}
    filled = apply_policy(policy, parts["train"], covers, **dict(policy_settings or {}))
    emptied = sorted(set(covers) - set(filled.frame[CATEGORY].astype(str)))
    if emptied:
        raise CatalogError(
            f"{catalog.source}: missing_labels.policy={filled.policy} left no training row of "
            f"{emptied} (every one lacked a label it needs); use missing_labels.policy=mask, which keeps "
            "rows with gaps"
        )
    dropped[POLICY] = _per_category(parts["train"][~parts["train"][ID].isin(filled.frame[ID])])
    report.policy = {"policy": filled.policy, "rows_dropped": filled.dropped, "cells_filled": filled.filled}
    supplied = schema
    if schema is None:
        inferred = Schema.infer(filled.frame, covers, attributes=catalog.attributes)
        # Categories in name order: the model's category indices do not hang on which row came first.
        schema = Schema({c: inferred.categories[c] for c in covers if c in inferred.categories})
        report.unseen_in_training = {
            name: unseen for name in ("dev", "test") if (unseen := _unseen(parts[name], schema))
        }
    report.dropped_rows = {reason: counts for reason, counts in dropped.items() if counts}
    report.masked_cells = _masked_cells(parts, declared, covers, supplied, null_masked)
    report.parts = {"train": len(filled.frame), "dev": len(split.dev), "test": len(split.test)}
    report.rows_kept = sum(report.parts.values())
    report.split = {
        "dev_fraction": dev_fraction,
        "test_fraction": test_fraction,
        "seed": seed,
        "group_duplicate_images": group_duplicate_images,
        "duplicate_image_rows": _duplicate_rows(groups),
        "ids": {name: _ids_digest(parts[name]) for name in PARTS},
    }
    return PreparedData(catalog, schema, split, filled, report)


def _usable_rows(
    catalog: Catalog, schema: Schema | None, report: DataReport, dropped: dict[str, dict[str, int]]
) -> tuple[dict[str, list[str]], np.ndarray]:
    """(attributes each category declares, mask of the rows kept): rows of categories outside a supplied
    schema or without any label go, with their reasons in ``report`` and ``dropped``."""
    frame = catalog.frame
    categories = frame[CATEGORY].astype(str)
    if schema is not None:
        declared = {c: schema.attributes_of(c) for c in schema.categories}
        unknown = ~categories.isin(list(declared))
        dropped[NOT_IN_SCHEMA] = _per_category(frame[unknown])
        for category in dropped[NOT_IN_SCHEMA]:
            report.left_out_categories[category] = "not in the supplied schema"
    else:
        declared = {c: list(a) for c, a in catalog.attributes_by_category.items()}
        unknown = pd.Series(False, index=frame.index)
    labelled = {c: _labelled(frame[categories == c], declared.get(c, [])) for c in categories.unique()}
    no_labels = categories.isin([c for c, attrs in labelled.items() if not attrs]) & ~unknown
    dropped[NO_LABELS] = _per_category(frame[no_labels])
    for category in dropped[NO_LABELS]:
        report.left_out_categories[category] = "no row of it has a label"
    covered = {a for attrs in declared.values() for a in attrs}
    for attribute in catalog.attributes:
        if attribute not in covered:
            report.left_out_attributes.setdefault("(every category)", {})[attribute] = "no row has a label"
    kept = ~(unknown | no_labels).to_numpy()
    if len(frame) and not kept.any():
        reasons = "; ".join(f"{c}: {why}" for c, why in report.left_out_categories.items())
        raise CatalogError(f"{catalog.source}: no rows left to split, every category is left out ({reasons})")
    return declared, kept


def _trained_attributes(
    frame: pd.DataFrame, train: np.ndarray, declared: Mapping[str, Sequence[str]], report: DataReport
) -> dict[str, list[str]]:
    """Per category of ``frame`` (name order), the declared attributes some training row has a label for;
    the rest, and categories left with none, are reported as left out."""
    covers = {}
    train_rows = frame.iloc[train]
    for category in sorted(set(frame[CATEGORY].astype(str))):
        rows = train_rows[train_rows[CATEGORY].astype(str) == category]
        covers[category] = _labelled(rows, declared.get(category, []))
        for attribute in declared.get(category, []):
            if attribute not in covers[category]:
                report.left_out_attributes.setdefault(category, {})[attribute] = (
                    "no training row has a label for it"
                )
        if not covers[category]:
            report.left_out_categories[category] = "no training row has a label"
    return {c: a for c, a in covers.items() if a}


def load_catalog(
    cfg: CatalogConfig,
    *,
    seed: int = 0,
    labels: bool = True,
    bad_rows: BadRows = "raise",
    text_optional: bool = False,
) -> Catalog:
    """The ``catalog`` section's file through :func:`~taxonomist.data.catalog.read_catalog`: its layout's
    reader, then the optional seeded row limit (for quick runs) and the reviewed corrections.

    ``labels=False``: the generic layout reads no attribute columns. ``bad_rows``: see :data:`BadRows`.
    ``text_optional``: text columns the file lacks read as blank (rows to predict or score only; see
    :func:`~taxonomist.data.catalog.read_generic`).
    """
    return read_catalog(
        **section_arguments(
            cfg, read_catalog, seed=seed, labels=labels, bad_rows=bad_rows, text_optional=text_optional
        )
    )


def catalog_columns(cfg: CatalogConfig) -> tuple[str, str]:
    """The id and category column names of the configured catalog file, as its own header spells them."""
    return source_columns(cfg.layout, cfg.id_column, cfg.category_column)


def without_training_filters(cfg: CatalogConfig) -> CatalogConfig:
    """``cfg`` without the choices that only make sense for training rows: the categories kept, the
    minimum rows per category, the row limit. Applied to rows to predict or score they would leave rows
    out silently."""
    return dataclasses.replace(cfg, categories=[], min_rows_per_category=0, limit=None)


def load_for_prediction(cfg: CatalogConfig, *, text: bool = False) -> Catalog:
    """Every row of ``cfg.path`` with only what predicting reads: id, category, image. Rows with a blank
    id or category or a repeated id are set aside in :attr:`Catalog.rejected` (see :data:`BadRows`).

    A run's saved catalog settings carry its training-time choices: the categories it kept, its minimum
    rows per category, its row limit, per-category remaps, label and text columns. Applied to a file to
    predict they would drop rows silently or fail on columns that file need not have, so only the settings
    that say how to read a row remain. Rows of categories a model does not know are kept: predictors report
    them as errors. ``text``: keep the text columns (listing heads read them; image-only heads never do);
    a file without them reads as blank titles, said in :attr:`Catalog.text_note`.
    """
    reading = dataclasses.replace(
        without_training_filters(cfg),
        attributes=[],
        remaps={},
        schema=None,
        text_columns=cfg.text_columns if text else [],
    )
    return load_catalog(reading, labels=False, bad_rows="report", text_optional=True)


def catalog_titles(cfg: CatalogConfig) -> dict[str, str]:
    """id → listing title from the catalog's text column; empty where it has none or cannot be read."""
    if not cfg.text_columns:
        return {}
    reading = dataclasses.replace(
        cfg,
        attributes=[],
        categories=[],
        min_rows_per_category=0,
        remaps={},
        limit=None,
        corrections=None,
    )
    try:
        frame = load_catalog(reading, labels=False).frame
    except CatalogError:
        return {}
    return dict(zip(frame[ID].astype(str), frame[TEXT].astype(str), strict=True))


def policy_options(policy: MissingLabelConfig) -> dict:
    """The keyword options of ``policy``'s missing-label function (``data/policies.py``), so the
    policies take plain arguments."""
    if policy.policy == "similar-mode":
        return {"max_nans": policy.max_nans}
    if policy.policy == "dynamic-fill":
        return {"fill_value": policy.fill_value}
    return {}


def prepare_catalog(
    cfg: RunConfig | VLMConfig, catalog: Catalog | None = None, *, text_optional: bool = False
) -> PreparedData:
    """The data step with a run's settings: its catalog (loaded here unless given), split, policy, schema.

    ``text_optional`` (evaluation, never training): text columns the file lacks read as blank."""
    over_limit: dict[str, int] = {}
    if catalog is None:
        full = load_catalog(
            dataclasses.replace(cfg.catalog, limit=None), seed=cfg.train.seed, text_optional=text_optional
        )
        catalog = full
        limit = cfg.catalog.limit
        if limit is not None and limit < len(full):
            # The same seeded subset load_catalog draws, so features and figures stay comparable.
            keep = np.sort(np.random.default_rng(cfg.train.seed).permutation(len(full))[:limit])
            rest = np.setdiff1d(np.arange(len(full)), keep)
            over_limit = _per_category(full.frame.iloc[rest])
            catalog = full.subset(keep)
    return prepare(
        catalog,
        dev_fraction=cfg.train.dev_fraction,
        test_fraction=cfg.train.test_fraction,
        seed=cfg.train.seed,
        group_duplicate_images=cfg.train.group_duplicate_images,
        policy=cfg.missing_labels.policy,
        policy_settings=policy_options(cfg.missing_labels),
        schema=Schema.load(expand_path(cfg.catalog.schema)) if cfg.catalog.schema else None,
        null_like_as_missing=cfg.catalog.null_like_as_missing,
        normalize_label_variants=cfg.catalog.normalize_label_variants,
        max_label_length=cfg.catalog.max_label_length,
        over_limit=over_limit,
    )


# --- helpers -----------------------------------------------------------------------------------------------


def chat_prompts(cfg: PromptConfig) -> ChatPrompts:
    """The ``prompt`` section as the chat examples' prompts."""
    return ChatPrompts(**section_arguments(cfg, ChatPrompts))


def saved_prompts(settings: Mapping[str, Any]) -> ChatPrompts:
    """A VLM folder's saved prompts (``taxonomist_vlm.json``), checked as the section; missing ones
    take its defaults, but a folder saved before titles existed was trained without them."""
    return chat_prompts(PromptConfig(**{"title": "", **settings}))


def build_examples(
    cfg: VLMConfig, held_out: Literal["dev", "test"] = "dev", *, data: PreparedData | None = None
) -> tuple[list[ChatExample], list[ChatExample], Schema | None]:
    """(train, held-out, schema) chat examples of the configured task; the schema is None for captions.

    Attributes come from the shared data step: ``held_out`` picks its dev part (eval loss, choices) or
    its test part (only reported); the schema, and so the decoding grammar, holds training values only.
    ``data``: that step's result when the caller already has it. Captions have one validation split,
    returned for either."""
    if cfg.task == "caption":
        train, val = _caption_split(cfg)
        schema = None
    else:
        train, val, schema = _attribute_split(cfg, held_out, data or prepare_catalog(cfg))
    if cfg.train.limit is not None:
        train = train[: cfg.train.limit]
    return train, val, schema


def _attribute_split(
    cfg: VLMConfig, held_out: Literal["dev", "test"], data: PreparedData
) -> tuple[list[ChatExample], list[ChatExample], Schema]:
    catalog, schema = data.catalog, data.schema
    prompts = chat_prompts(cfg.prompt)

    def examples(frame: pd.DataFrame, training: bool) -> list[ChatExample]:
        paths = [catalog.image_path(i, c) for i, c in zip(frame[ID], frame[CATEGORY], strict=True)]
        return attribute_examples(frame, schema, paths, prompts, in_schema_only=training)[0]

    return examples(data.train, True), examples(data.part(held_out), False), schema


def _caption_split(cfg: VLMConfig) -> tuple[list[ChatExample], list[ChatExample]]:
    """Train/val caption examples; ``captions.limit`` keeps the first N images of each split with all
    their captions."""
    data = cfg.captions
    if data.dataset == "coco":
        frame = read_coco_captions(data.path)
    else:
        frame = read_product_captions(data.path, val_fraction=cfg.train.dev_fraction, seed=cfg.train.seed)
    if data.limit is not None:
        # Per split, so a small smoke run still has images to validate on.
        first = frame.drop_duplicates("id").groupby("split", sort=False)["id"].head(data.limit)
        frame = frame[frame["id"].isin(first)]
    is_train = frame["split"] == "train"
    prompts = chat_prompts(cfg.prompt)
    return caption_examples(frame[is_train], prompts), caption_examples(frame[~is_train], prompts)


def _counts(counts: Mapping[str, int], limit: int = 5) -> str:
    ranked = sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))
    text = ", ".join(f"{k}: {v}" for k, v in ranked[:limit])
    return text + (f" … and {len(ranked) - limit} more" if len(ranked) > limit else "")


def _per_category(frame: pd.DataFrame) -> dict[str, int]:
    return {str(c): int(n) for c, n in frame[CATEGORY].value_counts().sort_index().items()}


def _labelled(rows: pd.DataFrame, attributes: Sequence[str]) -> list[str]:
    """The attributes (in order) that at least one of ``rows`` carries a label for."""
    return [a for a in attributes if a in rows.columns and rows[a].notna().any()]


def _keep_rows(split: Split, keep: np.ndarray) -> Split:
    """``split`` renumbered for the rows ``keep`` leaves."""
    position = np.cumsum(keep) - 1
    return Split(*(position[rows[keep[rows]]] for rows in (split.train, split.dev, split.test)))


def _masked_cells(
    parts: Mapping[str, pd.DataFrame],
    declared: Mapping[str, Sequence[str]],
    covers: Mapping[str, Sequence[str]],
    supplied: Schema | None,
    null_masked: Mapping[str, int],
) -> dict[str, dict[str, int]]:
    """reason → attribute → cells, over every kept row (all parts, before the policy); labels outside
    the schema only for a ``supplied`` one (an inferred schema's are dev/test values unseen in training,
    reported apart)."""
    frame = pd.concat(list(parts.values()), ignore_index=True)
    missing: dict[str, int] = {}
    left_out: dict[str, int] = {}
    for category, rows in frame.groupby(CATEGORY, sort=True):
        category = str(category)
        for attribute in declared.get(category, []):
            if attribute not in rows.columns:
                continue
            column = rows[attribute]
            if attribute not in covers.get(category, []):
                if column.notna().any():
                    left_out[attribute] = left_out.get(attribute, 0) + int(column.notna().sum())
                continue
            _add(missing, attribute, int(column.isna().sum()))
    outside = _outside(frame, covers, supplied) if supplied is not None else {}
    out = {
        MISSING: missing,
        NULL_LIKE_MASKED: dict(null_masked),
        OUTSIDE_SCHEMA: outside,
        ATTRIBUTE_LEFT_OUT: left_out,
    }
    return {
        reason: {a: n for a, n in counts.items() if n}
        for reason, counts in out.items()
        if any(counts.values())
    }


def _outside(frame: pd.DataFrame, covers: Mapping[str, Sequence[str]], schema: Schema) -> dict[str, int]:
    """Labels per attribute that ``schema`` does not allow for their row's category."""
    out: dict[str, int] = {}
    for category, rows in frame.groupby(CATEGORY, sort=True):
        for attribute in covers.get(str(category), []):
            if attribute not in rows.columns:
                continue
            allowed = set(schema.categories.get(str(category), {}).get(attribute, []))
            labels = rows[attribute].dropna().astype(str)
            _add(out, attribute, int((~labels.isin(allowed)).sum()))
    return out


def _unseen(frame: pd.DataFrame, schema: Schema) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for category, rows in frame.groupby(CATEGORY, sort=True):
        for attribute, allowed in schema.categories.get(str(category), {}).items():
            if attribute not in rows.columns:
                continue
            labels = rows[attribute].dropna().astype(str)
            for value, n in labels[~labels.isin(set(allowed))].value_counts().items():
                per_value = out.setdefault(attribute, {})
                per_value[str(value)] = per_value.get(str(value), 0) + int(n)
    return out


def _add(counts: dict[str, int], key: str, n: int) -> None:
    if n:
        counts[key] = counts.get(key, 0) + n


def _duplicate_rows(groups: pd.Series | None) -> int:
    """Rows whose image is byte-identical to another row's."""
    if groups is None:
        return 0
    sizes = groups.map(groups.value_counts())
    return int((sizes > 1).sum())


def _ids_digest(frame: pd.DataFrame) -> str:
    """A short digest of a part's ids: evaluate checks it to score exactly the part training held out."""
    return hashlib.sha256("\n".join(map(str, frame[ID])).encode("utf-8")).hexdigest()[:16]
