"""Model monitors: the management routes, the schedule (one replica runs each monitor
at a time, under a lease), and what a run leads to: its record, the
`servegate_monitor_drift` gauges, and on a breach an audit entry and an event (a
webhook, or a Kafka topic)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from deploy.errors import SpecError
from deploy.records import iso
from deploy.roles import Permission
from deploy.specs import MonitorSpec
from gateway.access import authorize_endpoint, in_scope, principal
from gateway.api import Query, operation
from gateway.api_models import MonitorRunView, MonitorView
from gateway.management import MODE, STRICT, _actor, _json, _mode, _number, _spec_from_body
from gateway.state import GatewayState
from monitoring import runner

log = logging.getLogger(__name__)

#: how often the schedule looks for monitors that are due
TICK_S = 5.0
LEASE_S = 600.0


async def execute(
    state: GatewayState, spec: MonitorSpec, end: float | None = None
) -> dict[str, Any]:
    """Run a monitor over the rows logged since its last run (the first: over the last
    `every_minutes`); store the run, export its measures, announce a breach."""
    store = state.control.store
    end = end or time.time()
    last = await run_in_threadpool(store.list_monitor_runs, spec.name, 1)
    start = float(last[0]["window_end"]) if last else end - spec.every_minutes * 60
    destination = await run_in_threadpool(state.control.collected_destination, spec)
    result = await asyncio.to_thread(runner.run, spec, destination, start, end)
    run_id = await run_in_threadpool(
        state.control.record_monitor_run, spec.name, start, end, result["state"], result
    )
    record = {
        "id": run_id,
        "monitor": spec.name,
        "window_start": start,
        "window_end": end,
        "state": result["state"],
        "result": result,
    }
    state.metrics.monitored(spec.name, result)
    if result["state"] == "breach":
        await _announce(state, spec, record)
    return record


async def _announce(state: GatewayState, spec: MonitorSpec, record: dict[str, Any]) -> None:
    result = record["result"]
    breached = [
        {
            k: d[k]
            for k in ("feature", "psi", "js_distance", "null_rate", "out_of_range_rate", "breaches")
        }
        for d in [*result["features"], *result["predictions"]]
        if d["breaches"]
    ]
    event = {
        "type": "servegate.monitor.breach",
        "monitor": spec.name,
        "endpoint": spec.endpoint_name,
        "deployment": spec.deployment_name,
        "run": record["id"],
        "window": result["window"],
        "rows": result["rows"],
        "breached": breached,
    }
    reason = "; ".join(f"{b['feature']}: {', '.join(b['breaches'])}" for b in breached)
    await run_in_threadpool(state.control.record_monitor_breach, spec, event, reason)
    alert = spec.alert
    if alert.webhook:
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                answer = await client.post(alert.webhook, json=event)
                answer.raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("monitor %s: webhook %s failed: %s", spec.name, alert.webhook, exc)
    if alert.kafka is not None:
        try:
            from aiokafka import AIOKafkaProducer

            producer = AIOKafkaProducer(bootstrap_servers=alert.kafka.bootstrap_servers)
            await asyncio.wait_for(producer.start(), 5)
            try:
                await producer.send_and_wait(
                    alert.kafka.topic, orjson.dumps(event), key=spec.name.encode()
                )
            finally:
                await producer.stop()
        except Exception as exc:  # the broker down: the audit entry and metrics remain
            log.warning("monitor %s: Kafka event failed: %r", spec.name, exc)


async def supervise(state: GatewayState) -> None:
    """Run each monitor every `every_minutes` (the first run one period after this
    replica first sees it), on whichever replica holds its lease."""
    first_seen: dict[str, float] = {}
    store = state.control.store
    while True:
        await asyncio.sleep(TICK_S)
        try:
            monitors = await run_in_threadpool(store.list_monitors)
            for spec in monitors:
                now = time.time()
                last = await run_in_threadpool(store.list_monitor_runs, spec.name, 1)
                since = (
                    float(last[0]["window_end"]) if last else first_seen.setdefault(spec.name, now)
                )
                if now < since + spec.every_minutes * 60:
                    continue
                lease = f"monitor:{spec.name}"
                if not await run_in_threadpool(
                    store.acquire_lease, lease, state.identity.id, LEASE_S
                ):
                    continue
                try:
                    await execute(state, spec, now)
                finally:
                    await run_in_threadpool(store.release_lease, lease, state.identity.id)
        except asyncio.CancelledError:
            raise
        except Exception:  # a store that is down: try again next tick
            log.exception("monitor schedule")


# -- routes ------------------------------------------------------------------------------
async def _in_scope(request: Request, state: GatewayState, name: str) -> MonitorSpec:
    spec = await run_in_threadpool(state.control.get_monitor, name)
    authorize_endpoint(principal(request), spec.endpoint_name)
    return spec


def _run_view(run: dict[str, Any]) -> dict[str, Any]:
    """A run as answered: its window as ISO-8601 times (stored as epoch seconds)."""
    return {**run, "window_start": iso(run["window_start"]), "window_end": iso(run["window_end"])}


async def _view(state: GatewayState, spec: MonitorSpec) -> dict[str, Any]:
    last = await run_in_threadpool(state.control.store.list_monitor_runs, spec.name, 1)
    return {**spec.to_dict(), "last_run": _run_view(last[0]) if last else None}


@operation(
    "POST",
    "/monitors",
    "Create or update a model monitor (data drift, prediction drift, data quality)",
    tag="monitors",
    permission=Permission.OPERATE,
    body=MonitorSpec,
    response=MonitorView,
    ok_status=201,
    errors=(409,),
    query=(STRICT, MODE),
)
async def create_monitor(request: Request, state: GatewayState) -> Response:
    spec = await _spec_from_body(MonitorSpec, request)
    authorize_endpoint(principal(request), spec.endpoint_name)
    existing = await run_in_threadpool(state.control.store.get_monitor, spec.name)
    if existing is not None:  # an update may not take another endpoint's monitor
        authorize_endpoint(principal(request), existing.endpoint_name)
    await run_in_threadpool(state.control.put_monitor, spec, _actor(request), _mode(request))
    return _json(await _view(state, spec), 201)


@operation(
    "GET",
    "/monitors",
    "List model monitors",
    tag="monitors",
    permission=Permission.READ,
    response=list[MonitorView],
)
async def list_monitors(request: Request, state: GatewayState) -> Response:
    monitors = await run_in_threadpool(state.control.store.list_monitors)
    shown = in_scope(request, monitors, lambda m: m.endpoint_name)
    return _json([await _view(state, m) for m in shown])


@operation(
    "GET",
    "/monitors/{name}",
    "Show a model monitor and its last run",
    tag="monitors",
    permission=Permission.READ,
    response=MonitorView,
)
async def show_monitor(request: Request, state: GatewayState) -> Response:
    spec = await _in_scope(request, state, request.path_params["name"])
    return _json(await _view(state, spec))


@operation(
    "DELETE",
    "/monitors/{name}",
    "Delete a model monitor and its runs",
    tag="monitors",
    permission=Permission.OPERATE,
    ok_status=204,
)
async def delete_monitor(request: Request, state: GatewayState) -> Response:
    spec = await _in_scope(request, state, request.path_params["name"])
    await run_in_threadpool(state.control.delete_monitor, spec.name, _actor(request))
    return Response(status_code=204)


@operation(
    "POST",
    "/monitors/{name}/run",
    "Run a monitor now, over the rows logged since its last run",
    tag="monitors",
    permission=Permission.OPERATE,
    response=MonitorRunView,
    ok_status=201,
)
async def run_monitor(request: Request, state: GatewayState) -> Response:
    spec = await _in_scope(request, state, request.path_params["name"])
    record = await execute(state, spec)
    runs = await run_in_threadpool(state.control.store.list_monitor_runs, spec.name, 1)
    return _json(_run_view(runs[0] if runs and runs[0]["id"] == record["id"] else record), 201)


@operation(
    "GET",
    "/monitors/{name}/runs",
    "A monitor's runs, newest first",
    tag="monitors",
    permission=Permission.READ,
    response=list[MonitorRunView],
    query=(Query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),),
)
async def monitor_runs(request: Request, state: GatewayState) -> Response:
    spec = await _in_scope(request, state, request.path_params["name"])
    limit = _number(request.query_params.get("limit", "20"), "query parameter 'limit'")
    if not 1 <= limit <= 1000:
        raise SpecError(f"query parameter 'limit': must be 1-1000, got {limit}")
    runs = await run_in_threadpool(state.control.store.list_monitor_runs, spec.name, limit)
    return _json([_run_view(run) for run in runs])
