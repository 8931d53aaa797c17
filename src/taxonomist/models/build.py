"""Builders: typed config → constructed modules (configs never reach inside the modules)."""

from __future__ import annotations

from typing import Any

import torch

from taxonomist.config import BackboneConfig
from taxonomist.models.backbones import Backbone, create_backbone
from taxonomist.models.color import WithColorFeatures


def build_backbone(cfg: BackboneConfig) -> Backbone:
    overrides: dict[str, Any] = {"resize": cfg.resize, "pretrained": cfg.pretrained}
    if cfg.size is not None:
        overrides["size"] = cfg.size
    if cfg.pretrained:
        backbone = create_backbone(cfg.name, **overrides)
    else:
        # A seeded random init is the same network every time, so its cached features stay valid.
        with torch.random.fork_rng():
            torch.manual_seed(0)
            backbone = create_backbone(cfg.name, **overrides)
    return WithColorFeatures(backbone) if cfg.color_features else backbone
