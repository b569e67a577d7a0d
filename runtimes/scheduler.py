"""Per-deployment scheduling: admission, one priority queue with deadlines,
dynamic batching, and dispatch to free instance slots.

One queue serves all four decisions, so they cannot disagree:
- admission: at most `2 x max_concurrent_requests_per_instance x instance_count`
  requests in flight (Azure ML's rule); beyond that `Overloaded` at once;
- priority: lower `priority` first (Open Inference Protocol schedule policy;
  1 is highest, 0/absent is the default level), then arrival order;
- deadlines: a request's deadline (its `timeout` or `request_timeout_ms`) is
  checked at admission and before it runs: one that can no longer make it
  (less time left than a recent batch took) is rejected, not run; one that
  waits longer than `max_queue_wait_ms` is `Overloaded`;
- batching: compatible requests (same inputs' trailing shapes and dtypes, same
  outputs) are concatenated along axis 0 up to `max_batch_size` rows; an idle
  slot waits at most `max_batch_delay_ms` for a batch to fill (0 = run what is
  queued at once). A failing batch is re-run request by request, so one bad
  request fails alone.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from runtimes import context
from runtimes.errors import InferenceFailed, InferenceTimeout, Overloaded, Retired
from runtimes.types import Signature

#: The level of requests that name no priority (OIP: 0 means "default").
DEFAULT_PRIORITY = 1_000_000


class InstanceHost(Protocol):
    """Where a deployment's instances run (threads, worker processes, a remote server)."""

    @property
    def signature(self) -> Signature: ...

    @property
    def slots(self) -> Sequence[int]:
        """One entry per concurrent call the host accepts: the instance it runs on."""
        ...

    async def run(
        self, instance: int, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None
    ) -> dict[str, np.ndarray]: ...

    async def run_raw(self, instance: int, body: bytes) -> bytes:
        """A scoring script's `run(raw_data)`; the answer is JSON bytes."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class ScalableHost(InstanceHost, Protocol):
    """A host whose instances the gateway adds and removes (autoscaling)."""

    def instance_slots(self) -> list[list[int]]:
        """Each running instance's slots (what `slots` holds, grouped by instance)."""
        ...

    async def add_instance(self) -> list[int]:
        """Load one more instance; its slots."""
        ...

    async def remove_instance(self, slots: Sequence[int]) -> None:
        """Stop an instance the scheduler has drained (nothing runs on its slots)."""
        ...


@dataclass(frozen=True)
class Batching:
    max_batch_size: int
    max_batch_delay_s: float


@dataclass(frozen=True)
class SchedulerSettings:
    max_concurrent_requests_per_instance: int
    instance_count: int
    max_queue_wait_s: float
    batching: Batching | None = None
    #: autoscaled: the most instances it may have (admission counts them, so a burst
    #: waits for instances to be added instead of being refused)
    max_instances: int | None = None

    @property
    def admitted_instances(self) -> int:
        return self.max_instances or self.instance_count

    @property
    def max_in_flight(self) -> int:
        return 2 * self.max_concurrent_requests_per_instance * self.admitted_instances


class SchedulerObserver(Protocol):
    def batch(self, requests: int, rows: int, seconds: float) -> None: ...
    def rejected(self, reason: str) -> None: ...


@dataclass
class Timing:
    """Where one request's time went inside the scheduler (seconds). `ran` tells
    whether the request reached an instance at all."""

    queue_s: float = 0.0
    inference_s: float = 0.0
    ran: bool = False
    #: when it was queued (perf_counter), and the batch it ran in (for traces)
    arrived_at: float = 0.0
    batch_requests: int = 0
    batch_rows: int = 0
    #: the request's own rows (its first input's first dimension)
    rows: int = 0


@dataclass(eq=False)
class _Job:
    inputs: Mapping[str, np.ndarray] | None
    raw: bytes | None
    output_names: tuple[str, ...] | None
    rows: int
    key: tuple[Any, ...] | None  # batching compatibility; None = never batched
    order: tuple[int, int]  # (priority, sequence)
    enqueued: float  # loop time (timers, batching delay; millisecond-coarse on uvloop)
    deadline: float  # loop time
    arrived: float  # perf_counter (measured durations)
    done: asyncio.Future[Any]
    timing: Timing
    limit: str  # names the deadline in messages
    started: bool = False
    #: the request's id (for the log lines its call causes) and its trace's traceparent
    request_id: str = "-"
    traceparent: str = ""
    #: What the expiry heap holds instead of the job: emptied when the caller is done, so
    #: a finished job's tensors are not kept alive until its deadline.
    ticket: list[_Job] = field(default_factory=list)

    def fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


