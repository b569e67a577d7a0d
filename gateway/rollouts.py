"""The rollout controller: runs inside the gateway (not the CLI), so a rollout
goes on when the CLI disconnects; its state lives in the store, so it resumes
after a gateway restart (the current phase starts its window again).

Every traffic change is made through the control plane as actor
`rollout <id>` with a reason, so the audit log tells the whole story.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool

from deploy.errors import Conflict, NotFound, SpecError
from deploy.rollout import (
    ACTIVE_STATES,
    RolloutPlan,
    Verdict,
    judge_mirror,
    judge_step,
    step_traffic,
    window,
)
from deploy.store import utc_now
from gateway.metrics import DeploymentMetrics
from gateway.state import GatewayState

log = logging.getLogger(__name__)

CHECK_EVERY_S = 0.25
#: A phase without enough requests to judge is extended up to this many intervals.
MAX_EXTENSIONS = 10


def _without(mirror: dict[str, int], deployment: str) -> dict[str, int]:
    # A deployment that takes live traffic may not be mirrored to (Azure ML's rule).
    return {name: pct for name, pct in mirror.items() if name != deployment}


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


class RolloutController:
    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: rollout id -> the latest verdict's summary (for `rollout status`)
        self.judgements: dict[str, dict[str, Any]] = {}

    # -- API ---------------------------------------------------------------------
    async def start(self, endpoint: str, plan: RolloutPlan, actor: str) -> dict[str, Any]:
        control = self.state.control
        async with self.state.hosts.lock:
            spec = await run_in_threadpool(control.get_endpoint, endpoint)
            if self.active(endpoint) is not None:
                raise Conflict(
                    f"endpoint '{endpoint}' already has a rollout in progress; "
                    "abort it first (servegate rollout abort)"
                )
            deployments = set(self.state.hosts.snapshot.endpoint(endpoint).deployments)
            source = plan.from_ or max(
                spec["traffic"], key=lambda d: spec["traffic"][d], default=None
            )
            for role, name in (("to", plan.to), ("from", source)):
                if name is None or name not in deployments:
                    raise SpecError(
                        f"field '{role}': deployment '{name}' is not a loaded deployment "
                        f"of endpoint '{endpoint}'"
                    )
            if source == plan.to:
                raise SpecError(
                    "field 'to': the candidate must differ from the deployment it replaces"
                )
            record = {
                "id": f"{endpoint}-{secrets.token_hex(4)}",
                "endpoint": endpoint,
                "from": source,
                "to": plan.to,
                "plan": plan.model_dump(by_alias=True),
                "state": "mirroring" if plan.mirror_first_s else "stepping",
                "step": 0,
                "original_traffic": spec["traffic"],
                "original_mirror": spec["mirror_traffic"],
                "started_at": utc_now(),
                "started_by": actor,
                "reason": "",
                "events": [],
            }
            self._event(record, f"started by {actor}: {source} -> {plan.to}, steps {plan.steps}")
            await run_in_threadpool(control.store.put_rollout, record)
        self._spawn(record["id"])
        return record

    async def abort(self, endpoint: str, actor: str) -> dict[str, Any]:
        record = self.active(endpoint)
        if record is None:
            raise NotFound(f"endpoint '{endpoint}' has no rollout in progress")
        task = self._tasks.pop(record["id"], None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return await self._finish(record, "aborted", f"aborted by {actor}", rollback=True)

    def active(self, endpoint: str) -> dict[str, Any] | None:
        for record in self.state.control.store.list_rollouts(endpoint, limit=5):
            if record["state"] in ACTIVE_STATES:
                return record
        return None

    def status(self, endpoint: str) -> dict[str, Any]:
        records = self.state.control.store.list_rollouts(endpoint, limit=1)
        if not records:
            raise NotFound(f"endpoint '{endpoint}' has no rollouts")
        record = records[0]
        spec = self.state.control.get_endpoint(endpoint)
        return {
            **record,
            "traffic": spec["traffic"],
            "mirror_traffic": spec["mirror_traffic"],
            "judgement": self.judgements.get(record["id"]),
        }

    async def resume(self) -> None:
        """Continue every rollout that was in progress when the gateway stopped."""
        store = self.state.control.store
        for record in await run_in_threadpool(store.list_rollouts, None, 1000):
            if record["state"] in ACTIVE_STATES:
                self._event(record, "resumed after a gateway restart")
                await run_in_threadpool(store.put_rollout, record)
                self._spawn(record["id"])

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()

    # -- driving -------------------------------------------------------------------
    def _spawn(self, rollout_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._drive(rollout_id))
        self._tasks[rollout_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(rollout_id, None))

    async def _drive(self, rollout_id: str) -> None:
        store = self.state.control.store
        try:
            while True:
                record = await run_in_threadpool(store.get_rollout, rollout_id)
                if record is None or record["state"] not in ACTIVE_STATES:
                    return
                plan = RolloutPlan.model_validate(record["plan"])
                if record["state"] == "mirroring":
                    await self._mirror_phase(record, plan)
                else:
                    await self._step_phase(record, plan)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken controller must not leave traffic half-moved
            log.exception("rollout %s failed", rollout_id)
            record = await run_in_threadpool(store.get_rollout, rollout_id)
            if record is not None and record["state"] in ACTIVE_STATES:
                await self._finish(record, "rolled_back", f"controller error: {exc}", rollback=True)

    async def _mirror_phase(self, record: dict[str, Any], plan: RolloutPlan) -> None:
        endpoint, candidate = record["endpoint"], record["to"]
        await self._set_traffic(
            record,
            record["original_traffic"],
            {candidate: plan.mirror_percent},
            f"mirror {plan.mirror_percent}% to {candidate} for {plan.mirror_first_s:g}s",
        )
        stats = self.state.mirror.stats_for(endpoint, candidate)
        before = stats.snapshot()
        verdict = await self._watch(
            record, plan.mirror_first_s, lambda: judge_mirror(plan, before, stats.snapshot())
        )
        if verdict is None:
            return
        record["state"], record["step"] = "stepping", 0
        self._event(record, f"mirror phase passed: {verdict.summary}")
        await self._set_traffic(
            record,
            record["original_traffic"],
            _without(record["original_mirror"], candidate),
            "mirror phase passed",
        )

    async def _step_phase(self, record: dict[str, Any], plan: RolloutPlan) -> None:
        endpoint, source, candidate = record["endpoint"], record["from"], record["to"]
        percent = plan.steps[record["step"]]
        traffic = step_traffic(record["original_traffic"], source, candidate, percent)
        await self._set_traffic(
            record,
            traffic,
            _without(record["original_mirror"], candidate),
            f"step {record['step'] + 1}/{len(plan.steps)}: {candidate} {percent}%",
        )
        metrics = self.state.metrics.for_deployment(endpoint, candidate)
        before = reading(metrics)
        verdict = await self._watch(
            record, plan.step_interval_s, lambda: judge_step(plan, window(before, reading(metrics)))
        )
        if verdict is None:
            return
        self._event(record, f"step {percent}% passed: {verdict.summary}")
        record["step"] += 1
        if record["step"] < len(plan.steps):
            await run_in_threadpool(self.state.control.store.put_rollout, record)
            return
        if plan.delete_old:
            await self._delete_old(record)
        await self._finish(
            record, "succeeded", f"{candidate} takes 100% of traffic", rollback=False
        )

    async def _watch(
        self, record: dict[str, Any], interval_s: float, judge: Callable[[], Verdict]
    ) -> Verdict | None:
        """Judge every CHECK_EVERY_S until the interval ends (and the window has enough
        requests). None when a gate was breached and the rollout rolled back."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            verdict = judge()
            self.judgements[record["id"]] = {
                **verdict.summary,
                "phase_elapsed_s": round(loop.time() - started, 2),
            }
            if verdict.breach:
                phase = (
                    "mirror phase"
                    if record["state"] == "mirroring"
                    else (
                        f"step {RolloutPlan.model_validate(record['plan']).steps[record['step']]}%"
                    )
                )
                await self._finish(
                    record, "rolled_back", f"{phase}: {verdict.breach}", rollback=True
                )
                return None
            elapsed = loop.time() - started
            if elapsed >= interval_s and verdict.ready:
                return verdict
            if elapsed >= interval_s * MAX_EXTENSIONS:
                await self._finish(
                    record,
                    "rolled_back",
                    f"not enough traffic to judge: {verdict.summary}",
                    rollback=True,
                )
                return None

    # -- effects -------------------------------------------------------------------
    async def _set_traffic(
        self, record: dict[str, Any], traffic: dict[str, int], mirror: dict[str, int], reason: str
    ) -> None:
        self._event(record, reason)
        await self._apply(record, {"traffic": traffic, "mirror_traffic": mirror}, reason)

    async def _apply(self, record: dict[str, Any], changes: dict[str, Any], reason: str) -> None:
        control = self.state.control
        actor = f"rollout {record['id']}"
        async with self.state.hosts.lock:
            current = await run_in_threadpool(control.get_endpoint, record["endpoint"])
            if any(current[k] != v for k, v in changes.items()):
                await run_in_threadpool(
                    control.update_endpoint, record["endpoint"], changes, actor, reason
                )
                await self.state.hosts.sync()
            await run_in_threadpool(control.store.put_rollout, record)

    async def _delete_old(self, record: dict[str, Any]) -> None:
        final = step_traffic(record["original_traffic"], record["from"], record["to"], 100)
        final.pop(record["from"], None)
        await self._apply(record, {"traffic": final}, f"--delete-old: {record['from']} leaves")
        async with self.state.hosts.lock:
            await run_in_threadpool(
                self.state.control.delete_deployment,
                record["endpoint"],
                record["from"],
                f"rollout {record['id']}",
            )
            await self.state.hosts.sync()
        self._event(record, f"deleted {record['from']}")

    async def _finish(
        self, record: dict[str, Any], state: str, reason: str, rollback: bool
    ) -> dict[str, Any]:
        record["state"], record["reason"] = state, reason
        record["finished_at"] = utc_now()
        self._event(record, f"{state}: {reason}")
        if rollback:
            await self._apply(
                record,
                {
                    "traffic": record["original_traffic"],
                    "mirror_traffic": record["original_mirror"],
                },
                f"rollback ({state}): {reason}",
            )
        else:
            await run_in_threadpool(self.state.control.store.put_rollout, record)
        log.info("rollout %s %s: %s", record["id"], state, reason)
        return record

    @staticmethod
    def _event(record: dict[str, Any], message: str) -> None:
        record["events"].append({"at": utc_now(), "message": message})
