"""The attribute model: features ⊕ category embedding → shared MLP → one linear head per attribute.

Every head's logits are masked to the values allowed for the row's category, in training and in
prediction, so an invalid value can neither be learned nor predicted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from taxonomist.data.schema import Schema

NEG_INF = -1e9  # not -inf: a row whose category lacks the attribute must give zeros, not NaN


def allowed_masks(schema: Schema, categories: Sequence[str]) -> dict[str, torch.Tensor]:
    """attribute → (n_categories, n_values) bool: which values each category may take."""
    masks = {}
    for attribute in schema.attributes:
        vocab = {v: i for i, v in enumerate(schema.values(attribute))}
        mask = torch.zeros(len(categories), len(vocab), dtype=torch.bool)
        for c, category in enumerate(categories):
            for value in schema.categories.get(category, {}).get(attribute, []):
                mask[c, vocab[value]] = True
        masks[attribute] = mask
    return masks


def mlp_layers(width: int, hidden: Sequence[int], dropout: float) -> tuple[list[nn.Module], int]:
    """Linear → LayerNorm → GELU → Dropout per hidden width, and the width they end on: the trunk of
    both :class:`AttributeHeads` and the listing heads, so the two stay the same network."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.GELU(), nn.Dropout(dropout)]
        width = h
    return layers, width


class MaskedHeads(nn.Module):
    """One head per attribute, its logits masked to the values the row's category allows: the part the
    attribute, listing and attention heads share. Subclasses build their heads and call :meth:`set_heads`."""

    def set_heads(self, heads: Iterable[nn.Module], masks: Mapping[str, torch.Tensor]) -> None:
        """``heads`` in ``masks``' attribute order."""
        self.attributes = list(masks)
        # Indexed, not keyed by name: attribute names may hold dots or spaces that module names cannot.
        self.heads = nn.ModuleList(heads)
        for i, mask in enumerate(masks.values()):
            self.register_buffer(f"mask_{i}", mask.clone())

    def set_linear_heads(self, width: int, masks: Mapping[str, torch.Tensor]) -> None:
        """A linear head per attribute over a ``width``-wide trunk output."""
        self.set_heads((nn.Linear(width, m.shape[1]) for m in masks.values()), masks)

    def mask(self, attribute: str) -> torch.Tensor:
        return getattr(self, f"mask_{self.attributes.index(attribute)}")

    def masked_logits(self, category: torch.Tensor, *inputs: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Each head applied to ``inputs``, values outside the row's category set to :data:`NEG_INF`."""
        return {
            a: head(*inputs).masked_fill(~getattr(self, f"mask_{i}")[category], NEG_INF)
            for i, (a, head) in enumerate(zip(self.attributes, self.heads, strict=True))
        }


class AttributeHeads(MaskedHeads):
    """Learned state: input standardisation, category embedding, trunk, heads, per-category masks."""

    def __init__(
        self,
        in_dim: int,
        masks: Mapping[str, torch.Tensor],
        *,
        hidden: Sequence[int] = (512, 256),
        category_dim: int = 16,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        n_categories = next(iter(masks.values())).shape[0]
        self.register_buffer("feature_mean", torch.zeros(in_dim))
        self.register_buffer("feature_std", torch.ones(in_dim))
        self.category_embedding = nn.Embedding(n_categories, category_dim)
        layers, width = mlp_layers(in_dim + category_dim, hidden, dropout)
        self.trunk = nn.Sequential(*layers)
        self.set_linear_heads(width, masks)

    def set_standardization(self, features: torch.Tensor) -> None:
        """Fit input mean/std on training features: backbone and colour features differ in scale."""
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0).clamp_min(1e-4))

    def forward(self, features: torch.Tensor, category: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (features - self.feature_mean) / self.feature_std
        return self.masked_logits(
            category, self.trunk(torch.cat([x, self.category_embedding(category)], dim=1))
        )
