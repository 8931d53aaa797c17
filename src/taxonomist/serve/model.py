"""What the server needs from a model family, and the adapter for attribute checkpoints.

The HTTP layer only knows :class:`ServedModel`: ``prepare`` turns one upload into model input (in a
request thread, so a bad image fails its own request), ``predict_batch`` runs one forward over inputs
from many requests (in the batcher's thread). Another family plugs in by adding a loader to
:data:`LOADERS` under the ``kind`` its checkpoint's ``taxonomist.json`` declares.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from taxonomist.data.images import DEFAULT_MAX_PIXELS, load_image_bytes
from taxonomist.inference.predictor import AttributeValue, Predictor
from taxonomist.models.checkpoint import META_FILE, CheckpointError


@dataclass(frozen=True)
class ModelInfo:
    """Identifies the served weights in every response, so a client can tell which model answered."""

    name: str
    version: str
    """Content hash of the checkpoint files: changes whenever the weights, schema or calibration do."""
    kind: str
    backbone: str
    fingerprint: str
    """Backbone fingerprint (weights + preprocessing): the feature-cache key the heads were trained on."""
    runtime: str = "torch fp32"
    """What computes the answers, e.g. ``openvino bf16`` (see taxonomist.models.runtime)."""


class ServedModel(Protocol):
    """A model the server can batch: per-upload preparation and one batched forward."""

    info: ModelInfo

    @property
    def categories(self) -> Sequence[str]: ...

    def prepare(self, data: bytes, category: str, *, name: str) -> Any:
        """Decode and preprocess one upload; raises ``ImageLoadError`` for anything that is no image."""
        ...

    def predict_batch(self, items: Sequence[Any]) -> list[dict[str, AttributeValue]]:
        """Attributes for each prepared item, in order; called from one thread at a time."""
        ...


@dataclass(frozen=True)
class _Prepared:
    pixels: torch.Tensor | None
    """None: a listing without a photo, predicted from its title."""
    category: str
    title: str = ""


class AttributeModel:
    """A taxonomist attribute checkpoint (heads or finetune recipe) behind :class:`ServedModel`."""

    def __init__(
        self, predictor: Predictor, info: ModelInfo, *, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> None:
        self.predictor = predictor
        self.info = info
        self.max_pixels = max_pixels

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        runtime: str = "auto",
        precision: str | None = None,
    ) -> AttributeModel:
        """``runtime``/``precision``: see :meth:`Predictor.from_pretrained` (auto: the fastest installed)."""
        predictor = Predictor.from_pretrained(directory, runtime=runtime, precision=precision)
        ckpt = predictor.checkpoint
        info = ModelInfo(
            name=Path(directory).resolve().name,
            version=predictor.version,
            kind="attribute-heads",
            backbone=ckpt.backbone["name"],
            fingerprint=ckpt.fingerprint,
            runtime=predictor.runtime,
        )
        return cls(predictor, info, max_pixels=max_pixels)

    @property
    def categories(self) -> Sequence[str]:
        return self.predictor.categories

    @property
    def reads_text(self) -> bool:
        return self.predictor.reads_text

    @property
    def text_columns(self) -> list[str]:
        """The columns the listing text was joined from in training (serve takes one form field each)."""
        return self.predictor.text_columns

    @property
    def predicts_without_image(self) -> bool:
        return self.predictor.checkpoint.predicts_without_image

    def prepare_title(self, category: str, title: str) -> _Prepared:
        return _Prepared(None, category, title)

    def prepare(self, data: bytes, category: str, *, name: str, title: str = "") -> _Prepared:
        # The same decoder and preprocessing as training and batch prediction: served pixels match.
        image = load_image_bytes(data, max_pixels=self.max_pixels, name=name)
        return _Prepared(self.predictor.backbone.preprocess(image), category, title)

    @torch.inference_mode()
    def predict_batch(self, items: Sequence[_Prepared]) -> list[dict[str, AttributeValue]]:
        categories = [item.category for item in items]
        features, has_image = self.predictor.pixel_features([item.pixels for item in items])
        text = self.predictor.text_features([item.title for item in items], categories)
        ids = [str(i) for i in range(len(items))]
        preds = self.predictor.predict_rows(features, categories, ids, text, has_image=has_image)
        return [p.attributes for p in preds]


LOADERS: dict[str, Callable[..., ServedModel]] = {"attribute-heads": AttributeModel.load}
"""Checkpoint ``kind`` → loader(directory, *, max_pixels, runtime, precision)."""


def load_model(
    directory: str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    runtime: str = "auto",
    precision: str | None = None,
) -> ServedModel:
    """Load whichever served family the checkpoint's manifest names."""
    meta = Path(directory) / META_FILE
    if not meta.is_file():
        raise CheckpointError(f"{directory}: not a taxonomist checkpoint (no {META_FILE})")
    try:  # an edited manifest failed here unnamed ("Expecting value: line 1"), or in a traceback
        manifest = json.loads(meta.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{meta}: not valid JSON ({err}); was it edited?") from err
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{meta}: not a checkpoint manifest (a JSON object); was it edited?")
    kind = manifest.get("kind")
    if kind not in LOADERS:
        raise CheckpointError(
            f"{directory}: cannot serve checkpoint kind {kind!r}; servable: {sorted(LOADERS)}"
        )
    return LOADERS[kind](directory, max_pixels=max_pixels, runtime=runtime, precision=precision)
