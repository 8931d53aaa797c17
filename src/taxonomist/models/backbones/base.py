"""The one contract every backbone family honours, so heads, caches and training never special-case one.

A backbone turns a normalised image batch into pooled features (for linear/MLP heads) and a spatial
feature map (for attention heads), carries its own preprocessing (saved in checkpoints, so inference
always feeds the model what it was trained on) and a fingerprint used as the embedding-cache key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
# Pillow's documented point from which pre-reducing big photos is indistinguishable from a full
# resample, while being several times faster on multi-megapixel product shots.
_REDUCING_GAP = 3.0


@dataclass(frozen=True)
class Preprocess:
    """How raw RGB PIL images become the tensor this backbone expects; saved in checkpoints.

    ``resize`` modes: ``pad`` letterboxes to a square with ``fill`` (keeps the whole product; product
    photos are shot on white, so white bands look like the training distribution), ``crop`` resizes the
    shorter side to ``size / crop_pct`` then centre-crops (the ImageNet recipe; may cut product edges),
    ``squash`` resizes to ``size x size`` ignoring the aspect ratio.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: Literal["pad", "crop", "squash"] = "pad"
    crop_pct: float = 1.0
    fill: tuple[int, int, int] = (255, 255, 255)
    resample: Literal["bilinear", "bicubic"] = "bilinear"

    def __post_init__(self) -> None:
        # Normalise lists (from JSON / configs) to tuples so instances stay hashable and comparable.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "fill", tuple(int(v) for v in self.fill))
        if self.size <= 0:
            raise ValueError(f"size must be positive, got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3 or len(self.fill) != 3:
            raise ValueError("mean, std and fill need exactly 3 (RGB) values")
        if self.resize not in ("pad", "crop", "squash"):
            raise ValueError(f"resize must be 'pad', 'crop' or 'squash', got {self.resize!r}")
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {self.resample!r}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Return the ``(3, size, size)`` float32 normalised tensor for one image."""
        resized = self._resize(self._to_rgb(image))
        array = np.array(resized, dtype=np.uint8)  # a writable copy: torch must not alias PIL's buffer
        pixels = torch.from_numpy(array).permute(2, 0, 1).float()
        # One fused multiply-add: (x / 255 - mean) / std == x * scale + shift.
        std = torch.tensor(self.std).view(3, 1, 1)
        scale = 1.0 / (255.0 * std)
        shift = -torch.tensor(self.mean).view(3, 1, 1) / std
        return pixels.mul_(scale).add_(shift)

    def _to_rgb(self, image: Image.Image) -> Image.Image:
        # Transparent product cut-outs must land on the fill colour, not on black.
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        if image.mode in ("RGBA", "LA"):
            background = Image.new("RGB", image.size, self.fill)
            background.paste(image, mask=image.getchannel("A"))
            return background
        return image if image.mode == "RGB" else image.convert("RGB")

    def _resize(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        resample = _RESAMPLE[self.resample]
        if self.resize == "squash":
            return image.resize((self.size, self.size), resample, reducing_gap=_REDUCING_GAP)
        if self.resize == "crop":
            # Resize the crop window straight to the output (one resample instead of resize + crop).
            side = min(width, height) * self.size / math.floor(self.size / self.crop_pct)
            left, top = (width - side) / 2, (height - side) / 2
            box = (left, top, left + side, top + side)
            return image.resize((self.size, self.size), resample, box=box, reducing_gap=_REDUCING_GAP)
        scale = self.size / max(width, height)
        new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        canvas = Image.new("RGB", (self.size, self.size), self.fill)
        offset = ((self.size - new_size[0]) // 2, (self.size - new_size[1]) // 2)
        canvas.paste(image.resize(new_size, resample, reducing_gap=_REDUCING_GAP), offset)
        return canvas

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists, not tuples) for checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(**d)


class Backbone(torch.nn.Module):
    """Shared contract: pooled features, a spatial map, preprocessing and a cache fingerprint.

    Subclasses implement ``forward`` and ``forward_features``; fingerprinting and preprocessing are
    shared so that every family behaves the same for heads, caching and checkpoints.
    """

    name: str
    feature_dim: int
    feature_map_dim: int
    preprocess: Preprocess
    # Identifies what ``forward`` returns beyond the weights (e.g. "avg", "pooler_output"): two
    # poolings of the same weights give different embeddings, so they must not share a cache entry.
    pooling: str

    def __init__(
        self, name: str, preprocess: Preprocess, feature_dim: int, feature_map_dim: int, pooling: str
    ):
        super().__init__()
        self.name = name
        self.preprocess = preprocess
        self.feature_dim = feature_dim
        self.feature_map_dim = feature_map_dim
        self.pooling = pooling
        self.inference_only = False
        self._fingerprint: str | None = None
        self._fingerprint_state: tuple[Any, ...] | None = None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, feature_dim)`` pooled features."""
        raise NotImplementedError

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, feature_map_dim, h, w)`` spatial map for attention heads."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> Backbone:
        if mode and self.inference_only:
            raise RuntimeError(
                f"{self.name}: this backbone runs an inference export; "
                "create a fresh (torch) backbone to fine-tune"
            )
        return super().train(mode)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def fingerprint(self) -> str:
        """Stable short hex id of (family, weights, preprocess, pooling), the embedding-cache key.

        The path/hub id is deliberately left out: the same weights found at another path give the same
        embeddings and should hit the same cache. Hashing is done once and redone only when a tensor
        changed in place (optimizer step, manual edit) or was replaced.
        """
        state = self._fingerprint_inputs()
        if self._fingerprint is None or (
            self._fingerprint_state is not None and state != self._fingerprint_state
        ):
            self._fingerprint = self._hash_weights()
            self._fingerprint_state = state
        return self._fingerprint

    def source_fingerprint(self) -> str:
        """The fingerprint of the torch weights this backbone runs (a runtime export overrides it)."""
        return self.fingerprint()

    def _fingerprint_inputs(self) -> tuple[Any, ...]:
        """Cheap proxy for everything hashed: tensor identities and in-place version counters."""
        tensors = tuple((id(t), t._version) for t in self.state_dict(keep_vars=True).values())
        return (self.preprocess, self.pooling, tensors)

    def _hash_weights(self) -> str:
        digest = hashlib.sha256()
        meta = {
            "family": type(self).__name__,
            "pooling": self.pooling,
            "preprocess": self.preprocess.to_dict(),
        }
        digest.update(json.dumps(meta, sort_keys=True).encode())
        for key, tensor in sorted(self.state_dict().items()):
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            # Through uint8 so every dtype (bfloat16 included) hashes its raw bytes without copies.
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
        return digest.hexdigest()[:16]


BackboneFactory = Callable[..., Backbone]
_Factory = TypeVar("_Factory", bound=BackboneFactory)
_REGISTRY: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[_Factory], _Factory]:
    """Register ``factory(name, **overrides) -> Backbone`` under ``name``; stack it for several names."""

    def decorator(factory: _Factory) -> _Factory:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """Accept ``torch.bfloat16`` or ``"bfloat16"`` so dtypes can come from YAML configs."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return resolved


def override_preprocess(preprocess: Preprocess, **overrides: Any) -> Preprocess:
    """Apply user overrides (``size``, ``resize``, ...); unknown keys raise a TypeError naming them."""
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Preprocess)}
    if unknown:
        raise TypeError(f"unknown backbone override(s): {sorted(unknown)}")
    return dataclasses.replace(preprocess, **overrides)
