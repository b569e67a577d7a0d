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
import multiprocessing
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from importlib import import_module
from pathlib import Path
from typing import Any

from batch import planner, sinks, worker
from batch.errors import BatchInputError
from batch.jobs import RUNNER_LEASE_TTL_S, RUNNER_RENEW_S, job_lease, new_runner_id
from batch.sources import Location, list_inputs, locate, tabular_format
from batch.tensors import check_schema
from deploy.home import ControlPlaneSettings, open_control_plane
from deploy.store import STORE_ENV, utc_now
from runtimes.registry import RUNTIMES
from runtimes.types import Signature

log = logging.getLogger("servegate.batch")
POLL_S = 0.2


class JobRunner:
    def __init__(self, home: Path, job_id: str, runner_id: str | None = None) -> None:
        self.runner_id = runner_id or new_runner_id()
        self.control = open_control_plane(ControlPlaneSettings.resolve(home))
        self.store = self.control.store
        self.job_id = job_id
        self._last_progress = 0.0
        self.job_dir = home / "jobs" / job_id
        self.job_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.job_dir / "job.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)

    def record(self) -> dict[str, Any]:
        job = self.store.get_job(self.job_id)
        if job is None:
            raise SystemExit(f"no job {self.job_id}")
        return job

    def save(self, **changes: Any) -> dict[str, Any]:
        job = {**self.record(), **changes}
        self.store.put_job(job)
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
        if job["state"] in ("completed", "failed", "cancelled"):
            log.info("job %s is already %s", self.job_id, job["state"])
            return
        started = time.time()
        job = self.save(
            state="running",
            pid=os.getpid(),
            started_at=job.get("started_at") or utc_now(),
            runner_started=started,
            reason="",
        )
        settings = job["settings"]
        workers = settings["instance_count"] * settings["max_concurrency_per_instance"]
        pool: ProcessPoolExecutor | None = None
        try:
            inputs = None if job.get("planned") else self.inspect(job)
            # Workers import their libraries and load the model while the planner works.
            pool = self._pool(job, workers)
            for _ in range(workers):
                pool.submit(int)
            if inputs is not None:
                phase = time.perf_counter()
                job = self.plan(job, *inputs)
                log.info("planning took %.3f s", time.perf_counter() - phase)
            self.execute(job, pool)
        except BatchInputError as exc:
            # Bad input: the job fails with the reason and writes nothing to the output.
            if pool is not None:
                self._stop(pool)
            log.error("job %s failed: %s", self.job_id, exc)
            self.finish("failed", str(exc), write_summary=False)

    def inspect(self, job: dict[str, Any]) -> tuple[Location, list[str], str | None]:
        """List the inputs and check, from the first file's schema, that they fit the
        model: a mismatch fails the job here, once, before any worker starts (every
        file has the first one's schema; planning checks that)."""
        location, files = list_inputs(job["input"], job.get("input_type"))
        fmt = tabular_format(files)
        signature = self._signature(job)
        if fmt is not None and signature is not None and signature.inputs:
            schema = planner.read_schema(location.filesystem, files[0], fmt)
            try:
                check_schema(schema, signature)
            except BatchInputError as exc:
                raise BatchInputError(f"input file '{files[0]}': {exc}") from None
        return location, files, fmt

    def _signature(self, job: dict[str, Any]) -> Signature | None:
        """The model's signature as registered (None for scoring scripts, which take
        tables as they are, and for models registered without one)."""
        spec = job["deployment_spec"]
        if job["runtime_name"] == "script":
            return None
        if spec.get("signature"):
            return Signature.from_dict(spec["signature"])
        if spec.get("model"):
            record = self.control.get_model(spec["model"]["name"], spec["model"]["version"])
            return Signature.from_dict(record.signature) if record.signature else None
        return None

    def plan(
        self, job: dict[str, Any], location: Location, files: list[str], fmt: str | None
    ) -> dict[str, Any]:
        settings = job["settings"]
        if fmt is not None:
            size = settings["mini_batch_size"] or 10_000  # rows: sized for throughput
            if fmt == "parquet":
                counts = planner.plan_parquet(location.filesystem, files, size, self.job_dir)
                mode = "parquet"
            else:
                counts = planner.stage_tabular(location.filesystem, files, fmt, size, self.job_dir)
                mode = "tabular"
        else:
            if job["runtime_name"] != "script":
                raise BatchInputError(
                    f"input '{job['input']}' is not a tabular dataset (Parquet, CSV, JSON lines); "
                    "a folder of arbitrary files needs a scoring script (code_configuration)"
                )
            size = settings["mini_batch_size"] or 10  # files, as Azure ML
            counts = planner.plan_files(files, size, self.job_dir)
            mode = "files"
        self.store.add_mini_batches(self.job_id, counts)
        log.info(
            "planned %d mini-batches (%s, %d items) from %d files",
            len(counts),
            mode,
            sum(counts),
            len(files),
        )
        return self.save(planned=True, mode=mode, mini_batches=len(counts), items=sum(counts))

    def execute(self, job: dict[str, Any], pool: ProcessPoolExecutor) -> None:
        settings = job["settings"]
        retries, timeout_s = (
            settings["retry_settings"]["max_retries"],
            settings["retry_settings"]["timeout"],
        )
        threshold = settings["error_threshold"]
        workers = settings["instance_count"] * settings["max_concurrency_per_instance"]
        batches = {mb["idx"]: mb for mb in self.store.list_mini_batches(self.job_id)}
        for mb in batches.values():
            if mb["state"] == "running":  # left by a runner that was killed
                mb["state"] = "pending"
                self.store.update_mini_batch(self.job_id, mb["idx"], state="pending")
        pending = [i for i, mb in sorted(batches.items()) if mb["state"] == "pending"]
        phase = time.perf_counter()
        running: dict[Future[tuple[int, float]], tuple[int, float]] = {}
        try:
            while pending or running:
                if self.record()["state"] == "cancelling":
                    self._stop(pool)
                    self.finish("cancelled", "cancelled by request")
                    return
                while pending and len(running) < workers * 2:
                    index = pending.pop(0)
                    self.store.update_mini_batch(self.job_id, index, state="running")
                    running[pool.submit(worker.score, str(self.job_dir), index, job["mode"])] = (
                        index,
                        time.monotonic(),
                    )
                done, _ = wait(running, timeout=POLL_S, return_when=FIRST_COMPLETED)
                broken = False
                for future in done:
                    index, _ = running.pop(future)
                    try:
                        _, seconds = future.result()
                    except BrokenProcessPool:
                        broken = True
                        self._failed_attempt(
                            batches[index], "a worker process died", retries, pending
                        )
                        continue
                    except BatchInputError as exc:
                        # The data itself does not fit: the same error on every attempt.
                        self._failed_attempt(batches[index], str(exc), 0, pending)
                        continue
                    except Exception as exc:
                        self._failed_attempt(
                            batches[index], f"{type(exc).__name__}: {exc}", retries, pending
                        )
                        continue
                    batches[index].update(state="done", seconds=seconds)
                    self.store.update_mini_batch(self.job_id, index, state="done", seconds=seconds)
                now = time.monotonic()
                stuck = [f for f, (_, t0) in running.items() if now - t0 > timeout_s]
                if broken or stuck:
                    # A dead or stuck worker: replace every worker; the stuck mini-batches lose
                    # an attempt, the others go back to the queue as they were.
                    for future in list(running):
                        index, _ = running.pop(future)
                        if future in stuck:
                            self._failed_attempt(
                                batches[index], f"timed out after {timeout_s:g} s", retries, pending
                            )
                        else:
                            pending.insert(0, index)
                            self.store.update_mini_batch(self.job_id, index, state="pending")
                    self._stop(pool)
                    pool = self._pool(job, workers)
                failed_items = sum(
                    mb["items"] for mb in batches.values() if mb["state"] == "failed"
                )
                if threshold != -1 and failed_items > threshold:
                    self._stop(pool)
                    self.finish(
                        "failed", f"{failed_items} failed items exceed error_threshold={threshold}"
                    )
                    return
                self._progress(batches)
        finally:
            self._stop(pool)
        log.info("scoring %d mini-batches took %.3f s", len(batches), time.perf_counter() - phase)
        self.complete(job, batches)

    def _failed_attempt(
        self, mb: dict[str, Any], error: str, retries: int, pending: list[int]
    ) -> None:
        mb["attempts"] += 1
        if mb["attempts"] <= retries:
            log.warning(
                "mini-batch %d failed (attempt %d, retrying): %s", mb["idx"], mb["attempts"], error
            )
            mb["state"] = "pending"
            pending.append(mb["idx"])
        else:
            log.error(
                "mini-batch %d failed for good after %d attempts: %s",
                mb["idx"],
                mb["attempts"],
                error,
            )
            mb["state"] = "failed"
        mb["error"] = error
        self.store.update_mini_batch(
            self.job_id,
            mb["idx"],
            state=mb["state"],
            attempts=mb["attempts"],
            error=error,
            failed_items=mb["items"] if mb["state"] == "failed" else 0,
        )

    def _progress(self, batches: dict[int, dict[str, Any]]) -> None:
        now = time.monotonic()
        if now - self._last_progress < 0.5:
            return
        self._last_progress = now
        done = [mb for mb in batches.values() if mb["state"] == "done"]
        job = self.record()
        elapsed = max(time.time() - job["runner_started"], 1e-9)
        rate = sum(mb["items"] for mb in done) / elapsed if job.get("mode") != "files" else None
        self.save(
            done=len(done),
            failed=sum(mb["state"] == "failed" for mb in batches.values()),
            items_per_s=rate,
        )

    def complete(self, job: dict[str, Any], batches: dict[int, dict[str, Any]]) -> None:
        settings = job["settings"]
        output = locate(job["output"])
        done = sorted(i for i, mb in batches.items() if mb["state"] == "done")
        rows = None
        phase = time.perf_counter()
        if settings["output_action"] == "append_row":
            rows = sinks.assemble(self.job_dir, done, output, settings["output_file_name"])
            log.info("assembling %d rows took %.3f s", rows, time.perf_counter() - phase)
        self.finish("completed", "", output_rows=rows)

    def finish(self, state: str, reason: str, write_summary: bool = True, **extra: Any) -> None:
        job = self.record()
        batches = self.store.list_mini_batches(self.job_id)
        seconds = time.time() - job.get("runner_started", time.time())
        done_items = sum(mb["items"] for mb in batches if mb["state"] == "done")
        summary = {
            "job": self.job_id,
            "state": state,
            "reason": reason,
            "input": job["input"],
            "output": job["output"],
            "mini_batches": {
                "total": len(batches),
                "done": sum(mb["state"] == "done" for mb in batches),
                "failed": sum(mb["state"] == "failed" for mb in batches),
                "pending": sum(mb["state"] in ("pending", "running") for mb in batches),
            },
            "items": {
                "total": sum(mb["items"] for mb in batches),
                "done": done_items,
                "failed": sum(mb["failed_items"] for mb in batches),
            },
            "failures": [
                {
                    "mini_batch": mb["idx"],
                    "items": mb["items"],
                    "attempts": mb["attempts"],
                    "error": mb["error"],
                }
                for mb in batches
                if mb["state"] == "failed"
            ],
            "seconds": round(seconds, 3),
            "items_per_s": round(done_items / seconds, 1) if seconds > 0 else None,
            **extra,
        }
        if write_summary:
            try:
                sinks.write_summary(locate(job["output"]), summary)
            except OSError as exc:
                log.error("cannot write summary.json: %s", exc)
        log.info("job %s %s %s", self.job_id, state, reason)
        self.save(state=state, reason=reason, finished_at=utc_now(), summary=summary)

    # -- workers -------------------------------------------------------------------
    def _pool(self, job: dict[str, Any], workers: int) -> ProcessPoolExecutor:
        # The runner is a fresh single-threaded process: forking it is safe, and workers
        # start with its imports instead of spending ~0.7 s each re-importing numpy,
        # pyarrow and onnxruntime (spawn is the fallback where fork does not exist).
        methods = multiprocessing.get_all_start_methods()
        if "fork" in methods:
            import_module(
                RUNTIMES.get(job["runtime_name"], ("runtimes.base:x", ""))[0].split(":")[0]
            )
        return ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("fork" if "fork" in methods else "spawn"),
            initializer=worker.init,
            initargs=(
                job["runtime_name"],
                self.control.runtime_config(job["deployment_spec"], 1),
                job["input"],
                os.getpid(),
            ),
        )

    @staticmethod
    def _stop(pool: ProcessPoolExecutor) -> None:
        processes = list(getattr(pool, "_processes", {}).values())
        for process in processes:
            if process.is_alive():
                process.kill()
        pool.shutdown(wait=True, cancel_futures=True)


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
