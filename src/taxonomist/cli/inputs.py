"""What a prediction folder was made from: the catalog settings and the checkpoint, recorded beside the
outputs so that later steps (``taxonomist review RUN``) find the images, titles and schema by themselves."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from taxonomist.config import CatalogConfig
from taxonomist.data.catalog import expand_path
from taxonomist.io import atomic_write_text

INPUT_FILE = "input.json"


def record_input(out_dir: str | os.PathLike, catalog: CatalogConfig, checkpoint: str | os.PathLike) -> None:
    """Write ``input.json``: the catalog settings with absolute paths, and the checkpoint folder."""
    fields = dataclasses.asdict(catalog)
    fields["path"] = str(expand_path(catalog.path).resolve())
    if catalog.image_root is not None:
        fields["image_root"] = str(expand_path(catalog.image_root).resolve())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {"catalog": fields, "checkpoint": str(Path(checkpoint).resolve())}
    atomic_write_text(out / INPUT_FILE, json.dumps(record, indent=1))


def recorded_input(out_dir: str | os.PathLike) -> tuple[CatalogConfig | None, Path | None]:
    """(catalog settings, checkpoint folder) of a prediction folder; (None, None) where none is recorded."""
    path = Path(out_dir) / INPUT_FILE
    if not path.is_file():
        return None, None
    record = json.loads(path.read_text(encoding="utf-8"))
    known = {f.name for f in dataclasses.fields(CatalogConfig)}
    catalog = CatalogConfig(**{k: v for k, v in record.get("catalog", {}).items() if k in known})
    checkpoint = record.get("checkpoint")
    return catalog, Path(checkpoint) if checkpoint else None
