"""Batched image augmentation on the training device (kornia): flips, small rotations, crops, colour jitter.

Works on the batch the data loader already produced, on whatever device it sits (GPU during
fine-tuning), so decoding workers stay cheap and every epoch draws new parameters.

Inputs are the *normalised* tensors backbones take (``Preprocess`` output) when ``mean``/``std`` are
given: the batch is mapped back to [0, 1] RGB, augmented there (colour jitter clamps to [0, 1] and is
only meaningful in that space), then normalised again. Without ``mean``/``std`` the input must already
be [0, 1] RGB.

Hue jitter is off by default: rotating the hue turns a red kurti into an orange or pink one while its
label still says red, so it teaches the colour attributes the wrong answer. Brightness, contrast and
saturation keep the hue; keep them small for attributes such as "light"/"dark" shades.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

try:
    import kornia.augmentation as K
except ImportError:  # pragma: no cover - exercised only without the extra
    K = None


class BatchAugment(nn.Module):
    """Random flip, rotation, resized crop and colour jitter, each applied per image with probability ``p``.

    ``image_p`` first picks which images are eligible at all (the reference fine-tuning recipe gives
    each image a 50% chance of being augmented: ``image_p=0.5``); the default 1.0 makes every image
    eligible. Parameters
    are drawn from torch's global RNG, so ``torch.manual_seed`` reproduces a run and each call (each
    epoch) differs. Rotation pads by repeating the border (product shots sit on a plain background;
    black corners would be a new colour). Identity in eval mode, like dropout. The batch is augmented
    in float32 and returned in its input dtype.
    """

    def __init__(
        self,
        *,
        p: float = 0.5,
        image_p: float = 1.0,
        flip: bool = True,
        degrees: float = 10.0,
        crop_scale: tuple[float, float] = (0.8, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        hue: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if K is None:
            raise ImportError(
                "BatchAugment needs kornia: pip install 'kornia>=0.9' (torch-only, no torchvision)"
            )
        for name, value in (("p", p), ("image_p", image_p)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std (normalised input) or neither ([0, 1] input)")
        self.p = p
        self.image_p = image_p
        # Tuples, also when the values come as lists from YAML: the no-crop check compares with (1.0, 1.0).
        self.crop_scale = tuple(crop_scale)
        self.crop_ratio = tuple(crop_ratio)
        geometric: list[nn.Module] = []
        if flip:
            geometric.append(K.RandomHorizontalFlip(p=p))
        if degrees:
            geometric.append(K.RandomAffine(degrees=degrees, padding_mode="border", p=p))
        self.geometric = nn.Sequential(*geometric)
        jitter = (brightness, contrast, saturation, hue)
        self.color = K.ColorJitter(*jitter, p=p) if any(jitter) else nn.Identity()
        self._crops: dict[tuple[int, int], nn.Module] = {}
        for name, stats in (("mean", mean), ("std", std)):
            value = None if stats is None else torch.as_tensor(stats, dtype=torch.float32).reshape(1, 3, 1, 1)
            self.register_buffer(name, value, persistent=False)

    def _crop(self, height: int, width: int) -> nn.Module:
        # kornia's crop needs its output size up front; one per input size keeps any size working.
        if (height, width) not in self._crops:
            self._crops[height, width] = K.RandomResizedCrop(
                (height, width),
                scale=self.crop_scale,
                ratio=self.crop_ratio,
                p=self.p,
                cropping_mode="resample",  # one batched warp instead of a crop + resize per image
            )
        return self._crops[height, width]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` → same shape and dtype; unchanged in eval mode or when nothing is drawn."""
        if not self.training or self.p == 0 or self.image_p == 0:
            return images
        chosen = torch.rand(len(images), device=images.device) < self.image_p
        if not chosen.any():
            return images
        out = images.clone()
        out[chosen] = self._augment(images[chosen].float()).to(images.dtype)
        return out

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            x = x * self.std + self.mean
        x = self.geometric(x)
        if self.crop_scale != (1.0, 1.0):
            x = self._crop(*x.shape[-2:])(x)
        x = self.color(x)
        return (x - self.mean) / self.std if self.mean is not None else x
