"""Builders: typed config → constructed modules (configs never reach inside the modules)."""

from __future__ import annotations

from typing import Any

from taxonomist.config import BackboneConfig
from taxonomist.models.backbones import Backbone, create_backbone
from taxonomist.models.color import WithColorFeatures


def build_backbone(cfg: BackboneConfig) -> Backbone:
    overrides: dict[str, Any] = {"resize": cfg.resize, "pretrained": cfg.pretrained}
    if cfg.size is not None:
        overrides["size"] = cfg.size
    backbone = create_backbone(cfg.name, **overrides)
    return WithColorFeatures(backbone) if cfg.color_features else backbone
