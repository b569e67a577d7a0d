"""OpenTelemetry traces (the `otel` extra), off unless configured by the standard
variables: `OTEL_TRACES_EXPORTER` (`otlp`, `console`) or `OTEL_EXPORTER_OTLP_ENDPOINT` /
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, with `OTEL_SERVICE_NAME`, `OTEL_BSP_*` and
`OTEL_SDK_DISABLED` as the SDK reads them.

A scoring request is a server span (its parent: the client's W3C `traceparent`, if
sent) with children for what the scheduler measured: admission (auth, routing, body,
decoding, up to the queue), queue wait and inference (the batch it rode in, with its
size); the mirror copy is a span of its own in the same trace. The children are made
after the answer from timestamps the request already keeps, so tracing adds no work
inside the scheduler. The request's `traceparent` goes on to remote runtimes and Ray
replicas (`runtimes.telemetry`).
"""

from __future__ import annotations

import time
from typing import Any

from runtimes import context, telemetry
from runtimes.scheduler import Timing

#: the tracer when tracing is on, else None (one check on the hot path)
TRACER: Any = None
_PROPAGATOR: Any = None


def configure() -> bool:
    """Turn tracing on when the environment asks for it; whether it is on."""
    global TRACER, _PROPAGATOR
    started = telemetry.start_tracer()
    if started is None:
        return False
    TRACER, _PROPAGATOR = started
    return True


def shutdown() -> None:
    """Export what is buffered (at shutdown)."""
    if TRACER is not None:
        telemetry.shutdown()


class RequestSpan:
    """One request's server span, and what to make of its timings at the end."""

    def __init__(self, name: str, headers: dict[str, str], request_id: str, started: float) -> None:
        """`started`: when the request arrived (perf_counter seconds)."""
        from opentelemetry.trace import SpanKind

        parent = _PROPAGATOR.extract(headers) if "traceparent" in headers else None
        self.offset_ns = time.time_ns() - time.perf_counter_ns()
        self.started = started
        self.span = TRACER.start_span(
            name, context=parent, kind=SpanKind.SERVER, start_time=self._ns(started)
        )
        self.span.set_attribute("servegate.request_id", request_id)
        self.context = _with_span(self.span)
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=self.context)
        # For the calls this request makes (remote runtimes) and its mirror copy. The
        # request runs in a task of its own, so this ends with it.
        context.traceparent.set(carrier.get("traceparent", ""))

    def _ns(self, perf_s: float) -> int:
        return self.offset_ns + int(perf_s * 1e9)

    def finish(
        self,
        status: int,
        endpoint: str,
        deployment: str | None,
        timing: Timing,
    ) -> None:
        span = self.span
        span.set_attribute("servegate.endpoint", endpoint)
        if deployment is not None:
            span.set_attribute("servegate.deployment", deployment)
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR))
        if timing.ran and timing.arrived_at:
            queued, ran = timing.arrived_at, timing.arrived_at + timing.queue_s
            self._child("admission", self.started, queued)
            self._child("queue", queued, ran)
            inference = self._child("inference", ran)
            inference.set_attribute("servegate.batch.requests", timing.batch_requests)
            inference.set_attribute("servegate.batch.rows", timing.batch_rows)
            inference.end(end_time=self._ns(ran + timing.inference_s))
        span.end()

    def _child(self, name: str, start: float, end: float | None = None) -> Any:
        """A child span from `start` to `end` (perf_counter seconds); left open (for
        attributes) when `end` is None."""
        child = TRACER.start_span(name, context=self.context, start_time=self._ns(start))
        if end is not None:
            child.end(end_time=self._ns(end))
        return child


def _with_span(span: Any) -> Any:
    from opentelemetry import trace

    return trace.set_span_in_context(span)


def mirror_span(route_name: str) -> Any:
    """A span for a mirrored copy, in the trace of the request it copies (the context
    the copy's task started with); None without tracing."""
    if TRACER is None:
        return None
    parent = context.traceparent.get()
    carrier = {"traceparent": parent} if parent else {}
    span = TRACER.start_span("mirror", context=_PROPAGATOR.extract(carrier) if parent else None)
    span.set_attribute("servegate.deployment", route_name)
    return span
