"""Where a job's mini-batches run, behind one interface: the runner plans, submits
mini-batches, reads their outcomes and keeps the job's state; an executor only runs
them: `local` (worker processes on the runner's host) or `ray` (actors on a Ray
cluster, `batch.ray_executor`).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from importlib import import_module
from typing import ClassVar, Protocol

from batch import worker
from runtimes.base import RuntimeConfig
from runtimes.ray_impl import RayOptions
from runtimes.registry import runtime_kind


class Executor(Protocol):
    #: the exception a mini-batch's outcome raises when its worker died
    worker_died: ClassVar[type[BaseException]]

    def start(self) -> None:
        """Start the workers (they load the model meanwhile)."""

    def submit(self, job_dir: str, index: int, format_name: str) -> Future[tuple[int, float]]:
        """Score one mini-batch; the future gives (items, seconds)."""
        ...

    def restart(self) -> None:
        """Replace every worker (one died or hung); queued work is dropped."""

    def stop(self) -> None: ...

    def death_cause(self) -> str:
        """Why a worker died, as far as the executor can tell ("" when it cannot)."""
        ...


@dataclass(frozen=True)
class ExecutorRequest:
    """What any executor needs to run one job's mini-batches."""

    runtime_name: str
    config: RuntimeConfig
    input_uri: str
    #: mini-batches scored at once (instance_count x max_concurrency_per_instance)
    workers: int
    #: held by the runner's lease thread while it works (see LocalProcesses)
    fork_guard: threading.Lock
    #: `executor: ray`: the cluster and what each worker asks it for
    ray: RayOptions = field(default_factory=RayOptions)


class LocalProcesses:
    """Worker processes on this host, one mini-batch at a time each.

    The runner is forked, so workers start with its imports instead of spending ~0.7 s
    each re-importing numpy, pyarrow and onnxruntime (spawn where fork does not exist).
    The runner has one thread of its own (the lease renewal): `fork_guard` is held by
    that thread while it works and here around every submit (which may fork), so no
    child starts with a lock that thread held.
    """

    worker_died: ClassVar[type[BaseException]] = BrokenProcessPool

    def __init__(self, request: ExecutorRequest) -> None:
        self.runtime_name, self.config = request.runtime_name, request.config
        self.input_uri = request.input_uri
        self.workers = request.workers
        self.fork_guard = request.fork_guard
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        methods = multiprocessing.get_all_start_methods()
        if "fork" in methods:
            import_module(runtime_kind(self.runtime_name).module)
        self._pool = ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("fork" if "fork" in methods else "spawn"),
            initializer=worker.init,
            initargs=(self.runtime_name, self.config, self.input_uri, os.getpid()),
        )
        with self.fork_guard:
            try:
                for _ in range(self.workers):
                    self._pool.submit(int)
            except BrokenProcessPool:
                pass  # a worker died starting: the next submit says so, as the runner expects

    def submit(self, job_dir: str, index: int, format_name: str) -> Future[tuple[int, float]]:
        assert self._pool is not None
        with self.fork_guard:
            return self._pool.submit(worker.score, job_dir, index, format_name)

    def restart(self) -> None:
        self.stop()
        self.start()

    def death_cause(self) -> str:
        """The exit of the worker that died first: the pool terminates the others
        (SIGTERM) once one is gone."""
        processes = getattr(self._pool, "_processes", None) or {}
        exits = [p.exitcode for p in list(processes.values()) if p.exitcode is not None]
        died = [code for code in exits if code != -signal.SIGTERM] or exits
        if not died:
            return ""
        code = died[0]
        if code < 0:
            return f"killed by signal {signal.Signals(-code).name}"
        return f"exited with status {code}"

    def stop(self) -> None:
        if self._pool is None:
            return
        for process in list(getattr(self._pool, "_processes", {}).values()):
            if process.is_alive():
                process.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None


def _ray_actors(request: ExecutorRequest) -> Executor:
    from batch.ray_executor import RayActors

    return RayActors(request)


EXECUTORS: dict[str, Callable[[ExecutorRequest], Executor]] = {
    "local": LocalProcesses,
    "ray": _ray_actors,
}
