"""Prometheus metrics of one gateway, in a registry of its own (so several
apps in one process, as in tests, do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Scoring latencies run from sub-millisecond to the 180 s request_timeout_ms cap.
LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    180.0,
)


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "servegate_requests",
            "Scoring requests by endpoint, deployment, protocol and HTTP status.",
            ["endpoint", "deployment", "protocol", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "servegate_request_duration_seconds",
            "Time from receiving a scoring request to its answer.",
            ["endpoint", "deployment"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.inference_duration = Histogram(
            "servegate_inference_duration_seconds",
            "Time spent in the runtime (waiting for an instance included).",
            ["endpoint", "deployment"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
