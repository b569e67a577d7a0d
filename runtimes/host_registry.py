"""Instance hosts by name: where a deployment's instances run (`host:` in its spec).

Each entry starts a host for one deployment from the same request, so the gateway
does not branch on the host's name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from runtimes.azure_monitoring import Sink
from runtimes.base import RuntimeConfig
from runtimes.hosts import ThreadHost
from runtimes.ray_impl import RayOptions
from runtimes.registry import load_runtime
from runtimes.scheduler import InstanceHost
from runtimes.workers import WorkerProbe


@dataclass(frozen=True)
class HostRequest:
    """What any host needs to start one deployment's instances."""

    name: str
    runtime: str
    config: RuntimeConfig
    instance_count: int
    max_concurrent_requests_per_instance: int
    batching: bool
    #: a call silent for longer than this is hung (hosts that can replace a worker)
    hang_timeout_s: float
    #: `host: ray`: the cluster, each replica's resources and its batching
    ray: RayOptions = field(default_factory=RayOptions)
    #: what the deployment runs, hashed (names its Ray Serve application)
    fingerprint: bytes = b""
    #: the deployment's log (`get-logs`): hosts that run instances in processes send what
    #: those print and log, and their starts and exits
    log: Callable[[str], None] | None = None
    #: where rows that scoring scripts collect (Azure's Collector) go, from any thread
    collect: Sink | None = None
    #: `liveness_probe` and `readiness_probe` (worker processes)
    liveness: WorkerProbe | None = None
    readiness: WorkerProbe | None = None


@dataclass(frozen=True)
class HostKind:
    name: str
    start: Callable[[HostRequest], Awaitable[InstanceHost]]
    #: (instance_count, max_concurrent_requests_per_instance) -> how many instances the
    #: host runs side by side, which share the usable CPUs (sizes their threads); 0 for a
    #: host whose instances run elsewhere (they get the CPUs they ask their cluster for)
    parallel_instances: Callable[[int, int], int]
    #: the gateway batches requests for it (False: the host batches where the model runs)
    gateway_batching: bool = True


async def _start_threads(request: HostRequest) -> InstanceHost:
    # A batching deployment makes one call per instance at a time (the batch); else each
    # instance takes its concurrent requests side by side.
    calls = 1 if request.batching else request.max_concurrent_requests_per_instance
    return await asyncio.to_thread(
        ThreadHost.load,
        request.name,
        request.instance_count,
        calls,
        lambda: load_runtime(request.runtime, request.config),
    )


def _worker_count(instance_count: int, max_concurrent_requests_per_instance: int) -> int:
    # One call at a time per worker process.
    return instance_count * max_concurrent_requests_per_instance


async def _start_processes(request: HostRequest) -> InstanceHost:
    from runtimes.workers import ProcessHost

    return await ProcessHost.start(
        request.name,
        request.runtime,
        request.config,
        _worker_count(request.instance_count, request.max_concurrent_requests_per_instance),
        request.hang_timeout_s,
        per_instance=request.max_concurrent_requests_per_instance,
        log=request.log,
        collect=request.collect,
        liveness=request.liveness,
        readiness=request.readiness,
    )


async def _start_ray(request: HostRequest) -> InstanceHost:
    from runtimes.ray_impl import RayServeHost

    return await asyncio.to_thread(
        RayServeHost.deploy,
        request.name,
        request.runtime,
        request.config,
        request.instance_count,
        request.max_concurrent_requests_per_instance,
        request.ray,
        request.fingerprint,
    )


HOSTS: dict[str, HostKind] = {
    kind.name: kind
    for kind in (
        HostKind("thread", _start_threads, lambda instances, _: instances),
        HostKind("process", _start_processes, _worker_count),
        HostKind("ray", _start_ray, lambda _, __: 0, gateway_batching=False),
    )
}
