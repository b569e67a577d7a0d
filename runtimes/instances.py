"""Where a deployment's instances live: N runtime instances served from threads.

onnxruntime and torch release the GIL while they compute, so threads in the
gateway process give real parallelism without copying tensors. Each instance
is used by one call at a time; a call waits for a free instance.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from runtimes.base import Runtime
from runtimes.errors import InferenceTimeout
from runtimes.types import Signature


class InstancePool:
    """`instance_count` loaded runtimes of one deployment, run on their own threads."""

    def __init__(self, name: str, instances: Sequence[Runtime]) -> None:
        if not instances:
            raise ValueError("an instance pool needs at least one instance")
        self.name = name
        self._instances = list(instances)
        self._executor = ThreadPoolExecutor(len(instances), thread_name_prefix=f"sg-{name}")
        self._free: asyncio.Queue[Runtime] | None = None
        self._in_flight = 0

    @classmethod
    def load(cls, name: str, count: int, load_one: Callable[[], Runtime]) -> InstancePool:
        """Load `count` instances with `load_one` (blocking); close them all if one fails."""
        loaded: list[Runtime] = []
        try:
            for _ in range(count):
                loaded.append(load_one())
        except BaseException:
            for runtime in loaded:
                runtime.close()
            raise
        return cls(name, loaded)

    @property
    def signature(self) -> Signature:
        return self._instances[0].signature

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _queue(self) -> asyncio.Queue[Runtime]:
        # Created lazily so the pool can be built outside the event loop.
        if self._free is None:
            self._free = asyncio.Queue()
            for runtime in self._instances:
                self._free.put_nowait(runtime)
        return self._free

    async def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None,
        timeout_s: float,
    ) -> dict[str, np.ndarray]:
        """Run on a free instance; raise InferenceTimeout past `timeout_s` (queue included)."""
        self._in_flight += 1
        try:
            return await asyncio.wait_for(self._run(inputs, output_names), timeout_s)
        except TimeoutError:
            raise InferenceTimeout(
                f"inference did not finish within request_timeout_ms={round(timeout_s * 1000)}"
            ) from None
        finally:
            self._in_flight -= 1

    async def _run(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        queue = self._queue()
        runtime = await queue.get()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, runtime.infer, inputs, output_names)
        try:
            # shield: a timed-out caller must not hand the instance back while it still runs.
            return await asyncio.shield(future)
        finally:
            if future.done():
                queue.put_nowait(runtime)
            else:
                future.add_done_callback(lambda _: queue.put_nowait(runtime))

    async def drain(self, timeout_s: float) -> bool:
        """Wait until no call is in flight (True) or `timeout_s` passed (False)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        return self._in_flight == 0

    def close(self) -> None:
        """Stop the threads and free the instances; call after `drain`."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        for runtime in self._instances:
            with contextlib.suppress(Exception):
                runtime.close()
