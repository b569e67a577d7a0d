"""Loaded deployments: a scheduler over an instance host per deployment, kept
in step with the store, and the routing snapshot built from both.

A new or changed deployment is loaded (and warmed) before the snapshot that
routes to it is published; a replaced or deleted one is drained after the
snapshot that no longer routes to it is published. So a change never drops a
request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool

from deploy.control import ControlPlane
from deploy.records import DeploymentIntent
from deploy.specs import DataCollectorSpec, OnlineDeploymentSpec, Probe, RayActorOptions
from gateway.autoscaler import ACTOR, Autoscaler, Record, ScalingChange
from gateway.collector import PayloadCollector
from gateway.deployment_logs import DeploymentLogs
from gateway.metrics import GatewayMetrics
from gateway.routing import DeploymentRoute, EndpointRoute, RoutingSnapshot, ServedModel
from runtimes.azure_monitoring import Sink
from runtimes.base import RuntimeConfig
from runtimes.errors import ModelLoadError
from runtimes.host_registry import HOSTS, HostRequest
from runtimes.ray_impl import RayAutoscaling, RayOptions
from runtimes.registry import describe
from runtimes.resources import cpu_reading, usable_cpus
from runtimes.scheduler import Batching, InstanceHost, Scheduler, SchedulerSettings
from runtimes.workers import WorkerProbe

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 30.0


def _fingerprint(resolved: OnlineDeploymentSpec) -> bytes:
    return orjson.dumps(resolved.to_dict(), option=orjson.OPT_SORT_KEYS)


def ray_options(resolved: OnlineDeploymentSpec) -> RayOptions:
    actor = resolved.ray_actor_options
    batching = resolved.batching
    scale = resolved.scale_settings
    return RayOptions(
        address=resolved.ray_address,
        actor_options=actor.for_ray() if actor else {},
        max_batch_size=batching.max_batch_size if batching else 1,
        batch_wait_s=batching.max_batch_delay_ms / 1000 if batching else 0.0,
        autoscaling=RayAutoscaling(
            min_replicas=scale.min_instances,
            max_replicas=scale.max_instances,
            initial_replicas=resolved.instance_count,
            target_utilization=scale.target_utilization_percentage / 100,
            polling_interval_s=scale.polling_interval,
            scale_down_delay_s=scale.scale_down_delay,
        )
        if scale.autoscaled
        else None,
    )


def _served_model(runtime: str, model_path: Path) -> ServedModel | None:
    """A deployment's model as its own format names it (a Triton model), else None."""
    found = describe(runtime, model_path)
    if found is None:
        return None
    return ServedModel(
        str(found["name"]),
        int(found["version"]),
        MappingProxyType(dict(found.get("config") or {})),
        MappingProxyType({k: tuple(v) for k, v in (found.get("labels") or {}).items()}),
    )


def scheduler_settings(resolved: OnlineDeploymentSpec) -> SchedulerSettings:
    request, batching = resolved.request_settings, resolved.batching
    if not HOSTS[resolved.host or "thread"].gateway_batching:
        batching = None  # coalesced by the host, where the model runs
    scale = resolved.scale_settings
    return SchedulerSettings(
        max_concurrent_requests_per_instance=request.max_concurrent_requests_per_instance,
        instance_count=resolved.instance_count,
        max_queue_wait_s=request.max_queue_wait_ms / 1000,
        batching=Batching(batching.max_batch_size, batching.max_batch_delay_ms / 1000)
        if batching
        else None,
        max_instances=scale.max_instances if scale.autoscaled else None,
    )


