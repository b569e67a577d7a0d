"""Prometheus metrics of one gateway, in a registry of its own (so several
apps in one process, as in tests, do not collide).

The per-request series (request counts, request/queue/inference/overhead
durations) are accumulated in plain lists with C `bisect` and handed to
prometheus_client only at scrape time: `Histogram.observe` takes a lock and
walks the buckets in Python, which cost ~10% of a small scoring request. They
are only touched from the event loop thread.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from runtimes.scheduler import Scheduler

if TYPE_CHECKING:
    from gateway.collector import PayloadCollector
    from gateway.mirror import MirrorStats

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

# No `_created` series beside every counter and histogram: they double the scrape and
# no dashboard reads them (Triton and KServe export none).
disable_created_metrics()


class FastHistogram:
    """Bucket counts and a sum, updated without locks (event loop thread only)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def quantile(self, q: float) -> float | None:
        """The q-quantile, interpolated within its bucket (as Prometheus'
        histogram_quantile does); None before any observation."""
        total = sum(self.counts)
        if not total:
            return None
        rank, below = q * total, 0
        for index, count in enumerate(self.counts):
            if below + count >= rank and count:
                low = self.bounds[index - 1] if index else 0.0
                if index == len(self.bounds):  # the +Inf bucket: its lower bound
                    return low
                return low + (self.bounds[index] - low) * (rank - below) / count
            below += count
        return self.bounds[-1]

    def buckets(self) -> list[tuple[str, float]]:
        cumulative = 0
        out: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
        return out


_HISTOGRAMS = {
    "request_duration": (
        "servegate_request_duration_seconds",
        "Time from receiving a request to its answer.",
    ),
    "queue_duration": (
        "servegate_queue_duration_seconds",
        "Time a request waited for an instance.",
    ),
    "inference_duration": (
        "servegate_inference_duration_seconds",
        "Time the runtime took for the batch that carried the request.",
    ),
    "overhead_duration": (
        "servegate_gateway_overhead_seconds",
        "Request time spent in the gateway itself: total minus queue minus inference.",
    ),
}


