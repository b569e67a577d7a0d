"""Read-only Open Inference Protocol routes (health, server and model metadata,
readiness) and Prometheus metrics."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from deploy.errors import StoreUnavailable
from gateway.auth import authenticate
from gateway.errors import DeploymentUnavailable
from gateway.routing import DeploymentRoute, EndpointRoute
from gateway.state import GatewayState

try:
    SERVER_VERSION = version("servegate")
except PackageNotFoundError:  # running from a source tree
    SERVER_VERSION = "0.0.0"


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


def _json(doc: object, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status, media_type="application/json")


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
    """GET /v2/health/ready: 200 once every stored deployment had its load attempted,
    while the store can be written and every deployment's host can serve."""
    state = _state(request)
    if not state.ready:
        return _json({"error": "the gateway is still loading deployments", "ready": False}, 503)
    try:
        state.control.store.check_file()
    except StoreUnavailable as exc:
        return _json({"error": str(exc), "ready": False}, 503)
    problems = state.hosts.problems()
    if problems:
        reasons = "; ".join(f"deployment {name}: {why}" for name, why in sorted(problems.items()))
        return _json({"error": reasons, "ready": False, "deployments": problems}, 503)
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
            "platform": route.kind.platform,
            "inputs": signature["inputs"],
            "outputs": signature["outputs"],
        }
    )


async def model_ready(request: Request) -> Response:
    """GET /v2/models/{endpoint}[/versions/{deployment}]/ready"""
    endpoint, route = _endpoint_and_route(request)
    if "deployment" not in request.path_params and not endpoint.traffic_names:
        raise DeploymentUnavailable(
            f"endpoint '{endpoint.name}' doesn't have any valid deployment with positive weight"
        )
    problem = getattr(route.scheduler.host, "problem", None)
    if problem:
        raise DeploymentUnavailable(f"deployment '{route.name}': {problem}")
    return _json({"name": endpoint.name, "ready": True})


async def metrics(request: Request) -> Response:
    """GET /metrics"""
    m = _state(request).metrics
    return Response(m.render(), media_type=m.content_type)


ROUTES = [
    Route("/v2", server_metadata, methods=["GET"]),
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    Route("/v2/models/{endpoint}", model_metadata, methods=["GET"]),
    Route("/v2/models/{endpoint}/ready", model_ready, methods=["GET"]),
    Route("/v2/models/{endpoint}/versions/{deployment}", model_metadata, methods=["GET"]),
    Route("/v2/models/{endpoint}/versions/{deployment}/ready", model_ready, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
