"""Attention heads: per-attribute spatial and channel attention over a backbone's feature map.

Pooled features (what :class:`~taxonomist.models.heads.AttributeHeads` sees) average away *where* a
sleeve, neckline or print is; these heads keep the spatial map so each attribute can weight the regions
and channels that matter to it. Layout: a shared 1×1 conv (GELU, dropout 0.1) maps the
backbone's ``C`` channels to 512, then each attribute has

- a spatial-attention branch: two 3×3 grouped convs (groups=32) with GELU between them, squashed by a
  sigmoid into a per-position, per-channel attention map;
- a channel-attention branch: global average pool, 512→128→512 (GELU), sigmoid;
- the shared features reweighted by both maps, average-pooled, then 512→1024→512→classes with
  LayerNorm, GELU and dropout.

Logits are masked exactly like ``AttributeHeads``: a value not allowed for the row's category gets
``NEG_INF``, so it can neither be learned nor predicted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from taxonomist.models.heads import MaskedHeads


class _AttentionHead(nn.Module):
    """One attribute's branch: spatial and channel attention, then the pooled MLP classifier."""

    def __init__(
        self,
        width: int,
        n_classes: int,
        *,
        groups: int,
        reduction: int,
        hidden: Sequence[int],
        extra_dim: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.spatial = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, groups=groups),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1, groups=groups),
            nn.Sigmoid(),
        )
        self.channel = nn.Sequential(
            nn.Linear(width, width // reduction),
            nn.GELU(),
            nn.Linear(width // reduction, width),
            nn.Sigmoid(),
        )
        layers: list[nn.Module] = []
        size = width + extra_dim
        for h in hidden:
            layers += [nn.Linear(size, h), nn.LayerNorm(h), nn.GELU(), nn.Dropout(dropout)]
            size = h
        layers.append(nn.Linear(size, n_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, shared: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        channel = self.channel(shared.mean(dim=(2, 3)))[:, :, None, None]
        pooled = (shared * self.spatial(shared) * channel).mean(dim=(2, 3))
        if extra is not None:
            pooled = torch.cat([pooled, extra], dim=1)
        return self.classifier(pooled)


class AttentionHeads(MaskedHeads):
    """Shared 1×1 feature layer + one attention head per attribute, masked per category.

    ``masks`` comes from :func:`~taxonomist.models.heads.allowed_masks`. ``category_dim`` > 0 appends
    a learned category embedding to each head's pooled vector (one model serves several categories);
    0, the default, is a per-category layout, where only the masks know the category.
    """

    def __init__(
        self,
        in_channels: int,
        masks: Mapping[str, torch.Tensor],
        *,
        width: int = 512,
        groups: int = 32,
        reduction: int = 4,
        hidden: Sequence[int] = (1024, 512),
        category_dim: int = 0,
        feature_dropout: float = 0.1,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if width % groups or width % reduction:
            raise ValueError(f"width {width} must be divisible by groups {groups} and reduction {reduction}")
        n_categories = next(iter(masks.values())).shape[0]
        self.shared_layer = nn.Sequential(
            nn.Conv2d(in_channels, width, 1), nn.GELU(), nn.Dropout(feature_dropout)
        )
        self.category_embedding = nn.Embedding(n_categories, category_dim) if category_dim else None
        self.set_heads(
            (
                _AttentionHead(
                    width,
                    m.shape[1],
                    groups=groups,
                    reduction=reduction,
                    hidden=hidden,
                    extra_dim=category_dim,
                    dropout=dropout,
                )
                for m in masks.values()
            ),
            masks,
        )

    def shared(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` backbone map → ``(B, width, h, w)``; its spatial mean suits an MMD term."""
        return self.shared_layer(feature_map)

    def classify(self, shared: torch.Tensor, category: torch.Tensor) -> dict[str, torch.Tensor]:
        """Masked logits per attribute from :meth:`shared` features (split out so both can be reused)."""
        extra = self.category_embedding(category) if self.category_embedding is not None else None
        return self.masked_logits(category, shared, extra)

    def forward(self, feature_map: torch.Tensor, category: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.classify(self.shared(feature_map), category)
