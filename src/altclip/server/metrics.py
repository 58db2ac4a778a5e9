"""Prometheus metrics of one app, in a registry of its own (several apps can live in one process)."""

from __future__ import annotations


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # no *_created series: they double the output and nobody graphs them
        self.registry = CollectorRegistry()
        self.requests = Counter("altclip_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram(
            "altclip_request_seconds",
            "Request latency",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "altclip_batch_size",
            "Items per model call",
            ["kind"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.model_seconds = Histogram("altclip_model_seconds", "Time per model call", ["kind"], registry=self.registry)
        self.queue_depth = Gauge("altclip_queue_depth", "Items waiting for the model", ["kind"], registry=self.registry)
        self.in_flight = Gauge("altclip_requests_in_flight", "API requests being served (limit max_queue)",
                               registry=self.registry)  # fmt: skip

    def model_call(self, kind: str, size: int, seconds: float) -> None:
        self.batch_size.labels(kind).observe(size)
        self.model_seconds.labels(kind).observe(seconds)

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def exposition(self, queue_depths: dict[str, int]) -> bytes:
        """The text format Prometheus scrapes, with the queue depths as of now."""
        from prometheus_client import generate_latest

        for kind, depth in queue_depths.items():
            self.queue_depth.labels(kind).set(depth)
        return generate_latest(self.registry)