class DeploymentMetrics:
    """One deployment's hot series, plus its SchedulerObserver side."""

    def __init__(self, metrics: GatewayMetrics, endpoint: str, deployment: str) -> None:
        self._metrics = metrics
        self.labels = (endpoint, deployment)
        #: the model it serves (name, version), as Triton and KServe label their series
        self.model = ("", "")
        self.request_duration = FastHistogram(LATENCY_BUCKETS_S)
        self.queue_duration = FastHistogram(LATENCY_BUCKETS_S)
        self.inference_duration = FastHistogram(LATENCY_BUCKETS_S)
        self.overhead_duration = FastHistogram(LATENCY_BUCKETS_S)
        self.requests: dict[tuple[str, str], int] = {}
        #: for Triton's statistics extension: time spent on requests that failed, runtime
        #: calls made, and when the last one ended (ms since the epoch)
        self.failed_seconds = 0.0
        self.executions = 0
        #: rows in all its runtime calls (the studio's average batch size)
        self.batch_rows = 0
        #: rows of the requests answered 200 (Triton's inference_count: each batch
        #: element counts)
        self.inferences = 0
        self.last_inference_ms = 0
        self._batch_size = metrics.batch_size.labels(endpoint, deployment)
        self._batch_requests = metrics.batch_requests.labels(endpoint, deployment)

    def request(self, protocol: str, status: str) -> None:
        key = (protocol, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    # SchedulerObserver: once per batch, not per request
    def batch(self, requests: int, rows: int, seconds: float) -> None:
        self.executions += 1
        self.batch_rows += rows
        self.last_inference_ms = int(time.time() * 1000)
        self._batch_size.observe(rows)
        self._batch_requests.observe(requests)

    def rejected(self, reason: str) -> None:
        self._metrics.rejected.labels(*self.labels, reason).inc()


class _HotSeries(Collector):
    """Renders every deployment's FastHistograms and request counts at scrape time."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        deployments = list(self._metrics.deployments.values())
        labels = ["endpoint", "deployment", "model_name", "model_version"]
        requests = CounterMetricFamily(
            "servegate_requests",
            "Scoring requests by endpoint, deployment, protocol and HTTP status.",
            labels=[*labels, "protocol", "status"],
        )
        for d in deployments:
            for (protocol, status), count in d.requests.items():
                requests.add_metric([*d.labels, *d.model, protocol, status], count)
        for (endpoint, protocol, status), count in self._metrics.unrouted.items():
            requests.add_metric([endpoint, "", "", "", protocol, status], count)
        yield requests
        for attribute, (name, doc) in _HISTOGRAMS.items():
            family = HistogramMetricFamily(name, doc, labels=labels)
            for d in deployments:
                histogram: FastHistogram = getattr(d, attribute)
                family.add_metric([*d.labels, *d.model], histogram.buckets(), histogram.total)
            yield family


class _SchedulerGauges(Collector):
    """In-flight and queued requests and instances, read from the schedulers at scrape
    time."""

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
        instances = GaugeMetricFamily(
            "servegate_instances",
            "Instances serving the deployment: threads' runtimes, worker processes or Ray "
            "Serve replicas.",
            labels=["endpoint", "deployment"],
        )
        for scheduler in self._schedulers():
            endpoint, _, deployment = scheduler.name.partition("/")
            in_flight.add_metric([endpoint, deployment], scheduler.in_flight)
            queued.add_metric([endpoint, deployment], scheduler.queued)
            instances.add_metric([endpoint, deployment], scheduler.instances)
        yield in_flight
        yield queued
        yield instances


_MIRROR_COUNTERS = {
    "sent": "Live requests copied to the mirror deployment.",
    "ok": "Mirrored requests that answered 200.",
    "failed": "Mirrored requests that failed (not seen by clients).",
    "shed": "Mirror copies dropped because the mirror was busy (mirrors are shed first).",
    "compared": "Mirrored answers compared with the live answer.",
    "same": "Mirrored answers equal to the live answer (allclose).",
    "argmax_rows": "Rows compared by argmax (class axis) or label.",
    "argmax_agree": "Rows whose argmax or label agreed with the live answer.",
}


class _MirrorSeries(Collector):
    """Mirror traffic and its agreement with live answers, per mirror target."""

    def __init__(self, mirrors: Callable[[], Mapping[tuple[str, str], MirrorStats]]) -> None:
        self._mirrors = mirrors

    def collect(self) -> Iterator[Metric]:
        stats = dict(self._mirrors())
        for attribute, doc in _MIRROR_COUNTERS.items():
            family = CounterMetricFamily(
                f"servegate_mirror_{attribute}", doc, labels=["endpoint", "deployment"]
            )
            for labels, item in stats.items():
                family.add_metric(list(labels), getattr(item, attribute))
            yield family
        diff = GaugeMetricFamily(
            "servegate_mirror_max_abs_diff",
            "Largest absolute difference seen between mirrored and live float outputs.",
            labels=["endpoint", "deployment"],
        )
        for labels, item in stats.items():
            diff.add_metric(list(labels), item.max_abs_diff)
        yield diff


class _CollectorSeries(Collector):
    """The data collector's logged and dropped payloads, per deployment."""

    def __init__(
        self, collectors: Callable[[], Mapping[tuple[str, str], PayloadCollector]]
    ) -> None:
        self._collectors = collectors

    def collect(self) -> Iterator[Metric]:
        logged = CounterMetricFamily(
            "servegate_collector_records",
            "Payloads the data collector delivered.",
            labels=["endpoint", "deployment"],
        )
        dropped = CounterMetricFamily(
            "servegate_collector_dropped",
            "Payloads dropped (buffer full, destination slow or down).",
            labels=["endpoint", "deployment"],
        )
        for labels, collector in dict(self._collectors()).items():
            logged.add_metric(list(labels), collector.collected)
            dropped.add_metric(list(labels), collector.dropped)
        yield logged
        yield dropped


class _MonitorSeries(Collector):
    """Each monitor's last measures, per feature and prediction (from this replica's
    runs)."""

    def __init__(self, results: Callable[[], Mapping[str, dict[str, Any]]]) -> None:
        self._results = results

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "servegate_monitor_drift",
            "A monitor's last measures per feature: psi, js_distance, null_rate, "
            "out_of_range_rate.",
            labels=["monitor", "feature", "measure"],
        )
        for monitor, result in dict(self._results()).items():
            for drift in [*result.get("features", ()), *result.get("predictions", ())]:
                for measure in ("psi", "js_distance", "null_rate", "out_of_range_rate"):
                    family.add_metric([monitor, drift["feature"], measure], drift[measure])
        yield family


