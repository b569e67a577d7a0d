"""The scheduler's contract: batching, admission, priorities and deadlines.

`RecordingHost` implements the InstanceHost seam (no mocks): it doubles its
input, can fail on a marked row, and records every call it gets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from runtimes.errors import InferenceFailed, InferenceTimeout, Overloaded
from runtimes.scheduler import Batching, Scheduler, SchedulerSettings, Timing
from runtimes.types import Signature, TensorSpec

# Runs once, on the SQLite pass: what it checks does not depend on the store.
pytestmark = pytest.mark.store_independent

SIG = Signature((TensorSpec("x", "FP32", (-1, 2)),), (TensorSpec("y", "FP32", (-1, 2)),))


class RecordingHost:
    def __init__(self, instances: int = 1, delay_s: float = 0.0) -> None:
        self.calls: list[int] = []  # rows per call
        self.order: list[float] = []  # first value of each call
        self.delay_s = delay_s
        self._slots = list(range(instances))

    @property
    def signature(self) -> Signature:
        return SIG

    @property
    def slots(self) -> Sequence[int]:
        return self._slots

    async def run(
        self, instance: int, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.calls.append(x.shape[0])
        self.order.append(float(x[0, 0]))
        await asyncio.sleep(self.delay_s)
        if (x < 0).any():
            raise InferenceFailed("negative input")
        return {"y": x * 2}

    async def run_raw(self, instance: int, body: bytes) -> bytes:
        return body

    async def close(self) -> None:
        pass


def settings(
    batch: int | None = 4,
    delay_ms: float = 20,
    concurrent: int = 8,
    queue_wait_ms: float = 1000,
    instances: int = 1,
) -> SchedulerSettings:
    batching = Batching(batch, delay_ms / 1000) if batch else None
    return SchedulerSettings(concurrent, instances, queue_wait_ms / 1000, batching)


def rows(value: float, n: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 2), value, dtype=np.float32)}


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_concurrent_requests_are_coalesced_and_answered_in_order() -> None:
    host = RecordingHost()

    async def main() -> list[dict[str, np.ndarray]]:
        scheduler = Scheduler("t", host, settings(batch=8, delay_ms=50))
        return await asyncio.gather(
            *(scheduler.infer(rows(i, n=1 + i % 2), None, 5.0) for i in range(6))
        )

    results = run(main())
    for i, result in enumerate(results):
        assert result["y"].shape == (1 + i % 2, 2)
        assert (result["y"] == 2 * i).all()
    assert sum(host.calls) == 9 and max(host.calls) <= 8 and len(host.calls) < 6


def test_a_batch_never_exceeds_max_batch_size() -> None:
    host = RecordingHost(delay_s=0.01)

    async def main() -> None:
        scheduler = Scheduler("t", host, settings(batch=4, delay_ms=5, concurrent=32))
        await asyncio.gather(*(scheduler.infer(rows(i, n=1 + i % 3), None, 5.0) for i in range(30)))

    run(main())
    assert max(host.calls) <= 4 and sum(host.calls) == sum(1 + i % 3 for i in range(30))


def test_an_error_reaches_only_its_caller() -> None:
    host = RecordingHost()

    async def main() -> list[object]:
        scheduler = Scheduler("t", host, settings(batch=8, delay_ms=50))
        values = [1, 2, -1, 3]
        return await asyncio.gather(
            *(scheduler.infer(rows(v), None, 5.0) for v in values), return_exceptions=True
        )

    results = run(main())
    assert isinstance(results[2], InferenceFailed)
    for index, value in ((0, 1), (1, 2), (3, 3)):
        assert (results[index]["y"] == 2 * value).all()  # type: ignore[index]
    assert host.calls[0] == 4  # tried together first, then one by one


def test_a_lone_request_leaves_after_the_delay() -> None:
    host = RecordingHost()

    async def main() -> float:
        scheduler = Scheduler("t", host, settings(batch=8, delay_ms=100))
        timing = Timing()
        started = time.monotonic()
        await scheduler.infer(rows(1), None, 5.0, timing=timing)
        assert timing.queue_s >= 0.09
        return time.monotonic() - started

    assert 0.09 <= run(main()) < 1.0
    assert host.calls == [1]


def test_zero_delay_runs_at_once_and_batches_while_busy() -> None:
    host = RecordingHost(delay_s=0.02)

    async def main() -> None:
        scheduler = Scheduler("t", host, settings(batch=16, delay_ms=0, concurrent=16))
        first = asyncio.ensure_future(scheduler.infer(rows(0), None, 5.0))
        await asyncio.sleep(0.005)  # it is running now
        await asyncio.gather(first, *(scheduler.infer(rows(i), None, 5.0) for i in range(1, 10)))

    run(main())
    # The first request runs alone at once; the rest queue behind it and go together.
    assert host.calls[0] == 1 and host.calls[1] == 9


def test_priority_orders_the_queue() -> None:
    host = RecordingHost(delay_s=0.02)

    async def main() -> None:
        scheduler = Scheduler("t", host, settings(batch=None, concurrent=8))
        blocker = asyncio.ensure_future(scheduler.infer(rows(100), None, 5.0))
        await asyncio.sleep(0.005)  # the only slot is busy now
        tasks = [
            asyncio.ensure_future(scheduler.infer(rows(v), None, 5.0, priority=p))
            for v, p in ((1, 0), (2, 5), (3, 1), (4, 5))
        ]
        await asyncio.gather(blocker, *tasks)

    run(main())
    # 1 = highest, equal priorities keep arrival order, 0 (default) last.
    assert host.order == [100, 3, 2, 4, 1]


def test_admission_refuses_beyond_twice_the_concurrency() -> None:
    host = RecordingHost(delay_s=0.05)

    async def main() -> list[object]:
        scheduler = Scheduler("t", host, settings(batch=None, concurrent=1, instances=1))
        return await asyncio.gather(
            *(scheduler.infer(rows(i), None, 5.0) for i in range(4)), return_exceptions=True
        )

    results = run(main())
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert len(refused) == 2  # limit: 2 x 1 x 1 in flight
    message = str(refused[0])
    assert "limit (2 x max_concurrent_requests_per_instance x instance_count = 2 x 1 x 1) is 2" in (
        message
    )
    assert "raise request_settings.max_concurrent_requests_per_instance" in message
    assert refused[0].retry_after_s >= 1


def test_waiting_longer_than_max_queue_wait_is_429_and_never_runs() -> None:
    host = RecordingHost(delay_s=0.2)

    async def main() -> list[object]:
        scheduler = Scheduler("t", host, settings(batch=None, concurrent=4, queue_wait_ms=50))
        return await asyncio.gather(
            *(scheduler.infer(rows(i), None, 5.0) for i in range(3)), return_exceptions=True
        )

    results = run(main())
    assert not isinstance(results[0], Exception)
    assert all(isinstance(r, Overloaded) and "max_queue_wait_ms=50" in str(r) for r in results[1:])
    assert host.calls == [1]


def test_deadlines_at_admission_and_in_the_queue() -> None:
    host = RecordingHost(delay_s=0.1)

    async def main() -> None:
        scheduler = Scheduler("t", host, settings(batch=None, concurrent=4))
        await scheduler.infer(rows(1), None, 5.0)  # teaches it that a call takes ~0.1 s
        # A deadline shorter than recent inference is refused before queueing.
        with pytest.raises(InferenceTimeout, match="shorter than recent inference"):
            await scheduler.infer(rows(2), None, 0.01)
        # One that expires while queued never runs.
        busy = asyncio.ensure_future(scheduler.infer(rows(3), None, 5.0))
        await asyncio.sleep(0.01)
        with pytest.raises(InferenceTimeout, match="deadline"):
            await scheduler.infer(rows(4), None, 0.15)
        await busy

    run(main())
    assert host.order == [1, 3]


def test_raw_bodies_and_drain() -> None:
    host = RecordingHost()

    async def main() -> None:
        scheduler = Scheduler("t", host, settings(batch=None))
        assert await scheduler.score_raw(b'{"a": 1}', 5.0) == b'{"a": 1}'
        assert await scheduler.drain(1.0)
        await scheduler.close()

    run(main())


class ScalingHost(RecordingHost):
    """A RecordingHost whose instances can be added and removed; it records which
    instances were stopped and fails a call that reaches one."""

    def __init__(self, instances: int = 1, delay_s: float = 0.0) -> None:
        super().__init__(instances, delay_s)
        self.live = set(range(instances))
        self.removed: list[int] = []

    def instance_slots(self) -> list[list[int]]:
        return [[i] for i in sorted(self.live)]

    async def add_instance(self) -> list[int]:
        index = max(self.live | set(self.removed), default=-1) + 1
        self.live.add(index)
        return [index]

    async def remove_instance(self, slots: Sequence[int]) -> None:
        (index,) = slots
        self.live.discard(index)
        self.removed.append(index)

    async def run(
        self, instance: int, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        if instance not in self.live:
            raise InferenceFailed(f"instance {instance} was removed")
        return await super().run(instance, inputs, output_names)


def test_a_removed_instance_finishes_its_calls_first_and_gets_no_new_ones() -> None:
    run(_removed_instance())


async def _removed_instance() -> None:
    host = ScalingHost(instances=2, delay_s=0.1)
    scheduler = Scheduler("m", host, settings(batch=None, concurrent=2, instances=2))
    running = [asyncio.create_task(scheduler.infer(rows(i), None, 5.0)) for i in range(2)]
    await asyncio.sleep(0.02)  # both instances busy
    removal = asyncio.create_task(scheduler.remove_instance())
    await asyncio.sleep(0.02)
    assert not removal.done() and host.removed == []  # waits for its call
    queued = [asyncio.create_task(scheduler.infer(rows(i), None, 5.0)) for i in range(3)]
    results = await asyncio.gather(*running, *queued)
    await removal
    assert [float(r["y"][0, 0]) for r in results] == [0.0, 2.0, 0.0, 2.0, 4.0]
    assert host.removed == [1] and scheduler.instances == 1
    await scheduler.add_instance()
    assert scheduler.instances == 2
    await asyncio.gather(*(scheduler.infer(rows(1), None, 5.0) for _ in range(4)))
    assert host.calls.count(1) == 9  # every call ran, on live instances only


def test_with_no_instance_a_request_asks_for_one_and_waits_for_it() -> None:
    run(_cold_start())


async def _cold_start() -> None:
    host = ScalingHost(instances=1)
    # Queue wait of 10 ms: far shorter than the cold start below.
    scheduler = Scheduler("m", host, settings(batch=None, queue_wait_ms=10))
    await scheduler.remove_instance()
    assert scheduler.instances == 0
    asked: list[bool] = []

    def start_one() -> None:
        asked.append(True)
        asyncio.get_running_loop().call_later(0.2, asyncio.ensure_future, scheduler.add_instance())

    scheduler.on_demand, scheduler.demand_at = start_one, 1
    result = await scheduler.infer(rows(3), None, 5.0)
    assert float(result["y"][0, 0]) == 6.0 and asked == [True]
    # Its deadline still holds.
    await scheduler.remove_instance()
    scheduler.on_demand = None
    with pytest.raises(InferenceTimeout):
        await scheduler.infer(rows(3), None, 0.05)
