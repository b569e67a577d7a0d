"""The job runner: one process per running job (`python -m batch.runner --home H JOB`).

It plans the job once (mini-batches staged in the job's folder, their states in the
store), then runs the pending mini-batches on `instance_count x
max_concurrency_per_instance` worker processes: per-mini-batch timeout and
retries, failures counted against `error_threshold`, cancellation, and at the end
the output assembled from the completed parts plus `summary.json`.

Everything it needs to continue is in the store and the job folder: killing it
(even with SIGKILL) and starting it again (`batch resume`) finishes the job
without redoing completed mini-batches.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

from batch import sinks
from batch.errors import BatchInputError, WorkerStartError
from batch.executors import EXECUTORS, Executor, ExecutorRequest
from batch.formats import FILES, FORMATS, InputFormat, format_of, read_schema
from batch.jobs import RUNNER_LEASE_TTL_S, RUNNER_RENEW_S, job_lease, new_runner_id
from batch.roots import BatchRoots
from batch.sources import Location, list_inputs, locate
from batch.tensors import check_schema
from deploy.home import ControlPlaneSettings, open_control_plane
from deploy.jobs import check_job_id
from deploy.records import JobRecord, JobState, MiniBatchRecord, MiniBatchState
from deploy.specs import BatchDeploymentSpec, RayActorOptions
from deploy.store import STORE_ENV
from runtimes.ray_impl import RayOptions
from runtimes.registry import runtime_kind
from runtimes.types import Signature

log = logging.getLogger("servegate.batch")
POLL_S = 0.2
#: workers that could not start are started again this many times before the job fails
START_RETRIES = 1
#: worker deaths, before any mini-batch was done, that end the job
MAX_DEATHS_BEFORE_ANY_DONE = 5


def _format_name(job: JobRecord) -> str:
    """The job's input format (jobs planned before formats had names kept a mode)."""
    legacy = {"parquet": "parquet", "tabular": "csv", "files": "files"}
    return job.format or legacy[job.mode or ""]


