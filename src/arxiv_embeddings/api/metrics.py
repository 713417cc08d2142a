"""The API's own Prometheus metrics: batch sizes and times of the micro-batcher, texts embedded, the queue, and
requests refused (HTTP counts and latencies come from prometheus-fastapi-instrumentator)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """The API's own Prometheus metrics (HTTP counts and latencies come from prometheus-fastapi-instrumentator)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batch_size = Histogram(
            "embedding_batch_size",
            "Texts per model call of the micro-batcher.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "embedding_batch_seconds",
            "Seconds per model call of the micro-batcher.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.texts = Counter("embedding_texts", "Texts embedded.", registry=registry)
        self.queue = Gauge("embedding_queue_texts", "Texts waiting for the model.", registry=registry)
        self.rejected = Counter(
            "embedding_rejected_requests", "Requests refused with 429 (queue full).", registry=registry
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.texts.inc(size)
