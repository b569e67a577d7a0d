"""Instances in worker processes (`host: process`): isolation for scoring
scripts and for runtimes that hold the GIL.

Each worker is a fresh interpreter (multiprocessing "spawn") that loads one
runtime instance. Tensors travel through two shared-memory segments per
worker (inputs, outputs), so large arrays are copied once into shared memory
and never pickled; only their names, dtypes, shapes and offsets go through the
worker's pipe. BYTES tensors and raw bodies go through the pipe.

Segments are sized for the `/dev/shm` this process really has (Docker's default
is 64 MiB): they start small, grow on demand up to a quarter of it, and are
allocated for real (`posix_fallocate`) when created. A sparse segment that
outgrows /dev/shm would kill the whole gateway with SIGBUS on first write; an
allocation that fails instead sends that request's tensors through the pipe.

A worker that dies (or hangs past its deadline, and is killed) fails the call
it was serving with `InstanceFailed` (503) and is replaced in the background;
the other workers keep serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import logging
import multiprocessing
import os
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from runtimes import azure_monitoring, context, errors
from runtimes.base import RuntimeConfig
from runtimes.errors import InstanceFailed, ModelLoadError
from runtimes.resources import shm_bytes
from runtimes.types import Signature

log = logging.getLogger(__name__)

#: First size of each segment; inputs grow on demand, up to `_segment_cap()`.
SEGMENT_BYTES = 1024 * 1024
_CONTEXT = multiprocessing.get_context("spawn")
#: Exceptions a worker may report back by name; anything else is InferenceFailed.
_KNOWN = {
    cls.__name__: cls
    for cls in (
        errors.InvalidInput,
        errors.InferenceFailed,
        errors.ModelLoadError,
        errors.DeviceUnavailable,
        errors.MissingExtra,
    )
}

# A tensor in a message: (name, dtype, shape, offset, nbytes) in shared memory,
# or (name, None, array, 0, 0) when it travels pickled (BYTES).
Wire = tuple[str, str | None, Any, int, int]


def _pack(arrays: Mapping[str, np.ndarray], segment: SharedMemory) -> list[Wire] | None:
    """Copy arrays into `segment`; None if they do not fit."""
    wire: list[Wire] = []
    offset = 0
    for name, array in arrays.items():
        if array.dtype == object:
            wire.append((name, None, array, 0, 0))
            continue
        data = np.ascontiguousarray(array)
        if offset + data.nbytes > segment.size:
            return None
        np.ndarray(data.shape, data.dtype, segment.buf, offset)[...] = data
        wire.append((name, data.dtype.str, data.shape, offset, data.nbytes))
        offset += (data.nbytes + 63) // 64 * 64  # keep each tensor 64-byte aligned
    return wire


def _unpack(wire: list[Wire], segment: SharedMemory | None, copy: bool) -> dict[str, np.ndarray]:
    out = {}
    for name, dtype, shape, offset, _ in wire:
        if dtype is None:
            out[name] = shape
        else:
            assert segment is not None
            view = np.ndarray(shape, np.dtype(dtype), segment.buf, offset)
            out[name] = view.copy() if copy else view
    return out


def _segment_cap() -> int:
    """Largest segment: a quarter of /dev/shm, so several workers' segments fit."""
    return max(SEGMENT_BYTES, shm_bytes() // 4)


def _allocate(size: int) -> SharedMemory | None:
    """A shared-memory segment whose pages exist (not sparse), or None if /dev/shm has no
    room for it."""
    segment = SharedMemory(create=True, size=size)
    try:
        os.posix_fallocate(segment._fd, 0, size)  # type: ignore[attr-defined]
    except OSError as exc:
        segment.close()
        segment.unlink()
        if exc.errno in (errno.ENOSPC, errno.ENOMEM):
            log.warning("/dev/shm has no room for a %d-byte segment: %s", size, exc)
            return None
        raise
    return segment


def _pickled(arrays: Mapping[str, np.ndarray]) -> list[Wire]:
    return [(name, None, array, 0, 0) for name, array in arrays.items()]


def _error_reply(exc: BaseException) -> tuple[str, str, str]:
    return ("error", type(exc).__name__, str(exc) or type(exc).__name__)


def _attach(name: str) -> SharedMemory:
    # Spawned workers share the parent's resource tracker, so attaching here adds
    # nothing to clean up: the parent unlinks every segment it created.
    return SharedMemory(name)


class _LinesToParent(io.TextIOBase):
    """A worker's stdout or stderr: each line goes to the gateway as ("log", text), for
    the deployment's log (`servegate deployment get-logs`)."""

    def __init__(self, send: Callable[[tuple[Any, ...]], None]) -> None:
        self._send = send
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._send(("log", line))
        return len(text)

    def flush(self) -> None:
        if self._partial:
            self._send(("log", self._partial))
            self._partial = ""


def _log_to_parent(conn: Connection) -> Callable[[tuple[Any, ...]], None]:
    """Send replies and log lines on one pipe, whole messages only: a script may print or
    log from threads of its own. stdout, stderr and the logging module (INFO and up, as
    Azure ML's inference server shows them) all go there."""
    lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            conn.send(message)

    sys.stdout = _LinesToParent(send)
    sys.stderr = _LinesToParent(send)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return send


def worker_main(
    conn: Connection, runtime_name: str, config: RuntimeConfig, inputs_name: str, outputs_name: str
) -> None:
    """A worker process: load the runtime, then serve requests until the pipe closes."""
    os.environ.update(config.environment)
    send = _log_to_parent(conn)
    # Azure ML's custom logging (`Collector(name=...).collect(df)`) in scoring scripts:
    # the rows go to the gateway's data collector.
    azure_monitoring.install(lambda name, rows, context: send(("collect", name, rows, context)))
    from runtimes.registry import load_runtime

    try:
        runtime = load_runtime(runtime_name, config)
    except BaseException as exc:  # report any load failure, then exit
        send(_error_reply(exc if isinstance(exc, Exception) else ModelLoadError(repr(exc))))
        return
    send(("ready", runtime.signature.to_dict()))
    segments = {inputs_name: _attach(inputs_name)}
    out_segment = _attach(outputs_name)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if message[0] == "ping":  # the deployment's liveness or readiness probe
                send(("pong",))
                continue
            if message[0] == "raw":
                send(("ok", runtime.score(message[1])))  # type: ignore[attr-defined]
                continue
            _, segment_name, wire, output_names = message
            if segment_name is not None and segment_name not in segments:
                # the parent grew the input segment
                for old in segments.values():
                    old.close()
                segments = {segment_name: _attach(segment_name)}
            inputs = _unpack(wire, segments.get(segment_name or ""), copy=False)
            results = runtime.infer(inputs, output_names)
            packed = _pack(results, out_segment)
            # Outputs too large for the segment travel pickled instead.
            send(("ok", packed) if packed is not None else ("pickled", results))
        except Exception as exc:
            log.debug("worker error: %s", traceback.format_exc())
            send(_error_reply(exc))


@dataclass(frozen=True)
class WorkerProbe:
    """Azure ML's `liveness_probe` / `readiness_probe` for worker processes (seconds):
    after `initial_delay`, every `period` an idle worker is asked to answer within
    `timeout`. Liveness: one that has not answered for `failure_threshold` probes in a
    row gets no calls meanwhile and is then replaced. Readiness: a worker takes calls
    once it answered `success_threshold` probes in a row, and is taken out of rotation
    (not replaced) after `failure_threshold` unanswered ones."""

    initial_delay: float = 10.0
    period: float = 10.0
    timeout: float = 2.0
    failure_threshold: int = 30
    success_threshold: int = 1


@dataclass
class _Worker:
    index: int
    #: stopped for good (autoscaling removed its instance): not replaced when it exits
    removed: bool = False
    process: Any = None
    conn: Connection | None = None
    inputs: SharedMemory | None = None
    outputs: SharedMemory | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    #: one exchange on the pipe at a time: a call, or a probe
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: the readiness probe let it in (always, without one): the scheduler routes to it
    in_rotation: asyncio.Event = field(default_factory=asyncio.Event)
    #: when its current process loaded the model (loop time; probes wait initial_delay)
    loaded_at: float = 0.0
    #: the readiness probe's count of answers (> 0) or misses (< 0) in a row
    readiness_streak: int = 0
    #: the answer to the probes' outstanding ping (it holds `lock` until it comes)
    pong: asyncio.Future[Any] | None = None
    #: the id(s) of the request(s) its current call serves ("": none), for its log lines
    request_id: str = ""
    thread: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="sg-worker-io")
    )


