"""Autoscaling (`scale_settings: type: target_utilization`): one autoscaler per autoscaled
deployment in this gateway, keeping its instances near the target utilization.

Utilization is what Azure ML's Kubernetes deployments mean by it: requests in flight
(queued and running) over capacity (instances x max_concurrent_requests_per_instance).
It is sampled every `SAMPLE_S` and averaged over each `polling_interval`. Then:
- up at once, to as many instances as the average needed at the target;
- down only to the most that any decision of the last `scale_down_delay` seconds
  needed (Kubernetes HPA's stabilization window), so a lull between bursts does not
  remove instances the next burst needs; each instance removed is drained first, so
  no request fails;
- a surge (requests in flight at twice capacity) scales up the moment it happens,
  without waiting for the poll: by then the queue would be past `max_queue_wait_ms`
  (Knative's "panic mode" does the same);
- from zero (`min_instances: 0`), the first request starts an instance at once instead
  of waiting for the next poll; it waits for the load, up to its own deadline.

For `host: ray`, Ray Serve scales the replicas (the same settings, as its
`autoscaling_config`); the autoscaler only reads their number each poll, for the
`servegate_instances` gauge and the audit log.

Every change is an audit entry by the actor `autoscaler`, with the utilization that
caused it. Each gateway replica scales the instances it runs itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from deploy.specs import ScaleSettings
from runtimes.scheduler import Scheduler

log = logging.getLogger(__name__)

#: How often the requests in flight are sampled (their average drives each decision).
SAMPLE_S = 0.1
#: Utilization that scales up at once (a surge).
SURGE = 2.0
ACTOR = "autoscaler"
#: How long stopping waits for a change under way (an instance loading).
STOP_WAIT_S = 30.0


@dataclass(frozen=True)
class ScalingChange:
    """One change of a deployment's instance count, for the audit log."""

    before: int
    after: int
    reason: str


Record = Callable[[ScalingChange], Awaitable[None]]


