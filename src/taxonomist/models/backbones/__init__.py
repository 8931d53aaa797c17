"""Backbone registry: ``create_backbone(name, **overrides)`` for every family, timm-style.

Registered names (EfficientNet-Lite) come first; any other name is a Hugging Face hub id or a local
directory and goes to :mod:`.hf`. A new family is one module that decorates its factory with
``@register_backbone(...)`` plus one import line below.
"""

from __future__ import annotations

from typing import Any

from . import efficientnet_lite  # noqa: F401 (importing registers its names)
from .base import _REGISTRY, Backbone, Preprocess, register_backbone

__all__ = [
    "Backbone",
    "Preprocess",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]


def list_backbones() -> list[str]:
    """Registered names; any Hugging Face vision model id or local directory works as well."""
    return sorted(_REGISTRY)


def create_backbone(name: str, **overrides: Any) -> Backbone:
    """Build a backbone in eval mode.

    ``overrides``: ``pretrained`` (False = random init), ``dtype``, any :class:`Preprocess` field
    (``size``, ``resize``, ...), and family options such as ``projection`` for CLIP.
    """
    factory = _REGISTRY.get(name)
    if factory is not None:
        return factory(name, **overrides)
    try:
        # Imported here: transformers is the optional [hf] extra and slow to import.
        from .hf import create_hf_backbone
    except ImportError as exc:
        raise ImportError(
            f"{name!r} is not a registered backbone ({', '.join(list_backbones())}); Hugging Face models "
            'need transformers: pip install "taxonomist[hf]"'
        ) from exc
    try:
        return create_hf_backbone(name, **overrides)
    except OSError as exc:
        raise OSError(
            f"{name!r} is not a registered backbone ({', '.join(list_backbones())}) and could not be "
            f"loaded as a Hugging Face model id or directory: {exc}"
        ) from exc
