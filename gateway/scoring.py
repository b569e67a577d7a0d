"""The hot path: `POST /endpoints/{e}/score` (Azure ML) and
`POST /v2/models/{e}[/versions/{d}]/infer` (Open Inference Protocol v2).

These two are raw ASGI handlers, reached by `FastScoring` before starlette's
router: no Request/Response objects, one pass over the headers, and no scan of
the route table per request (measured: the framework's share of a request was
~40% of its cost). They are also mounted as ordinary starlette routes, so the
OpenAPI document, 405s and everything else behave as for any route.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import protocol, tracing
from gateway.auth import authenticate
from gateway.errors import PayloadTooLarge, error_body
from gateway.logs import access
from gateway.rate_limit import client_address
from gateway.request_ids import RequestIds, current, id_headers, request_id_of
from gateway.routing import DeploymentRoute, EndpointRoute
from gateway.security_headers import SecurityHeaders
from gateway.state import GatewayState
from runtimes.errors import InferenceFailed, InvalidInput, Overloaded, Retired
from runtimes.scheduler import Timing

DEPLOYMENT_HEADER = "azureml-model-deployment"
#: the server span's name per route (the route's template, as OpenTelemetry names them)
_SPAN_NAMES = {
    "score": "POST /endpoints/{endpoint}/score",
    "v2": "POST /v2/models/{endpoint}/infer",
}
#: The `endpoint` metric label of requests to endpoints that do not exist.
UNKNOWN_ENDPOINT = "(unknown)"
_JSON = (b"content-type", b"application/json")

Headers = dict[str, str]
#: (status, body, extra response headers, outputs for mirror comparison)
Answer = tuple[int, bytes, list[tuple[bytes, bytes]], dict[str, np.ndarray] | None]
#: (state, headers, route, body, timing, the model name asked for (protocol paths))
Handler = Callable[
    [GatewayState, Headers, DeploymentRoute, bytes, Timing, str | None], Awaitable[Answer]
]


class ClientGone(Exception):
    """The client disconnected before its body arrived."""


async def read_body(receive: Receive, headers: Headers, limit: int) -> bytes:
    """The request body, decompressed, refusing more than `limit` bytes either way."""
    declared = headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds max_request_body_bytes={limit}")
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds max_request_body_bytes={limit}")
        chunks.append(chunk)
        more = message.get("more_body", False)
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return protocol.decompress(body, headers.get("content-encoding"), limit)


def _deadline_s(route: DeploymentRoute, parameters: dict[str, Any]) -> tuple[float, str]:
    """request_timeout_ms, or the request's OIP `timeout` (microseconds) when shorter;
    with the name of the limit that applies, for messages."""
    configured = (
        route.request_timeout_s,
        f"request_timeout_ms={round(route.request_timeout_s * 1000)}",
    )
    timeout_us = parameters.get("timeout")
    if timeout_us is None:
        return configured
    if not isinstance(timeout_us, int) or isinstance(timeout_us, bool) or timeout_us <= 0:
        raise InvalidInput(
            f"parameter 'timeout' must be a positive integer (microseconds), got {timeout_us!r}"
        )
    if timeout_us / 1e6 >= route.request_timeout_s:
        return configured
    return timeout_us / 1e6, f"the request's timeout parameter, {timeout_us} us"


def _priority(parameters: dict[str, Any]) -> int:
    priority = parameters.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool) or priority < 0:
        raise InvalidInput(f"parameter 'priority' must be a non-negative integer, got {priority!r}")
    return priority


async def _infer(
    route: DeploymentRoute,
    inputs: dict[str, np.ndarray],
    outputs: list[str] | None,
    parameters: dict[str, Any],
    timing: Timing,
    checked: bool = False,
) -> dict[str, np.ndarray]:
    """`checked`: each input was already checked against the signature while decoding
    (the Open Inference Protocol path), so only absent inputs remain to be found."""
    if checked:
        route.signature.check_complete(inputs)
    else:
        route.signature.validate(inputs)
    timeout_s, timeout_name = _deadline_s(route, parameters)
    return await route.scheduler.infer(
        inputs, outputs, timeout_s, _priority(parameters), timing, timeout_name
    )


#: Bodies larger than this are decoded in a thread: decoding millions of BYTES elements
#: takes seconds of Python, and on the event loop it would stall every other request.
OFFLOAD_DECODE_BYTES = 1 << 20


async def _score(
    state: GatewayState,
    headers: Headers,
    route: DeploymentRoute,
    body: bytes,
    timing: Timing,
    asked: str | None = None,
) -> Answer:
    if route.kind.takes_raw_body:
        # Azure ML's run(raw_data): the script gets the body as it came.
        timeout_s, timeout_name = _deadline_s(route, {})
        answer = await route.scheduler.score_raw(body, timeout_s, 0, timing, timeout_name)
        return 200, answer, [_JSON], None
    if len(body) <= OFFLOAD_DECODE_BYTES:
        inputs = protocol.parse_score_request(body, route.signature)
    else:
        inputs = await asyncio.to_thread(protocol.parse_score_request, body, route.signature)
    results = await _infer(route, inputs, None, {}, timing)
    return 200, protocol.encode_score_response(results), [_JSON], results


async def _v2_infer(
    state: GatewayState,
    headers: Headers,
    route: DeploymentRoute,
    body: bytes,
    timing: Timing,
    asked: str | None = None,
) -> Answer:
    if route.kind.takes_raw_body:
        raise InvalidInput(
            f"deployment '{route.name}' runs a scoring script, which takes raw requests: "
            f"use POST /endpoints/{route.endpoint}/score"
        )
    tabular = route.kind.tabular
    args = (body, headers.get(protocol.HEADER_LENGTH), route.signature, tabular)
    if len(body) <= OFFLOAD_DECODE_BYTES:
        parsed = protocol.parse_v2_request(*args)
    else:
        parsed = await asyncio.to_thread(protocol.parse_v2_request, *args)
    outputs = protocol.select_outputs(parsed, route.signature, tabular)
    # All outputs, the common case, need no selection in the runtime.
    names = None
    if parsed.outputs is not None:
        names = [
            protocol.kserve_output(o.name, route.signature, tabular) or o.name for o in outputs
        ]
    results = await _infer(route, parsed.inputs, names, parsed.parameters, timing, checked=True)
    if tabular and names is not None:  # answered under the names asked for (output-0)
        results = {o.name: results[name] for o, name in zip(outputs, names, strict=True)}
    if parsed.classified:
        results = protocol.classified(results, outputs, route.served, route.signature)
    if route.served is None:
        model_name, model_version = route.endpoint, route.name
    else:
        model_name, model_version = response_names(route, asked)
    payload, extra = protocol.encode_v2_response(
        model_name, model_version, parsed.id, results, outputs
    )
    accept_encoding = headers.get("accept-encoding")
    if accept_encoding:
        payload, encoding = protocol.compress(payload, accept_encoding)
        if encoding:
            extra["content-encoding"] = encoding
    encoded = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
    return 200, payload, encoded, results


def response_names(route: DeploymentRoute, asked: str | None) -> tuple[str, str]:
    """`model_name` and `model_version` of an answer: a Triton model's name as asked and the
    version served, else the endpoint and the deployment."""
    if route.served is not None:
        return asked or route.served.name, str(route.served.version)
    return route.endpoint, route.name


class ScoringEndpoint:
    """One scoring route as an ASGI app: auth, routing, body, metrics, errors, and
    the mirror copy after the answer is sent."""

    def __init__(
        self, protocol_name: str, handler: Handler, state: Callable[[], GatewayState]
    ) -> None:
        self.protocol_name = protocol_name
        self._handler = handler
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self._state()
        started = time.perf_counter()
        params = scope["path_params"]
        # /score names the endpoint; the protocol's paths a model (an endpoint's name, or
        # a Triton model's), under an endpoint's prefix or the gateway's root.
        asked = params.get("model")
        endpoint_name = params["endpoint"] if asked is None else params.get("within") or asked
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = request_id_of(
            headers.get("x-request-id") or headers.get("x-ms-client-request-id")
        )
        id_token = current.set(request_id)
        span = (
            tracing.RequestSpan(_SPAN_NAMES[self.protocol_name], headers, request_id, started)
            if tracing.TRACER is not None
            else None
        )
        timing = Timing()
        route: DeploymentRoute | None = None
        mirror: DeploymentRoute | None = None
        outputs: dict[str, np.ndarray] | None = None
        extra = id_headers(request_id)
        body = b""
        status = 499  # the client left before an answer (nginx's convention)
        try:
            if asked is None:
                endpoint, pinned = state.hosts.snapshot.endpoint(endpoint_name), None
            else:
                endpoint, pinned = state.hosts.snapshot.model(
                    asked, params.get("version"), params.get("within")
                )
                endpoint_name = endpoint.name
            if endpoint.rate_limit is None and endpoint.auth_mode != "aad_token":
                authenticate(endpoint, headers.get("authorization"), state.credentials)
            else:
                await state.admit(
                    endpoint, headers.get("authorization"), client_address(scope["client"])
                )
            target = pinned or headers.get(DEPLOYMENT_HEADER)
            route = self._pick(state, endpoint, target, headers)
            body = await read_body(receive, headers, state.settings.max_request_body_bytes)
            try:
                status, payload, answer_headers, outputs = await self._handler(
                    state, headers, route, body, timing, asked
                )
            except Retired:
                # The deployment changed under this request: route it again, once.
                endpoint = state.hosts.snapshot.endpoint(endpoint_name)
                route = self._pick(state, endpoint, target, headers)
                status, payload, answer_headers, outputs = await self._handler(
                    state, headers, route, body, timing, asked
                )
            extra.append((DEPLOYMENT_HEADER.encode(), route.name.encode()))
            extra += answer_headers
            # Azure ML mirrors only requests routed by weight, never a targeted one.
            if endpoint.mirror is not None and not target:
                name, percent = endpoint.mirror
                if state.rng.random() * 100 < percent and name in endpoint.deployments:
                    mirror = endpoint.deployments[name]
        except ClientGone:
            return
        except Exception as exc:
            if route is not None:
                extra.append((DEPLOYMENT_HEADER.encode(), route.name.encode()))
            if isinstance(exc, InferenceFailed):
                # Azure ML's headers for a model that failed on the request.
                extra += [
                    (b"ms-azureml-model-error-statuscode", b"500"),
                    (b"ms-azureml-model-error-reason", b"model_error"),
                ]
            elif isinstance(exc, Overloaded):
                extra.append((b"retry-after", str(exc.retry_after_s).encode()))
            status, payload = error_body(exc)
            extra.append(_JSON)
        finally:
            elapsed = time.perf_counter() - started
            record_request(state, self.protocol_name, endpoint_name, route, status, elapsed, timing)
            current.reset(id_token)
            if span is not None:
                deployment = route.name if route is not None else None
                span.finish(status, endpoint_name, deployment, timing)
            sample = state.settings.access_log
            if sample and (sample >= 1.0 or state.rng.random() < sample):
                access(
                    request_id,
                    "POST",
                    scope["path"],
                    status,
                    elapsed,
                    endpoint_name,
                    route.name if route is not None else None,
                )
        extra.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": extra})
        await send({"type": "http.response.body", "body": payload})
        if route is not None and route.collector is not None:
            route.collector.offer(
                request_id,
                status,
                time.perf_counter() - started,
                body,
                payload,
                state.rng,
            )
        if mirror is not None and status == 200:

            async def run_mirror(
                candidate: DeploymentRoute, timing: Timing
            ) -> tuple[int, bytes, Any]:
                code, answer, _, mirrored = await self._handler(
                    state, headers, candidate, body, timing, asked
                )
                return code, answer, mirrored

            state.mirror.copy(mirror, run_mirror, (outputs, payload))

    @staticmethod
    def _pick(
        state: GatewayState, endpoint: EndpointRoute, target: str | None, headers: Headers
    ) -> DeploymentRoute:
        if target:
            return endpoint.deployment(target)
        sticky = headers.get(endpoint.sticky_header) if endpoint.sticky_header else None
        return endpoint.pick(state.rng, sticky)


def record_request(
    state: GatewayState,
    protocol_name: str,
    endpoint: str,
    route: DeploymentRoute | None,
    status: int,
    elapsed: float,
    timing: Timing,
) -> None:
    """A scoring request's metrics (any protocol)."""
    if route is None:
        # Unknown names share one label: clients choose them, so they must not
        # create label sets (a scan of random names would bloat /metrics).
        if endpoint not in state.hosts.snapshot.endpoints:
            endpoint = UNKNOWN_ENDPOINT
        state.metrics.unrouted_request(endpoint, protocol_name, str(status))
        return
    metrics = route.metrics
    metrics.request(protocol_name, str(status))
    metrics.request_duration.observe(elapsed)
    if timing.ran:
        metrics.queue_duration.observe(timing.queue_s)
        metrics.inference_duration.observe(timing.inference_s)
    if status == 200:
        metrics.overhead_duration.observe(elapsed - timing.queue_s - timing.inference_s)
        metrics.inferences += timing.rows or 1
    else:
        metrics.failed_seconds += elapsed


