"""Any Hugging Face transformers vision model, by hub id or local directory.

Seed checkpoints this is written and tested against (tests use tiny random configs of each family):
``openai/clip-vit-base-patch32``, ``google/siglip-base-patch16-224``, ``facebook/convnext-base-384-22k-1k``,
``microsoft/swin-base-patch4-window7-224``, ``facebook/deit-base-distilled-patch16-224``.
ViT, DINOv2 (with or without registers), SigLIP2 (NaFlex) and other ``AutoModel`` families work the same way.

Pooled features: ``pooler_output`` (CLIP/SigLIP's own heads, DINOv2's CLS, ConvNeXt/Swin's mean) or, with
``projection=True`` on CLIP, the projected ``image_embeds`` that live in the text-aligned space. ViT/DeiT
are loaded without their pooler: it is a dense+tanh trained for nothing we use and absent from most
classification checkpoints (so it would be random); the mean of the patch tokens is used instead.

Preprocessing is read from ``preprocessor_config.json`` as a plain dict: instantiating the processor
classes needs torchvision in transformers 5, and only mean/std/size/crop are needed. The default
``resize="pad"`` (not the checkpoints' centre crop) keeps the whole product in view: catalog photos are
shot on white, so white letterbox bands are in-distribution and no product edge is cut off.

Weights load through ``from_pretrained(name_or_path)``, exactly what a user does with a hub id or a local
directory, so the usual cache and ``HF_HUB_OFFLINE=1`` apply. ``pretrained=False`` builds the same
architecture from its config with random weights (tests, or training from scratch).
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

import torch
import transformers
from transformers.image_processing_base import ImageProcessingMixin

from .base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    Preprocess,
    override_preprocess,
    resolve_dtype,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
_NO_POOLER_TYPES = {"vit", "deit"}  # see module docstring
_PIL_BICUBIC_LIKE = {1, 3}  # PIL's LANCZOS and BICUBIC codes as stored in processor configs


def _family(model_type: str) -> str:
    return model_type.removesuffix("_vision_model")


def _vision_config(config: transformers.PretrainedConfig) -> transformers.PretrainedConfig:
    # Dual-encoder configs (CLIP, SigLIP) nest the image tower's config.
    return getattr(config, "vision_config", None) or config


class HFBackbone(Backbone):
    """Wraps a transformers vision model; turns token sequences into ``(B, C, h, w)`` maps."""

    def __init__(
        self, name: str, model: transformers.PreTrainedModel, preprocess: Preprocess, projection: bool
    ):
        config = model.config
        width = config.hidden_sizes[-1] if getattr(config, "hidden_sizes", None) else config.hidden_size
        feature_dim = config.projection_dim if projection else width
        pooling = "image_embeds" if projection else "pooler_output_else_patch_mean"
        super().__init__(name, preprocess, feature_dim, width, pooling)
        self.model = model
        self._projection = projection
        patch = getattr(config, "patch_size", None)
        self._patch_size = patch[0] if isinstance(patch, (list, tuple)) else patch
        # Swin-style models pad to whole patches and halve the grid (rounding up) at each stage merge.
        self._merges = len(config.depths) - 1 if "swin" in config.model_type else 0
        self._naflex = _family(config.model_type) == "siglip2"
        self._interpolates = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        outputs = self._outputs(pixel_values)
        if self._projection:
            return outputs.image_embeds
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is not None:
            return pooled.flatten(1)  # some CNNs pool to (B, C, 1, 1)
        return self._to_map(outputs.last_hidden_state, pixel_values.shape[-2:]).mean(dim=(2, 3))

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._to_map(self._outputs(pixel_values).last_hidden_state, pixel_values.shape[-2:])

    def _outputs(self, pixel_values: torch.Tensor) -> Any:
        x = pixel_values.to(self.dtype)
        if self._naflex:
            return self.model(**self._naflex_inputs(x))
        # Lets a ``size`` override differ from the pretraining resolution; a no-op at the native size.
        extra = {"interpolate_pos_encoding": True} if self._interpolates else {}
        return self.model(pixel_values=x, **extra)

    def _naflex_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """SigLIP2 NaFlex takes flattened patches, in its processor's (row, col, py, px, channel) order."""
        batch, channels, height, width = x.shape
        p = self._patch_size
        h, w = height // p, width // p
        patches = x[..., : h * p, : w * p].reshape(batch, channels, h, p, w, p)
        patches = patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, h * w, p * p * channels)
        return {
            "pixel_values": patches,
            "pixel_attention_mask": torch.ones(batch, h * w, dtype=torch.long, device=x.device),
            "spatial_shapes": torch.tensor([[h, w]] * batch, dtype=torch.long, device=x.device),
        }

    def _to_map(self, hidden: torch.Tensor, image_hw: torch.Size) -> torch.Tensor:
        if hidden.ndim == 4:  # CNNs already return (B, C, h, w)
            return hidden
        h, w = self._grid(*image_hw)
        prefix = hidden.shape[1] - h * w  # CLS, distillation and register tokens precede the patches
        if prefix < 0:
            raise RuntimeError(f"{self.name}: {hidden.shape[1]} tokens cannot form a {h}x{w} grid")
        return hidden[:, prefix:].transpose(1, 2).reshape(hidden.shape[0], -1, h, w)

    def _grid(self, height: int, width: int) -> tuple[int, int]:
        if self._patch_size is None:
            raise RuntimeError(f"{self.name}: config has no patch_size; cannot lay tokens out spatially")
        if not self._merges:
            return height // self._patch_size, width // self._patch_size
        h, w = math.ceil(height / self._patch_size), math.ceil(width / self._patch_size)
        for _ in range(self._merges):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        return h, w


