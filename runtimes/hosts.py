"""Instances in threads of the gateway process (`host: thread`).

onnxruntime and torch release the GIL while they compute, so threads give real
parallelism without copying tensors. Each instance gets its own executor with
one thread per concurrent call it accepts; a runtime with `infer_async` (the
remote runtime) is awaited on the event loop instead.

Calls that recently took less than `inline_below_s` (default 0.3 ms) run on
the event loop itself: handing them to a thread costs two context switches and
a GIL handover, which on a busy core takes longer than the call (measured: a
25 us MLP batch took ~1 ms end to end through the executor). A call that runs
long is seen at once and later calls go back to the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from runtimes.base import Runtime
from runtimes.types import Signature

INLINE_BELOW_S = 0.0003


class ThreadHost:
    def __init__(
        self,
        name: str,
        instances: Sequence[Runtime],
        calls_per_instance: int,
        inline_below_s: float = INLINE_BELOW_S,
        load_one: Callable[[], Runtime] | None = None,
    ) -> None:
        if not instances:
            raise ValueError("a host needs at least one instance")
        self.name = name
        #: by index; None where an instance was removed (autoscaling reuses the index)
        self._instances: list[Runtime | None] = list(instances)
        self._signature = instances[0].signature
        self._calls = calls_per_instance
        self._load_one = load_one
        self._inline_below_s = inline_below_s
        # Moving average of each instance's own compute time; starts "long" so the
        # first calls go to a thread until the model has shown it is cheap.
        self._recent_s = [float("inf")] * len(instances)
        self._executors = [
            ThreadPoolExecutor(calls_per_instance, thread_name_prefix=f"sg-{name}-{i}")
            for i in range(len(instances))
        ]

    @classmethod
    def load(
        cls,
        name: str,
        count: int,
        calls_per_instance: int,
        load_one: Callable[[], Runtime],
        inline_below_s: float = INLINE_BELOW_S,
    ) -> ThreadHost:
        """Load `count` instances with `load_one` (blocking); close them all if one fails."""
        loaded: list[Runtime] = []
        try:
            for _ in range(count):
                loaded.append(load_one())
        except BaseException:
            for runtime in loaded:
                runtime.close()
            raise
        return cls(name, loaded, calls_per_instance, inline_below_s, load_one)

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def slots(self) -> Sequence[int]:
        return [slot for group in self.instance_slots() for slot in group]

    # -- autoscaling ---------------------------------------------------------------
    def instance_slots(self) -> list[list[int]]:
        return [[i] * self._calls for i, r in enumerate(self._instances) if r is not None]

    async def add_instance(self) -> list[int]:
        if self._load_one is None:
            raise TypeError(f"host of {self.name} was not given a way to load instances")
        runtime = await asyncio.to_thread(self._load_one)
        # A removed instance's place if there is one, else a new one at the end.
        index = next((i for i, r in enumerate(self._instances) if r is None), len(self._instances))
        executor = ThreadPoolExecutor(self._calls, thread_name_prefix=f"sg-{self.name}-{index}")
        if index == len(self._instances):
            self._instances.append(runtime)
            self._recent_s.append(float("inf"))
            self._executors.append(executor)
        else:
            self._instances[index], self._recent_s[index] = runtime, float("inf")
            self._executors[index] = executor
        return [index] * self._calls

    async def remove_instance(self, slots: Sequence[int]) -> None:
        index = slots[0]
        runtime, self._instances[index] = self._instances[index], None
        await asyncio.get_running_loop().run_in_executor(None, self._executors[index].shutdown)
        if runtime is not None:
            await _close(runtime)

    async def run(
        self, instance: int, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        runtime = self._instances[instance]
        assert runtime is not None  # the scheduler drains an instance before removing it
        infer_async = getattr(runtime, "infer_async", None)
        if infer_async is not None:
            result: dict[str, np.ndarray] = await infer_async(inputs, output_names)
            return result
        if self._recent_s[instance] < self._inline_below_s:
            return self._timed(instance, runtime, inputs, output_names)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executors[instance], self._timed, instance, runtime, inputs, output_names
        )

    def _timed(
        self,
        instance: int,
        runtime: Runtime,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None,
    ) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        try:
            return runtime.infer(inputs, output_names)
        finally:
            elapsed = time.perf_counter() - started
            recent = self._recent_s[instance]
            self._recent_s[instance] = (
                elapsed if recent == float("inf") else 0.8 * recent + 0.2 * elapsed
            )

    async def run_raw(self, instance: int, body: bytes) -> bytes:
        runtime = self._instances[instance]
        assert runtime is not None
        score = getattr(runtime, "score", None)
        if score is None:
            raise TypeError(f"runtime of {self.name} does not score raw bodies")
        loop = asyncio.get_running_loop()
        result: bytes = await loop.run_in_executor(self._executors[instance], score, body)
        return result

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for executor in self._executors:
            await loop.run_in_executor(None, executor.shutdown)
        for runtime in self._instances:
            if runtime is not None:
                await _close(runtime)


async def _close(runtime: Runtime) -> None:
    aclose = getattr(runtime, "aclose", None)
    with contextlib.suppress(Exception):
        if aclose is not None:
            await aclose()
        runtime.close()
