"""Batch jobs: their lifecycle (create, run, cancel, resume, retry, supervise).
(Batch endpoints and deployments are written by `deploy.control`, as online ones are.)

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
from pathlib import Path
from typing import Any

from batch.sources import list_inputs
from deploy.control import ControlPlane
from deploy.errors import Conflict, NotFound, SpecError
from deploy.records import FINAL_JOB_STATES, JobState, MiniBatchState
from deploy.specs import BatchSettings, parse_spec
from deploy.store import AuditEntry, utc_now
from runtimes.registry import runtime_kind

FINAL = FINAL_JOB_STATES
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


def _stored(shown: dict[str, Any]) -> dict[str, Any]:
    """The job record as stored, from what `get` shows."""
    derived = ("mini_batch_states", "runner_alive", "runner", "errors")
    return {k: v for k, v in shown.items() if k not in derived}


class BatchJobs:
    def __init__(self, control: ControlPlane, home: Path) -> None:
        self.control = control
        self.store = control.store
        self.home = home

    # -- jobs ------------------------------------------------------------------------
    def invoke(
        self,
        endpoint: str,
        deployment: str | None,
        input_uri: str,
        input_type: str | None,
        output_uri: str,
        overrides: dict[str, Any],
        actor: str,
        job_id: str | None = None,
    ) -> dict[str, Any]:
        """Create a job on a batch endpoint, or on an online endpoint's deployment (one
        definition for both worlds), and start its runner."""
        if not input_uri:
            raise SpecError("field 'input' is required")
        if not output_uri:
            raise SpecError(
                "field 'output' is required (a folder: local path or s3://bucket/prefix)"
            )
        if input_type not in (None, "uri_file", "uri_folder"):
            raise SpecError(
                f"field 'input_type': must be uri_file or uri_folder, got '{input_type}'"
            )
        list_inputs(
            input_uri, input_type
        )  # a missing or unreadable input: 400 now, nothing written
        batch_endpoint = self.store.get_batch_endpoint(endpoint)
        if batch_endpoint is not None:
            name = deployment or batch_endpoint["defaults"].get("deployment_name")
            if not name:
                raise SpecError(f"batch endpoint '{endpoint}' has no deployment yet")
            spec = self.store.get_batch_deployment(endpoint, name)
            if spec is None:
                raise NotFound(f"deployment '{name}' does not exist in batch endpoint '{endpoint}'")
            kind = "batch"
            settings = dict(spec.get("settings") or {})
            instance_count = spec.get("compute", {}).get("instance_count", 1)
        elif self.store.get_endpoint(endpoint) is not None:
            online = self.store.get_endpoint(endpoint)
            assert online is not None
            name = deployment or max(
                online["traffic"], key=lambda d: online["traffic"][d], default=None
            )
            spec = self.store.get_deployment(endpoint, name) if name else None
            if spec is None:
                raise NotFound(f"deployment '{name}' does not exist in endpoint '{endpoint}'")
            kind = "online"
            settings = {}
            instance_count = spec.get("instance_count", 1)
        else:
            raise NotFound(f"no batch or online endpoint named '{endpoint}'")
        if runtime_kind(spec.get("runtime") or "onnx").runs_in_gateway:
            raise SpecError(
                f"a {spec['runtime']} deployment cannot run batch jobs (it has no model here)"
            )
        merged = parse_spec(
            BatchSettings,
            {
                **settings,
                **{k: v for k, v in overrides.items() if k != "instance_count" and v is not None},
            },
            "job settings",
        ).model_dump()
        merged["instance_count"] = overrides.get("instance_count") or instance_count
        if job_id is not None and self.store.get_job(job_id) is not None:
            raise Conflict(f"job '{job_id}' already exists")
        job_id = job_id or f"{endpoint}-{utc_now()[:10].replace('-', '')}-{secrets.token_hex(4)}"
        record = {
            "id": job_id,
            "endpoint": endpoint,
            "deployment": name,
            "kind": kind,
            "input": input_uri,
            "input_type": input_type,
            "output": output_uri.rstrip("/"),
            "settings": merged,
            "runtime_name": spec.get("runtime") or "onnx",
            "deployment_spec": spec,
            "state": JobState.QUEUED,
            "planned": False,
            "created_at": utc_now(),
            "created_by": actor,
            "reason": "",
        }
        self.store.put_job(
            record,
            AuditEntry(
                actor,
                "batch_job.create",
                f"jobs/{job_id}",
                None,
                {k: record[k] for k in ("endpoint", "deployment", "input", "output", "settings")},
            ),
        )
        return self._spawn(record)

    def _spawn(self, record: dict[str, Any]) -> dict[str, Any]:
        """Start a runner for the job, which holds its lease from this moment: two
        replicas resuming one job at once start one runner."""
        runner = new_runner_id()
        if not self.store.acquire_lease(job_lease(record["id"]), runner, RUNNER_START_TTL_S):
            holder = self.store.lease_holder(job_lease(record["id"]))
            raise Conflict(f"job '{record['id']}' is running ({holder})")
        job_dir = self.home / "jobs" / record["id"]
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
                    record["id"],
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=settings.child_environment() if settings else None,
            )
        # Reap the runner when it exits, or it stays a zombie until this process ends.
        threading.Thread(target=process.wait, name=f"reap-{record['id']}", daemon=True).start()
        record = {**(self.store.get_job(record["id"]) or record), "pid": process.pid}
        self.store.put_job(record)
        return record

    def get(self, job_id: str) -> dict[str, Any]:
        record = self.store.get_job(job_id)
        if record is None:
            raise NotFound(f"job '{job_id}' does not exist")
        batches = self.store.list_mini_batches(job_id)
        counts: dict[str, int] = {}
        for mb in batches:
            counts[mb["state"]] = counts.get(mb["state"], 0) + 1
        runner = self.store.lease_holder(job_lease(job_id))
        return {
            **record,
            "mini_batch_states": counts,
            "runner_alive": runner is not None,
            "runner": runner,
            "errors": [
                {"mini_batch": mb["idx"], "attempts": mb["attempts"], "error": mb["error"]}
                for mb in batches
                if mb["error"]
            ][:50],
        }

    def cancel(self, job_id: str, actor: str) -> dict[str, Any]:
        # One transaction: the runner's own writes (progress, its final state) cannot
        # fall between the read and the write.
        with self.store.transaction():
            record = self.get(job_id)
            if record["state"] in FINAL:
                raise Conflict(f"job '{job_id}' is already {record['state']}")
            if record["runner_alive"]:
                record["state"] = JobState.CANCELLING  # the runner stops its workers, finishes
            else:
                record.update(
                    state=JobState.CANCELLED, reason=f"cancelled by {actor}", finished_at=utc_now()
                )
            self.store.put_job(
                _stored(record),
                AuditEntry(actor, "batch_job.cancel", f"jobs/{job_id}", None, None),
            )
        return record

    def resume(self, job_id: str, actor: str, reason: str = "") -> dict[str, Any]:
        record = self.get(job_id)
        if record["state"] == JobState.COMPLETED:
            raise Conflict(f"job '{job_id}' is already completed")
        if record["runner_alive"]:
            raise Conflict(f"job '{job_id}' is running ({record['runner']})")
        clean = _stored(record)
        clean.update(state=JobState.QUEUED, reason="")
        self.store.put_job(
            clean, AuditEntry(actor, "batch_job.resume", f"jobs/{job_id}", None, None, reason)
        )
        return self._spawn(clean)

    def resume_orphans(self, actor: str) -> list[str]:
        """Jobs not finished whose runner stopped renewing its lease: resume them (or
        finish the cancel they were in). What the supervising replica calls."""
        resumed = []
        for listed in self.store.list_unfinished_jobs():
            if self.store.lease_holder(job_lease(listed["id"])) is not None:
                continue
            # Read again after the lease: a runner writes its final state before it
            # releases the lease, so a job seen free here and still unfinished is orphaned.
            job = self.store.get_job(listed["id"])
            if job is None or job["state"] in FINAL:
                continue
            try:
                if job["state"] == JobState.CANCELLING:
                    self.cancel(job["id"], actor)
                else:
                    self.resume(job["id"], actor, "its runner stopped renewing the job's lease")
                    resumed.append(job["id"])
            except Conflict:  # another replica or runner got there first
                continue
        return resumed

    def retry(self, job_id: str, actor: str) -> dict[str, Any]:
        """Re-run only the mini-batches that failed, then rebuild the output."""
        record = self.get(job_id)
        if record["runner_alive"]:
            raise Conflict(f"job '{job_id}' is still running")
        failed = [
            mb["idx"]
            for mb in self.store.list_mini_batches(job_id)
            if mb["state"] == MiniBatchState.FAILED
        ]
        if not failed:
            raise Conflict(f"job '{job_id}' has no failed mini-batches")
        for index in failed:
            self.store.update_mini_batch(
                job_id, index, state=MiniBatchState.PENDING, attempts=0, failed_items=0, error=""
            )
        clean = _stored(record)
        clean.update(state=JobState.QUEUED, reason="", retried_mini_batches=failed)
        self.store.put_job(
            clean,
            AuditEntry(actor, "batch_job.retry", f"jobs/{job_id}", None, {"mini_batches": failed}),
        )
        return self._spawn(clean)

    def logs(self, job_id: str) -> str:
        self.get(job_id)
        log = self.home / "jobs" / job_id / "job.log"
        return log.read_text() if log.exists() else ""
