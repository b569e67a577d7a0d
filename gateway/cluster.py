"""This gateway as one replica among several on one store.

Every `HEARTBEAT_S` the replica writes its heartbeat row: who it is, the last change it
applied, and the counters the rollout gates judge (per deployment: requests by status and
latency buckets; per mirror target: the comparison totals). A rollout controller on any
replica sums these over the live replicas (`cluster_reading`), so a gate never judges one
replica's slice of the traffic.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from deploy.records import ReplicaIdentity
from deploy.store import Store, utc_now
from gateway.metrics import DeploymentMetrics, GatewayMetrics
from gateway.mirror import MirrorStats

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
#: A replica silent for longer than this is taken as gone (status, gates).
REPLICA_TIMEOUT_S = 5.0


def _version() -> str:
    try:
        return version("servegate")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def replica_here(bind_host: str, port: int) -> ReplicaIdentity:
    """This process as a replica: a fresh id per start (host, pid and a random tag)."""
    host = socket.gethostname()
    return ReplicaIdentity(
        id=f"{host}-{os.getpid()}-{secrets.token_hex(2)}",
        host=host,
        pid=os.getpid(),
        url=f"http://{bind_host}:{port}",
        version=_version(),
        started_at=utc_now(),
    )


def reading(metrics: DeploymentMetrics) -> dict[str, Any]:
    """A deployment's live counters now: requests by status, latency buckets."""
    statuses: dict[str, int] = {}
    for (_, status), count in metrics.requests.items():
        statuses[status] = statuses.get(status, 0) + count
    histogram = metrics.request_duration
    return {
        "statuses": statuses,
        "buckets": list(histogram.counts),
        "bounds": list(histogram.bounds),
    }


def published_counters(
    metrics: GatewayMetrics, mirrors: Mapping[tuple[str, str], MirrorStats]
) -> dict[str, Any]:
    """What a replica publishes with its heartbeat."""
    return {
        "deployments": {f"{e}/{d}": reading(m) for (e, d), m in metrics.deployments.items()},
        "mirrors": {f"{e}/{d}": s.snapshot() for (e, d), s in mirrors.items()},
    }


def _add_readings(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    statuses = dict(a["statuses"])
    for status, n in b["statuses"].items():
        statuses[status] = statuses.get(status, 0) + n
    buckets = [x + y for x, y in zip(a["buckets"], b["buckets"], strict=True)]
    return {"statuses": statuses, "buckets": buckets, "bounds": a["bounds"]}


def _add_mirror(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {
        k: (max(a[k], b[k]) if k == "max_abs_diff" else a[k] + b[k]) for k in a.keys() & b.keys()
    }


def _shrank(before: Any, after: Any) -> bool:
    """A counter went down: the replica restarted, so its old reading is no baseline."""
    if isinstance(before, dict):
        return any(_shrank(v, after.get(k, 0)) for k, v in before.items() if k != "bounds")
    if isinstance(before, list):
        return any(_shrank(x, y) for x, y in zip(before, after, strict=False))
    return bool(after < before)


class ClusterView:
    """Per-replica readings of one deployment (or mirror target) across the cluster."""

    def __init__(
        self,
        store: Store,
        replica_id: str,
        local: Callable[[], dict[str, Any] | None],
        kind: str,
        key: str,
    ) -> None:
        self.store, self.replica_id, self.local = store, replica_id, local
        self.kind, self.key = kind, key

    def per_replica(self) -> dict[str, dict[str, Any]]:
        """replica id -> its counters: this replica's live, the others' as last published
        (at most HEARTBEAT_S old)."""
        found: dict[str, dict[str, Any]] = {}
        for row in self.store.list_replicas(REPLICA_TIMEOUT_S):
            if row.id == self.replica_id:
                continue
            counters = ((row.stats or {}).get(self.kind) or {}).get(self.key)
            if counters:
                found[row.id] = counters
        mine = self.local()
        if mine is not None:
            found[self.replica_id] = mine
        return found

    @staticmethod
    def totals(
        before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]], zero: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Summed (before, after) over the replicas present now. A replica that joined
        counts from zero; one that restarted counts from zero again; one that left drops
        out of both sums, so no window goes negative."""
        add = _add_mirror if "sent" in zero else _add_readings
        total_before, total_after = zero, zero
        for replica, now in after.items():
            then = before.get(replica)
            if then is None or _shrank(then, now):
                then = zero
            total_before, total_after = add(total_before, then), add(total_after, now)
        return total_before, total_after


async def every(interval_s: float, step: Callable[[], Awaitable[None]], what: str) -> None:
    """Run `step` every `interval_s` until cancelled. A failing step (the store is down)
    is logged and tried again at the next round: serving goes on meanwhile."""
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; trying again in %ss", what, interval_s)
        await asyncio.sleep(interval_s)


class Heartbeat:
    """Writes this replica's heartbeat every HEARTBEAT_S until cancelled."""

    def __init__(
        self,
        store: Store,
        identity: ReplicaIdentity,
        applied: Callable[[], int],
        counters: Callable[[], dict[str, Any]],
    ) -> None:
        self.store, self.identity = store, identity
        self.applied, self.counters = applied, counters

    async def beat(self) -> None:
        await asyncio.to_thread(
            self.store.heartbeat, self.identity, self.applied(), self.counters()
        )

    async def run(self) -> None:
        await every(HEARTBEAT_S, self.beat, "the heartbeat")

    async def leave(self) -> None:
        """A clean stop: drop the heartbeat row and every lease this replica held, so
        another replica takes its rollouts over at once instead of after the lease time."""
        await asyncio.to_thread(self.store.remove_replica, self.identity.id)
