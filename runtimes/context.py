"""What a runtime call knows of the request(s) it serves: their ids, for the log lines
the call causes (a worker's, a scoring script's). Set by the gateway per request and by
the scheduler per batch (the ids of the batch's requests, comma-separated)."""

from __future__ import annotations

from contextvars import ContextVar

request_id: ContextVar[str] = ContextVar("servegate_request_id", default="-")

#: the W3C `traceparent` of the span a call belongs to ("" without tracing): a remote
#: runtime sends it on, so the remote's spans join the request's trace
traceparent: ContextVar[str] = ContextVar("servegate_traceparent", default="")