#: How often, at most, the watchdog looks for requests past their queue limit or deadline.
EXPIRY_RESOLUTION_S = 0.005
#: What a watched expiry means: the queue limit (429), the deadline while queued or
#: while running (408).
_QUEUE_WAIT, _QUEUED, _RUNNING = 0, 1, 2


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _order(item: tuple[tuple[int, int], _Job]) -> tuple[int, int]:
    return item[0]


def _batch_key(
    inputs: Mapping[str, np.ndarray], output_names: tuple[str, ...] | None
) -> tuple[Any, ...] | None:
    if len(inputs) == 1:  # the common case, without the general path's allocations
        ((name, array),) = inputs.items()
        if not array.ndim or array.dtype == object:
            return None
        return ((name, array.dtype.str, array.shape[1:]), output_names)
    rows = {a.shape[0] if a.ndim else None for a in inputs.values()}
    if len(rows) != 1 or None in rows or any(a.dtype == object for a in inputs.values()):
        return None
    return (tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(inputs.items())), output_names)


class Scheduler:
    """Admission, queueing, batching and dispatch for one deployment."""

    def __init__(
        self,
        name: str,
        host: InstanceHost,
        settings: SchedulerSettings,
        observer: SchedulerObserver | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.settings = settings
        self._observer = observer
        self._pending: list[tuple[tuple[int, int], _Job]] = []
        self._free = list(host.slots)
        self._slot_count = len(self._free)
        self._in_flight = 0
        self._retired = False
        self._max_in_flight = settings.max_in_flight
        self._sequence = itertools.count()
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        #: (loop time, sequence, kind, job): when each job's queue limit or deadline ends
        self._expiries: list[tuple[float, int, int, list[_Job]]] = []
        self._watchdog: asyncio.TimerHandle | None = None
        self._watchdog_at = math.inf
        self._dispatcher: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._recent_batch_s = 0.0  # moving average of batch run time
        #: autoscaling: the host that adds and removes instances, each instance's slots,
        #: and the slots of instances being removed that still run a call (slot -> calls)
        self._scalable: ScalableHost | None = host if isinstance(host, ScalableHost) else None
        self._instance_slots: list[list[int]] | None = (
            self._scalable.instance_slots() if self._scalable else None
        )
        self._leaving: dict[int, int] = {}
        self._left = asyncio.Event()
        #: autoscaling: called when a request makes `demand_at` requests in flight (a
        #: surge, or a request while scaled to zero); the autoscaler sets both
        self.on_demand: Callable[[], None] | None = None
        self.demand_at: float = math.inf
        #: hosts that take a slot out of rotation (probes, a worker being replaced) say
        #: which slots may get a call, and when one comes back
        self._routable: Callable[[int], bool] | None = getattr(host, "routable", None)
        if self._routable is not None:
            host.on_rotation = self._wake.set  # type: ignore[attr-defined]
        batching = settings.batching
        # The model must have a dynamic first dimension on every input to batch.
        self._can_batch = batching is not None and all(
            t.shape and t.shape[0] < 0 for t in host.signature.inputs
        )

    # -- state for metrics -----------------------------------------------------
    @property
    def signature(self) -> Signature:
        return self.host.signature

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def instances(self) -> int:
        """How many instances the host runs now."""
        if self._instance_slots is not None:
            return len(self._instance_slots)
        count = getattr(self.host, "instance_count", None)
        return int(count) if count is not None else len(set(self.host.slots))

    @property
    def instances_ready(self) -> int:
        """Instances that take calls now (a host with probes may hold some back)."""
        count = getattr(self.host, "instances_ready", None)
        return int(count()) if count is not None else self.instances

    @property
    def queued(self) -> int:
        return len(self._pending)

    # -- submitting ------------------------------------------------------------
    async def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None,
        timeout_s: float,
        priority: int = 0,
        timing: Timing | None = None,
        timeout_name: str = "",
    ) -> dict[str, np.ndarray]:
        """Run a request's tensors; raise Overloaded, InferenceTimeout or InferenceFailed.

        `timeout_name` says in messages where `timeout_s` came from
        (e.g. "request_timeout_ms=5000")."""
        names = tuple(output_names) if output_names else None
        first = next(iter(inputs.values()), None)
        rows = first.shape[0] if first is not None and first.ndim else 1
        key = _batch_key(inputs, names) if self._can_batch else None
        result: dict[str, np.ndarray] = await self._submit(
            inputs, None, names, rows, key, timeout_s, priority, timing or Timing(), timeout_name
        )
        return result

    async def score_raw(
        self,
        body: bytes,
        timeout_s: float,
        priority: int = 0,
        timing: Timing | None = None,
        timeout_name: str = "",
    ) -> bytes:
        """Run a scoring script on the raw request body."""
        result: bytes = await self._submit(
            None, body, None, 1, None, timeout_s, priority, timing or Timing(), timeout_name
        )
        return result

    def _reject(self, reason: str, exc: Exception) -> Exception:
        if self._observer is not None:
            self._observer.rejected(reason)
        return exc

    @property
    def _instances_field(self) -> str:
        return "max_instances" if self.settings.max_instances else "instance_count"

    def _retry_after_s(self) -> int:
        slots = max(self._slot_count, 1)
        per_slot = max(self._recent_batch_s, 0.001) * (len(self._pending) + 1) / slots
        return max(1, math.ceil(per_slot))

    async def _submit(
        self,
        inputs: Mapping[str, np.ndarray] | None,
        raw: bytes | None,
        output_names: tuple[str, ...] | None,
        rows: int,
        key: tuple[Any, ...] | None,
        timeout_s: float,
        priority: int,
        timing: Timing,
        timeout_name: str,
    ) -> Any:
        limit = timeout_name or f"{timeout_s * 1000:.0f} ms"
        timing.rows = rows
        if self._retired:
            raise Retired(f"deployment '{self.name}' was replaced or deleted")
        if self._in_flight >= self._max_in_flight:
            raise self._reject(
                "queue_full",
                Overloaded(
                    f"deployment '{self.name}' has {self._in_flight} requests in flight, its limit "
                    f"(2 x max_concurrent_requests_per_instance x {self._instances_field} = 2 x "
                    f"{self.settings.max_concurrent_requests_per_instance} x "
                    f"{self.settings.admitted_instances}) is {self._max_in_flight}; raise "
                    f"request_settings.max_concurrent_requests_per_instance or "
                    f"{self._instances_field} to admit more",
                    self._retry_after_s(),
                ),
            )
        if timeout_s <= self._recent_batch_s:
            raise self._reject(
                "deadline",
                InferenceTimeout(
                    f"the request's deadline ({limit}) is shorter than recent inference takes "
                    f"({self._recent_batch_s * 1000:.1f} ms); rejected without running"
                ),
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        job = _Job(
            inputs,
            raw,
            output_names,
            rows,
            key,
            (priority if priority > 0 else DEFAULT_PRIORITY, next(self._sequence)),
            now,
            now + timeout_s,
            time.perf_counter(),
            loop.create_future(),
            timing,
            limit,
            request_id=context.request_id.get(),
            traceparent=context.traceparent.get(),
        )
        timing.arrived_at = job.arrived
        job.ticket.append(job)
        # Its queue limit now; its deadline once it runs (see `_watch`). With no instance
        # (scaled to zero) it waits for one to load, up to its deadline.
        queue_limit_s = min(self.settings.max_queue_wait_s, timeout_s)
        if not self._slot_count:
            queue_limit_s = timeout_s
        self._watch(now + queue_limit_s, job, _QUEUE_WAIT if queue_limit_s < timeout_s else _QUEUED)
        bisect.insort(self._pending, (job.order, job), key=_order)
        self._in_flight += 1
        if self._in_flight >= self.demand_at and self.on_demand is not None:
            self.on_demand()
        self._ensure_dispatcher()
        self._wake.set()
        try:
            return await job.done
        except asyncio.CancelledError:
            self._withdraw(job)
            # A running job still finishes; nobody will read its outcome.
            job.done.add_done_callback(_consume)
            raise
        finally:
            job.ticket.clear()
            self._in_flight -= 1

    # -- expiry ----------------------------------------------------------------
    def _watch(self, when: float, job: _Job, kind: int) -> None:
        """Expire `job` at loop time `when` (queue limit or deadline) unless it is done or
        has moved on by then. One watchdog timer per scheduler instead of creating and
        cancelling two timers per request (callgrind: ~3% fewer instructions per scheduled
        request). Expiries are checked at most every `EXPIRY_RESOLUTION_S`, so an answer
        at a limit may come that much late."""
        heapq.heappush(self._expiries, (when, job.order[1], kind, job.ticket))
        if when < self._watchdog_at:
            self._arm_watchdog(when)

    def _arm_watchdog(self, when: float) -> None:
        loop = asyncio.get_running_loop()
        when = max(when, loop.time() + EXPIRY_RESOLUTION_S)
        if self._watchdog is not None:
            if self._watchdog_at <= when:
                return
            self._watchdog.cancel()
        self._watchdog_at = when
        self._watchdog = loop.call_at(when, self._on_watchdog)

    def _on_watchdog(self) -> None:
        self._watchdog, self._watchdog_at = None, math.inf
        now = asyncio.get_running_loop().time()
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, _, kind, ticket = heapq.heappop(expiries)
            if not ticket or ticket[0].done.done():
                continue  # answered in time: a stale entry
            job = ticket[0]
            if kind == _RUNNING:
                if job.started:
                    self._expire_running(job)
            elif not job.started:
                self._expire_queued(job, kind == _QUEUE_WAIT)
        if expiries:
            self._arm_watchdog(expiries[0][0])

    def _expire_queued(self, job: _Job, by_queue_wait: bool) -> None:
        if job.started or job.done.done():
            return
        self._withdraw(job)
        if by_queue_wait:
            job.fail(
                self._reject(
                    "queue_wait",
                    Overloaded(
                        f"request waited longer than max_queue_wait_ms="
                        f"{round(self.settings.max_queue_wait_s * 1000)} in deployment "
                        f"'{self.name}'s queue; raise request_settings.max_queue_wait_ms, or "
                        "instance_count to serve the queue faster",
                        self._retry_after_s(),
                    ),
                )
            )
        else:
            job.fail(
                self._reject(
                    "deadline",
                    InferenceTimeout(
                        f"the request's deadline ({job.limit}) passed while it was queued"
                    ),
                )
            )

    def _expire_running(self, job: _Job) -> None:
        job.fail(
            self._reject(
                "deadline",
                InferenceTimeout(
                    f"inference did not finish within the request's deadline ({job.limit})"
                ),
            )
        )

    def _withdraw(self, job: _Job) -> None:
        if not job.started:
            index = bisect.bisect_left(self._pending, job.order, key=_order)
            if index < len(self._pending) and self._pending[index][1] is job:
                del self._pending[index]

    # -- dispatching -----------------------------------------------------------
    def _ensure_dispatcher(self) -> None:
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch_loop())

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._free and self._pending:
                slot = self._free_slot()
                if slot is None:
                    break
                batch = self._take_batch()
                if batch is None:
                    self._free.append(slot)
                    break
                task = asyncio.get_running_loop().create_task(self._run(slot, batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    def _free_slot(self) -> int | None:
        """A free slot the host routes to (the last freed first), or None."""
        routable = self._routable
        if routable is None:
            return self._free.pop()
        for index in range(len(self._free) - 1, -1, -1):
            if routable(self._free[index]):
                return self._free.pop(index)
        return None

    def _take_batch(self) -> list[_Job] | None:
        """The next jobs to run together, or None to wait for the batch to fill."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._pending:
            head = self._pending[0][1]
            if now + self._recent_batch_s > head.deadline:
                del self._pending[0]
                head.fail(
                    self._reject(
                        "deadline",
                        InferenceTimeout(
                            "the request can no longer finish before its deadline; "
                            "rejected without running"
                        ),
                    )
                )
                continue
            break
        else:
            return None
        batching = self.settings.batching
        if head.key is None or batching is None:
            del self._pending[0]
            return [head]
        chosen, rows = [0], head.rows
        for index in range(1, len(self._pending)):
            job = self._pending[index][1]
            if job.key == head.key and rows + job.rows <= batching.max_batch_size:
                chosen.append(index)
                rows += job.rows
                if rows == batching.max_batch_size:
                    break
        oldest = min(self._pending[i][1].enqueued for i in chosen)
        fill_by = oldest + batching.max_batch_delay_s
        if rows < batching.max_batch_size and now < fill_by:
            # Wait for more requests, at most until the oldest chosen one's delay ends.
            if self._timer is None or self._timer.when() > fill_by:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = loop.call_at(fill_by, self._fire_timer)
            return None
        jobs = [self._pending[i][1] for i in chosen]
        for i in reversed(chosen):
            del self._pending[i]
        return jobs

    def _fire_timer(self) -> None:
        self._timer = None
        self._wake.set()

    async def _run(self, slot: int, jobs: list[_Job]) -> None:
        # This task's log lines (a worker's, a script's) name the requests it runs.
        context.request_id.set(
            jobs[0].request_id if len(jobs) == 1 else ",".join(j.request_id for j in jobs)
        )
        context.traceparent.set(jobs[0].traceparent)  # a remote call joins one trace
        started = time.perf_counter()
        rows = sum(j.rows for j in jobs)
        for job in jobs:
            job.started = True
            job.timing.ran = True
            job.timing.queue_s = started - job.arrived
            job.timing.batch_requests = len(jobs)
            job.timing.batch_rows = rows
            self._watch(job.deadline, job, _RUNNING)
        try:
            if len(jobs) == 1:
                await self._run_one(slot, jobs[0])
            else:
                await self._run_batch(slot, jobs)
        finally:
            elapsed = time.perf_counter() - started
            for job in jobs:
                job.timing.inference_s = elapsed
            self._recent_batch_s = (
                elapsed if not self._recent_batch_s else 0.8 * self._recent_batch_s + 0.2 * elapsed
            )
            if self._observer is not None:
                self._observer.batch(len(jobs), rows, elapsed)
            if self._leaving and slot in self._leaving:
                self._slot_left(slot)
            else:
                self._free.append(slot)
            self._wake.set()

    async def _run_one(self, slot: int, job: _Job) -> None:
        try:
            if job.raw is not None:
                result: Any = await self.host.run_raw(slot, job.raw)
            else:
                assert job.inputs is not None
                result = await self.host.run(slot, job.inputs, job.output_names)
        except Exception as exc:
            job.fail(exc)
        else:
            if not job.done.done():
                job.done.set_result(result)

    async def _run_batch(self, slot: int, jobs: list[_Job]) -> None:
        head = jobs[0]
        assert head.inputs is not None
        merged = {
            name: np.concatenate([j.inputs[name] for j in jobs if j.inputs is not None])
            for name in head.inputs
        }
        total = sum(j.rows for j in jobs)
        try:
            outputs = await self.host.run(slot, merged, head.output_names)
            splittable = all(a.ndim and a.shape[0] == total for a in outputs.values())
        except InferenceFailed:
            splittable = False
            outputs = {}
        if not splittable:
            # One bad request (or an output without a batch axis): run each on its own.
            for job in jobs:
                await self._run_one(slot, job)
            return
        offset = 0
        for job in jobs:
            part = {name: array[offset : offset + job.rows] for name, array in outputs.items()}
            offset += job.rows
            if not job.done.done():
                job.done.set_result(part)

    # -- autoscaling -------------------------------------------------------------
    @property
    def scalable(self) -> bool:
        return self._instance_slots is not None

    async def add_instance(self) -> None:
        """Load one more instance (scalable hosts) and dispatch to it."""
        assert self._scalable is not None and self._instance_slots is not None
        slots = await self._scalable.add_instance()
        self._instance_slots.append(slots)
        self._free.extend(slots)
        self._slot_count += len(slots)
        self._wake.set()

    async def remove_instance(self) -> None:
        """Remove the newest instance: no new call goes to it, the calls it runs finish,
        then the host stops it. Queued requests go to the other instances (or wait for
        the next one, when this was the last)."""
        assert self._scalable is not None and self._instance_slots is not None
        if not self._instance_slots:
            return
        slots = self._instance_slots.pop()
        self._slot_count -= len(slots)
        busy = Counter(slots)  # calls each slot may be running; the free ones are not
        for slot in slots:
            if slot in self._free:
                self._free.remove(slot)
                busy[slot] -= 1
        busy = +busy  # only the slots still running a call
        if busy:
            self._left.clear()
            self._leaving.update(busy)
            while any(slot in self._leaving for slot in busy):
                await self._left.wait()
                self._left.clear()
        await self._scalable.remove_instance(slots)

    def _slot_left(self, slot: int) -> None:
        self._leaving[slot] -= 1
        if not self._leaving[slot]:
            del self._leaving[slot]
            self._left.set()

    # -- lifecycle ---------------------------------------------------------------
    def retire(self) -> None:
        """Take no new requests (they get `Retired` and are routed again); the queued
        and running ones finish."""
        self._retired = True

    async def drain(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or running (True) or `timeout_s` passed (False)."""
        deadline = time.monotonic() + timeout_s
        while (self._in_flight or self._running) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return not (self._in_flight or self._running)

    async def close(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.cancel()
        if self._timer is not None:
            self._timer.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        for _, job in self._pending:
            job.fail(InferenceFailed(f"deployment '{self.name}' is shutting down"))
        self._pending.clear()
        await self.host.close()
