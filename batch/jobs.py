"""Batch jobs: running them (create, run, cancel, resume, retry, supervise). Their
records are written by the control plane only (`deploy.jobs`), as batch endpoints and
deployments are (`deploy.control`).

A job is a record in the store plus a folder under `$SERVEGATE_HOME/jobs/<id>`;
its runner is a detached process (`batch.runner`), so a job outlives the gateway
process that started it. The runner holds the lease `job/<id>` and renews it while it
works: a runner that stops renewing (killed, host gone) frees the job, and the gateway
replica that supervises jobs (`resume_orphans`) starts a new runner, which resumes
from the mini-batches already done. `cancel`, `resume` and `retry` work from any
replica: they read the lease, not a process id.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from batch.roots import BatchRoots
from batch.sources import list_inputs
from deploy.control import ControlPlane
from deploy.errors import Conflict, SpecError
from deploy.jobs import JobOrder
from deploy.records import JobState

#: A runner renews its job's lease every RUNNER_RENEW_S for RUNNER_LEASE_TTL_S; a new
#: runner gets RUNNER_START_TTL_S to start up (imports, store connection) first. The lease
#: outlives several renewals that wait on a busy store (SQLite waits up to 5 s for a
#: writer): a runner that only stalled must not lose its job to a second runner.
RUNNER_LEASE_TTL_S = 15.0
RUNNER_RENEW_S = 2.0
RUNNER_START_TTL_S = 30.0


def job_lease(job_id: str) -> str:
    return f"job/{job_id}"


def new_runner_id() -> str:
    return f"runner-{socket.gethostname()}-{secrets.token_hex(4)}"


class BatchJobs:
    """Runs jobs: starts their runner processes. What a job is and every change to it
    are the control plane's (`control.jobs`, a `deploy.jobs.JobLedger`)."""

    def __init__(self, control: ControlPlane, home: Path) -> None:
        self.control = control
        self.ledger = control.jobs
        self.home = home
        self.roots = BatchRoots.from_environment(home, control.artifacts.home / "data")

    def invoke(self, order: JobOrder, actor: str) -> dict[str, Any]:
        """Create a job on a batch endpoint, or on an online endpoint's deployment, and
        start its runner."""
        if not order.input:
            raise SpecError("field 'input' is required")
        if not order.output:
            raise SpecError(
                "field 'output' is required (a folder: local path or s3://bucket/prefix)"
            )
        if order.input_type not in (None, "uri_file", "uri_folder"):
            raise SpecError(
                f"field 'input_type': must be uri_file or uri_folder, got '{order.input_type}'"
            )
        self.roots.check_input(order.input)
        self.roots.check_output(order.output)
        # A missing or unreadable input: 400 now, nothing written.
        _, files = list_inputs(order.input, order.input_type)
        self.roots.check_listed(order.input, files)
        record = self.ledger.create(order, actor)
        self._spawn(record.id)
        return self.get(record.id)

    def _spawn(self, job_id: str) -> None:
        """Start a runner for the job, which holds its lease from this moment: two
        replicas resuming one job at once start one runner."""
        runner = new_runner_id()
        store = self.control.store
        if not store.acquire_lease(job_lease(job_id), runner, RUNNER_START_TTL_S):
            holder = store.lease_holder(job_lease(job_id))
            raise Conflict(f"job '{job_id}' is running ({holder})")
        job_dir = self.home / "jobs" / job_id
        job_dir.mkdir(parents=True, exist_ok=True)
        settings = self.control.settings
        with (job_dir / "runner.out").open("ab") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "batch.runner",
                    "--home",
                    str(self.home),
                    "--runner-id",
                    runner,
                    job_id,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=settings.child_environment() if settings else None,
            )
        # Reap the runner when it exits, or it stays a zombie until this process ends.
        threading.Thread(target=process.wait, name=f"reap-{job_id}", daemon=True).start()

    def runner_of(self, job_id: str) -> str | None:
        """The runner holding the job's lease now (None: no runner works on it)."""
        return self.control.store.lease_holder(job_lease(job_id))

    def get(self, job_id: str) -> dict[str, Any]:
        """The job as the API shows it: its record, its mini-batches' states, its
        runner and the first errors."""
        record = self.ledger.get(job_id)
        batches = self.ledger.mini_batches(job_id)
        counts = Counter(str(mb.state) for mb in batches)
        runner = self.runner_of(job_id)
        return {
            **record.view(),
            "mini_batch_states": dict(counts),
            # What the workers spent on their mini-batches (read, score, write), without
            # the job's start and assembly.
            "worker_seconds": round(sum(mb.seconds for mb in batches), 3),
            "runner_alive": runner is not None,
            "runner": runner,
            "errors": [
                {"mini_batch": mb.index, "attempts": mb.attempts, "error": mb.error}
                for mb in batches
                if mb.error
            ][:50],
        }

    def cancel(self, job_id: str, actor: str) -> dict[str, Any]:
        # The runner check and the write are in one transaction with the runner's own
        # writes ordered around it: a runner that starts later sees the cancel.
        with self.control.store.transaction():
            self.ledger.cancel(job_id, actor, runner_alive=self.runner_of(job_id) is not None)
        return self.get(job_id)

    def resume(self, job_id: str, actor: str, reason: str = "") -> dict[str, Any]:
        runner = self.runner_of(job_id)
        if runner is not None:
            raise Conflict(f"job '{job_id}' is running ({runner})")
        self.ledger.requeue(job_id, actor, reason)
        self._spawn(job_id)
        return self.get(job_id)

    def retry(self, job_id: str, actor: str) -> dict[str, Any]:
        """Re-run only the mini-batches that failed, then rebuild the output."""
        if self.runner_of(job_id) is not None:
            raise Conflict(f"job '{job_id}' is still running")
        self.ledger.requeue_failed(job_id, actor)
        self._spawn(job_id)
        return self.get(job_id)

    def resume_orphans(self, actor: str) -> list[str]:
        """Jobs not finished whose runner stopped renewing its lease: resume them (or
        finish the cancel they were in). What the supervising replica calls."""
        resumed = []
        for listed in self.ledger.unfinished():
            if self.runner_of(listed.id) is not None:
                continue
            # Read again after the lease: a runner writes its final state before it
            # releases the lease, so a job seen free here and still unfinished is orphaned.
            job = self.control.store.get_job(listed.id)
            if job is None or job.final:
                continue
            try:
                if job.state == JobState.CANCELLING:
                    self.cancel(job.id, actor)
                else:
                    self.resume(job.id, actor, "its runner stopped renewing the job's lease")
                    resumed.append(job.id)
            except Conflict:  # another replica or runner got there first
                continue
        return resumed

    def logs(self, job_id: str) -> str:
        self.ledger.get(job_id)
        log = self.home / "jobs" / job_id / "job.log"
        return log.read_text() if log.exists() else ""
