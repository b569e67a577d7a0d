"""The rollout controller: runs inside the gateway (not the CLI), so a rollout
goes on when the CLI disconnects; its state lives in the store.

With several replicas on one store, one replica at a time drives a given rollout: the
holder of the lease `rollout/<id>`, renewed while it drives. Every replica checks for
active rollouts whose lease is free (the holder died or stopped) and takes them over; the
rollout continues from its stored phase (that phase's window starts again). Gates judge
the candidate's counters summed over every live replica (`gateway.cluster`).

Every traffic change is made through the control plane as actor `rollout <id>` with a
reason naming the replica that drove it, so the audit log tells the whole story.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool

from deploy.errors import Conflict, NotFound, SpecError
from deploy.records import RolloutRecord, RolloutState
from deploy.rollout import (
    RolloutPlan,
    Verdict,
    judge_mirror,
    judge_step,
    step_traffic,
    window,
)
from deploy.store import utc_now
from gateway.cluster import ClusterView, every, reading
from gateway.mirror import MirrorStats
from gateway.state import GatewayState

log = logging.getLogger(__name__)

CHECK_EVERY_S = 0.25
#: A phase without enough requests to judge is extended up to this many intervals.
MAX_EXTENSIONS = 10
#: The driver renews its lease every LEASE_RENEW_S; another replica takes the rollout
#: over at most LEASE_TTL_S after the driver's last renewal.
LEASE_TTL_S = 10.0
LEASE_RENEW_S = 2.0
#: How often every replica looks for active rollouts nobody drives (well inside the
#: lease time; each look is a store query off the event loop).
SUPERVISE_EVERY_S = 2.0


class LeaseLost(Exception):
    """Another replica drives this rollout now, or it was finished elsewhere (abort)."""


def lease_name(rollout_id: str) -> str:
    return f"rollout/{rollout_id}"


def _without(mirror: dict[str, int], deployment: str) -> dict[str, int]:
    # A deployment that takes live traffic may not be mirrored to (Azure ML's rule).
    return {name: pct for name, pct in mirror.items() if name != deployment}


class RolloutController:
    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._renewed: dict[str, float] = {}
        #: rollout id -> the latest verdict's summary (for `rollout status`)
        self.judgements: dict[str, dict[str, Any]] = {}

    # -- API ---------------------------------------------------------------------
    async def start(self, endpoint: str, plan: RolloutPlan, actor: str) -> RolloutRecord:
        control = self.state.control
        async with self.state.hosts.lock:
            spec = await run_in_threadpool(control.get_endpoint, endpoint)
            if self.active(endpoint) is not None:
                raise Conflict(
                    f"endpoint '{endpoint}' already has a rollout in progress; "
                    "abort it first (servegate rollout abort)"
                )
            deployments = set(self.state.hosts.snapshot.endpoint(endpoint).deployments)
            source = plan.from_ or max(spec.traffic, key=spec.traffic.__getitem__, default=None)
            for role, name in (("to", plan.to), ("from", source)):
                if name is None or name not in deployments:
                    raise SpecError(
                        f"field '{role}': deployment '{name}' is not a loaded deployment "
                        f"of endpoint '{endpoint}'"
                    )
            assert source is not None
            if source == plan.to:
                raise SpecError(
                    "field 'to': the candidate must differ from the deployment it replaces"
                )
            rollout_id = f"{endpoint}-{secrets.token_hex(4)}"
            # The lease first: once the record is stored, any replica looking for rollouts
            # nobody drives would find this one.
            await self._take_lease(rollout_id)
            record = RolloutRecord.model_validate(
                {
                    "id": rollout_id,
                    "endpoint": endpoint,
                    "from": source,
                    "to": plan.to,
                    "plan": plan.model_dump(by_alias=True),
                    "state": (
                        RolloutState.MIRRORING if plan.mirror_first_s else RolloutState.STEPPING
                    ),
                    "step": 0,
                    "original_traffic": spec.traffic,
                    "original_mirror": spec.mirror_traffic,
                    "started_at": utc_now(),
                    "started_by": actor,
                }
            ).noted(f"started by {actor}: {source} -> {plan.to}, steps {plan.steps}")
            await run_in_threadpool(control.save_rollout, record)
        self._spawn(record.id)
        return record

    async def abort(self, endpoint: str, actor: str) -> RolloutRecord:
        """From any replica: the record is finished in the store, so the replica driving
        it (here or elsewhere) stops at its next check, and its writes are refused."""
        record = self.active(endpoint)
        if record is None:
            raise NotFound(f"endpoint '{endpoint}' has no rollout in progress")
        task = self._tasks.pop(record.id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finished = await self._finish(
            record, RolloutState.ABORTED, f"aborted by {actor}", rollback=True
        )
        if finished is None:
            raise NotFound(f"endpoint '{endpoint}' has no rollout in progress")
        return finished

    def active(self, endpoint: str) -> RolloutRecord | None:
        for record in self.state.control.store.list_rollouts(endpoint, limit=5):
            if record.active:
                return record
        return None

    def status(self, endpoint: str) -> dict[str, Any]:
        records = self.state.control.store.list_rollouts(endpoint, limit=1)
        if not records:
            raise NotFound(f"endpoint '{endpoint}' has no rollouts")
        record = records[0]
        spec = self.state.control.get_endpoint(endpoint)
        return {
            **record.to_dict(),
            "traffic": spec.traffic,
            "mirror_traffic": spec.mirror_traffic,
            "judgement": self.judgements.get(record.id),
        }

    async def supervise(self) -> None:
        """Until cancelled: drive every active rollout whose lease is free."""
        await every(SUPERVISE_EVERY_S, self.adopt_orphans, "looking for rollouts to drive")

    async def adopt_orphans(self) -> None:
        store = self.state.control.store
        for record in await run_in_threadpool(store.list_rollouts, None, 1000):
            if not record.active or record.id in self._tasks:
                continue
            if not await self._take_lease(record.id):
                continue
            taken = record.noted(f"taken over by replica {self.replica}")
            if await run_in_threadpool(self._save, taken, None):
                self._spawn(record.id)

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()

    # -- the lease -----------------------------------------------------------------
    @property
    def replica(self) -> str:
        return self.state.identity.id

    async def _take_lease(self, rollout_id: str) -> bool:
        taken = await run_in_threadpool(
            self.state.control.store.acquire_lease,
            lease_name(rollout_id),
            self.replica,
            LEASE_TTL_S,
        )
        if taken:
            self._renewed[rollout_id] = asyncio.get_running_loop().time()
        return taken

    async def _renew(self, rollout_id: str) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._renewed.get(rollout_id, 0.0) < LEASE_RENEW_S:
            return
        if not await self._take_lease(rollout_id):
            raise LeaseLost(f"replica {self.replica} lost the lease of rollout {rollout_id}")
        stored = await run_in_threadpool(self.state.control.store.get_rollout, rollout_id)
        if stored is None or not stored.active:
            raise LeaseLost(f"rollout {rollout_id} was finished elsewhere")

    def _save(
        self, record: RolloutRecord, changes: dict[str, Any] | None, reason: str = ""
    ) -> bool:
        return self.state.control.advance_rollout(
            record, changes, f"{reason} [replica {self.replica}]"
        )

    # -- driving -------------------------------------------------------------------
    def _spawn(self, rollout_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._drive(rollout_id))
        self._tasks[rollout_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(rollout_id, None))

    async def _drive(self, rollout_id: str) -> None:
        """Run the stored rollout's current phase, again and again, until it is over."""
        store = self.state.control.store
        try:
            while True:
                record = await run_in_threadpool(store.get_rollout, rollout_id)
                if record is None or not record.active:
                    return
                plan = RolloutPlan.model_validate(record.plan)
                if record.state == RolloutState.MIRRORING:
                    await self._mirror_phase(record, plan)
                else:
                    await self._step_phase(record, plan)
        except asyncio.CancelledError:
            raise
        except LeaseLost as exc:
            log.info("rollout %s: %s", rollout_id, exc)
        except Exception as exc:  # a broken controller must not leave traffic half-moved
            log.exception("rollout %s failed", rollout_id)
            failed = await run_in_threadpool(store.get_rollout, rollout_id)
            if failed is not None and failed.active:
                await self._finish(
                    failed, RolloutState.ROLLED_BACK, f"controller error: {exc}", rollback=True
                )

    async def _mirror_phase(self, record: RolloutRecord, plan: RolloutPlan) -> None:
        endpoint, candidate = record.endpoint, record.target
        record = await self._set_traffic(
            record,
            record.original_traffic,
            {candidate: plan.mirror_percent},
            f"mirror {plan.mirror_percent}% to {candidate} for {plan.mirror_first_s:g}s",
        )
        stats = self.state.mirror.stats_for(endpoint, candidate)
        view = ClusterView(
            self.state.control.store,
            self.replica,
            stats.snapshot,
            "mirrors",
            f"{endpoint}/{candidate}",
        )
        zero = MirrorStats().snapshot()
        before = await run_in_threadpool(view.per_replica)

        def judge_now(after: dict[str, dict[str, Any]]) -> Verdict:
            return judge_mirror(plan, *ClusterView.totals(before, after, zero))

        verdict = await self._watch(record, plan.mirror_first_s, view, judge_now)
        if verdict is None:
            return
        passed = record.noted(
            f"mirror phase passed: {verdict.summary}", state=RolloutState.STEPPING, step=0
        )
        await self._set_traffic(
            passed,
            record.original_traffic,
            _without(record.original_mirror, candidate),
            "mirror phase passed",
        )

    async def _step_phase(self, record: RolloutRecord, plan: RolloutPlan) -> None:
        endpoint, candidate = record.endpoint, record.target
        percent = plan.steps[record.step]
        traffic = step_traffic(record.original_traffic, record.source, candidate, percent)
        record = await self._set_traffic(
            record,
            traffic,
            _without(record.original_mirror, candidate),
            f"step {record.step + 1}/{len(plan.steps)}: {candidate} {percent}%",
        )
        metrics = self.state.metrics.for_deployment(endpoint, candidate)
        view = ClusterView(
            self.state.control.store,
            self.replica,
            lambda: reading(metrics),
            "deployments",
            f"{endpoint}/{candidate}",
        )
        local = reading(metrics)
        zero = {"statuses": {}, "buckets": [0] * len(local["buckets"]), "bounds": local["bounds"]}
        before = await run_in_threadpool(view.per_replica)

        def judge_now(after: dict[str, dict[str, Any]]) -> Verdict:
            return judge_step(plan, window(*ClusterView.totals(before, after, zero)))

        verdict = await self._watch(record, plan.step_interval_s, view, judge_now)
        if verdict is None:
            return
        record = record.noted(f"step {percent}% passed: {verdict.summary}", step=record.step + 1)
        if record.step < len(plan.steps):
            if not await run_in_threadpool(self._save, record, None):
                raise LeaseLost(f"rollout {record.id} was finished elsewhere")
            return
        if plan.delete_old:
            record = await self._delete_old(record)
        await self._finish(
            record, RolloutState.SUCCEEDED, f"{candidate} takes 100% of traffic", rollback=False
        )

    async def _watch(
        self,
        record: RolloutRecord,
        interval_s: float,
        view: ClusterView,
        judge: Callable[[dict[str, dict[str, Any]]], Verdict],
    ) -> Verdict | None:
        """Judge the cluster's counters every CHECK_EVERY_S until the interval ends (and
        the window has enough requests), renewing the lease. None when a gate was
        breached and the rollout rolled back. LeaseLost when it is no longer ours."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            await self._renew(record.id)
            verdict = judge(await run_in_threadpool(view.per_replica))
            self.judgements[record.id] = {
                **verdict.summary,
                "phase_elapsed_s": round(loop.time() - started, 2),
            }
            if verdict.breach:
                phase = (
                    "mirror phase"
                    if record.state == RolloutState.MIRRORING
                    else f"step {RolloutPlan.model_validate(record.plan).steps[record.step]}%"
                )
                await self._finish(
                    record, RolloutState.ROLLED_BACK, f"{phase}: {verdict.breach}", rollback=True
                )
                return None
            elapsed = loop.time() - started
            if elapsed >= interval_s and verdict.ready:
                return verdict
            if elapsed >= interval_s * MAX_EXTENSIONS:
                await self._finish(
                    record,
                    RolloutState.ROLLED_BACK,
                    f"not enough traffic to judge: {verdict.summary}",
                    rollback=True,
                )
                return None

    # -- effects -------------------------------------------------------------------
    async def _set_traffic(
        self, record: RolloutRecord, traffic: dict[str, int], mirror: dict[str, int], reason: str
    ) -> RolloutRecord:
        record = record.noted(reason)
        await self._apply(record, {"traffic": traffic, "mirror_traffic": mirror}, reason)
        return record

    async def _apply(self, record: RolloutRecord, changes: dict[str, Any], reason: str) -> None:
        async with self.state.hosts.lock:
            saved = await run_in_threadpool(self._save, record, changes, reason)
            await self.state.hosts.sync()
        if not saved:
            raise LeaseLost(f"rollout {record.id} was finished elsewhere")

    async def _delete_old(self, record: RolloutRecord) -> RolloutRecord:
        final = step_traffic(record.original_traffic, record.source, record.target, 100)
        final.pop(record.source, None)
        await self._apply(record, {"traffic": final}, f"--delete-old: {record.source} leaves")
        async with self.state.hosts.lock:
            await run_in_threadpool(
                self.state.control.delete_deployment,
                record.endpoint,
                record.source,
                f"rollout {record.id}",
            )
            await self.state.hosts.sync()
        return record.noted(f"deleted {record.source}")

    async def _finish(
        self, record: RolloutRecord, state: RolloutState, reason: str, rollback: bool
    ) -> RolloutRecord | None:
        """Finish the rollout once: None when it was already finished (by another replica
        or an abort), and then nothing is written."""
        record = record.noted(
            f"{state}: {reason}", state=state, reason=reason, finished_at=utc_now()
        )
        changes = (
            {"traffic": record.original_traffic, "mirror_traffic": record.original_mirror}
            if rollback
            else {}
        )
        try:
            await self._apply(record, changes, f"rollback ({state}): {reason}")
        except LeaseLost:
            return None
        self._renewed.pop(record.id, None)
        await run_in_threadpool(
            self.state.control.store.release_lease, lease_name(record.id), self.replica
        )
        log.info("rollout %s %s: %s", record.id, state, reason)
        self.state.metrics.rollouts_finished.labels(record.endpoint, str(state)).inc()
        return record
