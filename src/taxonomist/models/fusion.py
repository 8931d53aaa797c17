"""Listing heads: image features ⊕ text features ⊕ category → masked heads, as in :class:`AttributeHeads`.

Each modality is standardised and then multiplied by its presence flag, so a missing title (or an
unreadable image, where allowed) is the all-zero "average" input; the flags themselves are inputs too,
so the trunk knows which case it is in. Training drops modalities at random (modality dropout), which
is what makes those all-zero rows a case the model has learned rather than an input it never saw.

With a lexical probe (per-attribute text probabilities among the text features, from column
``probe_offset``), each attribute's logits also add its probe log-probabilities times a learned weight
(1 at the start) on rows that have text: the heads start from the text model's answer and learn what the
image and the rest change, instead of having to rebuild a strong text classifier from its outputs.

With ``image_fallback``, the heads also hold image-only heads (:class:`AttributeHeads`, trained on their
own by the image recipe and frozen): at prediction a row without text is scored by them, so a blank title
costs nothing against the image model, where one trunk serving both cases gave up 0.03 of the score.
Training never routes through them; modality dropout still teaches the trunk rows without text.

``fusion="concat"`` feeds everything to one trunk; ``"gated"`` projects each modality to the first trunk
width and mixes the projections with per-row sigmoid gates computed from both, the flags and the
category (one option measured against the other in ``benchmarks/multimodal.py``).

:class:`ListingEnsemble` holds listing heads trained from several seeds (``heads.members``) and predicts
their mean probability, as :class:`HeadsEnsemble` does for image heads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import nn

from taxonomist.models.heads import NEG_INF, AttributeHeads, HeadsEnsemble, MaskedHeads, mlp_layers

Fusion = Literal["concat", "gated"]
LexicalBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
HAS_IMAGE, HAS_TEXT = 0, 1
"""Columns of the ``present`` flags: whether a row has its image features and its text features."""


class ListingHeads(MaskedHeads):
    """Learned state: per-modality standardisation, category embedding, fusion, trunk, heads, masks."""

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        masks: Mapping[str, torch.Tensor],
        *,
        hidden: Sequence[int] = (512, 256),
        category_dim: int = 16,
        dropout: float = 0.2,
        fusion: Fusion = "concat",
        lexical_dim: int = 0,
        lexical_width: int = 128,
        probe_offset: int | None = None,
        image_fallback: bool = False,
    ) -> None:
        """``lexical_dim``: columns of the lexical view's sparse rows (0 = none), read through a bag of
        ``lexical_width``-dimensional n-gram vectors weighted by TF-IDF. ``probe_offset``: first text
        column of the probe's probabilities (each attribute's values in ``masks`` order), or None.
        ``image_fallback``: hold image-only heads of the same shape for rows without text (set them with
        :meth:`set_image_fallback`)."""
        super().__init__()
        if not hidden:
            raise ValueError("listing heads need at least one hidden layer (heads.hidden)")
        self.fusion = fusion
        n_categories = next(iter(masks.values())).shape[0]
        for name, dim in (("image", image_dim), ("text", text_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))
        self.category_embedding = nn.Embedding(n_categories, category_dim)
        self.lexical = nn.EmbeddingBag(lexical_dim, lexical_width, mode="sum") if lexical_dim else None
        text_width = text_dim + (lexical_width if lexical_dim else 0)
        first, rest = hidden[0], list(hidden[1:])
        context = 2 + category_dim
        if fusion == "concat":
            self.fuse = nn.Linear(image_dim + text_width + context, first)
        elif fusion == "gated":
            self.image_proj = nn.Linear(image_dim, first)
            self.text_proj = nn.Linear(text_width, first)
            self.context_proj = nn.Linear(context, first)
            self.gate = nn.Linear(2 * first + context, 2 * first)
        else:
            raise ValueError(f"fusion must be 'concat' or 'gated', got {fusion!r}")
        rest_layers, width = mlp_layers(first, rest, dropout)
        self.trunk = nn.Sequential(nn.LayerNorm(first), nn.GELU(), nn.Dropout(dropout), *rest_layers)
        self.set_linear_heads(width, masks)
        self.probe_offset = probe_offset
        if probe_offset is not None:
            if probe_offset + sum(m.shape[1] for m in masks.values()) > text_dim:
                raise ValueError(
                    f"the probe's columns from {probe_offset} do not fit {text_dim} text columns"
                )
            self.probe_weight = nn.Parameter(torch.ones(len(masks)))
        # Built last, so the fused layers draw the same initial weights with or without it.
        self.image_only = (
            AttributeHeads(image_dim, masks, hidden=hidden, category_dim=category_dim, dropout=dropout)
            if image_fallback
            else None
        )

    def set_image_fallback(self, heads: AttributeHeads) -> None:
        """Take trained image-only heads (same masks and sizes) as the scorer of rows without text; they
        stay frozen while these heads train."""
        if self.image_only is None:
            raise ValueError("these heads were built without image_fallback")
        self.image_only.load_state_dict(heads.state_dict())
        self.image_only.requires_grad_(False)

    def set_standardization(self, image: torch.Tensor, text: torch.Tensor, present: torch.Tensor) -> None:
        """Mean/std of each modality over the training rows that have it."""
        for name, x, rows in (("image", image, present[:, HAS_IMAGE]), ("text", text, present[:, HAS_TEXT])):
            x = x[rows.bool()] if rows.any() else x
            getattr(self, f"{name}_mean").copy_(x.mean(0))
            getattr(self, f"{name}_std").copy_(x.std(0).nan_to_num(1.0).clamp_min(1e-4))

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        category: torch.Tensor,
        present: torch.Tensor,
        lexical: LexicalBatch | None = None,
    ) -> dict[str, torch.Tensor]:
        """``lexical``: the rows' sparse lexical features as (indices, offsets, weights), CSR-style."""
        present = present.to(image.dtype)
        xi = (image - self.image_mean) / self.image_std * present[:, HAS_IMAGE : HAS_IMAGE + 1]
        xt = (text - self.text_mean) / self.text_std
        if self.lexical is not None:
            if lexical is None:
                raise ValueError(
                    "these heads read lexical features: pass lexical=(indices, offsets, weights)"
                )
            indices, offsets, weights = lexical
            xt = torch.cat([xt, self.lexical(indices, offsets, per_sample_weights=weights)], dim=1)
        xt = xt * present[:, HAS_TEXT : HAS_TEXT + 1]
        context = torch.cat([present, self.category_embedding(category)], dim=1)
        if self.fusion == "concat":
            h = self.fuse(torch.cat([xi, xt, context], dim=1))
        else:
            pi, pt = self.image_proj(xi), self.text_proj(xt)
            gi, gt = torch.sigmoid(self.gate(torch.cat([pi, pt, context], dim=1))).chunk(2, dim=1)
            h = (
                gi * pi * present[:, HAS_IMAGE : HAS_IMAGE + 1]
                + gt * pt * present[:, HAS_TEXT : HAS_TEXT + 1]
            )
            h = h + self.context_proj(context)
        logits = self.masked_logits(category, self.trunk(h))
        if self.probe_offset is not None:
            logits = self._add_probe(logits, text, category, present[:, HAS_TEXT : HAS_TEXT + 1])
        if self.image_only is None or self.training:
            return logits
        image_rows = (present[:, HAS_TEXT] == 0) & (present[:, HAS_IMAGE] > 0)
        if not image_rows.any():
            return logits
        alone = self.image_only(image, category)
        return {a: torch.where(image_rows[:, None], alone[a], z) for a, z in logits.items()}

    def _add_probe(
        self,
        logits: dict[str, torch.Tensor],
        text: torch.Tensor,
        category: torch.Tensor,
        has_text: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Each attribute's logits plus its weighted probe log-probabilities, on rows with text."""
        start, out = self.probe_offset, {}
        for i, (attribute, z) in enumerate(logits.items()):
            width = z.shape[1]
            log_p = torch.log(text[:, start : start + width].float().clamp_min(1e-4)).to(z.dtype)
            start += width
            allowed = getattr(self, f"mask_{i}")[category]
            out[attribute] = (z + self.probe_weight[i] * log_p * has_text).masked_fill(~allowed, NEG_INF)
        return out


class ListingEnsemble(HeadsEnsemble):
    """Listing heads of one shape from different seeds, their mean probability the prediction: single
    listing heads differ by up to 0.01 in score from seed to seed, mostly in which rare values they find
    (``benchmarks/multimodal.py``). Members share the image fallback, so a row without its title scores
    exactly as the image heads do."""

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        category: torch.Tensor,
        present: torch.Tensor,
        lexical: LexicalBatch | None = None,
    ) -> dict[str, torch.Tensor]:
        outputs = [member(image, text, category, present, lexical) for member in self.members]
        return self.mean_log_probs(outputs, category)


