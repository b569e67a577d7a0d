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


async def _endpoint_and_route(request: Request) -> tuple[EndpointRoute, DeploymentRoute]:
    state = _state(request)
    endpoint = state.hosts.snapshot.endpoint(request.path_params["endpoint"])
    await state.admit(
        endpoint, request.headers.get("authorization"), client_address(request.client)
    )
    target = request.path_params.get("deployment")
    if target:
        return endpoint, endpoint.deployment(target)
    route = endpoint.default()
    if route is None:
        raise DeploymentUnavailable(f"endpoint '{endpoint.name}' has no loaded deployment")
    return endpoint, route


async def model_metadata(request: Request) -> Response:
    """GET /v2/models/{endpoint}[/versions/{deployment}]"""
    endpoint, route = await _endpoint_and_route(request)
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
    endpoint, route = await _endpoint_and_route(request)
    if "deployment" not in request.path_params and not endpoint.traffic_names:
        raise DeploymentUnavailable(
            f"endpoint '{endpoint.name}' doesn't have any valid deployment with positive weight"
        )
    problem = getattr(route.scheduler.host, "problem", None)
    if problem:
        raise DeploymentUnavailable(f"deployment '{route.name}': {problem}")
    return _json({"name": endpoint.name, "ready": True})


def _triton_tensor(spec: dict[str, object], batched: bool) -> dict[str, object]:
    shape = list(spec["shape"])  # type: ignore[call-overload]
    return {
        "name": spec["name"],
        "data_type": f"TYPE_{'STRING' if spec['datatype'] == 'BYTES' else spec['datatype']}",
        # Triton's dims leave out the batch axis of a model that batches.
        "dims": shape[1:] if batched and shape else shape,
    }


async def model_config(request: Request) -> Response:
    """GET /v2/models/{endpoint}[/versions/{deployment}]/config: the deployment as
    Triton's model configuration (what tritonclient's get_model_config reads)."""
    endpoint, route = await _endpoint_and_route(request)
    batching = route.scheduler.settings.batching
    max_batch_size = batching.max_batch_size if batching else 0
    signature = route.signature.to_dict()
    config: dict[str, object] = {
        "name": endpoint.name,
        "platform": route.kind.platform,
        "backend": route.runtime,
        "version_policy": {"specific": {"versions": [route.name]}},
        "max_batch_size": max_batch_size,
        "input": [_triton_tensor(t, max_batch_size > 0) for t in signature["inputs"]],
        "output": [_triton_tensor(t, max_batch_size > 0) for t in signature["outputs"]],
        "instance_group": [{"count": route.scheduler.instances, "kind": "KIND_CPU"}],
    }
    if batching:
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": int(batching.max_batch_delay_s * 1_000_000)
        }
    return _json(config)


def _duration(count: int, seconds: float) -> dict[str, int]:
    return {"count": count, "ns": int(seconds * 1e9)}


def _model_stats(endpoint: str, route: DeploymentRoute) -> dict[str, object]:
    m = route.metrics
    ok = sum(n for (_, status), n in m.requests.items() if status == "200")
    failed = sum(n for (_, status), n in m.requests.items() if status != "200")
    queued = sum(m.queue_duration.counts)
    inferred = sum(m.inference_duration.counts)
    return {
        "name": endpoint,
        "version": route.name,
        "last_inference": m.last_inference_ms,
        "inference_count": ok,
        "execution_count": m.executions,
        "inference_stats": {
            "success": _duration(ok, m.request_duration.total - m.failed_seconds),
            "fail": _duration(failed, m.failed_seconds),
            "queue": _duration(queued, m.queue_duration.total),
            "compute_input": _duration(inferred, 0.0),
            "compute_infer": _duration(inferred, m.inference_duration.total),
            "compute_output": _duration(inferred, 0.0),
        },
    }


async def model_stats(request: Request) -> Response:
    """GET /v2/models/{endpoint}[/versions/{deployment}]/stats: Triton's statistics
    extension, from the gateway's own counters (since this replica started)."""
    endpoint, route = await _endpoint_and_route(request)
    if "deployment" in request.path_params:
        routes = [route]
    else:
        routes = [endpoint.deployment(name) for name in sorted(endpoint.deployments)]
    return _json({"model_stats": [_model_stats(endpoint.name, r) for r in routes]})


async def all_model_stats(request: Request) -> Response:
    """GET /v2/models/stats (admin token): every deployment's statistics."""
    state = _state(request)
    caller = await principal_of(request, state)
    authorize(caller, Permission.READ, "read model statistics")
    stats = [
        _model_stats(name, endpoint.deployment(deployment))
        for name, endpoint in sorted(state.hosts.snapshot.endpoints.items())
        if caller.may_act_on(name)
        for deployment in sorted(endpoint.deployments)
    ]
    return _json({"model_stats": stats})


async def repository_index(request: Request) -> Response:
    """POST /v2/repository/index (admin token): every endpoint and deployment as
    Triton's model repository index lists models and versions."""
    state = _state(request)
    caller = await principal_of(request, state)
    authorize(caller, Permission.READ, "list the repository")
    index = []
    for name, endpoint in sorted(state.hosts.snapshot.endpoints.items()):
        if not caller.may_act_on(name):
            continue
        for deployment in sorted(endpoint.deployments):
            index.append({"name": name, "version": deployment, "state": "READY", "reason": ""})
        for deployment, why in sorted(endpoint.unavailable.items()):
            index.append(
                {"name": name, "version": deployment, "state": "UNAVAILABLE", "reason": why}
            )
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


ROUTES = [
    Route("/v2", server_metadata, methods=["GET"]),
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    # Before /v2/models/{endpoint}, which would take "stats" for an endpoint's name.
    Route("/v2/models/stats", all_model_stats, methods=["GET"]),
    Route("/v2/models/{endpoint}", model_metadata, methods=["GET"]),
    Route("/v2/models/{endpoint}/ready", model_ready, methods=["GET"]),
    Route("/v2/models/{endpoint}/versions/{deployment}", model_metadata, methods=["GET"]),
    Route("/v2/models/{endpoint}/versions/{deployment}/ready", model_ready, methods=["GET"]),
    Route("/v2/models/{endpoint}/config", model_config, methods=["GET"]),
    Route("/v2/models/{endpoint}/versions/{deployment}/config", model_config, methods=["GET"]),
    Route("/v2/models/{endpoint}/stats", model_stats, methods=["GET"]),
    Route("/v2/models/{endpoint}/versions/{deployment}/stats", model_stats, methods=["GET"]),
    Route("/v2/repository/index", repository_index, methods=["POST"]),
    Route("/v2/repository/models/{model}/load", load_or_unload, methods=["POST"]),
    Route("/v2/repository/models/{model}/unload", load_or_unload, methods=["POST"]),
    Route("/metrics", metrics, methods=["GET"]),
]
