"""Images → backbone features: hashed, cached, decoded in worker processes, encoded in batches.

A bad image becomes an :class:`ImageError` record and a row of zeros with ``ok=False``; it never
stops the run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypedDict

import numpy as np
import torch
from PIL import ImageOps
from torch.utils.data import DataLoader, Dataset

from taxonomist.data.catalog import Catalog
from taxonomist.data.images import DEFAULT_MAX_PIXELS, ImageError, ImageLoadError, content_hash, load_image
from taxonomist.devices import module_device, resolve_device
from taxonomist.features.cache import FeatureCache, default_cache_dir
from taxonomist.models.backbones import Backbone
from taxonomist.models.runtime import on_runtime, runtime_device
from taxonomist.progress import progress_bar

_FLUSH_ROWS = 2048

View = Literal["original", "hflip"]
"""Which version of each image is encoded: ``hflip`` (mirrored) gives self-training a second view
whose prediction should agree with the original's, since no attribute here depends on left/right."""


class EmbedOptions(TypedDict):
    """How :func:`embed_catalog` and a predictor's batch job decode and encode (``features/build.py``
    fills it from the ``embed`` config section)."""

    batch_size: int
    num_workers: int
    max_pixels: int
    cache_dir: str | None


class RuntimeOptions(TypedDict):
    """Where :func:`runtime_backbone` runs a backbone."""

    device: str
    runtime: str
    precision: str
    cache_dir: str | None


def runtime_backbone(
    backbone: Backbone,
    *,
    device: str = "auto",
    runtime: str = "torch",
    precision: str = "fp32",
    cache_dir: str | None = None,
) -> Backbone:
    """``backbone`` on ``device``, ``runtime`` and ``precision`` (exported once into the cache)."""
    resolved, target = runtime_device(runtime, precision, resolve_device(device))
    root = Path(cache_dir or default_cache_dir()) / "exports" / backbone.fingerprint()
    on, _, _ = on_runtime(
        backbone.to(target), None, runtime=resolved, precision=precision, device=target, root=root
    )
    return on


def view_fingerprint(backbone: Backbone, view: View = "original") -> str:
    """Cache key of a view: a mirrored image's features are not the original's, so they get their own."""
    fingerprint = backbone.fingerprint()
    return fingerprint if view == "original" else f"{fingerprint}-{view}"


@dataclass
class EmbedResult:
    features: np.ndarray
    """(n, feature_dim) float32; rows of failed images are zeros."""
    ok: np.ndarray
    errors: list[ImageError] = field(default_factory=list)
    cached: int = 0
    computed: int = 0
    seconds: float = 0.0


class _Decode(Dataset):
    """Decodes and preprocesses in DataLoader workers; errors travel back as values, not exceptions."""

    def __init__(self, paths: Sequence[str], preprocess, max_pixels: int, view: View = "original") -> None:
        self.paths, self.preprocess, self.max_pixels, self.view = paths, preprocess, max_pixels, view

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            image = load_image(self.paths[i], max_pixels=self.max_pixels)
            return i, self.preprocess(ImageOps.mirror(image) if self.view == "hflip" else image), None
        except ImageLoadError as err:
            return i, None, (err.reason, err.detail)


def _collate(items):
    good = [(i, x) for i, x, e in items if e is None]
    bad = [(i, e) for i, x, e in items if e is not None]
    pixels = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], pixels, bad


