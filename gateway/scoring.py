"""Data-plane routes: Azure ML's `/score` and the Open Inference Protocol v2."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import protocol
from gateway.auth import authenticate
from gateway.errors import DeploymentUnavailable, PayloadTooLarge, error_response
from gateway.routing import DeploymentRoute, EndpointRoute
from gateway.state import GatewayState
from runtimes.errors import InferenceFailed, InvalidInput, Overloaded
from runtimes.scheduler import Timing

DEPLOYMENT_HEADER = "azureml-model-deployment"
# tritonclient names its platforms like Triton's backends.
PLATFORMS = {
    "onnx": "onnxruntime_onnx",
    "torch": "pytorch_libtorch",
    "script": "python",
    "remote": "remote",
    "fake": "servegate_fake",
}

try:
    SERVER_VERSION = version("servegate")
except PackageNotFoundError:  # running from a source tree
    SERVER_VERSION = "0.0.0"


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


def _json(doc: object, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status, media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, decompressed, refusing more than `limit` bytes either way."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds max_request_body_bytes={limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds max_request_body_bytes={limit}")
        chunks.append(chunk)
    return protocol.decompress(b"".join(chunks), request.headers.get("content-encoding"), limit)


def _route_for(request: Request, endpoint: EndpointRoute) -> DeploymentRoute:
    target = request.path_params.get("deployment") or request.headers.get(DEPLOYMENT_HEADER)
    return endpoint.deployment(target) if target else endpoint.pick(_state(request).rng)


Handler = Callable[[Request, DeploymentRoute, bytes, Timing], Awaitable[Response]]


async def _scoring(request: Request, protocol_name: str, handler: Handler) -> Response:
    """Shared frame of a scoring request: auth, routing, body, metrics, errors."""
    state = _state(request)
    started = time.perf_counter()
    endpoint_name = request.path_params["endpoint"]
    deployment_name = ""
    headers: dict[str, str] = {}
    response: Response | None = None
    timing = Timing()
    route: DeploymentRoute | None = None
    try:
        endpoint = state.hosts.snapshot.endpoint(endpoint_name)
        authenticate(endpoint, request.headers.get("authorization"), state.credentials)
        route = _route_for(request, endpoint)
        deployment_name = route.name
        headers[DEPLOYMENT_HEADER] = route.name
        body = await read_body(request, state.settings.max_request_body_bytes)
        response = await handler(request, route, body, timing)
        response.headers.update(headers)
    except Exception as exc:
        if isinstance(exc, InferenceFailed):
            # Azure ML's headers for a model that failed on the request.
            headers["ms-azureml-model-error-statuscode"] = "500"
            headers["ms-azureml-model-error-reason"] = "model_error"
        elif isinstance(exc, Overloaded):
            headers["retry-after"] = str(exc.retry_after_s)
        response = error_response(exc, headers)
    finally:
        elapsed = time.perf_counter() - started
        status = str(response.status_code) if response is not None else "499"
        metrics = state.metrics
        metrics.requests.labels(endpoint_name, deployment_name, protocol_name, status).inc()
        metrics.request_duration.labels(endpoint_name, deployment_name).observe(elapsed)
        if route is not None and response is not None and response.status_code == 200:
            overhead = elapsed - timing.queue_s - timing.inference_s
            metrics.overhead_duration.labels(endpoint_name, deployment_name).observe(overhead)
    return response


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


def _observe(request: Request, route: DeploymentRoute, timing: Timing) -> None:
    metrics = _state(request).metrics
    metrics.queue_duration.labels(route.endpoint, route.name).observe(timing.queue_s)
    metrics.inference_duration.labels(route.endpoint, route.name).observe(timing.inference_s)


async def _infer(
    request: Request,
    route: DeploymentRoute,
    inputs: dict[str, np.ndarray],
    outputs: list[str] | None,
    parameters: dict[str, Any],
    timing: Timing,
) -> dict[str, np.ndarray]:
    route.signature.validate(inputs)
    timeout_s, timeout_name = _deadline_s(route, parameters)
    try:
        return await route.scheduler.infer(
            inputs, outputs, timeout_s, _priority(parameters), timing, timeout_name
        )
    finally:
        _observe(request, route, timing)


async def score(request: Request) -> Response:
    """POST /endpoints/{endpoint}/score"""

    async def handle(
        request: Request, route: DeploymentRoute, body: bytes, timing: Timing
    ) -> Response:
        if route.runtime == "script":
            # Azure ML's run(raw_data): the script gets the body as it came.
            try:
                timeout_s, timeout_name = _deadline_s(route, {})
                answer = await route.scheduler.score_raw(body, timeout_s, 0, timing, timeout_name)
            finally:
                _observe(request, route, timing)
            return Response(answer, media_type="application/json")
        inputs = protocol.parse_score_request(body, route.signature)
        results = await _infer(request, route, inputs, None, {}, timing)
        return Response(protocol.encode_score_response(results), media_type="application/json")

    return await _scoring(request, "score", handle)


async def v2_infer(request: Request) -> Response:
    """POST /v2/models/{endpoint}[/versions/{deployment}]/infer"""

    async def handle(
        request: Request, route: DeploymentRoute, body: bytes, timing: Timing
    ) -> Response:
        if route.runtime == "script":
            raise InvalidInput(
                f"deployment '{route.name}' runs a scoring script, which takes raw requests: "
                f"use POST /endpoints/{route.endpoint}/score"
            )
        parsed = protocol.parse_v2_request(
            body, request.headers.get(protocol.HEADER_LENGTH), route.signature
        )
        outputs = protocol.select_outputs(parsed, route.signature)
        results = await _infer(
            request, route, parsed.inputs, [o.name for o in outputs], parsed.parameters, timing
        )
        payload, headers = protocol.encode_v2_response(
            route.endpoint, route.name, parsed.id, results, outputs
        )
        payload, encoding = protocol.compress(payload, request.headers.get("accept-encoding"))
        if encoding:
            headers["content-encoding"] = encoding
        return Response(payload, headers=headers)

    return await _scoring(request, "v2", handle)


async def server_metadata(request: Request) -> Response:
    """GET /v2"""
    return _json(
        {
            "name": "servegate",
            "version": SERVER_VERSION,
            "extensions": ["binary_tensor_data", "parameters"],
        }
    )


async def live(request: Request) -> Response:
    """GET /v2/health/live"""
    return _json({"live": True})


async def ready(request: Request) -> Response:
    """GET /v2/health/ready: 200 once every stored deployment had its load attempted."""
    if not _state(request).ready:
        return _json({"error": "the gateway is still loading deployments", "ready": False}, 503)
    return _json({"ready": True})


def _endpoint_and_route(request: Request) -> tuple[EndpointRoute, DeploymentRoute]:
    state = _state(request)
    endpoint = state.hosts.snapshot.endpoint(request.path_params["endpoint"])
    authenticate(endpoint, request.headers.get("authorization"), state.credentials)
    target = request.path_params.get("deployment")
    if target:
        return endpoint, endpoint.deployment(target)
    route = endpoint.default()
    if route is None:
        raise DeploymentUnavailable(f"endpoint '{endpoint.name}' has no loaded deployment")
    return endpoint, route


async def model_metadata(request: Request) -> Response:
    """GET /v2/models/{endpoint}[/versions/{deployment}]"""
    endpoint, route = _endpoint_and_route(request)
    versions = [route.name] if "deployment" in request.path_params else sorted(endpoint.deployments)
    signature = route.signature.to_dict()
    return _json(
        {
            "name": endpoint.name,
            "versions": versions,
            "platform": PLATFORMS.get(route.runtime, route.runtime),
            "inputs": signature["inputs"],
            "outputs": signature["outputs"],
        }
    )


async def model_ready(request: Request) -> Response:
    """GET /v2/models/{endpoint}[/versions/{deployment}]/ready"""
    endpoint, _ = _endpoint_and_route(request)
    if "deployment" not in request.path_params and not endpoint.traffic_names:
        raise DeploymentUnavailable(
            f"endpoint '{endpoint.name}' doesn't have any valid deployment with positive weight"
        )
    return _json({"name": endpoint.name, "ready": True})


async def metrics(request: Request) -> Response:
    """GET /metrics"""
    m = _state(request).metrics
    return Response(m.render(), media_type=m.content_type)


ROUTES = [
    Route("/endpoints/{endpoint}/score", score, methods=["POST"]),
    Route("/v2", server_metadata, methods=["GET"]),
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    Route("/v2/models/{endpoint}", model_metadata, methods=["GET"]),
    Route("/v2/models/{endpoint}/ready", model_ready, methods=["GET"]),
    Route("/v2/models/{endpoint}/infer", v2_infer, methods=["POST"]),
    Route("/v2/models/{endpoint}/versions/{deployment}", model_metadata, methods=["GET"]),
    Route("/v2/models/{endpoint}/versions/{deployment}/ready", model_ready, methods=["GET"]),
    Route("/v2/models/{endpoint}/versions/{deployment}/infer", v2_infer, methods=["POST"]),
    Route("/metrics", metrics, methods=["GET"]),
]