class Autoscaler:
    def __init__(
        self,
        name: str,
        scheduler: Scheduler,
        settings: ScaleSettings,
        record: Record,
    ) -> None:
        self.name = name
        self.scheduler = scheduler
        self.settings = settings
        self._record = record
        self._per_instance = scheduler.settings.max_concurrent_requests_per_instance
        self._target = settings.target_utilization_percentage / 100
        #: (loop time, instances needed) of the decisions inside the scale-down window
        self._needed: deque[tuple[float, int]] = deque()
        self._grown_at = 0.0
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        #: the host scales itself (Ray Serve): only watch its replica count
        self._observe = getattr(scheduler.host, "running_replicas", None)

    def start(self) -> None:
        if self.scheduler.scalable:
            self.scheduler.on_demand = self._wake.set
        elif self._observe is None:
            log.warning("deployment %s: its host cannot add or remove instances", self.name)
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop deciding; a change under way (an instance loading) may finish first, for
        up to STOP_WAIT_S."""
        self._stopping = True
        self.scheduler.on_demand, self.scheduler.demand_at = None, math.inf
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._task, STOP_WAIT_S)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._grown_at = loop.time()
        interval = self.settings.polling_interval
        sample_at, decide_at = loop.time(), loop.time() + interval
        total, samples = 0.0, 0
        scheduler = self.scheduler
        while not self._stopping:
            self._arm()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, sample_at - loop.time()))
            self._wake.clear()
            if self._stopping:
                return
            now = loop.time()
            try:
                if scheduler.scalable:
                    await self._answer_demand(now)
                if now < sample_at:
                    continue  # woken by demand, between samples
                sample_at = now + SAMPLE_S
                total += scheduler.in_flight
                samples += 1
                if now < decide_at:
                    continue
                await self._decide(total / samples, now)
            except Exception:
                log.exception("deployment %s: autoscaling failed", self.name)
            total, samples = 0.0, 0
            decide_at = now + interval

    def _arm(self) -> None:
        """Have the scheduler wake the autoscaler at once on a surge (requests in flight at
        SURGE x capacity: by the next poll the queue would be past max_queue_wait_ms;
        Knative's "panic mode" does the same) or on a request while no instance runs."""
        if self.scheduler.scalable and self.scheduler.instances < self.settings.max_instances:
            self.scheduler.demand_at = max(1, math.ceil(SURGE * self._capacity()))
        else:
            self.scheduler.demand_at = math.inf

    async def _answer_demand(self, now: float) -> None:
        scheduler = self.scheduler
        in_flight = scheduler.in_flight
        if not scheduler.instances and in_flight:
            await self._scale_to(1, "a request arrived while no instance ran (cold start)")
        elif in_flight >= SURGE * self._capacity():
            await self._grow(in_flight, now, "surge: ")

    def _utilization(self, in_flight: float, instances: int) -> str:
        capacity = instances * self._per_instance
        share = f"{in_flight / capacity:.0%}" if capacity else "no capacity"
        return (
            f"utilization {share} (average {in_flight:.2f} requests in flight, capacity "
            f"{instances} x {self._per_instance}), target "
            f"{self.settings.target_utilization_percentage}%"
        )

    def _capacity(self) -> int:
        return self.scheduler.instances * self._per_instance

    def _needed_for(self, in_flight: float) -> int:
        """The fewest instances that keep utilization at or under the target (a hair of
        slack so that exactly-at-target does not round up), within min and max."""
        needed = math.ceil(in_flight / (self._per_instance * self._target) - 1e-9)
        return min(max(needed, self.settings.min_instances), self.settings.max_instances)

    async def _grow(self, in_flight: float, now: float, why: str = "") -> None:
        current = self.scheduler.instances
        needed = self._needed_for(in_flight)
        if needed > current:
            self._grown_at = now
            await self._scale_to(needed, why + self._utilization(in_flight, current))

    async def _decide(self, in_flight: float, now: float) -> None:
        if not self.scheduler.scalable:  # Ray Serve scales: only watch
            await self._watch_cluster(in_flight)
            return
        current = self.scheduler.instances
        needed = self._needed_for(in_flight)
        window = self.settings.scale_down_delay
        self._needed.append((now, needed))
        while self._needed and self._needed[0][0] < now - window:
            self._needed.popleft()
        if needed > current:
            await self._grow(in_flight, now)
        elif needed < current and now - self._grown_at >= window:
            floor = max(n for _, n in self._needed)
            if floor == 0 and self.scheduler.in_flight:
                floor = 1  # a request just came: keep its instance
            if floor < current:
                await self._scale_to(
                    floor,
                    f"{self._utilization(in_flight, current)}; fewer instances were enough "
                    f"for scale_down_delay={window} s",
                )

    async def _scale_to(self, wanted: int, reason: str) -> None:
        scheduler = self.scheduler
        before = scheduler.instances
        try:
            while scheduler.instances < wanted and not self._stopping:
                await scheduler.add_instance()
            while scheduler.instances > wanted and not self._stopping:
                await scheduler.remove_instance()
        except Exception as exc:
            log.error("deployment %s: scaling to %d instance(s) failed: %s", self.name, wanted, exc)
            reason = f"{reason}; stopped at {scheduler.instances}: {exc}"
        after = scheduler.instances
        if after != before:
            log.info("deployment %s: %d -> %d instance(s): %s", self.name, before, after, reason)
            await self._record(ScalingChange(before, after, reason))

    async def _watch_cluster(self, in_flight: float) -> None:
        assert self._observe is not None
        if getattr(self.scheduler.host, "problem", None):
            return  # the cluster is unreachable: asking it would only hang
        before = self.scheduler.instances
        # Bounded: a cluster that goes away between two checks would hang the call.
        after = await asyncio.wait_for(
            asyncio.to_thread(self._observe), self.settings.polling_interval + 5
        )
        if after != before:
            await self._record(
                ScalingChange(
                    before,
                    after,
                    f"Ray Serve scaled the replicas; here {self._utilization(in_flight, before)}",
                )
            )
