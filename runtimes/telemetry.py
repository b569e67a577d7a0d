"""OpenTelemetry's SDK, set up from the standard `OTEL_*` variables (the `otel` extra):
for the gateway's spans, and inside a Ray replica for the spans of the calls it serves,
in the trace of the request that caused them."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

from runtimes import context

log = logging.getLogger(__name__)


def otel_environment() -> dict[str, str]:
    """This process's `OTEL_*` variables: what a process it starts elsewhere (a Ray
    replica) needs to export its spans the same way."""
    return {k: v for k, v in os.environ.items() if k.startswith("OTEL_")}


def enabled_by_environment() -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "")
    if exporter:
        return exporter != "none"
    return any(
        os.environ.get(name)
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def start_tracer() -> tuple[Any, Any] | None:
    """(tracer, W3C propagator) exporting as the environment says, or None when it asks
    for no traces or the otel extra is missing."""
    if not enabled_by_environment():
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        log.warning("OTEL_* variables ask for traces, but the otel extra is not installed")
        return None
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp")
    exporter: Any
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # endpoint, headers, timeout from OTEL_EXPORTER_OTLP_*
    service = os.environ.get("OTEL_SERVICE_NAME", "servegate")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("tracing on: %s exporter, service %s", exporter_name, service)
    return provider.get_tracer("servegate"), TraceContextTextMapPropagator()


def shutdown() -> None:
    """Export what is buffered."""
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    getattr(provider, "shutdown", lambda: None)()


#: what a call to another process carries of the request(s) it serves:
#: (request id, traceparent)
CallContext = tuple[str, str]


def current_call() -> CallContext:
    return context.request_id.get(), context.traceparent.get()


class CallTracer:
    """Inside a process that serves calls for the gateway (a Ray replica): each call
    runs with the request ids and trace it came with, as a span of that trace when
    tracing is on there."""

    def __init__(self, environment: Mapping[str, str]) -> None:
        """`environment`: the gateway's `OTEL_*` variables."""
        os.environ.update(environment)
        started = start_tracer()
        self._tracer: Any = started[0] if started else None
        self._propagator: Any = started[1] if started else None

    @contextlib.contextmanager
    def serving(self, name: str, call: CallContext, **attributes: Any) -> Iterator[None]:
        request_id, traceparent = call
        id_token = context.request_id.set(request_id)
        trace_token = context.traceparent.set(traceparent)
        try:
            if self._tracer is None:
                yield
                return
            parent = self._propagator.extract({"traceparent": traceparent}) if traceparent else None
            with self._tracer.start_as_current_span(name, context=parent) as span:
                span.set_attribute("servegate.request_id", request_id)
                for key, value in attributes.items():
                    span.set_attribute(f"servegate.{key}", value)
                # What this call sends on (a remote runtime) joins the replica's span.
                carrier: dict[str, str] = {}
                self._propagator.inject(carrier)
                context.traceparent.set(carrier.get("traceparent", traceparent))
                yield
        finally:
            context.traceparent.reset(trace_token)
            context.request_id.reset(id_token)
