"""Batch jobs as control-plane records: the one writer of jobs and their mini-batches.

The gateway's management API, `stream jobs` and the batch runner change a job only
through here: every state change is one store transaction, so a cancel written by one
replica is never overwritten by a runner's progress on another. Starting and stopping
runner processes is the batch package's job (`batch.jobs`); this module knows none.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

from deploy.errors import Conflict, NotFound, SpecError
from deploy.records import JobRecord, JobSettings, JobState, MiniBatchRecord, MiniBatchState
from deploy.specs import BatchDeploymentSpec, OnlineDeploymentSpec, parse_spec
from deploy.store import AuditEntry, Store, utc_now
from runtimes.registry import runtime_kind


@dataclass(frozen=True)
class JobOrder:
    """What a job is asked to do: from the management API or a job topic."""

    endpoint: str
    deployment: str | None
    input: str
    input_type: str | None
    output: str
    #: settings for this job over the deployment's (None: the deployment's)
    overrides: dict[str, Any] = field(default_factory=dict)
    job_id: str | None = None


#: A job id names the job's folder: no separator, no leading dot, no control character.
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")


def check_job_id(job_id: str) -> str:
    """Refuse an id that is no plain name (`../x`, `a/b`): ids name folders."""
    if not _JOB_ID.fullmatch(job_id):
        raise SpecError(
            f"field 'job_id': {job_id[:80]!r} is not a job id (letters, digits, '_', '-' "
            "and '.', starting with a letter or digit, at most 200 characters)"
        )
    return job_id


def _target(job_id: str) -> str:
    return f"jobs/{job_id}"


class JobLedger:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -- reading -----------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord:
        record = self.store.get_job(job_id)
        if record is None:
            raise NotFound(f"job '{job_id}' does not exist")
        return record

    def recent(self, endpoint: str | None = None, limit: int = 50) -> list[JobRecord]:
        return self.store.list_jobs(endpoint, limit)

    def unfinished(self) -> list[JobRecord]:
        return self.store.list_unfinished_jobs()

    def mini_batches(self, job_id: str) -> list[MiniBatchRecord]:
        return self.store.list_mini_batches(job_id)

    # -- creating ------------------------------------------------------------------------
    def create(self, order: JobOrder, actor: str) -> JobRecord:
        """A queued job on a batch endpoint's deployment, or on an online endpoint's (one
        definition for both worlds), with the deployment's spec copied in."""
        spec, kind = self._deployment_of(order.endpoint, order.deployment)
        runtime = spec.runtime or "onnx"
        if runtime_kind(runtime).runs_in_gateway:
            raise SpecError(f"a {runtime} deployment cannot run batch jobs (it has no model here)")
        if isinstance(spec, BatchDeploymentSpec):
            base, instance_count = spec.settings.model_dump(), spec.compute.instance_count
        else:
            base, instance_count = {}, spec.instance_count
        given = {k: v for k, v in order.overrides.items() if v is not None}
        settings = parse_spec(
            JobSettings,
            {**base, "instance_count": instance_count, **given},
            "job settings",
        )
        if order.job_id is not None:
            check_job_id(order.job_id)
        with self.store.transaction():
            if order.job_id is not None and self.store.get_job(order.job_id) is not None:
                raise Conflict(f"job '{order.job_id}' already exists")
            day = utc_now()[:10].replace("-", "")
            job_id = order.job_id or f"{order.endpoint}-{day}-{secrets.token_hex(4)}"
            record = JobRecord(
                id=job_id,
                endpoint=order.endpoint,
                deployment=spec.name,
                kind=kind,
                input=order.input,
                input_type=order.input_type,
                output=order.output.rstrip("/"),
                settings=settings,
                runtime_name=runtime,
                deployment_spec=spec,
                state=JobState.QUEUED,
                created_at=utc_now(),
                created_by=actor,
            )
            shown = record.to_dict()
            self.store.put_job(
                record,
                AuditEntry(
                    actor,
                    "batch_job.create",
                    _target(job_id),
                    None,
                    {
                        k: shown[k]
                        for k in ("endpoint", "deployment", "input", "output", "settings")
                    },
                ),
            )
        return record

    def _deployment_of(
        self, endpoint: str, deployment: str | None
    ) -> tuple[OnlineDeploymentSpec | BatchDeploymentSpec, Literal["batch", "online"]]:
        batch_endpoint = self.store.get_batch_endpoint(endpoint)
        if batch_endpoint is not None:
            name = deployment or batch_endpoint.defaults.get("deployment_name")
            if not name:
                raise SpecError(f"batch endpoint '{endpoint}' has no deployment yet")
            batch = self.store.get_batch_deployment(endpoint, name)
            if batch is None:
                raise NotFound(f"deployment '{name}' does not exist in batch endpoint '{endpoint}'")
            return batch, "batch"
        online = self.store.get_endpoint(endpoint)
        if online is None:
            raise NotFound(f"no batch or online endpoint named '{endpoint}'")
        name = deployment or max(online.traffic, key=online.traffic.__getitem__, default=None)
        found = self.store.get_deployment(endpoint, name) if name else None
        if found is None:
            raise NotFound(f"deployment '{name}' does not exist in endpoint '{endpoint}'")
        return found, "online"

    # -- what the runner writes ----------------------------------------------------------
    def update(self, job_id: str, **changes: Any) -> JobRecord:
        """Merge `changes` into the stored job, atomically: a cancel written by any
        replica between the read and the write is never overwritten."""
        with self.store.transaction():
            record = self.get(job_id).changed(**changes)
            self.store.put_job(record)
        return record

    def start_running(self, job_id: str, pid: int, started: float) -> JobRecord | None:
        """Mark the job running for a runner that starts now; None when a cancel came
        before it (the runner then finishes the job as cancelled)."""
        with self.store.transaction():
            record = self.get(job_id)
            if record.state == JobState.CANCELLING:
                return None
            return self.update(
                job_id,
                state=JobState.RUNNING,
                pid=pid,
                started_at=record.started_at or utc_now(),
                runner_started=started,
                reason="",
            )

    def plan(self, job_id: str, items: list[int], input_format: str) -> JobRecord:
        """Register the mini-batches (`items` rows or files each), all pending."""
        with self.store.transaction():
            self.store.add_mini_batches(job_id, items)
            return self.update(
                job_id,
                planned=True,
                format=input_format,
                mini_batches=len(items),
                items=sum(items),
            )

    def save_mini_batch(self, job_id: str, record: MiniBatchRecord) -> None:
        self.store.put_mini_batch(job_id, record)

    def finish(self, job_id: str, state: JobState, reason: str, summary: dict[str, Any]) -> None:
        self.update(job_id, state=state, reason=reason, finished_at=utc_now(), summary=summary)

    # -- what operators do ---------------------------------------------------------------
    def cancel(self, job_id: str, actor: str, runner_alive: bool) -> JobRecord:
        """A running job is asked to stop (its runner stops its workers and finishes it
        as cancelled); one without a runner is cancelled at once."""
        with self.store.transaction():
            record = self.get(job_id)
            if record.final:
                raise Conflict(f"job '{job_id}' is already {record.state}")
            if runner_alive:
                record = record.changed(state=JobState.CANCELLING)
            else:
                record = record.changed(
                    state=JobState.CANCELLED, reason=f"cancelled by {actor}", finished_at=utc_now()
                )
            self.store.put_job(
                record, AuditEntry(actor, "batch_job.cancel", _target(job_id), None, None)
            )
        return record

    def requeue(self, job_id: str, actor: str, reason: str = "") -> JobRecord:
        """Queue a job again for a new runner (resume after a crash)."""
        with self.store.transaction():
            record = self.get(job_id)
            if record.state == JobState.COMPLETED:
                raise Conflict(f"job '{job_id}' is already completed")
            record = record.changed(state=JobState.QUEUED, reason="")
            self.store.put_job(
                record, AuditEntry(actor, "batch_job.resume", _target(job_id), None, None, reason)
            )
        return record

    def requeue_failed(self, job_id: str, actor: str) -> JobRecord:
        """Put the failed mini-batches back to pending and queue the job (retry)."""
        with self.store.transaction():
            record = self.get(job_id)
            failed = [mb for mb in self.mini_batches(job_id) if mb.state == MiniBatchState.FAILED]
            if not failed:
                raise Conflict(f"job '{job_id}' has no failed mini-batches")
            for mb in failed:
                self.save_mini_batch(
                    job_id,
                    mb.changed(state=MiniBatchState.PENDING, attempts=0, failed_items=0, error=""),
                )
            indexes = [mb.index for mb in failed]
            record = record.changed(state=JobState.QUEUED, reason="", retried_mini_batches=indexes)
            self.store.put_job(
                record,
                AuditEntry(
                    actor, "batch_job.retry", _target(job_id), None, {"mini_batches": indexes}
                ),
            )
        return record