def hash_images(
    ids: Sequence[str], paths: Sequence[str | Path], max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[list[str | None], list[ImageError]]:
    """Cache keys (None where the file cannot be read) and the errors for those.

    A key is the content hash, with ``max_pixels`` appended when it is not the default: an image over
    the cap is shrunk before preprocessing, so another cap gives other features for the same bytes.
    """
    suffix = "" if max_pixels == DEFAULT_MAX_PIXELS else f"@{max_pixels}"
    hashes: list[str | None] = []
    errors = []
    for item_id, path in zip(ids, paths, strict=True):
        try:
            hashes.append(content_hash(path) + suffix)
        except ImageLoadError as err:
            hashes.append(None)
            errors.append(ImageError.from_load_error(str(item_id), err))
    return hashes, errors


@torch.inference_mode()
def embed_images(
    ids: Sequence[str],
    paths: Sequence[str | Path],
    backbone: Backbone,
    *,
    cache: FeatureCache | None = None,
    batch_size: int = 32,
    num_workers: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    description: str = "embed",
    view: View = "original",
) -> EmbedResult:
    """``cache`` must belong to ``view`` (see :func:`view_fingerprint`); runs on ``backbone``'s device."""
    start = time.perf_counter()
    n = len(paths)
    features = np.zeros((n, backbone.feature_dim), dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    hashes, errors = hash_images(ids, paths, max_pixels)
    hits, todo = _plan(hashes, cache)
    if hits:
        features[[r for r, _ in hits]] = cache.get([k for _, k in hits])
        ok[[r for r, _ in hits]] = True
    computed, failed = {}, {}
    if todo:
        decode = _Decode([str(paths[r]) for r in todo.values()], backbone.preprocess, max_pixels, view)
        with progress_bar("image", disable=not progress) as bar:
            task = bar.add_task(description, total=len(todo))
            computed, failed = _encode(
                decode, list(todo), backbone, cache, batch_size, num_workers, lambda k: bar.advance(task, k)
            )
    for row, key in enumerate(hashes):
        if key in computed:
            features[row] = computed[key]
            ok[row] = True
        elif key in failed:  # every row sharing the bad bytes gets its own record
            errors.append(ImageError(str(ids[row]), str(paths[row]), *failed[key]))
    return EmbedResult(features, ok, errors, len(hits), len(computed), time.perf_counter() - start)


def _plan(
    hashes: Sequence[str | None], cache: FeatureCache | None
) -> tuple[list[tuple[int, str]], dict[str, int]]:
    """(row, key) of the cached rows, and key → first row of those to encode: identical images (same
    bytes) are encoded once."""
    todo: dict[str, int] = {}
    hits: list[tuple[int, str]] = []
    for row, key in enumerate(hashes):
        if key is None:
            continue
        if cache is not None and key in cache:
            hits.append((row, key))
        elif key not in todo:
            todo[key] = row
    return hits, todo


def _encode(
    decode: _Decode,
    keys: list[str],
    backbone: Backbone,
    cache: FeatureCache | None,
    batch_size: int,
    num_workers: int,
    advance,
) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, str]]]:
    """Features of ``decode``'s images by key, and (reason, detail) of those that failed; new features go
    into the cache every ``_FLUSH_ROWS`` rows, so a killed run keeps most of its work."""
    device = module_device(backbone)
    loader = DataLoader(
        decode,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        persistent_workers=False,
        pin_memory=device.type == "cuda",
    )
    backbone.eval()
    computed: dict[str, np.ndarray] = {}
    failed: dict[str, tuple[str, str]] = {}
    pending_keys: list[str] = []
    pending: list[np.ndarray] = []
    for idx, pixels, bad in loader:
        for i, (reason, detail) in bad:
            failed[keys[i]] = (reason, detail)
        if pixels is not None:
            out = backbone(pixels.to(device, non_blocking=True)).float().cpu().numpy()
            for i, vec in zip(idx, out, strict=True):
                computed[keys[i]] = vec
                pending_keys.append(keys[i])
                pending.append(vec)
            if cache is not None and len(pending) >= _FLUSH_ROWS:
                cache.put(pending_keys, np.stack(pending))
                pending_keys, pending = [], []
        advance(len(idx) + len(bad))
    if cache is not None and pending:
        cache.put(pending_keys, np.stack(pending))
    return computed, failed


def embed_catalog(
    catalog: Catalog,
    backbone: Backbone,
    *,
    batch_size: int = 32,
    num_workers: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    cache_dir: str | None = None,
    use_cache: bool = True,
    progress: bool = True,
    view: View = "original",
) -> EmbedResult:
    """Every row's image (or its ``view``) through ``backbone``, reusing the on-disk cache across runs."""
    return embed_images(
        catalog.ids,
        catalog.image_paths(),
        backbone,
        cache=FeatureCache(cache_dir, view_fingerprint(backbone, view)) if use_cache else None,
        batch_size=batch_size,
        num_workers=num_workers,
        max_pixels=max_pixels,
        progress=progress,
        description="embed" if view == "original" else f"embed ({view})",
        view=view,
    )