class FastScoring:
    """Sends POSTs to the scoring paths straight to their handlers; everything
    else goes to the starlette app."""

    def __init__(
        self,
        app: ASGIApp,
        score: ScoringEndpoint,
        infer: ScoringEndpoint,
        access_log: float = 0.0,
        provider_origins: Callable[[], tuple[str, ...]] = tuple,
    ) -> None:
        #: the starlette app behind (its routes)
        self.starlette = app
        # Every other route gets its request id and browser protections from middleware;
        # scoring does it inline.
        self.app = RequestIds(SecurityHeaders(app, provider_origins), access_log)
        self._score = score
        self._infer = infer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            parts = scope["path"].split("/")
            count = len(parts)
            if parts[1] == "endpoints":
                # /endpoints/{e}/score
                if count == 4 and parts[3] == "score" and parts[2]:
                    scope["path_params"] = {"endpoint": parts[2]}
                    return await self._score(scope, receive, send)
                # /endpoints/{e}/v2/models/{m}[/versions/{v}]/infer
                if count in (7, 9) and parts[3] == "v2" and parts[2]:
                    params = _v2_params_within(parts)
                    if params is not None:
                        scope["path_params"] = params
                        return await self._infer(scope, receive, send)
            # /v2/models/{m}[/versions/{v}]/infer, the common case: inline
            elif (
                count in (5, 7)
                and parts[1] == "v2"
                and parts[2] == "models"
                and parts[-1] == "infer"
                and parts[3]
            ):
                if count == 5:
                    scope["path_params"] = {"model": parts[3]}
                    return await self._infer(scope, receive, send)
                if parts[4] == "versions" and parts[5]:
                    scope["path_params"] = {"model": parts[3], "version": parts[5]}
                    return await self._infer(scope, receive, send)
        await self.app(scope, receive, send)