class ProcessHost:
    """`InstanceHost` over worker processes, one call at a time per worker."""

    def __init__(
        self,
        name: str,
        runtime_name: str,
        config: RuntimeConfig,
        count: int,
        hang_timeout_s: float,
        per_instance: int = 1,
        log: Callable[[str], None] | None = None,
        collect: azure_monitoring.Sink | None = None,
        liveness: WorkerProbe | None = None,
        readiness: WorkerProbe | None = None,
    ) -> None:
        self.name = name
        self._liveness = liveness
        self._readiness = readiness
        self._watches: list[asyncio.Task[None]] = []
        #: the probe checks under way: (worker index, probe kind) -> its task
        self._checks: dict[tuple[int, str], asyncio.Task[None]] = {}
        #: told when a worker comes (back) into rotation (the scheduler dispatches again)
        self.on_rotation: Callable[[], None] | None = None
        #: the deployment's log: what workers print and log, their starts and exits
        self._log = log or (lambda line: None)
        #: rows scripts collect with Azure's Collector (called on worker I/O threads)
        self._collect = collect or (lambda name, rows, context: None)
        #: workers per instance (one per concurrent request it takes)
        self._per_instance = per_instance
        self._runtime_name = runtime_name
        self._config = config
        self._hang_timeout_s = hang_timeout_s
        self._workers = [_Worker(i) for i in range(count)]
        self._signature: Signature | None = None
        self._closed = False
        self._restarts: set[asyncio.Task[None]] = set()

    @classmethod
    async def start(
        cls,
        name: str,
        runtime_name: str,
        config: RuntimeConfig,
        count: int,
        hang_timeout_s: float = 60.0,
        per_instance: int = 1,
        log: Callable[[str], None] | None = None,
        collect: azure_monitoring.Sink | None = None,
        liveness: WorkerProbe | None = None,
        readiness: WorkerProbe | None = None,
    ) -> ProcessHost:
        """Start `count` workers (`per_instance` to an instance) and wait until each has
        loaded its runtime (and passed the readiness probe, if there is one)."""
        host = cls(
            name,
            runtime_name,
            config,
            count,
            hang_timeout_s,
            per_instance,
            log,
            collect,
            liveness,
            readiness,
        )
        try:
            await asyncio.gather(*(host._spawn(w) for w in host._workers))
            loop = asyncio.get_running_loop()
            for kind, probe in (("liveness", liveness), ("readiness", readiness)):
                if probe is not None:
                    host._watches.append(loop.create_task(host._probe_workers(probe, kind)))
            await host._until_in_rotation(host._workers)
        except BaseException:
            await host.close()
            raise
        return host

    # -- probes --------------------------------------------------------------------
    def routable(self, slot: int) -> bool:
        """Whether the scheduler may give this worker a call: it is loaded, answers its
        liveness probe and passed its readiness probe."""
        worker = self._workers[slot]
        return worker.ready.is_set() and worker.in_rotation.is_set()

    def instances_ready(self) -> int:
        return sum(any(self.routable(s) for s in slots) for slots in self.instance_slots())

    def _rotation_changed(self) -> None:
        if self.on_rotation is not None:
            self.on_rotation()

    async def _until_in_rotation(self, workers: Sequence[_Worker]) -> None:
        """Wait until the readiness probe let each of these workers in: creating a
        deployment, or adding an instance, ends when they take calls."""
        probe = self._readiness
        if probe is None:
            return
        bound = (
            probe.initial_delay
            + probe.timeout
            + (probe.failure_threshold + probe.success_threshold) * probe.period
        )
        try:
            await asyncio.wait_for(asyncio.gather(*(w.in_rotation.wait() for w in workers)), bound)
        except TimeoutError:
            raise InstanceFailed(
                f"deployment '{self.name}': the workers did not pass the readiness probe "
                f"within {bound:g} s (initial_delay + timeout + (failure_threshold + "
                "success_threshold) x period); see the deployment's logs"
            ) from None

    async def _probe_workers(self, probe: WorkerProbe, kind: str) -> None:
        check = self._check_liveness if kind == "liveness" else self._check_readiness
        loop = asyncio.get_running_loop()
        while not self._closed:
            now = loop.time()
            for worker in list(self._workers):
                key = (worker.index, kind)
                if (
                    worker.removed
                    or not worker.ready.is_set()
                    or now < worker.loaded_at + probe.initial_delay
                    or key in self._checks  # its last probe is still waiting for an answer
                ):
                    continue
                task = loop.create_task(check(worker, probe))
                self._checks[key] = task
                task.add_done_callback(partial(self._checks.pop, key))
            # Every period, and when a (new) worker's initial delay ends.
            starts = [
                w.loaded_at + probe.initial_delay - now
                for w in self._workers
                if w.ready.is_set() and w.loaded_at + probe.initial_delay > now
            ]
            await asyncio.sleep(min([probe.period, *starts]))

    async def _ping(
        self, worker: _Worker, probe: WorkerProbe, missed: Callable[[int, float], bool]
    ) -> bool | None:
        """Ask an idle worker to answer (or wait for the answer to a ping already sent,
        which both probes share). Each `timeout` (then each `period`) without an answer is
        told to `missed(count, waited_s)`, which returns True to give up (it had the
        worker replaced). True: it answered; False: it died; None: it is in a call (alive
        enough: the call has its own deadline), or the probe gave up."""
        if worker.pong is None:
            if worker.lock.locked() or worker.conn is None:
                return None
            await worker.lock.acquire()
            try:
                worker.conn.send(("ping",))
            except OSError:
                worker.lock.release()
                return False
            pong = asyncio.get_running_loop().run_in_executor(worker.thread, self._reply, worker)

            def answered(_: object) -> None:
                worker.pong = None
                worker.lock.release()

            pong.add_done_callback(answered)
            worker.pong = pong
        pong = worker.pong
        misses = 0
        while True:
            wait_s = probe.timeout if misses == 0 else probe.period
            done, _ = await asyncio.wait({pong}, timeout=wait_s)
            if done:
                return pong.exception() is None
            misses += 1
            if missed(misses, wait_s):
                await asyncio.wait({pong})
                return None

    async def _check_liveness(self, worker: _Worker, probe: WorkerProbe) -> None:
        def missed(count: int, waited_s: float) -> bool:
            worker.ready.clear()  # no calls while it does not answer
            self._log(
                f"worker {worker.index}: liveness probe failed ({count}/"
                f"{probe.failure_threshold}: no answer within {waited_s:g} s)"
            )
            if count < probe.failure_threshold:
                return False
            self._replace(worker)  # kills it: the pending read ends
            return True

        answered = await self._ping(worker, probe, missed)
        if answered is False:
            self._replace(worker)  # it died
        elif answered and not worker.ready.is_set():
            self._log(f"worker {worker.index}: answered the liveness probe again")
            worker.ready.set()
            self._rotation_changed()

    async def _check_readiness(self, worker: _Worker, probe: WorkerProbe) -> None:
        def missed(count: int, waited_s: float) -> bool:
            self._readiness_result(worker, probe, answered=False)
            self._log(
                f"worker {worker.index}: readiness probe failed (no answer within "
                f"{waited_s:g} s; {-worker.readiness_streak} in a row)"
            )
            return False

        answered = await self._ping(worker, probe, missed)
        if answered:
            self._readiness_result(worker, probe, answered=True)
        elif answered is False:
            self._replace(worker)  # it died

    def _readiness_result(self, worker: _Worker, probe: WorkerProbe, answered: bool) -> None:
        streak = worker.readiness_streak
        streak = max(streak, 0) + 1 if answered else min(streak, 0) - 1
        worker.readiness_streak = streak
        rotating = worker.in_rotation.is_set()
        if answered and not rotating and streak >= probe.success_threshold:
            worker.in_rotation.set()
            self._log(
                f"worker {worker.index}: passed the readiness probe ({streak} in a row); "
                "taking calls"
            )
            self._rotation_changed()
        elif not answered and rotating and -streak >= probe.failure_threshold:
            worker.in_rotation.clear()
            self._log(
                f"worker {worker.index}: failed the readiness probe {-streak} times in a row; "
                "no calls until it passes again"
            )

    @property
    def signature(self) -> Signature:
        assert self._signature is not None
        return self._signature

    @property
    def slots(self) -> Sequence[int]:
        return [w.index for w in self._workers if not w.removed]

    # -- autoscaling ---------------------------------------------------------------
    def instance_slots(self) -> list[list[int]]:
        live = self.slots
        step = self._per_instance
        return [list(live[i : i + step]) for i in range(0, len(live), step)]

    async def add_instance(self) -> list[int]:
        """Start one instance's workers (reusing removed workers' places)."""
        spare = [w for w in self._workers if w.removed][: self._per_instance]
        while len(spare) < self._per_instance:
            spare.append(_Worker(len(self._workers)))
            self._workers.append(spare[-1])
        for worker in spare:
            worker.removed = False
        try:
            await asyncio.gather(*(self._spawn(w) for w in spare))
            await self._until_in_rotation(spare)
        except BaseException:
            await self.remove_instance([w.index for w in spare])
            raise
        return [w.index for w in spare]

    async def remove_instance(self, slots: Sequence[int]) -> None:
        loop = asyncio.get_running_loop()
        for index in slots:
            worker = self._workers[index]
            worker.removed = True
            await loop.run_in_executor(None, self._stop, worker)

    async def _spawn(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        worker.ready.clear()
        worker.in_rotation.clear()
        worker.readiness_streak = 0
        worker.inputs = _allocate(SEGMENT_BYTES)
        worker.outputs = _allocate(SEGMENT_BYTES)
        if worker.inputs is None or worker.outputs is None:
            self._stop(worker)
            raise InstanceFailed(
                f"deployment '{self.name}': /dev/shm ({shm_bytes() // 2**20} MiB) has no room "
                f"for worker {worker.index}'s shared memory; give the container more "
                "(docker run --shm-size) or use fewer workers"
            )
        parent, child = _CONTEXT.Pipe()
        worker.conn = parent
        worker.process = _CONTEXT.Process(
            target=worker_main,
            args=(child, self._runtime_name, self._config, worker.inputs.name, worker.outputs.name),
            name=f"servegate-{self.name}-{worker.index}",
            daemon=True,
        )
        await loop.run_in_executor(worker.thread, worker.process.start)
        child.close()
        reply = await self._receive(worker, timeout_s=600.0)
        if reply[0] != "ready":
            self._log(
                f"worker {worker.index}: failed to load: {reply[2] if len(reply) > 2 else reply}"
            )
            raise _exception(reply, self.name)
        self._signature = Signature.from_dict(reply[1])
        self._log(f"worker {worker.index}: started (pid {worker.process.pid}), model loaded")
        worker.loaded_at = loop.time()
        worker.ready.set()
        if self._readiness is None:  # else the readiness probe lets it in
            worker.in_rotation.set()
            self._rotation_changed()

    def _reply(self, worker: _Worker) -> Any:
        """The worker's next reply; the lines it logged before it go to the deployment's
        log. (On the worker's I/O thread.)"""
        assert worker.conn is not None
        while True:
            message = worker.conn.recv()
            if message[0] == "log":
                serving = f" (request {worker.request_id})" if worker.request_id else ""
                self._log(f"worker {worker.index}{serving}: {message[1]}")
            elif message[0] == "collect":
                self._collect(*message[1:])
            else:
                return message

    async def _receive(self, worker: _Worker, timeout_s: float) -> Any:
        assert worker.conn is not None
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(worker.thread, self._reply, worker), timeout_s
            )
        except (EOFError, OSError):
            process = worker.process
            if process is not None:  # reap it, so its exit code is known
                await loop.run_in_executor(None, process.join, 1.0)
            raise InstanceFailed(
                f"worker process {worker.index} of deployment '{self.name}' exited "
                f"(exit code {process.exitcode if process else None}); it is being replaced"
            ) from None
        except TimeoutError:
            raise InstanceFailed(
                f"worker process {worker.index} of deployment '{self.name}' did not answer "
                f"within {timeout_s:.0f} s; it was killed and is being replaced"
            ) from None

    async def _call(self, instance: int, message: tuple[Any, ...]) -> Any:
        worker = self._workers[instance]
        await worker.ready.wait()
        async with worker.lock:
            await worker.ready.wait()  # a liveness probe may have found it not answering
            served = context.request_id.get()
            worker.request_id = "" if served == "-" else served
            try:
                return await self._exchange(worker, message)
            finally:
                worker.request_id = ""

    async def _exchange(self, worker: _Worker, message: tuple[Any, ...]) -> Any:
        if self._closed:
            raise InstanceFailed(f"deployment '{self.name}' is shutting down")
        assert worker.conn is not None
        try:
            worker.conn.send(message)
            reply = await self._receive(worker, self._hang_timeout_s)
        except (InstanceFailed, BrokenPipeError, OSError) as exc:
            self._replace(worker)
            if isinstance(exc, InstanceFailed):
                raise
            raise InstanceFailed(
                f"worker process {worker.index} of deployment '{self.name}' is gone; "
                "it is being replaced"
            ) from None
        if reply[0] == "error":
            raise _exception(reply, self.name)
        return reply

    async def run(
        self, instance: int, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        worker = self._workers[instance]
        await worker.ready.wait()
        assert worker.inputs is not None
        wire = _pack(inputs, worker.inputs)
        if wire is None and self._grow_inputs(worker, sum(a.nbytes + 64 for a in inputs.values())):
            wire = _pack(inputs, worker.inputs)
        segment_name: str | None = worker.inputs.name
        if wire is None:  # larger than any segment /dev/shm allows: through the pipe
            wire, segment_name = _pickled(inputs), None
        reply = await self._call(
            instance,
            ("infer", segment_name, wire, tuple(output_names) if output_names else None),
        )
        if reply[0] == "pickled":
            return dict(reply[1])
        return _unpack(reply[1], worker.outputs, copy=True)

    @staticmethod
    def _grow_inputs(worker: _Worker, needed: int) -> bool:
        """Replace the worker's input segment by one of at least `needed` bytes (the
        worker attaches it by name); False if that would pass the cap or /dev/shm has
        no room, and the old segment stays."""
        assert worker.inputs is not None
        cap = _segment_cap()
        if needed > cap:
            return False
        grown = _allocate(min(cap, max(needed, 2 * worker.inputs.size)))
        if grown is None:
            return False
        old, worker.inputs = worker.inputs, grown
        old.close()
        old.unlink()
        return True

    async def run_raw(self, instance: int, body: bytes) -> bytes:
        reply = await self._call(instance, ("raw", body))
        result: bytes = reply[1]
        return result

    def _replace(self, worker: _Worker) -> None:
        if self._closed or worker.removed:
            return
        worker.ready.clear()

        async def restart() -> None:
            process = worker.process
            self._log(
                f"worker {worker.index}: exited or hung (exit code "
                f"{process.exitcode if process is not None else None}); replacing it"
            )
            self._stop(worker)
            try:
                await self._spawn(worker)
                log.warning("replaced worker %d of deployment %s", worker.index, self.name)
            except Exception:
                log.exception("could not replace worker %d of %s", worker.index, self.name)

        task = asyncio.get_running_loop().create_task(restart())
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    @staticmethod
    def _stop(worker: _Worker) -> None:
        if worker.process is not None and worker.process.is_alive():
            worker.process.kill()
            worker.process.join(5)
        if worker.conn is not None:
            worker.conn.close()
        for segment in (worker.inputs, worker.outputs):
            if segment is not None:
                with contextlib.suppress(FileNotFoundError):
                    segment.close()
                    segment.unlink()
        worker.inputs = worker.outputs = None

    async def close(self) -> None:
        self._closed = True
        for task in [*self._watches, *self._checks.values(), *self._restarts]:
            task.cancel()
        loop = asyncio.get_running_loop()
        for worker in self._workers:
            await loop.run_in_executor(None, self._stop, worker)
            worker.thread.shutdown(wait=False, cancel_futures=True)


def _exception(reply: tuple[Any, ...], name: str) -> Exception:
    kind, message = reply[1], reply[2]
    cls = _KNOWN.get(kind, errors.InferenceFailed)
    if cls is errors.InferenceFailed and kind != "InferenceFailed":
        message = f"{kind}: {message}"
    return cls(message)
