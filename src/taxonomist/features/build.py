"""Builders of this layer: config sections → the plain arguments of ``features`` (never reads a config)."""

from __future__ import annotations

from taxonomist.config import EmbedConfig, EnrichConfig, section_arguments
from taxonomist.features.embed import EmbedOptions, RuntimeOptions
from taxonomist.features.enrich import Enricher


def embed_options(cfg: EmbedConfig) -> EmbedOptions:
    """The ``embed`` section as :func:`~taxonomist.features.embed.embed_catalog`'s (and
    ``Predictor.predict_catalog``'s) keyword arguments."""
    return EmbedOptions(
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        max_pixels=cfg.max_pixels,
        cache_dir=cfg.cache_dir,
    )


def runtime_options(cfg: EmbedConfig) -> RuntimeOptions:
    """The ``embed`` section as :func:`~taxonomist.features.embed.runtime_backbone`'s keyword arguments."""
    return RuntimeOptions(
        device=cfg.device, runtime=cfg.runtime, precision=cfg.precision, cache_dir=cfg.cache_dir
    )


def build_enricher(cfg: EnrichConfig, cache_dir: str | None = None) -> Enricher:
    """The retrieval enricher the ``enrich`` section describes (its corpus must be set)."""
    return Enricher.from_file(
        **section_arguments(cfg, Enricher.from_file, corpus=cfg.corpus or "", cache_dir=cache_dir)
    )


def enricher_from_settings(settings: dict) -> Enricher:
    """The enricher a taxonomy checkpoint's saved ``enrich`` settings describe (checked as the section)."""
    return build_enricher(EnrichConfig(**settings))
