"""Prometheus metrics for one server instance, in their own registry (several apps in a process, as in
tests, must not collide in the global one)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest

from taxonomist.serve.model import ModelInfo

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, info: ModelInfo, queued: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "taxonomist_http_requests",
            "HTTP requests by route, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "taxonomist_http_request_duration_seconds",
            "Time from request start to response end, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter(
            "taxonomist_images",
            "Uploaded images by outcome: predicted, or the reason they were rejected. Listings sent without "
            "an image (a title alone) are not images: see taxonomist_listings.",
            ["outcome"],
            registry=self.registry,
        )
        self.listings = Counter(
            "taxonomist_listings",
            "Listings (one per image, or per title in a request without images) by outcome: predicted, or "
            "the reason they were rejected. Counts title-only listings, which taxonomist_images does not.",
            ["outcome"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "taxonomist_batch_size",
            "Listings (images, or titles alone) per model forward (above 1 means requests were batched "
            "together).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_latency = Histogram(
            "taxonomist_batch_duration_seconds",
            "Time of one batched model forward.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        Gauge(
            "taxonomist_queue_images",
            "Listings (images, or titles alone) waiting for a model forward.",
            registry=self.registry,
        ).set_function(queued)
        Info("taxonomist_model", "The served checkpoint.", registry=self.registry).info(
            {k: str(v) for k, v in asdict(info).items()}
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
