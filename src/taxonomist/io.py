"""Every file taxonomist writes goes through here: whole or not at all, and resumable in chunks.

:func:`atomic_write` writes to a unique temporary name next to the target, then renames it into place,
so a reader (or a rerun after ``kill -9``) sees the old file or the new one, never half of it, even
when two workers write the same file at once. :class:`ChunkedWriter` builds resumable batch outputs
from such writes: each chunk is one atomically written part, a rerun skips finished parts, so a kill
can only lose the chunk in flight and rows are never duplicated.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import uuid
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

PARTS_DIR = "parts"
MANIFEST = "manifest.json"


class ResumeError(RuntimeError):
    """The output folder holds a partial run of a different input or settings."""


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` fills a temporary file beside ``path``; it is renamed onto ``path`` only when
    ``write`` returns. The temporary name is hidden and ends in ``.tmp``, so no glob for the real
    files picks up one left by a killed process."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any, **dumps_kwargs: Any) -> None:
    """``data`` as JSON (``dumps_kwargs`` as for :func:`json.dumps`). A NaN or infinity is refused unless
    ``allow_nan=True`` is passed: ``json.dumps`` writes them as ``NaN``, which is not JSON and which strict
    readers (``jq``, browsers) reject, so a score that is undefined must be written as ``None``."""
    atomic_write_text(path, json.dumps(data, **{"allow_nan": False, **dumps_kwargs}))


def atomic_write_frame(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Parquet for a ``.parquet`` path, CSV otherwise; no index."""
    if Path(path).suffix == ".parquet":
        atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
    else:
        atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def replace_rows(
    old: pd.DataFrame, new: pd.DataFrame, ids: Collection[str], order: Sequence[str]
) -> pd.DataFrame:
    """``old`` (a part, by ``id``) with the rows of ``ids`` replaced by ``new``'s rows, in the ``order`` of
    the part's ids: a row is never there twice, and replacing again from the result gives the same part."""
    kept = old[~old["id"].astype(str).isin(ids)]
    frames = [f for f in (kept, new) if len(f)]
    if not frames:
        return new
    merged = pd.concat(frames, ignore_index=True)
    position = {item: r for r, item in enumerate(order)}
    rank = merged["id"].astype(str).map(position).to_numpy()
    return merged.iloc[np.argsort(rank, kind="stable")].reset_index(drop=True)


def rows_digest(rows: pd.DataFrame) -> str:
    """Identifies a job's input rows (ids and what is predicted from them, in order)."""
    return hashlib.sha256(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes()).hexdigest()


def resume_conflict(out_dir: Path, previous: dict, manifest: dict, finished: bool) -> str:
    """One line for a rerun into the folder of another job: whether that job finished, what differs (in
    words, not manifests) and how to start afresh."""
    then, now = {**previous, **previous.get("settings", {})}, {**manifest, **manifest.get("settings", {})}
    names = {"n_rows": "rows", "rows_sha256": "input rows", "model": "model", "fingerprint": "backbone"}
    differences = []
    for key in dict.fromkeys([*then, *now]):
        if key in ("settings",) or then.get(key) == now.get(key):
            continue
        if key in ("rows_sha256", "model", "fingerprint") and key in then and key in now:
            differences.append(f"other {names[key]}")
        else:
            differences.append(f"{names.get(key, key)} {then.get(key)!r} then, {now.get(key)!r} now")
    state = "a finished job" if finished else "a partial job (not finished)"
    return (
        f"{out_dir} holds {state} with {', '.join(differences) or 'other settings'}; to start afresh, "
        f"delete it (rm -r {shlex.quote(str(out_dir))}) and run the command again, or pass another --output"
    )


class ChunkedWriter:
    """Parts ``part-00000.parquet``… under ``out_dir/parts``, one per chunk of input rows.

    ``rows``: the job's input, an ``id`` column plus whatever the predictions are computed from (image
    path, category, title). Its digest and ``settings`` (which should name the model's version) go into
    the manifest, so rerunning into the folder with other rows or another model is refused rather than
    silently answered with the old parts.
    """

    def __init__(
        self, out_dir: str | os.PathLike, rows: pd.DataFrame, chunk_size: int, settings: dict
    ) -> None:
        self.out_dir = Path(out_dir)
        self.parts_dir = self.out_dir / PARTS_DIR
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self.ids = rows["id"].astype(str).tolist()
        self.chunk_size = chunk_size
        manifest = {
            "n_rows": len(self.ids),
            "chunk_size": chunk_size,
            "rows_sha256": rows_digest(rows),
            "settings": settings,
        }
        manifest_path = self.out_dir / MANIFEST
        if manifest_path.exists():
            previous = json.loads(manifest_path.read_text(encoding="utf-8"))
            if previous != manifest:
                n_chunks = -(-int(previous.get("n_rows", 0)) // max(1, int(previous.get("chunk_size", 1))))
                finished = all(self.part_path(k, "done").exists() for k in range(n_chunks))
                raise ResumeError(resume_conflict(self.out_dir, previous, manifest, finished))
        else:
            atomic_write_text(manifest_path, json.dumps(manifest, indent=1))

    @property
    def n_chunks(self) -> int:
        return -(-len(self.ids) // self.chunk_size)

    def chunk_rows(self, k: int) -> range:
        return range(k * self.chunk_size, min((k + 1) * self.chunk_size, len(self.ids)))

    def part_path(self, k: int, kind: str) -> Path:
        return self.parts_dir / f"{kind}-{k:05d}.parquet"

    def done(self, k: int) -> bool:
        return self.part_path(k, "done").exists()

    def pending(self) -> list[int]:
        return [k for k in range(self.n_chunks) if not self.done(k)]

    def write(self, k: int, frames: dict[str, pd.DataFrame]) -> None:
        """All of a chunk's frames, then its ``done`` marker last: a chunk counts only when whole."""
        for kind, frame in frames.items():
            atomic_write_frame(frame, self.part_path(k, kind))
        atomic_write_frame(
            pd.DataFrame({"id": [self.ids[r] for r in self.chunk_rows(k)]}), self.part_path(k, "done")
        )

    def replace(self, k: int, frames: dict[str, pd.DataFrame], ids: Collection[str]) -> None:
        """A finished chunk's parts rewritten with the rows of ``ids`` replaced by ``frames``' rows, in the
        order given: the caller puts last the part whose rows make a rerun replace them again (a batch
        job's errors), so a crash halfway leaves them to be replaced again, and the chunk stays finished."""
        order = [self.ids[r] for r in self.chunk_rows(k)]
        for kind, frame in frames.items():
            old = pd.read_parquet(self.part_path(k, kind))
            atomic_write_frame(replace_rows(old, frame, ids, order), self.part_path(k, kind))

    def read(self, kind: str, empty: pd.DataFrame | None = None) -> pd.DataFrame:
        """All chunks' ``kind`` rows in input order; ``empty`` (the columns) where there are none, so an
        output of zero rows still has its header."""
        frames = [pd.read_parquet(self.part_path(k, kind)) for k in range(self.n_chunks)]
        frames = [f for f in frames if len(f)]
        if frames:
            return pd.concat(frames, ignore_index=True)
        return empty if empty is not None else pd.DataFrame()
