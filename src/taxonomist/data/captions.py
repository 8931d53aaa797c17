"""Caption datasets as one frame shape: ``id, image_path, caption, split``, one row per (image, caption).

COCO images have several captions (rows share an id); a product has one, its display name.
:func:`references_by_id` turns either into the ``id -> [captions]`` mapping the caption metrics take.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from taxonomist.data.catalog import CatalogError, expand_path, read_lined_table, warn_rows_left_out
from taxonomist.data.images import content_hash
from taxonomist.data.split import split_train_dev_test

CAPTION_COLUMNS = ("id", "image_path", "caption", "split")


def read_coco_captions(root: str | os.PathLike) -> pd.DataFrame:
    """coco-mini-captions: ``captions.csv`` (image, caption, split) with images under ``images/``.

    The id is the image file stem; ``split`` is COCO's own (train2017 / val2017 as ``train`` / ``val``).
    """
    root = expand_path(root)
    path = root / "captions.csv"
    raw = _required(path, ["image", "caption", "split"])
    return pd.DataFrame(
        {
            "id": raw["image"].map(lambda name: Path(name).stem),
            "image_path": raw["image"].map(lambda name: str(root / "images" / name)),
            "caption": raw["caption"],
            "split": raw["split"],
        }
    ).reset_index(drop=True)


def read_product_captions(
    root: str | os.PathLike, *, val_fraction: float = 0.1, seed: int = 0
) -> pd.DataFrame:
    """fashion-product-images: ``styles.csv``'s ``productDisplayName`` as the caption of ``images/{id}.jpg``.

    Rows without a display name (6 in the shared copy) have nothing to score against: they are left out,
    with a warning that counts them and names their lines.
    The folder has no split, so ``split`` comes from the seeded per-category split the training code uses
    (:func:`~taxonomist.data.split.split_train_dev_test` over ``masterCategory``, byte-identical images
    kept in one part): val keeps about every category's share, and the same seed gives the same val ids.
    """
    root = expand_path(root)
    path = root / "styles.csv"
    raw = _required(path, ["id", "masterCategory"])
    if "productDisplayName" not in raw.columns:
        raise CatalogError(f"{path}: no productDisplayName column (columns: {list(raw.columns)})")
    names = raw["productDisplayName"].str.strip()
    named = names.notna() & (names != "")
    warn_rows_left_out(
        path, raw, named, "without a productDisplayName are left out (no caption to score against)"
    )
    raw = raw.assign(productDisplayName=names)[named]
    paths = [root / "images" / f"{i}.jpg" for i in raw["id"]]
    # Byte-identical photos (the catalogue reuses some, often with the same name) stay in one part, or
    # val would score captions of images training saw.
    groups = pd.Series([content_hash(p) if p.is_file() else f"no image {p}" for p in paths])
    parts = split_train_dev_test(
        raw["masterCategory"].astype(str),
        dev_fraction=val_fraction,
        test_fraction=0.0,
        seed=seed,
        groups=groups,
    )
    split = np.full(len(raw), "train", dtype=object)
    split[parts.dev] = "val"
    return pd.DataFrame(
        {
            "id": raw["id"].to_numpy(),
            "image_path": [str(p) for p in paths],
            "caption": raw["productDisplayName"].to_numpy(),
            "split": split,
        }
    )


def references_by_id(frame: pd.DataFrame) -> dict[str, list[str]]:
    """``id -> captions`` in file order: the references argument of the caption metrics."""
    missing = {"id", "caption"} - set(frame.columns)
    if missing:
        raise ValueError(f"caption frame lacks columns {sorted(missing)}")
    return {str(i): list(rows) for i, rows in frame.groupby("id", sort=False)["caption"]}


def _required(path: Path, columns: list[str]) -> pd.DataFrame:
    """The table at ``path``, indexed by the line each row starts on (a quoted caption may span lines,
    blank lines are skipped), after checking the columns exist and have no empty fields."""
    raw, _ = read_lined_table(path)
    absent = [c for c in columns if c not in raw.columns]
    if absent:
        raise CatalogError(f"{path}: missing columns {absent} (columns: {list(raw.columns)})")
    for column in columns:
        empty = raw.index[raw[column].isna()]
        if len(empty):
            raise CatalogError(
                f"{path}: {len(empty)} empty {column!r} fields, e.g. lines {empty[:5].tolist()}"
            )
    return raw