class JobRunner:
    def __init__(self, home: Path, job_id: str, runner_id: str | None = None) -> None:
        self.runner_id = runner_id or new_runner_id()
        #: held by the lease thread while it works and around every fork of a worker
        self.fork_guard = threading.Lock()
        self.control = open_control_plane(ControlPlaneSettings.resolve(home))
        self.store = self.control.store
        self.ledger = self.control.jobs
        self.job_id = job_id
        self.home = home
        self._last_progress = 0.0
        self.job_dir = home / "jobs" / check_job_id(job_id)
        self.job_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.job_dir / "job.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)

    def record(self) -> JobRecord:
        job = self.store.get_job(self.job_id)
        if job is None:
            raise SystemExit(f"no job {self.job_id}")
        return job

    # -- the lease -------------------------------------------------------------------
    def hold_lease(self) -> bool:
        """Take the job's lease and keep renewing it from a thread. False when another
        runner holds it. Losing it later (this process was frozen past the lease time
        and another runner took over) ends this process at once: two runners must
        never write one job's parts."""
        lease = job_lease(self.job_id)
        if not self.store.acquire_lease(lease, self.runner_id, RUNNER_LEASE_TTL_S):
            log.error("job %s is run by %s", self.job_id, self.store.lease_holder(lease))
            return False

        def renew() -> None:
            while True:
                time.sleep(RUNNER_RENEW_S)
                with self.fork_guard:
                    try:
                        held = self.store.acquire_lease(lease, self.runner_id, RUNNER_LEASE_TTL_S)
                    except Exception as exc:  # the store is down: try again
                        log.warning("renewing the lease of job %s failed: %s", self.job_id, exc)
                        continue
                    if not held:
                        log.error("job %s: lease lost to another runner; stopping", self.job_id)
                        os._exit(3)

        threading.Thread(target=renew, name="job-lease", daemon=True).start()
        return True

    # -- the job -------------------------------------------------------------------
    def run(self) -> None:
        if not self.hold_lease():
            return
        try:
            self._run()
        finally:
            self.store.release_lease(job_lease(self.job_id), self.runner_id)

    def _run(self) -> None:
        job = self.record()
        if job.final:
            log.info("job %s is already %s", self.job_id, job.state)
            return
        running = self.ledger.start_running(self.job_id, os.getpid(), time.time())
        if running is None:  # a cancel that came before this runner started
            self.finish(JobState.CANCELLED, "cancelled by request")
            return
        job = running
        executor: Executor | None = None
        try:
            inputs = None if job.planned else self.inspect(job)
            # Workers import their libraries and load the model while the planner works.
            executor = self._executor(job)
            executor.start()
            if inputs is not None:
                phase = time.perf_counter()
                job = self.plan(job, *inputs)
                log.info("planning took %.3f s", time.perf_counter() - phase)
            self.execute(job, executor)
        except BatchInputError as exc:
            # Bad input: the job fails with the reason and writes nothing to the output.
            if executor is not None:
                executor.stop()
            log.error("job %s failed: %s", self.job_id, exc)
            self.finish(JobState.FAILED, str(exc), write_summary=False)

    def _executor(self, job: JobRecord) -> Executor:
        """The executor the job's deployment names (`compute.executor`)."""
        spec = job.deployment_spec
        compute = spec.compute if isinstance(spec, BatchDeploymentSpec) else None
        actor = compute.ray_actor_options if compute else None
        config = self.control.runtime_config(spec, RayActorOptions.threads(actor))
        request = ExecutorRequest(
            job.runtime_name,
            config,
            job.input,
            job.settings.instance_count * job.settings.max_concurrency_per_instance,
            self.fork_guard,
            RayOptions(
                address=compute.ray_address if compute else None,
                actor_options=actor.for_ray() if actor else {},
            ),
        )
        return EXECUTORS[compute.executor if compute else "local"](request)

    def inspect(self, job: JobRecord) -> tuple[Location, list[str], InputFormat]:
        """List the inputs and check, from the first file's schema, that they fit the
        model: a mismatch fails the job here, once, before any worker starts (every
        file has the first one's schema; planning checks that)."""
        location, files = list_inputs(job.input, job.input_type)
        # Files listed now may be links made since the job was accepted.
        uploads = self.control.artifacts.home / "data"
        BatchRoots.from_environment(self.home, uploads).check_listed(job.input, files)
        script = runtime_kind(job.runtime_name).takes_raw_body
        # A scoring script gets the mini-batch's file paths, as in Azure ML, unless its
        # deployment asks for the rows of tabular files (script_input: table).
        fmt = FILES if script and job.settings.script_input == "files" else format_of(files)
        signature = self._signature(job)
        if fmt.tabular and signature is not None and signature.inputs:
            schema = read_schema(fmt, location.filesystem, files[0])
            try:
                check_schema(schema, signature)
            except BatchInputError as exc:
                raise BatchInputError(f"input file '{files[0]}': {exc}") from None
        return location, files, fmt

    def _signature(self, job: JobRecord) -> Signature | None:
        """The model's signature as registered (None for scoring scripts, which take
        tables as they are, and for models registered without one)."""
        spec = job.deployment_spec
        if runtime_kind(job.runtime_name).takes_raw_body:
            return None
        if spec.signature is not None:
            return Signature.from_dict(spec.signature.to_dict())
        if spec.model is not None and spec.model.name is not None:
            record = self.control.get_model(spec.model.name, spec.model.version)
            return Signature.from_dict(record.signature) if record.signature else None
        return None

    def plan(
        self, job: JobRecord, location: Location, files: list[str], fmt: InputFormat
    ) -> JobRecord:
        if not fmt.tabular and not runtime_kind(job.runtime_name).takes_raw_body:
            raise BatchInputError(
                f"input '{job.input}' is not a tabular dataset (Parquet, CSV, JSON lines); "
                "a folder of arbitrary files needs a scoring script (code_configuration)"
            )
        size = job.settings.mini_batch_size or fmt.default_mini_batch_size
        counts = fmt.plan(location.filesystem, files, size, self.job_dir)
        log.info(
            "planned %d mini-batches (%s, %d items) from %d files",
            len(counts),
            fmt.name,
            sum(counts),
            len(files),
        )
        return self.ledger.plan(self.job_id, counts, fmt.name)

    def execute(self, job: JobRecord, executor: Executor) -> None:
        settings = job.settings
        retries = settings.retry_settings.max_retries
        timeout_s = settings.retry_settings.timeout
        threshold = settings.error_threshold
        workers = settings.instance_count * settings.max_concurrency_per_instance
        batches = {mb.index: mb for mb in self.ledger.mini_batches(self.job_id)}
        for mb in batches.values():
            if mb.state == MiniBatchState.RUNNING:  # left by a runner that was killed
                self._set(mb.changed(state=MiniBatchState.PENDING), batches)
        pending = [i for i, mb in sorted(batches.items()) if mb.state == MiniBatchState.PENDING]
        phase = time.perf_counter()
        running: dict[Future[tuple[int, float]], tuple[int, float]] = {}
        #: worker start failures (the model or script would not load), and worker deaths
        #: before any mini-batch was done: both end the job early, with the cause (a
        #: worker that dies at start dies for every mini-batch)
        start_failures, deaths, last_death, any_done = 0, 0, "", False
        try:
            while pending or running:
                if self.record().state == JobState.CANCELLING:
                    executor.stop()
                    self.finish(JobState.CANCELLED, "cancelled by request")
                    return
                broken = False
                start_error: str | None = None
                while pending and len(running) < workers * 2:
                    index = pending[0]
                    try:
                        future = executor.submit(str(self.job_dir), index, _format_name(job))
                    except executor.worker_died:
                        # A worker died since the last look: the futures it broke say
                        # which mini-batch it held; this one waits for the new workers.
                        broken = True
                        if not running:  # it died starting: no future reports it
                            deaths += 1
                            last_death = _death(executor)
                        break
                    pending.pop(0)
                    self._set(batches[index].changed(state=MiniBatchState.RUNNING), batches)
                    running[future] = (index, time.monotonic())
                done, _ = wait(running, timeout=POLL_S, return_when=FIRST_COMPLETED)
                for future in done:
                    index, _ = running.pop(future)
                    try:
                        _, seconds = future.result()
                    except WorkerStartError as exc:
                        # Nothing ran: the mini-batch waits, unharmed, for workers that start.
                        start_error = str(exc)
                        pending.insert(0, index)
                        self._set(batches[index].changed(state=MiniBatchState.PENDING), batches)
                        continue
                    except executor.worker_died:
                        broken = True
                        deaths += 1
                        last_death = _death(executor)
                        self._failed_attempt(batches, index, last_death, retries, pending)
                        continue
                    except BatchInputError as exc:
                        # The data itself does not fit: the same error on every attempt.
                        self._failed_attempt(batches, index, str(exc), 0, pending)
                        continue
                    except Exception as exc:
                        self._failed_attempt(
                            batches, index, f"{type(exc).__name__}: {exc}", retries, pending
                        )
                        continue
                    any_done = True
                    self._set(
                        batches[index].changed(state=MiniBatchState.DONE, seconds=seconds),
                        batches,
                    )
                if start_error is not None:
                    start_failures += 1
                    log.error("the workers could not start: %s", start_error)
                    if start_failures > START_RETRIES:
                        executor.stop()
                        self.finish(
                            JobState.FAILED,
                            f"the workers could not start, so no mini-batch ran: {start_error}",
                        )
                        return
                    broken = True  # once more, with new workers: it may have been passing
                if not any_done and deaths >= MAX_DEATHS_BEFORE_ANY_DONE:
                    executor.stop()
                    self.finish(
                        JobState.FAILED,
                        f"{deaths} worker processes died before any mini-batch was done; the "
                        f"last: {last_death} (its output is in the job's runner.out)",
                    )
                    return
                now = time.monotonic()
                stuck = [f for f, (_, t0) in running.items() if now - t0 > timeout_s]
                if broken or stuck:
                    # A dead or stuck worker: replace every worker; the stuck mini-batches lose
                    # an attempt, the others go back to the queue as they were.
                    for future in list(running):
                        index, _ = running.pop(future)
                        if future in stuck:
                            self._failed_attempt(
                                batches, index, f"timed out after {timeout_s:g} s", retries, pending
                            )
                        else:
                            pending.insert(0, index)
                            self._set(batches[index].changed(state=MiniBatchState.PENDING), batches)
                    executor.restart()
                failed_items = sum(
                    mb.items for mb in batches.values() if mb.state == MiniBatchState.FAILED
                )
                if threshold != -1 and failed_items > threshold:
                    executor.stop()
                    self.finish(
                        JobState.FAILED,
                        f"{failed_items} failed items exceed error_threshold={threshold}",
                    )
                    return
                self._progress(batches)
        finally:
            executor.stop()
        log.info("scoring %d mini-batches took %.3f s", len(batches), time.perf_counter() - phase)
        if deaths and all(mb.state == MiniBatchState.FAILED for mb in batches.values()):
            # Nothing was scored and workers died: no model ran here, so the job failed
            # (an ordinary error in run() on every row still completes, with failures).
            self.finish(
                JobState.FAILED,
                f"no mini-batch was done: {deaths} worker processes died; the last: "
                f"{last_death} (its output is in the job's runner.out)",
            )
            return
        self.complete(job, batches)

    def _set(self, mb: MiniBatchRecord, batches: dict[int, MiniBatchRecord]) -> None:
        """Keep a mini-batch's new record here and in the store."""
        batches[mb.index] = mb
        self.ledger.save_mini_batch(self.job_id, mb)

    def _failed_attempt(
        self,
        batches: dict[int, MiniBatchRecord],
        index: int,
        error: str,
        retries: int,
        pending: list[int],
    ) -> None:
        mb = batches[index]
        attempts = mb.attempts + 1
        if attempts <= retries:
            log.warning("mini-batch %d failed (attempt %d, retrying): %s", index, attempts, error)
            state = MiniBatchState.PENDING
            pending.append(index)
        else:
            log.error("mini-batch %d failed for good after %d attempts: %s", index, attempts, error)
            state = MiniBatchState.FAILED
        failed_items = mb.items if state == MiniBatchState.FAILED else 0
        self._set(
            mb.changed(state=state, attempts=attempts, error=error, failed_items=failed_items),
            batches,
        )

    def _progress(self, batches: dict[int, MiniBatchRecord]) -> None:
        now = time.monotonic()
        if now - self._last_progress < 0.5:
            return
        self._last_progress = now
        done = [mb for mb in batches.values() if mb.state == MiniBatchState.DONE]
        job = self.record()
        elapsed = max(time.time() - (job.runner_started or time.time()), 1e-9)
        rate = (
            sum(mb.items for mb in done) / elapsed if FORMATS[_format_name(job)].tabular else None
        )
        self.ledger.update(
            self.job_id,
            done=len(done),
            failed=sum(mb.state == MiniBatchState.FAILED for mb in batches.values()),
            items_per_s=rate,
        )

    def complete(self, job: JobRecord, batches: dict[int, MiniBatchRecord]) -> None:
        settings = job.settings
        output = locate(job.output)
        done = sorted(i for i, mb in batches.items() if mb.state == MiniBatchState.DONE)
        rows = None
        phase = time.perf_counter()
        if settings.output_action == "append_row":
            rows = sinks.assemble(
                self.job_dir,
                done,
                output,
                settings.output_file_name,
                azure_layout=settings.output_layout == "azure",
            )
            log.info("assembling %d rows took %.3f s", rows, time.perf_counter() - phase)
        self.finish(JobState.COMPLETED, "", output_rows=rows)

    def finish(
        self, state: JobState, reason: str, write_summary: bool = True, **extra: Any
    ) -> None:
        job = self.record()
        batches = self.ledger.mini_batches(self.job_id)
        seconds = time.time() - (job.runner_started or time.time())
        done_items = sum(mb.items for mb in batches if mb.state == MiniBatchState.DONE)
        summary = {
            "job": self.job_id,
            "state": state,
            "reason": reason,
            "input": job.input,
            "output": job.output,
            "mini_batches": {
                "total": len(batches),
                "done": sum(mb.state == MiniBatchState.DONE for mb in batches),
                "failed": sum(mb.state == MiniBatchState.FAILED for mb in batches),
                "pending": sum(
                    mb.state in (MiniBatchState.PENDING, MiniBatchState.RUNNING) for mb in batches
                ),
            },
            "items": {
                "total": sum(mb.items for mb in batches),
                "done": done_items,
                "failed": sum(mb.failed_items for mb in batches),
            },
            "failures": [
                {
                    "mini_batch": mb.index,
                    "items": mb.items,
                    "attempts": mb.attempts,
                    "error": mb.error,
                }
                for mb in batches
                if mb.state == MiniBatchState.FAILED
            ],
            "seconds": round(seconds, 3),
            "items_per_s": round(done_items / seconds, 1) if seconds > 0 else None,
            **extra,
        }
        if write_summary:
            try:
                sinks.write_summary(locate(job.output), summary)
            except OSError as exc:
                log.error("cannot write summary.json: %s", exc)
        log.info("job %s %s %s", self.job_id, state, reason)
        self.ledger.finish(self.job_id, state, reason, summary)


def _death(executor: Executor) -> str:
    cause = executor.death_cause()
    return f"a worker process died ({cause})" if cause else "a worker process died"


def main() -> None:
    parser = argparse.ArgumentParser(description="Run (or resume) one batch job.")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument(
        "--store", default=None, help="store URL (default: SERVEGATE_STORE, else the home's)"
    )
    parser.add_argument("--runner-id", default=None, help="the lease holder name to use")
    parser.add_argument("job")
    args = parser.parse_args()
    if args.store:
        os.environ[STORE_ENV] = args.store
    JobRunner(args.home, args.job, args.runner_id).run()


if __name__ == "__main__":
    main()