class DeploymentHosts:
    """Owns every deployment's scheduler (and through it, its instances) and the
    current RoutingSnapshot."""

    def __init__(self, control: ControlPlane, metrics: GatewayMetrics, replica: str = "") -> None:
        self.control = control
        self.metrics = metrics
        #: this gateway replica's id (named in the autoscaler's audit entries)
        self.replica = replica
        self._autoscalers: dict[Scheduler, Autoscaler] = {}
        self.snapshot = RoutingSnapshot()
        self._schedulers: dict[tuple[str, str], tuple[bytes, Scheduler]] = {}
        self._failed: dict[tuple[str, str], str] = {}
        #: tasks close() waits for: retired schedulers draining, no-wait creates and updates
        self._background: set[asyncio.Task[None]] = set()
        self._replaced: list[Scheduler] = []
        #: what each scheduler's model is called in its own format (Triton's name, version)
        self._served: dict[Scheduler, ServedModel | None] = {}
        self.collectors: dict[tuple[str, str], PayloadCollector] = {}
        #: creates and updates under way in the background (no_wait), or that failed:
        #: the spec asked for, its state (Creating, Updating, Failed) and the error
        self._provisioning: dict[tuple[str, str], tuple[OnlineDeploymentSpec, str, str]] = {}
        #: each deployment's own log (scripts' prints, worker starts and exits, load errors)
        self.logs = DeploymentLogs(control, replica)
        self._lock = asyncio.Lock()

    @property
    def lock(self) -> asyncio.Lock:
        """Held by every control-plane change, so changes apply one at a time."""
        return self._lock

    def runtime_config(self, resolved: OnlineDeploymentSpec) -> RuntimeConfig:
        """Everything a runtime instance needs, resolved from the store (blocking). The
        CPUs this process may use are split between its instances (worker processes for
        `host: process`) unless the deployment's runtime_options say otherwise."""
        settings = scheduler_settings(resolved)
        # An autoscaled deployment may run up to max_instances side by side.
        instances = HOSTS[resolved.host or "thread"].parallel_instances(
            settings.admitted_instances, settings.max_concurrent_requests_per_instance
        )
        if instances:
            threads = max(1, usable_cpus() // instances)
        else:  # instances elsewhere: the CPUs each asks its cluster for
            threads = RayActorOptions.threads(resolved.ray_actor_options)
        log.info(
            "deployment %s/%s: %d instance(s), %d compute thread(s) each (usable CPUs: %s)",
            resolved.endpoint_name,
            resolved.name,
            instances,
            threads,
            cpu_reading().describe(),
        )
        return self.control.runtime_config(resolved, threads)

    async def load(self, resolved: OnlineDeploymentSpec) -> Scheduler:
        """Load and warm a deployment's instances; raise ModelLoadError on failure."""
        config = await run_in_threadpool(self.runtime_config, resolved)
        settings = scheduler_settings(resolved)
        name = f"{resolved.endpoint_name}/{resolved.name}"
        write_log = self.logs.writer(resolved.endpoint_name, resolved.name)
        try:
            host = await self._start_host(resolved, name, config, settings, write_log)
        except ModelLoadError as exc:
            write_log(f"the deployment failed to load: {exc}")
            raise
        observer = self.metrics.for_deployment(resolved.endpoint_name, resolved.name)
        model = resolved.model
        if model is not None and model.name is not None:
            observer.model = (model.name, str(model.version or ""))
        scheduler = Scheduler(name, host, settings, observer)
        if config.model_path is not None:
            self._served[scheduler] = await run_in_threadpool(
                _served_model, resolved.runtime or "onnx", config.model_path
            )
        return scheduler

    async def _start_host(
        self,
        resolved: OnlineDeploymentSpec,
        name: str,
        config: RuntimeConfig,
        settings: SchedulerSettings,
        write_log: Callable[[str], None],
    ) -> InstanceHost:
        return await HOSTS[resolved.host or "thread"].start(
            HostRequest(
                name=name,
                runtime=resolved.runtime or "onnx",
                config=config,
                instance_count=settings.instance_count,
                max_concurrent_requests_per_instance=settings.max_concurrent_requests_per_instance,
                batching=settings.batching is not None,
                # A worker silent for longer than a request may last is hung: replace it.
                hang_timeout_s=resolved.request_settings.request_timeout_ms / 1000 + 1.0,
                ray=ray_options(resolved),
                fingerprint=_fingerprint(resolved),
                log=write_log,
                collect=self._collected_rows((resolved.endpoint_name, resolved.name)),
                liveness=_worker_probe(resolved.liveness_probe),
                readiness=_worker_probe(resolved.readiness_probe),
            )
        )

    def _collected_rows(self, key: tuple[str, str]) -> Sink:
        """Where a deployment's scripts' collected rows go: its data collector, on the
        event loop (they arrive on worker I/O threads)."""
        loop = asyncio.get_running_loop()

        def collect(name: str, rows: list[dict[str, Any]], context: str) -> None:
            collector = self.collectors.get(key)
            if collector is not None:
                loop.call_soon_threadsafe(collector.offer_rows, name, rows, context)

        return collect

    def adopt(self, resolved: OnlineDeploymentSpec, scheduler: Scheduler) -> None:
        """Take ownership of a scheduler made by `load`, retiring the one it replaces."""
        key = (resolved.endpoint_name, resolved.name)
        self._collector_for(key, resolved.data_collector)
        old = self._schedulers.get(key)
        self._schedulers[key] = (_fingerprint(resolved), scheduler)
        self._failed.pop(key, None)
        if old is not None and old[1] is not scheduler:
            # Retired once the snapshot without it is published (in `sync`).
            self._replaced.append(old[1])
        scale = resolved.scale_settings
        if scale.autoscaled and scheduler not in self._autoscalers:
            autoscaler = Autoscaler(scheduler.name, scheduler, scale, self._recorder(resolved))
            self._autoscalers[scheduler] = autoscaler
            autoscaler.start()

    def _recorder(self, resolved: OnlineDeploymentSpec) -> Record:
        endpoint, name = resolved.endpoint_name, resolved.name
        where = f" (gateway replica {self.replica})" if self.replica else ""

        async def record(change: ScalingChange) -> None:
            try:
                await run_in_threadpool(
                    self.control.record_scaling,
                    endpoint,
                    name,
                    change.before,
                    change.after,
                    change.reason + where,
                    ACTOR,
                )
            except Exception as exc:  # the store is down: the scaling itself stands
                log.warning("could not audit scaling of %s/%s: %s", endpoint, name, exc)

        return record

    async def sync(self) -> RoutingSnapshot:
        """Bring schedulers in line with the store, then publish a new snapshot."""
        stored = await run_in_threadpool(self.control.store.list_deployments)
        wanted = {(d.endpoint_name, d.name): d for d in stored}
        for key, resolved in wanted.items():
            current = self._schedulers.get(key)
            if current is not None and current[0] == _fingerprint(resolved):
                continue
            try:
                self.adopt(resolved, await self.load(resolved))
            except ModelLoadError as exc:
                log.error("deployment %s/%s failed to load: %s", *key, exc)
                self._failed[key] = str(exc)
        self.snapshot = await run_in_threadpool(self._build, wanted)
        for key in [k for k in self._schedulers if k not in wanted]:
            self._retire(self._schedulers.pop(key)[1])
            self._collector_for(key, None)
        while self._replaced:
            self._retire(self._replaced.pop())
        for key in [k for k in self._failed if k not in wanted]:
            del self._failed[key]
        return self.snapshot

    def _collector_for(self, key: tuple[str, str], spec: DataCollectorSpec | None) -> None:
        old = self.collectors.pop(key, None)
        if old is not None:
            asyncio.get_running_loop().create_task(old.close())
        if spec:
            settings = self.control.settings
            artifacts = settings.artifacts if settings else str(self.control.artifacts.home)
            collector = PayloadCollector(*key, spec, artifacts)
            collector.start()
            self.collectors[key] = collector

    def _build(self, wanted: dict[tuple[str, str], OnlineDeploymentSpec]) -> RoutingSnapshot:
        store = self.control.store
        change_id = store.last_change_id()
        endpoints = {}
        for spec in store.list_endpoints():
            name = spec.name
            routes, unavailable = {}, {}
            for (endpoint, deployment), resolved in wanted.items():
                if endpoint != name:
                    continue
                if (endpoint, deployment) in self._schedulers:
                    model = resolved.model
                    routes[deployment] = DeploymentRoute(
                        endpoint=endpoint,
                        name=deployment,
                        metrics=self.metrics.for_deployment(endpoint, deployment),
                        scheduler=self._schedulers[(endpoint, deployment)][1],
                        model_name=(model.name or "") if model else "",
                        model_version=(model.version or 0) if model else 0,
                        runtime=resolved.runtime or "onnx",
                        request_timeout_s=resolved.request_settings.request_timeout_ms / 1000,
                        collector=self.collectors.get((endpoint, deployment)),
                        served=self._served.get(self._schedulers[(endpoint, deployment)][1]),
                    )
                else:
                    unavailable[deployment] = self._failed.get((endpoint, deployment), "not loaded")
            key_hashes = tuple(k.key_hash for k in store.get_keys(name).values())
            endpoints[name] = EndpointRoute.build(
                name,
                spec.auth_mode,
                key_hashes,
                spec.traffic,
                routes,
                unavailable,
                spec.mirror_traffic,
                spec.sticky_routing_header,
                tuple(spec.token_audiences),
                spec.rate_limit.bucket if spec.rate_limit else None,
            )
        return RoutingSnapshot.build(endpoints, change_id)

    def provisioning(
        self,
        intent: DeploymentIntent,
        work: Coroutine[Any, Any, tuple[OnlineDeploymentSpec, list[str]]],
    ) -> dict[str, Any]:
        """Run a create or update (`--no-wait`, recorded as `intent`) in the background;
        until it ends, `health` (and `pending`, before it is stored) say its state, then
        its outcome, here and (from the store) on every replica."""
        spec, state = OnlineDeploymentSpec.model_validate(intent.spec), intent.state
        key = (spec.endpoint_name, spec.name)
        self._provisioning[key] = (spec, state, "")

        async def run() -> None:
            try:
                await work
            except Exception as exc:
                self._provisioning[key] = (spec, "Failed", str(exc))
                verb = "create" if state == "Creating" else "update"
                self.logs.write(*key, f"the deployment failed to {verb}: {exc}")
                await asyncio.to_thread(self.control.finish_intent, intent, str(exc))
            else:
                self._provisioning.pop(key, None)
                await asyncio.to_thread(self.control.finish_intent, intent)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return {"provisioning_state": state, "instances_ready": 0}

    def pending(self, endpoint: str, name: str) -> dict[str, Any] | None:
        """A deployment not stored (yet): being created with no_wait, or failed to be
        (what this replica does, else the intent in the store)."""
        found = self._provisioning.get((endpoint, name))
        if found is None:
            intent = self.control.deployment_intent(endpoint, name)
            if intent is None:
                return None
            found = (OnlineDeploymentSpec.model_validate(intent.spec), intent.state, intent.error)
        spec, state, error = found
        shown = {**spec.to_dict(), "provisioning_state": state, "instances_ready": 0}
        return {**shown, "error": error} if error else shown

    def forget_failure(self, endpoint: str, name: str) -> None:
        """A failed no_wait create or update, deleted: no longer shown."""
        found = self._provisioning.get((endpoint, name))
        if found is not None and found[1] == "Failed":
            del self._provisioning[(endpoint, name)]

    def working_on(self, endpoint: str, name: str) -> bool:
        """Whether this replica runs a no_wait create or update of the deployment now."""
        found = self._provisioning.get((endpoint, name))
        return found is not None and found[1] != "Failed"

    def health(self, endpoint: str, name: str) -> dict[str, Any]:
        """What `deployment show` says of a deployment on this replica, as Azure ML does:
        `provisioning_state` (Succeeded: loaded and routed to; Failed: it could not load
        here, `error` says why) and the instances ready to serve."""
        key = (endpoint, name)
        running = self._schedulers.get(key)
        if key in self._provisioning:  # an update under way (no_wait), or its failure
            _, state, error = self._provisioning[key]
            under_way = {
                "provisioning_state": state,
                "instances_ready": running[1].instances if running else 0,
            }
            return {**under_way, "error": error} if error else under_way
        if key in self._failed:
            return {
                "provisioning_state": "Failed",
                "instances_ready": 0,
                "error": self._failed[key],
            }
        if running is None:
            return {"provisioning_state": "Creating", "instances_ready": 0}
        scheduler = running[1]
        problem = getattr(scheduler.host, "problem", None)
        view: dict[str, Any] = {
            "provisioning_state": "Succeeded",
            "instances_ready": 0 if problem else scheduler.instances_ready,
        }
        if problem:
            view["error"] = problem
        return view

    def problems(self) -> dict[str, str]:
        """Deployments whose host cannot serve now ("endpoint/deployment" -> why)."""
        found = {}
        for scheduler in self.schedulers:
            problem = getattr(scheduler.host, "problem", None)
            if problem:
                found[scheduler.name] = problem
        return found

    @property
    def schedulers(self) -> list[Scheduler]:
        return [scheduler for _, scheduler in self._schedulers.values()]

    def _retire(self, scheduler: Scheduler) -> None:
        self._served.pop(scheduler, None)
        # The snapshot without it is already published; new requests that still
        # hold the old route get Retired and are routed again.
        scheduler.retire()
        autoscaler = self._autoscalers.pop(scheduler, None)

        async def drain_and_close() -> None:
            if autoscaler is not None:
                await autoscaler.stop()
            if not await scheduler.drain(DRAIN_TIMEOUT_S):
                log.warning(
                    "deployment %s still busy after %ss; closing", scheduler.name, DRAIN_TIMEOUT_S
                )
            await scheduler.close()

        task = asyncio.get_running_loop().create_task(drain_and_close())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Drain and close everything (graceful shutdown)."""
        for _, scheduler in self._schedulers.values():
            self._retire(scheduler)
        self._schedulers.clear()
        for collector in self.collectors.values():
            await collector.close()
        self.collectors.clear()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _worker_probe(probe: Probe | None) -> WorkerProbe | None:
    if probe is None:
        return None
    return WorkerProbe(
        probe.initial_delay,
        probe.period,
        probe.timeout,
        probe.failure_threshold,
        probe.success_threshold,
    )
