"""Prometheus metrics of one gateway, in a registry of its own (so several
apps in one process, as in tests, do not collide)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from runtimes.scheduler import Scheduler

# Scoring latencies run from sub-millisecond to the 180 s request_timeout_ms cap.
LATENCY_BUCKETS_S = (
    0.0001,
    0.00025,
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
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _SchedulerGauges(Collector):
    """In-flight and queued requests, read from the schedulers at scrape time
    (nothing to update on the hot path)."""

    def __init__(self, schedulers: Callable[[], Iterable[Scheduler]]) -> None:
        self._schedulers = schedulers

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "servegate_in_flight_requests",
            "Requests admitted and not yet answered.",
            labels=["endpoint", "deployment"],
        )
        queued = GaugeMetricFamily(
            "servegate_queued_requests",
            "Requests waiting for an instance.",
            labels=["endpoint", "deployment"],
        )
        for scheduler in self._schedulers():
            endpoint, _, deployment = scheduler.name.partition("/")
            in_flight.add_metric([endpoint, deployment], scheduler.in_flight)
            queued.add_metric([endpoint, deployment], scheduler.queued)
        yield in_flight
        yield queued


class DeploymentMetrics:
    """One deployment's metric children, looked up once (label lookups take a lock
    and build keys: too much to repeat several times per request)."""

    def __init__(self, metrics: GatewayMetrics, endpoint: str, deployment: str) -> None:
        labels = (endpoint, deployment)
        self._metrics = metrics
        self._labels = labels
        self.request_duration = metrics.request_duration.labels(*labels)
        self.queue_duration = metrics.queue_duration.labels(*labels)
        self.inference_duration = metrics.inference_duration.labels(*labels)
        self.overhead_duration = metrics.overhead_duration.labels(*labels)
        self._batch_size = metrics.batch_size.labels(*labels)
        self._batch_requests = metrics.batch_requests.labels(*labels)
        self._requests: dict[tuple[str, str], Any] = {}

    def request(self, protocol: str, status: str) -> None:
        child = self._requests.get((protocol, status))
        if child is None:
            child = self._requests[(protocol, status)] = self._metrics.requests.labels(
                *self._labels, protocol, status
            )
        child.inc()

    # SchedulerObserver
    def batch(self, requests: int, rows: int, seconds: float) -> None:
        self._batch_size.observe(rows)
        self._batch_requests.observe(requests)

    def rejected(self, reason: str) -> None:
        self._metrics.rejected.labels(*self._labels, reason).inc()


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._deployments: dict[tuple[str, str], DeploymentMetrics] = {}
        labels = ["endpoint", "deployment"]

        def histogram(
            name: str, doc: str, buckets: tuple[float, ...] = LATENCY_BUCKETS_S
        ) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

        self.requests = Counter(
            "servegate_requests",
            "Scoring requests by endpoint, deployment, protocol and HTTP status.",
            ["endpoint", "deployment", "protocol", "status"],
            registry=self.registry,
        )
        self.request_duration = histogram(
            "servegate_request_duration_seconds", "Time from receiving a request to its answer."
        )
        self.queue_duration = histogram(
            "servegate_queue_duration_seconds", "Time a request waited for an instance."
        )
        self.inference_duration = histogram(
            "servegate_inference_duration_seconds",
            "Time the runtime took for the batch that carried the request.",
        )
        self.overhead_duration = histogram(
            "servegate_gateway_overhead_seconds",
            "Request time spent in the gateway itself: total minus queue minus inference.",
        )
        self.batch_size = histogram(
            "servegate_batch_size", "Rows per runtime call (dynamic batching).", BATCH_BUCKETS
        )
        self.batch_requests = histogram(
            "servegate_batch_requests", "Requests coalesced into one runtime call.", BATCH_BUCKETS
        )
        self.rejected = Counter(
            "servegate_rejected_requests",
            "Requests refused by admission control: queue_full and queue_wait (429), "
            "deadline (408).",
            [*labels, "reason"],
            registry=self.registry,
        )

    def watch(self, schedulers: Callable[[], Iterable[Scheduler]]) -> None:
        self.registry.register(_SchedulerGauges(schedulers))

    def for_deployment(self, endpoint: str, deployment: str) -> DeploymentMetrics:
        key = (endpoint, deployment)
        found = self._deployments.get(key)
        if found is None:
            found = self._deployments[key] = DeploymentMetrics(self, endpoint, deployment)
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)
