"""The models layer's builder: config sections → constructed models and their plain settings.

The one module of ``models`` that reads config sections (backbone, heads, VLM model, generation), so that
the modules it builds from take plain arguments; it also checks a heads checkpoint's recorded sections.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from taxonomist.config import (
    BackboneConfig,
    GenerateConfig,
    HeadsConfig,
    RunConfig,
    VLMModelConfig,
    section_arguments,
)
from taxonomist.data.schema import Schema
from taxonomist.models.backbones import Backbone, create_backbone
from taxonomist.models.checkpoint import HeadsCheckpoint, checkpoint_digest
from taxonomist.models.color import WithColorFeatures
from taxonomist.models.fusion import ListingHeads
from taxonomist.models.heads import AttributeHeads, HeadsEnsemble
from taxonomist.models.vlm import VLM, Decoding, load_vlm


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


def checkpoint_backbone(checkpoint: HeadsCheckpoint) -> Backbone:
    """The backbone a heads checkpoint records (its weights file, if any, is loaded by the caller)."""
    return build_backbone(BackboneConfig(**checkpoint.backbone))


def heads_checkpoint(
    cfg: RunConfig, backbone: Backbone, schema: Schema, categories: list[str], feature_dim: int, **fitted: Any
) -> HeadsCheckpoint:
    """What every recipe records about its backbone, schema and heads; ``fitted``: temperatures,
    logit adjustment, metrics. Take ``backbone``'s fingerprint before any rewrite of its weights."""
    return HeadsCheckpoint(
        backbone=asdict(cfg.backbone),
        preprocess=backbone.preprocess.to_dict(),
        fingerprint=backbone.fingerprint(),
        weights_fingerprint=backbone.source_fingerprint(),
        runtime=getattr(backbone, "runtime", "torch"),
        precision=getattr(backbone, "precision", "fp32"),
        feature_dim=feature_dim,
        schema=schema,
        categories=categories,
        heads=asdict(cfg.heads),
        **fitted,
    )


_SECTIONS = {"backbone": BackboneConfig, "heads": HeadsConfig}


def checked_section(name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's recorded section, checked as the config section (an unknown key fails) with the
    keys it lacks (older checkpoints: ``heads.inputs``) at their defaults."""
    return asdict(_SECTIONS[name](**settings))


def load_heads_checkpoint(
    directory: str | os.PathLike,
) -> tuple[HeadsCheckpoint, AttributeHeads | HeadsEnsemble | ListingHeads]:
    """:meth:`HeadsCheckpoint.load` with its recorded sections checked."""
    return HeadsCheckpoint.load(directory, checked_section)


def build_vlm(
    cfg: VLMModelConfig, *, device: torch.device | str | None = None, adapter: str | Path | None = None
) -> VLM:
    """The ``model`` section's vision-language model (see :func:`~taxonomist.models.vlm.load_vlm`)."""
    return load_vlm(**section_arguments(cfg, load_vlm, device=device, adapter=adapter))


def saved_vlm(
    path: Path, settings: Mapping[str, Any], *, device: torch.device | str | None = None
) -> tuple[VLM, str]:
    """(model, version) of a taxonomist VLM folder whose saved ``model`` section is ``settings``: an
    adapter on its base model, or the folder's own (merged) weights."""
    cfg = VLMModelConfig(**settings)
    if (path / "adapter_config.json").is_file():
        return build_vlm(cfg, device=device, adapter=path), f"{cfg.name}+{checkpoint_digest(path)}"
    cfg.name = str(path)
    return build_vlm(cfg, device=device), checkpoint_digest(path)


def build_decoding(cfg: GenerateConfig | None = None) -> Decoding:
    """The ``generate`` section (default: its defaults) as a VLM predictor's decoding settings."""
    cfg = cfg or GenerateConfig()
    return Decoding(**section_arguments(cfg, Decoding))
