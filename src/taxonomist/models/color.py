"""Foreground colour histogram in CIELAB: the colour signal ImageNet features mostly discard.

CNN features trained for ImageNet are largely invariant to hue (colour jitter is part of their
training), so a linear probe on them scores poorly on colour attributes. A soft histogram of the
product's pixels over a fixed Lab palette gives the heads that signal explicitly; background pixels
(near-white, as product photos and letterbox padding are) are left out so the product's colour dominates.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from taxonomist.models.backbones.base import Backbone

_LIGHTNESS = (12.0, 30.0, 50.0, 70.0, 88.0)
_CHROMA = (0.0, 18.0, 40.0, 70.0)
_HUES = 12
_SIGMA = 12.0  # ΔE of a soft-assignment step: neighbouring palette entries share a pixel
_SIDE = 32  # pixels are averaged down to 32×32 first: colour needs no detail


def _palette() -> torch.Tensor:
    entries = []
    for lightness in _LIGHTNESS:
        for chroma in _CHROMA:
            hues = [0.0] if chroma == 0 else [2 * math.pi * h / _HUES for h in range(_HUES)]
            entries += [(lightness, chroma * math.cos(h), chroma * math.sin(h)) for h in hues]
    return torch.tensor(entries, dtype=torch.float32)


PALETTE = _palette()
COLOR_FEATURE_DIM = len(PALETTE) + 7  # histogram + foreground mean Lab, std Lab, foreground fraction


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], channels first (B,3,...) → CIELAB (D65)."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = rgb.new_tensor([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = torch.einsum("ij,bj...->bi...", m, linear)
    white = rgb.new_tensor([0.95047, 1.0, 1.08883]).view(1, 3, *([1] * (rgb.dim() - 2)))
    t = xyz / white
    f = torch.where(t > 0.008856, t.clamp_min(1e-12) ** (1 / 3), 7.787 * t + 16 / 116)
    lightness = 116 * f[:, 1] - 16
    a = 500 * (f[:, 0] - f[:, 1])
    b = 200 * (f[:, 1] - f[:, 2])
    return torch.stack([lightness, a, b], dim=1)


def color_features(rgb: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) sRGB in [0,1] → (B, COLOR_FEATURE_DIM) foreground colour descriptor."""
    small = F.adaptive_avg_pool2d(rgb.float(), _SIDE)
    lab = rgb_to_lab(small).flatten(2).transpose(1, 2)  # (B, P, 3)
    chroma = lab[..., 1:].norm(dim=-1)
    foreground = ~((lab[..., 0] > 93) & (chroma < 5))
    frac = foreground.float().mean(1, keepdim=True)
    # An all-white product would have no foreground: then every pixel counts.
    weights = torch.where(frac > 0.02, foreground.float(), torch.ones_like(frac))
    weights = weights / weights.sum(1, keepdim=True)
    dist2 = torch.cdist(lab, PALETTE.to(lab)) ** 2  # (B, P, K)
    soft = torch.softmax(-dist2 / (2 * _SIGMA**2), dim=-1)
    hist = torch.einsum("bp,bpk->bk", weights, soft)
    mean = torch.einsum("bp,bpc->bc", weights, lab)
    std = torch.einsum("bp,bpc->bc", weights, (lab - mean[:, None]) ** 2).clamp_min(0).sqrt()
    return torch.cat([hist, mean / 100, std / 100, frac], dim=1)


class WithColorFeatures(Backbone):
    """Any backbone, with the colour descriptor appended to its pooled features."""

    def __init__(self, inner: Backbone) -> None:
        super().__init__(
            inner.name,
            inner.preprocess,
            inner.feature_dim + COLOR_FEATURE_DIM,
            inner.feature_map_dim,
            f"{inner.pooling}+color-v1",
        )
        self.inner = inner
        self.register_buffer("_mean", torch.tensor(inner.preprocess.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(inner.preprocess.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        rgb = (pixel_values.float() * self._std + self._mean).clamp(0, 1)
        return torch.cat([self.inner(pixel_values).float(), color_features(rgb)], dim=1)

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.inner.forward_features(pixel_values)