class _JobSeries(Collector):
    """The newest batch jobs' mini-batches by state (progress bars, stuck jobs), from a
    snapshot `refresh_jobs` takes off the event loop: a scrape never queries the store."""

    def __init__(self, snapshot: Callable[[], Mapping[tuple[str, str, str], int]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "servegate_batch_job_mini_batches",
            "Mini-batches of the newest batch jobs by state (pending, running, done, failed).",
            labels=["job", "endpoint", "state"],
        )
        for labels, count in dict(self._snapshot()).items():
            family.add_metric(list(labels), count)
        yield family


#: how many of the newest jobs `servegate_batch_job_mini_batches` shows, and how often
JOBS_SHOWN = 20
JOBS_REFRESH_S = 5.0


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.deployments: dict[tuple[str, str], DeploymentMetrics] = {}
        #: requests that never reached a deployment (unknown endpoint, 401...)
        self.unrouted: dict[tuple[str, str, str], int] = {}
        labels = ["endpoint", "deployment"]
        self.batch_size = Histogram(
            "servegate_batch_size",
            "Rows per runtime call (dynamic batching).",
            labels,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "servegate_batch_requests",
            "Requests coalesced into one runtime call.",
            labels,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.rejected = Counter(
            "servegate_rejected_requests",
            "Requests refused by admission control: queue_full and queue_wait (429), "
            "deadline (408).",
            [*labels, "reason"],
            registry=self.registry,
        )
        self.rollouts_finished = Counter(
            "servegate_rollouts_finished",
            "Rollouts that ended, by outcome: succeeded, rolled_back (a gate breached, or "
            "the controller failed) or aborted.",
            ["endpoint", "outcome"],
            registry=self.registry,
        )
        #: (job, endpoint, state) -> mini-batches, for the newest jobs
        self.jobs: dict[tuple[str, str, str], int] = {}
        #: monitor -> its last judged run's result
        self.monitors: dict[str, dict[str, Any]] = {}
        self.monitor_breaches = Counter(
            "servegate_monitor_breaches",
            "Monitor runs in which a feature or prediction passed a threshold.",
            ["monitor"],
            registry=self.registry,
        )
        self.registry.register(_HotSeries(self))
        self.registry.register(_JobSeries(lambda: self.jobs))
        self.registry.register(_MonitorSeries(lambda: self.monitors))

    def watch(
        self,
        schedulers: Callable[[], Iterable[Scheduler]],
        mirrors: Callable[[], Mapping[tuple[str, str], MirrorStats]],
        collectors: Callable[[], Mapping[tuple[str, str], PayloadCollector]],
    ) -> None:
        self.registry.register(_SchedulerGauges(schedulers))
        self.registry.register(_MirrorSeries(mirrors))
        self.registry.register(_CollectorSeries(collectors))

    async def refresh_jobs(self, jobs: Any) -> None:
        """Every JOBS_REFRESH_S, count the newest jobs' mini-batches by state (from
        `deploy.jobs.JobLedger`, on a thread) for `servegate_batch_job_mini_batches`."""

        def count() -> dict[tuple[str, str, str], int]:
            counts: dict[tuple[str, str, str], int] = {}
            for job in jobs.recent(limit=JOBS_SHOWN):
                for batch in jobs.mini_batches(job.id):
                    key = (job.id, job.endpoint, str(batch.state))
                    counts[key] = counts.get(key, 0) + 1
            return counts

        while True:
            with contextlib.suppress(Exception):  # a store that is down: keep the last
                self.jobs = await asyncio.to_thread(count)
            await asyncio.sleep(JOBS_REFRESH_S)

    def snapshot(
        self, in_flight: Callable[[str, str], tuple[int, int, int]]
    ) -> list[dict[str, Any]]:
        """Per deployment, its counters as they stand (the studio's live view: it takes
        rates from two snapshots). `in_flight(endpoint, deployment)` gives in flight,
        queued and instances."""
        out = []
        for (endpoint, deployment), d in sorted(self.deployments.items()):
            requests = sum(d.requests.values())
            errors = sum(
                n
                for (_, status), n in d.requests.items()
                if status[0] == "5" or status in ("408", "424", "429")
            )
            flying, queued, instances = in_flight(endpoint, deployment)
            latency = d.request_duration
            out.append(
                {
                    "endpoint": endpoint,
                    "deployment": deployment,
                    "requests": requests,
                    "errors": errors,
                    "in_flight": flying,
                    "queued": queued,
                    "instances": instances,
                    "p50_ms": _ms(latency.quantile(0.5)),
                    "p99_ms": _ms(latency.quantile(0.99)),
                    # for quantiles over any interval: the bucket counts, their bounds
                    "latency_counts": list(latency.counts),
                    "latency_bounds_ms": [b * 1000 for b in latency.bounds],
                    "batches": d.executions,
                    "batch_rows": d.batch_rows,
                }
            )
        return out

    def monitored(self, monitor: str, result: dict[str, Any]) -> None:
        """A monitor run's outcome: its measures (runs that were judged), a breach."""
        if result.get("features") is not None:
            self.monitors[monitor] = result
        if result.get("state") == "breach":
            self.monitor_breaches.labels(monitor).inc()

    def for_deployment(self, endpoint: str, deployment: str) -> DeploymentMetrics:
        key = (endpoint, deployment)
        found = self.deployments.get(key)
        if found is None:
            found = self.deployments[key] = DeploymentMetrics(self, endpoint, deployment)
        return found

    def unrouted_request(self, endpoint: str, protocol: str, status: str) -> None:
        key = (endpoint, protocol, status)
        self.unrouted[key] = self.unrouted.get(key, 0) + 1

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
