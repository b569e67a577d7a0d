"""Read-only Open Inference Protocol routes (health, server and model metadata,
readiness) and Prometheus metrics."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from deploy.errors import StoreUnavailable
from deploy.roles import Permission
from gateway import model_documents as documents
from gateway.access import authorize, principal_of
from gateway.errors import DeploymentUnavailable
from gateway.rate_limit import client_address
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


#: the protocol's extensions servegate speaks, as Triton names them
EXTENSIONS = ["binary_tensor_data", "classification", "parameters", "statistics"]


async def server_metadata(request: Request) -> Response:
    """GET /v2"""
    name = _state(request).settings.server_name
    return _json({"name": name, "version": SERVER_VERSION, "extensions": EXTENSIONS})


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


async def _endpoint_and_route(
    request: Request,
) -> tuple[str, EndpointRoute, DeploymentRoute, bool]:
    """The model a protocol path names (routing.RoutingSnapshot.model), authenticated: the
    name asked for, its endpoint, the deployment that answers, and whether the path
    pinned that deployment."""
    state = _state(request)
    params = request.path_params
    asked = params["model"]
    endpoint, pinned = state.hosts.snapshot.model(
        asked, params.get("version"), params.get("within")
    )
    await state.admit(
        endpoint, request.headers.get("authorization"), client_address(request.client)
    )
    if pinned:
        return asked, endpoint, endpoint.deployment(pinned), True
    route = endpoint.default()
    if route is None:
        raise DeploymentUnavailable(f"endpoint '{endpoint.name}' has no loaded deployment")
    return asked, endpoint, route, False


async def model_metadata(request: Request) -> Response:
    """GET [/endpoints/{e}]/v2/models/{model}[/versions/{version}]"""
    asked, endpoint, route, pinned = await _endpoint_and_route(request)
    return _json(documents.metadata(asked, endpoint, route, pinned))


async def model_ready(request: Request) -> Response:
    """GET [/endpoints/{e}]/v2/models/{model}[/versions/{version}]/ready"""
    asked, endpoint, route, pinned = await _endpoint_and_route(request)
    if not pinned and not endpoint.traffic_names:
        raise DeploymentUnavailable(
            f"endpoint '{endpoint.name}' doesn't have any valid deployment with positive weight"
        )
    problem = getattr(route.scheduler.host, "problem", None)
    if problem:
        raise DeploymentUnavailable(f"deployment '{route.name}': {problem}")
    return _json({"name": asked, "ready": True})


async def model_config(request: Request) -> Response:
    """GET [/endpoints/{e}]/v2/models/{model}[/versions/{version}]/config: Triton's model
    configuration (what tritonclient's get_model_config reads)."""
    asked, _, route, _ = await _endpoint_and_route(request)
    return _json(documents.config(asked, route))


async def model_stats(request: Request) -> Response:
    """GET [/endpoints/{e}]/v2/models/{model}[/versions/{version}]/stats: Triton's
    statistics extension, from the gateway's own counters (since this replica started)."""
    asked, endpoint, route, pinned = await _endpoint_and_route(request)
    if pinned or asked != endpoint.name:
        routes = [route]
    else:
        routes = [endpoint.deployment(name) for name in sorted(endpoint.deployments)]
    return _json({"model_stats": [documents.statistics(asked, r) for r in routes]})


async def all_model_stats(request: Request) -> Response:
    """GET /v2/models/stats (admin token): every deployment's statistics."""
    state = _state(request)
    caller = await principal_of(request, state)
    authorize(caller, Permission.READ, "read model statistics")
    stats = []
    for name, endpoint in sorted(state.hosts.snapshot.endpoints.items()):
        if caller.may_act_on(name):
            for deployment in sorted(endpoint.deployments):
                route = endpoint.deployment(deployment)
                shown = route.served.name if route.served is not None else name
                stats.append(documents.statistics(shown, route))
    return _json({"model_stats": stats})


async def repository_index(request: Request) -> Response:
    """POST /v2/repository/index (admin token): every endpoint and deployment as
    Triton's model repository index lists models and versions."""
    state = _state(request)
    caller = await principal_of(request, state)
    authorize(caller, Permission.READ, "list the repository")
    index = [
        row
        for name, endpoint in sorted(state.hosts.snapshot.endpoints.items())
        if caller.may_act_on(name)
        for row in documents.index_entries(name, endpoint)
    ]
    return _json(index)


async def load_or_unload(request: Request) -> Response:
    """POST /v2/repository/models/{model}/load|unload: not how deployments change here."""
    return _json(
        {
            "error": "models are not loaded or unloaded through the repository API here: "
            "deployments are created and deleted through the management API "
            "(servegate deployment create / delete), which loads and drains them"
        },
        400,
    )


async def metrics(request: Request) -> Response:
    """GET /metrics"""
    m = _state(request).metrics
    return Response(m.render(), media_type=m.content_type)


def _protocol_routes(prefix: str) -> list[Route]:
    """The protocol's read-only routes at the gateway's root or under an endpoint's URL
    (`/endpoints/{within}`: tritonclient keeps the path of the URL it is given)."""
    model = f"{prefix}/v2/models/{{model}}"
    version = f"{model}/versions/{{version}}"
    return [
        Route(f"{prefix}/v2", server_metadata, methods=["GET"]),
        Route(f"{prefix}/v2/health/live", live, methods=["GET"]),
        Route(f"{prefix}/v2/health/ready", ready, methods=["GET"]),
        # Before .../models/{model}, which would take "stats" for a model's name.
        *([Route("/v2/models/stats", all_model_stats, methods=["GET"])] if not prefix else []),
        Route(model, model_metadata, methods=["GET"]),
        Route(f"{model}/ready", model_ready, methods=["GET"]),
        Route(version, model_metadata, methods=["GET"]),
        Route(f"{version}/ready", model_ready, methods=["GET"]),
        Route(f"{model}/config", model_config, methods=["GET"]),
        Route(f"{version}/config", model_config, methods=["GET"]),
        Route(f"{model}/stats", model_stats, methods=["GET"]),
        Route(f"{version}/stats", model_stats, methods=["GET"]),
    ]


ROUTES = [
    *_protocol_routes(""),
    *_protocol_routes("/endpoints/{within}"),
    Route("/v2/repository/index", repository_index, methods=["POST"]),
    Route("/v2/repository/models/{model}/load", load_or_unload, methods=["POST"]),
    Route("/v2/repository/models/{model}/unload", load_or_unload, methods=["POST"]),
    Route("/metrics", metrics, methods=["GET"]),
]