def listing_heads(model: nn.Module) -> ListingHeads | None:
    """The listing heads whose inputs ``model`` takes (an ensemble's first member), or None when it
    reads image features only."""
    if isinstance(model, ListingEnsemble):
        return model.members[0]
    return model if isinstance(model, ListingHeads) else None


def modality_dropout(
    present: torch.Tensor, p_text: float, p_image: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Training-time copy of ``present`` with modalities hidden at random; a row keeps at least one
    of the modalities it has (the image when both would go)."""
    out = present.clone().bool()
    draw = torch.rand(len(out), 2, generator=generator)
    out[:, HAS_TEXT] &= draw[:, HAS_TEXT] >= p_text
    out[:, HAS_IMAGE] &= draw[:, HAS_IMAGE] >= p_image
    had = present.bool()
    lost = ~out.any(1)
    out[lost, HAS_IMAGE] = had[lost, HAS_IMAGE]
    lost = ~out.any(1)
    out[lost, HAS_TEXT] = had[lost, HAS_TEXT]
    return out


def lexical_batch(rows, device: torch.device | str = "cpu") -> LexicalBatch:
    """Rows of a scipy CSR matrix as the (indices, offsets, weights) an ``EmbeddingBag`` reads."""
    return (
        torch.as_tensor(rows.indices, dtype=torch.long, device=device),
        torch.as_tensor(rows.indptr[:-1], dtype=torch.long, device=device),
        torch.as_tensor(rows.data, dtype=torch.float32, device=device),
    )
