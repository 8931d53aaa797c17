"""On-disk feature cache keyed by (backbone fingerprint, image content hash).

Shards are append-only pairs of ``.npy`` files; a shard's key file is renamed into place last, so a
crash mid-write leaves no half shard that would be read back.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from taxonomist.io import atomic_write

CACHE_ENV = "TAXONOMIST_CACHE"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "taxonomist"))


class FeatureCache:
    """Features of one backbone (by fingerprint); lookups by image content hash."""

    def __init__(self, root: str | os.PathLike | None, fingerprint: str) -> None:
        self.dir = Path(root or default_cache_dir()) / "features" / fingerprint
        self.dir.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, tuple[int, int]] = {}
        self._shards: list[np.ndarray] = []
        for keys_file in sorted(self.dir.glob("*.keys.npy")):
            self._add_shard(keys_file)

    def _add_shard(self, keys_file: Path) -> None:
        feats_file = keys_file.with_name(keys_file.name.replace(".keys.npy", ".feats.npy"))
        if not feats_file.exists():
            return
        keys = np.load(keys_file, allow_pickle=False)
        shard = len(self._shards)
        self._shards.append(np.load(feats_file, mmap_mode="r"))
        self._index.update({str(k): (shard, row) for row, k in enumerate(keys)})

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Features for keys that are all present (check with ``in`` first)."""
        rows = [self._index[k] for k in keys]
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._shards[s][r] for s, r in rows]).astype(np.float32, copy=False)

    def put(self, keys: Sequence[str], features: np.ndarray) -> None:
        if len(keys) == 0:
            return
        if len(keys) != len(features):
            raise ValueError(f"{len(keys)} keys for {len(features)} feature rows")
        name = uuid.uuid4().hex
        feats_file = self.dir / f"{name}.feats.npy"
        keys_file = self.dir / f"{name}.keys.npy"
        for path, array in (
            (feats_file, np.asarray(features, dtype=np.float32)),
            (keys_file, np.asarray(keys)),
        ):
            atomic_write(path, lambda tmp, array=array: _save_npy(tmp, array))
        self._add_shard(keys_file)


def _save_npy(path: Path, array: np.ndarray) -> None:
    # Through a file object: given a name, np.save would append ".npy" to the temporary one.
    with open(path, "wb") as fp:
        np.save(fp, array, allow_pickle=False)
