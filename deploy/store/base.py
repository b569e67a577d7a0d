"""The store interface and the records only it defines (models, keys, audit entries).
It speaks records: spec models for endpoints and deployments, `deploy.records` for
jobs, mini-batches and rollouts."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from deploy.records import (
        AdminTokenRecord,
        DeploymentIntent,
        JobRecord,
        LeaseRecord,
        MiniBatchRecord,
        ReplicaIdentity,
        ReplicaRecord,
        RolloutRecord,
    )
    from deploy.specs import (
        BatchDeploymentSpec,
        BatchEndpointSpec,
        EndpointSpec,
        MonitorSpec,
        OnlineDeploymentSpec,
    )


def utc_now() -> str:
    """ISO-8601 UTC timestamp with milliseconds, as stored everywhere."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class ModelRecord:
    """A registered model version; `artifact` is relative to the store's home."""

    name: str
    version: int
    runtime: str
    sha256: str
    artifact: str
    filename: str
    size_bytes: int
    signature: dict[str, Any]
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    created_at: str = ""

    @property
    def is_folder(self) -> bool:
        """A model folder (an MLflow model, a Triton repository): `filename` ends in "/"."""
        return self.filename.endswith("/")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "runtime": self.runtime,
            "sha256": self.sha256,
            "filename": self.filename,
            "size_bytes": self.size_bytes,
            "signature": self.signature,
            "description": self.description,
            "tags": self.tags,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class KeyRecord:
    """One endpoint key: its hash (for checking) and nonce (to re-derive it)."""

    endpoint: str
    key_type: str  # "primary" | "secondary"
    key_hash: str
    nonce: str
    created_at: str


@dataclass(frozen=True)
class AuditEntry:
    """One control-plane change: who, when, what, and the spec before and after."""

    actor: str
    action: str
    target: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    reason: str = ""
    at: str = field(default_factory=utc_now)
    id: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "before": self.before,
            "after": self.after,
            "reason": self.reason,
        }


