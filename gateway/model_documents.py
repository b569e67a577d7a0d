"""What the Open Inference Protocol says about a model, for HTTP and gRPC alike: its
metadata, its Triton model configuration and its statistics.

A model is asked for by its endpoint's name or, for a Triton model, by its own name
(`routing.RoutingSnapshot.model`); a Triton model answers with its own name, its version
and the configuration its repository gives (auto-completed), as Triton does.
"""

from __future__ import annotations

from typing import Any

from gateway.routing import DeploymentRoute, EndpointRoute


def _version(route: DeploymentRoute) -> str:
    return str(route.served.version) if route.served is not None else route.name


def metadata(
    asked: str, endpoint: EndpointRoute, route: DeploymentRoute, pinned: bool
) -> dict[str, Any]:
    """The protocol's model metadata: the versions are the deployments (or the Triton
    model's version)."""
    if route.served is not None:
        versions = [_version(route)]
    elif pinned:
        versions = [route.name]
    else:
        versions = sorted(endpoint.deployments)
    signature = route.signature.to_dict()
    return {
        "name": asked,
        "versions": versions,
        "platform": route.kind.platform,
        "inputs": signature["inputs"],
        "outputs": signature["outputs"],
    }


def _triton_tensor(spec: dict[str, Any], batched: bool) -> dict[str, Any]:
    shape = list(spec["shape"])
    return {
        "name": spec["name"],
        "data_type": f"TYPE_{'STRING' if spec['datatype'] == 'BYTES' else spec['datatype']}",
        # Triton's dims leave out the batch axis of a model that batches.
        "dims": shape[1:] if batched and shape else shape,
    }


def config(asked: str, route: DeploymentRoute) -> dict[str, Any]:
    """Triton's model configuration (what tritonclient's get_model_config reads): a Triton
    model's own, else the deployment described in its terms."""
    if route.served is not None and route.served.config:
        return {**route.served.config, "name": asked}
    batching = route.scheduler.settings.batching
    max_batch_size = batching.max_batch_size if batching else 0
    signature = route.signature.to_dict()
    found: dict[str, Any] = {
        "name": asked,
        "platform": route.kind.platform,
        "backend": route.runtime,
        "version_policy": {"specific": {"versions": [route.name]}},
        "max_batch_size": max_batch_size,
        "input": [_triton_tensor(t, max_batch_size > 0) for t in signature["inputs"]],
        "output": [_triton_tensor(t, max_batch_size > 0) for t in signature["outputs"]],
        "instance_group": [{"count": route.scheduler.instances, "kind": "KIND_CPU"}],
    }
    if batching:
        found["dynamic_batching"] = {
            "max_queue_delay_microseconds": int(batching.max_batch_delay_s * 1_000_000)
        }
    return found


def _duration(count: int, seconds: float) -> dict[str, int]:
    return {"count": count, "ns": int(seconds * 1e9)}


def statistics(asked: str, route: DeploymentRoute) -> dict[str, Any]:
    """Triton's statistics extension from the gateway's own counters (since this replica
    started): `inference_count` counts batch elements, `execution_count` runtime calls."""
    m = route.metrics
    ok = sum(n for (_, status), n in m.requests.items() if status == "200")
    failed = sum(n for (_, status), n in m.requests.items() if status != "200")
    queued = sum(m.queue_duration.counts)
    inferred = sum(m.inference_duration.counts)
    return {
        "name": asked,
        "version": _version(route),
        "last_inference": m.last_inference_ms,
        "inference_count": m.inferences,
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


def index_entries(name: str, endpoint: EndpointRoute) -> list[dict[str, Any]]:
    """Triton's repository index rows for one endpoint: a Triton model by its own name and
    version, other deployments by the endpoint's name and the deployment's."""
    rows = []
    for deployment in sorted(endpoint.deployments):
        route = endpoint.deployments[deployment]
        shown = route.served.name if route.served is not None else name
        rows.append({"name": shown, "version": _version(route), "state": "READY", "reason": ""})
    for deployment, why in sorted(endpoint.unavailable.items()):
        rows.append({"name": name, "version": deployment, "state": "UNAVAILABLE", "reason": why})
    return rows
