"""Loaded deployments: instance pools kept in step with the store, and the
routing snapshot built from both.

A new or changed deployment is loaded (and warmed) before the snapshot that
routes to it is published; a replaced or deleted one is drained after the
snapshot that no longer routes to it is published. So a change never drops a
request.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool

from deploy.control import ControlPlane
from gateway.routing import DeploymentRoute, EndpointRoute, RoutingSnapshot
from runtimes.base import RuntimeConfig
from runtimes.errors import ModelLoadError
from runtimes.instances import InstancePool
from runtimes.registry import load_runtime

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 30.0


def _fingerprint(resolved: dict[str, Any]) -> bytes:
    return orjson.dumps(resolved, option=orjson.OPT_SORT_KEYS)


class DeploymentHosts:
    """Owns every loaded InstancePool and the current RoutingSnapshot."""

    def __init__(self, control: ControlPlane) -> None:
        self.control = control
        self.snapshot = RoutingSnapshot()
        self._pools: dict[tuple[str, str], tuple[bytes, InstancePool]] = {}
        self._failed: dict[tuple[str, str], str] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    @property
    def lock(self) -> asyncio.Lock:
        """Held by every control-plane change, so changes apply one at a time."""
        return self._lock

    def _runtime_config(self, resolved: dict[str, Any]) -> tuple[str, RuntimeConfig, int]:
        model = self.control.get_model(resolved["model"]["name"], resolved["model"]["version"])
        count = int(resolved["instance_count"])
        options = dict(resolved.get("runtime_options") or {})
        # Split the cores between instances unless the deployment says otherwise.
        options.setdefault("intra_op_num_threads", max(1, (os.cpu_count() or 1) // count))
        config = RuntimeConfig(self.control.model_path(model), resolved["device"], options)
        return resolved["runtime"], config, count

    async def load(self, resolved: dict[str, Any]) -> InstancePool:
        """Load and warm a deployment's instances; raise ModelLoadError on failure."""
        runtime, config, count = await run_in_threadpool(self._runtime_config, resolved)
        name = f"{resolved['endpoint_name']}-{resolved['name']}"
        return await run_in_threadpool(
            InstancePool.load, name, count, lambda: load_runtime(runtime, config)
        )

    def adopt(self, resolved: dict[str, Any], pool: InstancePool) -> None:
        """Take ownership of a pool loaded by `load`, retiring the one it replaces."""
        key = (resolved["endpoint_name"], resolved["name"])
        old = self._pools.get(key)
        self._pools[key] = (_fingerprint(resolved), pool)
        self._failed.pop(key, None)
        if old is not None and old[1] is not pool:
            self._retire(old[1])

    async def sync(self) -> RoutingSnapshot:
        """Bring pools in line with the store, then publish a new snapshot."""
        stored = await run_in_threadpool(self.control.store.list_deployments)
        wanted = {(d["endpoint_name"], d["name"]): d for d in stored}
        for key, resolved in wanted.items():
            current = self._pools.get(key)
            if current is not None and current[0] == _fingerprint(resolved):
                continue
            try:
                self.adopt(resolved, await self.load(resolved))
            except ModelLoadError as exc:
                log.error("deployment %s/%s failed to load: %s", *key, exc)
                self._failed[key] = str(exc)
        self.snapshot = await run_in_threadpool(self._build, wanted)
        for key in [k for k in self._pools if k not in wanted]:
            self._retire(self._pools.pop(key)[1])
        for key in [k for k in self._failed if k not in wanted]:
            del self._failed[key]
        return self.snapshot

    def _build(self, wanted: dict[tuple[str, str], dict[str, Any]]) -> RoutingSnapshot:
        store = self.control.store
        change_id = store.last_change_id()
        endpoints = {}
        for spec in store.list_endpoints():
            name = spec["name"]
            routes, unavailable = {}, {}
            for (endpoint, deployment), resolved in wanted.items():
                if endpoint != name:
                    continue
                if (endpoint, deployment) in self._pools:
                    routes[deployment] = DeploymentRoute(
                        endpoint=endpoint,
                        name=deployment,
                        pool=self._pools[(endpoint, deployment)][1],
                        model_name=resolved["model"]["name"],
                        model_version=resolved["model"]["version"],
                        runtime=resolved["runtime"],
                        request_timeout_s=resolved["request_settings"]["request_timeout_ms"] / 1000,
                    )
                else:
                    unavailable[deployment] = self._failed.get((endpoint, deployment), "not loaded")
            key_hashes = tuple(k.key_hash for k in store.get_keys(name).values())
            endpoints[name] = EndpointRoute.build(
                name, spec["auth_mode"], key_hashes, spec["traffic"], routes, unavailable
            )
        return RoutingSnapshot(endpoints, change_id)

    def _retire(self, pool: InstancePool) -> None:
        async def drain_and_close() -> None:
            if not await pool.drain(DRAIN_TIMEOUT_S):
                log.warning(
                    "deployment %s still busy after %ss; closing", pool.name, DRAIN_TIMEOUT_S
                )
            await run_in_threadpool(pool.close)

        task = asyncio.get_running_loop().create_task(drain_and_close())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        """Drain and close everything (graceful shutdown)."""
        for _, pool in self._pools.values():
            self._retire(pool)
        self._pools.clear()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