class Store(Protocol):
    """Everything the control plane persists. Mutations take the audit entry that
    explains them and write both in one transaction."""

    def check_file(self) -> None:
        """Raise StoreUnavailable if the store can no longer be written safely."""
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """Group several calls atomically (re-entrant)."""
        ...

    # models
    def add_model(self, record: ModelRecord, audit: AuditEntry) -> None: ...
    def get_model(self, name: str, version: int | None = None) -> ModelRecord | None: ...
    def list_models(self, name: str | None = None) -> list[ModelRecord]: ...
    def latest_model_version(self, name: str) -> int: ...

    # endpoints and deployments (online and batch): their spec models
    def put_endpoint(self, spec: EndpointSpec, audit: AuditEntry) -> None: ...
    def get_endpoint(self, name: str) -> EndpointSpec | None: ...
    def list_endpoints(self) -> list[EndpointSpec]: ...
    def delete_endpoint(self, name: str, audit: AuditEntry) -> None: ...
    def put_deployment(self, spec: OnlineDeploymentSpec, audit: AuditEntry) -> None: ...
    def get_deployment(self, endpoint: str, name: str) -> OnlineDeploymentSpec | None: ...
    def list_deployments(self, endpoint: str | None = None) -> list[OnlineDeploymentSpec]: ...
    def delete_deployment(self, endpoint: str, name: str, audit: AuditEntry) -> None: ...

    # keys
    def put_key(self, record: KeyRecord, audit: AuditEntry | None) -> None: ...
    def get_keys(self, endpoint: str) -> dict[str, KeyRecord]: ...

    # rollouts (the controller's state)
    def put_rollout(self, record: RolloutRecord, audit: AuditEntry | None = None) -> None: ...
    def get_rollout(self, rollout_id: str) -> RolloutRecord | None: ...
    def list_rollouts(
        self, endpoint: str | None = None, limit: int = 50
    ) -> list[RolloutRecord]: ...

    # batch endpoints, deployments, jobs and mini-batches
    def put_batch_endpoint(self, spec: BatchEndpointSpec, audit: AuditEntry) -> None: ...
    def get_batch_endpoint(self, name: str) -> BatchEndpointSpec | None: ...
    def list_batch_endpoints(self) -> list[BatchEndpointSpec]: ...
    def put_batch_deployment(self, spec: BatchDeploymentSpec, audit: AuditEntry) -> None: ...
    def get_batch_deployment(self, endpoint: str, name: str) -> BatchDeploymentSpec | None: ...
    def list_batch_deployments(self, endpoint: str) -> list[BatchDeploymentSpec]: ...
    def delete_batch_endpoint(self, name: str, audit: AuditEntry) -> None: ...
    def add_deployment_logs(
        self, endpoint: str, deployment: str, replica: str, lines: list[tuple[str, str]], keep: int
    ) -> None: ...
    def list_deployment_logs(
        self, endpoint: str, deployment: str, lines: int, after: int = 0
    ) -> list[dict[str, Any]]: ...
    def delete_batch_deployment(self, endpoint: str, name: str, audit: AuditEntry) -> None: ...
    def put_job(self, record: JobRecord, audit: AuditEntry | None = None) -> None: ...
    def get_job(self, job_id: str) -> JobRecord | None: ...
    def list_jobs(self, endpoint: str | None = None, limit: int = 50) -> list[JobRecord]: ...
    def list_unfinished_jobs(self) -> list[JobRecord]: ...
    def add_mini_batches(self, job_id: str, items: list[int]) -> None: ...
    def put_mini_batch(self, job_id: str, record: MiniBatchRecord) -> None: ...
    def list_mini_batches(self, job_id: str) -> list[MiniBatchRecord]: ...

    # audit
    def add_audit(self, entry: AuditEntry) -> None:
        """An audit entry for a change that lives outside the store (instances added or
        removed by the autoscaler)."""
        ...

    def list_audit(self, target: str | None = None, limit: int = 100) -> list[AuditEntry]: ...
    def last_change_id(self) -> int:
        """The newest audit id: replicas poll it to notice control-plane changes."""
        ...

    # leases: one holder at a time until it stops renewing (database clock)
    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool: ...
    def release_lease(self, name: str, holder: str) -> None: ...
    def lease_holder(self, name: str) -> str | None: ...
    def list_leases(self) -> list[LeaseRecord]: ...

    # replicas: heartbeats and the counters each publishes
    def heartbeat(self, replica: ReplicaIdentity, applied_change: int, stats: Any) -> None: ...
    def list_replicas(self, max_age_s: float) -> list[ReplicaRecord]: ...
    def remove_replica(self, replica_id: str) -> None: ...

    # admin tokens, hashed
    def put_admin_token(
        self, token: AdminTokenRecord, token_hash: str, audit: AuditEntry
    ) -> None: ...
    def admin_token(self, token_hash: str) -> AdminTokenRecord | None: ...
    def list_admin_tokens(self) -> list[AdminTokenRecord]: ...
    def delete_admin_token(self, name: str, audit: AuditEntry) -> bool: ...

    # model monitors and their runs
    def put_monitor(self, spec: MonitorSpec, audit: AuditEntry) -> None: ...
    def get_monitor(self, name: str) -> MonitorSpec | None: ...
    def list_monitors(self) -> list[MonitorSpec]: ...
    def delete_monitor(self, name: str, audit: AuditEntry) -> bool: ...
    def add_monitor_run(
        self, name: str, start: float, end: float, state: str, result: Any
    ) -> int: ...
    def list_monitor_runs(self, name: str, limit: int) -> list[dict[str, Any]]: ...

    # deployment creates and updates answered 202 (no_wait), until done or failed
    def put_deployment_intent(self, intent: DeploymentIntent) -> None: ...
    def list_deployment_intents(self) -> list[DeploymentIntent]: ...
    def delete_deployment_intent(self, endpoint: str, name: str | None = None) -> None: ...

    # secrets, encrypted by the caller
    def put_secret(self, name: str, ciphertext: str, audit: AuditEntry) -> None: ...
    def get_secret(self, name: str) -> str | None: ...
    def list_secrets(self) -> list[dict[str, str]]: ...
    def delete_secret(self, name: str, audit: AuditEntry) -> bool: ...

    url: str

    def close(self) -> None: ...