def _side(value: int | dict[str, int] | None) -> int | None:
    if value is None or isinstance(value, int):
        return value
    return value.get("shortest_edge") or value.get("height")


def _default_stats(family: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if family == "clip":
        return CLIP_MEAN, CLIP_STD
    if family in ("siglip", "siglip2"):
        return SIGLIP_MEAN, SIGLIP_STD
    return IMAGENET_MEAN, IMAGENET_STD


def _preprocess(name: str, config: transformers.PretrainedConfig) -> Preprocess:
    family = _family(config.model_type)
    mean, std = _default_stats(family)
    try:
        proc, _ = ImageProcessingMixin.get_image_processor_dict(name)
    except OSError:
        image_size = _vision_config(config).image_size
        size = image_size if isinstance(image_size, int) else image_size[0]
        warnings.warn(
            f"{name}: no preprocessor_config.json; using image_size={size} and default {family} mean/std",
            stacklevel=3,
        )
        return Preprocess(size=size, mean=mean, std=std)

    if "max_num_patches" in proc:  # SigLIP2 NaFlex: the square with the same patch budget
        patch = proc["patch_size"]
        size = patch * math.isqrt(proc["max_num_patches"])
        resize_side = crop_side = None
    else:
        resize_side = _side(proc.get("size"))
        crop_side = _side(proc.get("crop_size")) if proc.get("do_center_crop", True) else None
        size = crop_side or resize_side or _vision_config(config).image_size
    crop_pct = proc.get("crop_pct") or (crop_side / resize_side if crop_side and resize_side else 1.0)
    if proc.get("image_processor_type", "").startswith("ConvNext") and size >= 384:
        crop_pct = 1.0  # ConvNeXt's processor warps instead of cropping from 384 px up
    return Preprocess(
        size=size,
        mean=tuple(proc.get("image_mean") or mean),
        std=tuple(proc.get("image_std") or std),
        crop_pct=min(1.0, crop_pct),
        resample="bicubic" if proc.get("resample") in _PIL_BICUBIC_LIKE else "bilinear",
    )


def _model_class(family: str, projection: bool) -> type:
    if projection and family != "clip":
        raise ValueError(f"projection=True needs a CLIP model, got model_type {family!r}")
    if family == "clip":
        return transformers.CLIPVisionModelWithProjection if projection else transformers.CLIPVisionModel
    if family == "siglip":
        return transformers.SiglipVisionModel
    if family == "siglip2":
        return transformers.Siglip2VisionModel
    return transformers.AutoModel


def create_hf_backbone(
    name: str,
    *,
    pretrained: bool = True,
    dtype: torch.dtype | str | None = None,
    projection: bool = False,
    **preprocess_overrides: object,
) -> HFBackbone:
    """Load ``name`` (hub id or local dir); ``projection=True`` gives CLIP's text-aligned embeddings."""
    config = transformers.AutoConfig.from_pretrained(name)
    family = _family(config.model_type)
    preprocess = override_preprocess(_preprocess(name, config), **preprocess_overrides)
    model_class = _model_class(family, projection)
    if model_class is transformers.AutoModel:
        kwargs = {"add_pooling_layer": False} if family in _NO_POOLER_TYPES else {}
        model = (
            transformers.AutoModel.from_pretrained(name, **kwargs)
            if pretrained
            else transformers.AutoModel.from_config(config, **kwargs)
        )
    else:
        vision_config = _vision_config(config)
        if projection:
            # The projection width lives on the dual-encoder config; the nested copy may be a default.
            vision_config.projection_dim = config.projection_dim
        model = (
            model_class.from_pretrained(name, config=vision_config)
            if pretrained
            else model_class(vision_config)
        )
    resolved = resolve_dtype(dtype)
    if resolved is not None:
        model.to(resolved)
    return HFBackbone(name, model, preprocess, projection).eval()