def _v2_params_within(parts: list[str]) -> dict[str, str] | None:
    """The path parameters of `/endpoints/{e}/v2/models/{m}[/versions/{v}]/infer`."""
    if parts[4] != "models" or parts[-1] != "infer" or not parts[5]:
        return None
    if len(parts) == 7:
        return {"model": parts[5], "within": parts[2]}
    if parts[6] == "versions" and parts[7]:
        return {"model": parts[5], "version": parts[7], "within": parts[2]}
    return None


def endpoints(state: Callable[[], GatewayState]) -> tuple[ScoringEndpoint, ScoringEndpoint]:
    return ScoringEndpoint("score", _score, state), ScoringEndpoint("v2", _v2_infer, state)


def routes(score: ScoringEndpoint, infer: ScoringEndpoint) -> list[Route]:
    return [
        Route("/endpoints/{endpoint}/score", score, methods=["POST"]),
        Route("/v2/models/{model}/infer", infer, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/infer", infer, methods=["POST"]),
        # The protocol under an endpoint's URL (Azure ML's Triton deployments are asked
        # there: `<scoring_uri without /score>/v2/models/<model>/infer`).
        Route("/endpoints/{within}/v2/models/{model}/infer", infer, methods=["POST"]),
        Route(
            "/endpoints/{within}/v2/models/{model}/versions/{version}/infer",
            infer,
            methods=["POST"],
        ),
    ]
