"""The store's SQL, written once for both dialects (SQLite and PostgreSQL).

Subclasses supply a connection per transaction (`_run`, `_run_many`, `transaction`), the
database clock (`NOW`), the column that orders rows by insertion (`ORDER`) and what to
do after a change is committed (`_announce_change`). Statements use `?` placeholders;
the PostgreSQL store rewrites them once per statement.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import orjson

from deploy.masking import mask_secrets
from deploy.records import (
    FINAL_JOB_STATES,
    AdminTokenRecord,
    DeploymentIntent,
    JobRecord,
    LeaseRecord,
    MiniBatchRecord,
    MiniBatchState,
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
    Spec,
)
from deploy.store.base import AuditEntry, KeyRecord, ModelRecord, utc_now

Row = dict[str, Any]


def _dumps(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


class SqlStore(ABC):
    """`Store` over a SQL connection; see the module docstring for what subclasses add."""

    #: SQL expression: seconds since the epoch on the database's clock.
    NOW = ""
    #: The column that orders rollouts and jobs created in the same millisecond.
    ORDER = ""
    #: What `open_store` was given (shown by `servegate status`, never with a password).
    url = ""

    # -- what a dialect supplies ------------------------------------------------
    @abstractmethod
    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Execute one statement (in this thread's transaction, if any); its rows."""

    @abstractmethod
    def _run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    @abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """Group calls atomically; re-entrant (the outermost one commits)."""

    def _announce_change(self) -> None:  # noqa: B027 - a hook; most dialects need none
        """Called inside the transaction that wrote an audit entry."""

    def check_file(self) -> None:  # noqa: B027 - a hook; only a file can be swapped
        """Raise StoreUnavailable if the store can no longer be written safely."""

    @abstractmethod
    def close(self) -> None: ...

    # -- plumbing -----------------------------------------------------------------
    def _one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = self._run(sql, params)
        return rows[0] if rows else None

    def _audit(self, entry: AuditEntry) -> None:
        self._run(
            "INSERT INTO audit_log (at, actor, action, target, before, after, reason) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                entry.at,
                entry.actor,
                entry.action,
                entry.target,
                _dumps(mask_secrets(entry.before)),
                _dumps(mask_secrets(entry.after)),
                entry.reason,
            ),
        )
        self._announce_change()

    def _upsert_spec(self, table: str, keys: dict[str, str], spec: Spec, audit: AuditEntry) -> None:
        """Insert or replace a spec row (endpoints, deployments, batch ones) with its audit."""
        now = utc_now()
        columns = [*keys, "spec", "created_at", "updated_at"]
        with self.transaction():
            self._run(
                f"INSERT INTO {table} ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' for _ in columns)}) "
                f"ON CONFLICT({', '.join(keys)}) DO UPDATE "
                "SET spec = excluded.spec, updated_at = excluded.updated_at",
                (*keys.values(), _dumps(spec.to_dict()), now, now),
            )
            self._audit(audit)

    def _upsert_record(self, table: str, record: dict[str, Any], audit: AuditEntry | None) -> None:
        """Insert or replace a JSON record with `id`, `endpoint`, `state` (rollouts, jobs)."""
        now = utc_now()
        with self.transaction():
            self._run(
                f"INSERT INTO {table} (id, endpoint, state, record, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "state = excluded.state, record = excluded.record, "
                "updated_at = excluded.updated_at",
                (record["id"], record["endpoint"], record["state"], _dumps(record), now, now),
            )
            if audit is not None:
                self._audit(audit)

    def _records(self, table: str, endpoint: str | None, limit: int) -> list[dict[str, Any]]:
        where, params = ("", ()) if endpoint is None else ("WHERE endpoint = ? ", (endpoint,))
        rows = self._run(
            f"SELECT record FROM {table} {where}"
            f"ORDER BY created_at DESC, {self.ORDER} DESC LIMIT ?",
            (*params, limit),
        )
        return [_loads(r["record"]) for r in rows]

    @property
    def schema_version(self) -> int:
        row = self._one("SELECT MAX(version) AS v FROM schema_migrations")
        return int((row or {}).get("v") or 0)

    # -- models ------------------------------------------------------------
    def add_model(self, record: ModelRecord, audit: AuditEntry) -> None:
        with self.transaction():
            self._run(
                "INSERT INTO models (name, version, runtime, sha256, artifact, filename, "
                "size_bytes, signature, description, tags, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.name,
                    record.version,
                    record.runtime,
                    record.sha256,
                    record.artifact,
                    record.filename,
                    record.size_bytes,
                    _dumps(record.signature),
                    record.description,
                    _dumps(record.tags),
                    record.created_at or utc_now(),
                ),
            )
            self._audit(audit)

    @staticmethod
    def _model(row: Row) -> ModelRecord:
        return ModelRecord(
            name=row["name"],
            version=row["version"],
            runtime=row["runtime"],
            sha256=row["sha256"],
            artifact=row["artifact"],
            filename=row["filename"],
            size_bytes=row["size_bytes"],
            signature=_loads(row["signature"]),
            description=row["description"],
            tags=_loads(row["tags"]),
            created_at=row["created_at"],
        )

    def get_model(self, name: str, version: int | None = None) -> ModelRecord | None:
        if version is None:
            row = self._one(
                "SELECT * FROM models WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)
            )
        else:
            row = self._one("SELECT * FROM models WHERE name = ? AND version = ?", (name, version))
        return self._model(row) if row else None

    def list_models(self, name: str | None = None) -> list[ModelRecord]:
        if name is None:
            rows = self._run("SELECT * FROM models ORDER BY name, version")
        else:
            rows = self._run("SELECT * FROM models WHERE name = ? ORDER BY version", (name,))
        return [self._model(r) for r in rows]

    def latest_model_version(self, name: str) -> int:
        row = self._one("SELECT MAX(version) AS v FROM models WHERE name = ?", (name,))
        return int((row or {}).get("v") or 0)

    # -- endpoints ---------------------------------------------------------
    def put_endpoint(self, spec: EndpointSpec, audit: AuditEntry) -> None:
        self._upsert_spec("endpoints", {"name": spec.name}, spec, audit)

    def get_endpoint(self, name: str) -> EndpointSpec | None:
        row = self._one("SELECT spec FROM endpoints WHERE name = ?", (name,))
        return EndpointSpec.model_validate(_loads(row["spec"])) if row else None

    def list_endpoints(self) -> list[EndpointSpec]:
        rows = self._run("SELECT spec FROM endpoints ORDER BY name")
        return [EndpointSpec.model_validate(_loads(r["spec"])) for r in rows]

    def delete_endpoint(self, name: str, audit: AuditEntry) -> None:
        with self.transaction():
            self._run("DELETE FROM endpoints WHERE name = ?", (name,))
            self._audit(audit)

    # -- deployments -------------------------------------------------------
    def put_deployment(self, spec: OnlineDeploymentSpec, audit: AuditEntry) -> None:
        keys = {"endpoint": spec.endpoint_name, "name": spec.name}
        self._upsert_spec("deployments", keys, spec, audit)

    def get_deployment(self, endpoint: str, name: str) -> OnlineDeploymentSpec | None:
        row = self._one(
            "SELECT spec FROM deployments WHERE endpoint = ? AND name = ?", (endpoint, name)
        )
        return OnlineDeploymentSpec.model_validate(_loads(row["spec"])) if row else None

    def list_deployments(self, endpoint: str | None = None) -> list[OnlineDeploymentSpec]:
        if endpoint is None:
            rows = self._run("SELECT spec FROM deployments ORDER BY endpoint, name")
        else:
            rows = self._run(
                "SELECT spec FROM deployments WHERE endpoint = ? ORDER BY name", (endpoint,)
            )
        return [OnlineDeploymentSpec.model_validate(_loads(r["spec"])) for r in rows]

    def delete_deployment(self, endpoint: str, name: str, audit: AuditEntry) -> None:
        with self.transaction():
            self._run("DELETE FROM deployments WHERE endpoint = ? AND name = ?", (endpoint, name))
            self._audit(audit)

    # -- keys --------------------------------------------------------------
    def put_key(self, record: KeyRecord, audit: AuditEntry | None) -> None:
        with self.transaction():
            self._run(
                "INSERT INTO endpoint_keys (endpoint, key_type, key_hash, nonce, created_at) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(endpoint, key_type) DO UPDATE SET key_hash = excluded.key_hash, "
                "nonce = excluded.nonce, created_at = excluded.created_at",
                (
                    record.endpoint,
                    record.key_type,
                    record.key_hash,
                    record.nonce,
                    record.created_at,
                ),
            )
            if audit is not None:
                self._audit(audit)

    def get_keys(self, endpoint: str) -> dict[str, KeyRecord]:
        rows = self._run("SELECT * FROM endpoint_keys WHERE endpoint = ?", (endpoint,))
        return {
            r["key_type"]: KeyRecord(
                r["endpoint"], r["key_type"], r["key_hash"], r["nonce"], r["created_at"]
            )
            for r in rows
        }

    # -- rollouts -----------------------------------------------------------
    def put_rollout(self, record: RolloutRecord, audit: AuditEntry | None = None) -> None:
        self._upsert_record("rollouts", record.to_dict(), audit)

    def get_rollout(self, rollout_id: str) -> RolloutRecord | None:
        row = self._one("SELECT record FROM rollouts WHERE id = ?", (rollout_id,))
        return RolloutRecord.model_validate(_loads(row["record"])) if row else None

    def list_rollouts(self, endpoint: str | None = None, limit: int = 50) -> list[RolloutRecord]:
        return [RolloutRecord.model_validate(r) for r in self._records("rollouts", endpoint, limit)]

    # -- batch endpoints and deployments --------------------------------------
    def put_batch_endpoint(self, spec: BatchEndpointSpec, audit: AuditEntry) -> None:
        self._upsert_spec("batch_endpoints", {"name": spec.name}, spec, audit)

    def get_batch_endpoint(self, name: str) -> BatchEndpointSpec | None:
        row = self._one("SELECT spec FROM batch_endpoints WHERE name = ?", (name,))
        return BatchEndpointSpec.model_validate(_loads(row["spec"])) if row else None

    def list_batch_endpoints(self) -> list[BatchEndpointSpec]:
        rows = self._run("SELECT spec FROM batch_endpoints ORDER BY name")
        return [BatchEndpointSpec.model_validate(_loads(r["spec"])) for r in rows]

    def put_batch_deployment(self, spec: BatchDeploymentSpec, audit: AuditEntry) -> None:
        keys = {"endpoint": spec.endpoint_name, "name": spec.name}
        self._upsert_spec("batch_deployments", keys, spec, audit)

    def get_batch_deployment(self, endpoint: str, name: str) -> BatchDeploymentSpec | None:
        row = self._one(
            "SELECT spec FROM batch_deployments WHERE endpoint = ? AND name = ?", (endpoint, name)
        )
        return BatchDeploymentSpec.model_validate(_loads(row["spec"])) if row else None

    def list_batch_deployments(self, endpoint: str) -> list[BatchDeploymentSpec]:
        rows = self._run(
            "SELECT spec FROM batch_deployments WHERE endpoint = ? ORDER BY name", (endpoint,)
        )
        return [BatchDeploymentSpec.model_validate(_loads(r["spec"])) for r in rows]

    def delete_batch_endpoint(self, name: str, audit: AuditEntry) -> None:
        with self.transaction():
            # Deployments go with it (ON DELETE CASCADE is not on in every SQLite session).
            self._run("DELETE FROM batch_deployments WHERE endpoint = ?", (name,))
            self._run("DELETE FROM batch_endpoints WHERE name = ?", (name,))
            self._audit(audit)

    def delete_batch_deployment(self, endpoint: str, name: str, audit: AuditEntry) -> None:
        with self.transaction():
            self._run(
                "DELETE FROM batch_deployments WHERE endpoint = ? AND name = ?", (endpoint, name)
            )
            self._audit(audit)

    # -- batch jobs and mini-batches -------------------------------------------
    def put_job(self, record: JobRecord, audit: AuditEntry | None = None) -> None:
        self._upsert_record("jobs", record.to_dict(), audit)

    def get_job(self, job_id: str) -> JobRecord | None:
        row = self._one("SELECT record FROM jobs WHERE id = ?", (job_id,))
        return JobRecord.model_validate(_loads(row["record"])) if row else None

    def list_jobs(self, endpoint: str | None = None, limit: int = 50) -> list[JobRecord]:
        return [JobRecord.model_validate(r) for r in self._records("jobs", endpoint, limit)]

    def list_unfinished_jobs(self) -> list[JobRecord]:
        final = ", ".join(f"'{state}'" for state in sorted(FINAL_JOB_STATES))
        rows = self._run(
            f"SELECT record FROM jobs WHERE state NOT IN ({final}) "
            f"ORDER BY created_at, {self.ORDER}"
        )
        return [JobRecord.model_validate(_loads(r["record"])) for r in rows]

    def add_mini_batches(self, job_id: str, items: list[int]) -> None:
        """Register a job's mini-batches (item counts: rows or files), all pending."""
        now = utc_now()
        with self.transaction():
            self._run("DELETE FROM mini_batches WHERE job_id = ?", (job_id,))
            self._run_many(
                "INSERT INTO mini_batches (job_id, idx, state, items, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(job_id, i, MiniBatchState.PENDING.value, n, now) for i, n in enumerate(items)],
            )

    def put_mini_batch(self, job_id: str, record: MiniBatchRecord) -> None:
        with self.transaction():
            self._run(
                "UPDATE mini_batches SET state = ?, attempts = ?, failed_items = ?, error = ?, "
                "seconds = ?, updated_at = ? WHERE job_id = ? AND idx = ?",
                (
                    record.state.value,
                    record.attempts,
                    record.failed_items,
                    record.error,
                    record.seconds,
                    utc_now(),
                    job_id,
                    record.index,
                ),
            )

    def list_mini_batches(self, job_id: str) -> list[MiniBatchRecord]:
        rows = self._run(
            'SELECT idx AS "index", state, attempts, items, failed_items, error, seconds '
            "FROM mini_batches WHERE job_id = ? ORDER BY idx",
            (job_id,),
        )
        return [MiniBatchRecord.model_validate(r) for r in rows]

    # -- audit -------------------------------------------------------------
    # -- deployment logs -----------------------------------------------------
    def add_deployment_logs(
        self, endpoint: str, deployment: str, replica: str, lines: list[tuple[str, str]], keep: int
    ) -> None:
        """Append (time, line) pairs; only the newest `keep` lines of the deployment stay."""
        with self.transaction():
            for at, line in lines:
                self._run(
                    "INSERT INTO deployment_logs (endpoint, deployment, at, replica, line) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (endpoint, deployment, at, replica, line),
                )
            self._run(
                "DELETE FROM deployment_logs WHERE endpoint = ? AND deployment = ? AND id <= "
                "(SELECT id FROM deployment_logs WHERE endpoint = ? AND deployment = ? "
                "ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (endpoint, deployment, endpoint, deployment, keep),
            )

    def list_deployment_logs(
        self, endpoint: str, deployment: str, lines: int, after: int = 0
    ) -> list[dict[str, Any]]:
        """The newest `lines` lines after id `after`, oldest first."""
        rows = self._run(
            "SELECT id, at, replica, line FROM deployment_logs WHERE endpoint = ? AND "
            "deployment = ? AND id > ? ORDER BY id DESC LIMIT ?",
            (endpoint, deployment, after, lines),
        )
        return [
            {"id": r["id"], "at": r["at"], "replica": r["replica"], "line": r["line"]}
            for r in reversed(list(rows))
        ]

    def add_audit(self, entry: AuditEntry) -> None:
        with self.transaction():
            self._audit(entry)

    def list_audit(self, target: str | None = None, limit: int = 100) -> list[AuditEntry]:
        if target is None:
            rows = self._run("SELECT * FROM audit_log ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._run(
                "SELECT * FROM audit_log WHERE target = ? OR target LIKE ? "
                "ORDER BY id DESC LIMIT ?",
                (target, f"{target}/%", limit),
            )
        return [
            AuditEntry(
                id=r["id"],
                at=r["at"],
                actor=r["actor"],
                action=r["action"],
                target=r["target"],
                before=_loads(r["before"]),
                after=_loads(r["after"]),
                reason=r["reason"],
            )
            for r in rows
        ]

    def last_change_id(self) -> int:
        row = self._one("SELECT MAX(id) AS id FROM audit_log")
        return int((row or {}).get("id") or 0)

    # -- leases: one holder at a time, until it stops renewing ------------------------
    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew lease `name` for `ttl_s` seconds. True when `holder` holds it
        now: it was free, expired, or already `holder`'s."""
        with self.transaction():
            row = self._one(
                f"SELECT holder, expires_at > {self.NOW} AS live FROM leases WHERE name = ?",
                (name,),
            )
            if row is not None and row["live"] and row["holder"] != holder:
                return False
            self._run(
                "INSERT INTO leases (name, holder, expires_at, acquired_at) "
                f"VALUES (?, ?, {self.NOW} + ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "holder = excluded.holder, expires_at = excluded.expires_at, "
                "acquired_at = CASE WHEN leases.holder = excluded.holder "
                "THEN leases.acquired_at ELSE excluded.acquired_at END",
                (name, holder, ttl_s, utc_now()),
            )
        return True

    def release_lease(self, name: str, holder: str) -> None:
        with self.transaction():
            self._run("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    def lease_holder(self, name: str) -> str | None:
        """Who holds lease `name` now (None when free or expired)."""
        row = self._one(
            f"SELECT holder FROM leases WHERE name = ? AND expires_at > {self.NOW}", (name,)
        )
        return row["holder"] if row else None

    def list_leases(self) -> list[LeaseRecord]:
        rows = self._run(
            f"SELECT name, holder, acquired_at, expires_at - {self.NOW} AS expires_in_s "
            f"FROM leases WHERE expires_at > {self.NOW} ORDER BY name"
        )
        return [LeaseRecord.model_validate(r) for r in rows]

    # -- replicas: heartbeats and the counters each publishes ---------------------------
    def heartbeat(self, replica: ReplicaIdentity, applied_change: int, stats: Any) -> None:
        with self.transaction():
            self._run(
                "INSERT INTO replicas (id, host, pid, url, version, started_at, heartbeat_at, "
                f"applied_change, stats) VALUES (?, ?, ?, ?, ?, ?, {self.NOW}, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, "
                "applied_change = excluded.applied_change, stats = excluded.stats",
                (
                    replica.id,
                    replica.host,
                    replica.pid,
                    replica.url,
                    replica.version,
                    replica.started_at,
                    applied_change,
                    _dumps(stats),
                ),
            )

    def list_replicas(self, max_age_s: float) -> list[ReplicaRecord]:
        """Replicas whose last heartbeat is at most `max_age_s` old, with their stats."""
        rows = self._run(
            "SELECT id, host, pid, url, version, started_at, applied_change, stats, "
            f"{self.NOW} - heartbeat_at AS heartbeat_age_s FROM replicas "
            f"WHERE heartbeat_at > {self.NOW} - ? ORDER BY started_at, id",
            (max_age_s,),
        )
        return [ReplicaRecord.model_validate({**r, "stats": _loads(r["stats"])}) for r in rows]

    def remove_replica(self, replica_id: str) -> None:
        with self.transaction():
            self._run("DELETE FROM replicas WHERE id = ?", (replica_id,))
            self._run("DELETE FROM leases WHERE holder = ?", (replica_id,))

    # -- admin tokens (hashed) ------------------------------------------------------------
    def put_admin_token(self, token: AdminTokenRecord, token_hash: str, audit: AuditEntry) -> None:
        with self.transaction():
            self._run(
                "INSERT INTO admin_tokens (name, token_hash, role, created_at, endpoints, "
                "expires_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    token.name,
                    token_hash,
                    token.role,
                    token.created_at or utc_now(),
                    token.endpoints,
                    token.expires_at,
                    token.created_by,
                ),
            )
            self._audit(audit)

    def admin_token(self, token_hash: str) -> AdminTokenRecord | None:
        rows = self._run("SELECT * FROM admin_tokens WHERE token_hash = ?", (token_hash,))
        return _admin_token(rows[0]) if rows else None

    def list_admin_tokens(self) -> list[AdminTokenRecord]:
        return [_admin_token(r) for r in self._run("SELECT * FROM admin_tokens ORDER BY name")]

    def delete_admin_token(self, name: str, audit: AuditEntry) -> bool:
        return self._delete_named("admin_tokens", name, audit)

    def _delete_named(self, table: str, name: str, audit: AuditEntry) -> bool:
        """Delete a row by name, audited; False when there is none."""
        with self.transaction():
            if not self._run(f"SELECT name FROM {table} WHERE name = ?", (name,)):
                return False
            self._run(f"DELETE FROM {table} WHERE name = ?", (name,))
            self._audit(audit)
        return True

    # -- model monitors -----------------------------------------------------------------
    def put_monitor(self, spec: MonitorSpec, audit: AuditEntry) -> None:
        with self.transaction():
            self._run(
                "INSERT INTO monitors (name, spec, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET spec = excluded.spec",
                (spec.name, _dumps(spec.to_dict()), utc_now()),
            )
            self._audit(audit)

    def get_monitor(self, name: str) -> MonitorSpec | None:
        rows = self._run("SELECT spec FROM monitors WHERE name = ?", (name,))
        return MonitorSpec.model_validate(_loads(rows[0]["spec"])) if rows else None

    def list_monitors(self) -> list[MonitorSpec]:
        rows = self._run("SELECT spec FROM monitors ORDER BY name")
        return [MonitorSpec.model_validate(_loads(r["spec"])) for r in rows]

    def delete_monitor(self, name: str, audit: AuditEntry) -> bool:
        with self.transaction():
            self._run("DELETE FROM monitor_runs WHERE monitor = ?", (name,))
            return self._delete_named("monitors", name, audit)

    def add_monitor_run(self, name: str, start: float, end: float, state: str, result: Any) -> int:
        with self.transaction():
            self._run(
                "INSERT INTO monitor_runs (monitor, at, window_start, window_end, state, result) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (name, utc_now(), start, end, state, _dumps(result)),
            )
            rows = self._run("SELECT MAX(id) AS id FROM monitor_runs WHERE monitor = ?", (name,))
        return int(rows[0]["id"])

    def list_monitor_runs(self, name: str, limit: int) -> list[dict[str, Any]]:
        rows = self._run(
            "SELECT * FROM monitor_runs WHERE monitor = ? ORDER BY id DESC LIMIT ?", (name, limit)
        )
        return [{**r, "result": _loads(r["result"])} for r in rows]

    # -- deployment intents (no_wait creates and updates) -------------------------------
    def put_deployment_intent(self, intent: DeploymentIntent) -> None:
        with self.transaction():
            self._run(
                "INSERT INTO deployment_intents (endpoint, name, state, spec, actor, "
                "all_traffic, error, replica, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(endpoint, name) DO UPDATE SET state = excluded.state, "
                "spec = excluded.spec, actor = excluded.actor, "
                "all_traffic = excluded.all_traffic, error = excluded.error, "
                "replica = excluded.replica, updated_at = excluded.updated_at",
                (
                    intent.endpoint,
                    intent.name,
                    intent.state,
                    _dumps(intent.spec),
                    intent.actor,
                    int(intent.all_traffic),
                    intent.error,
                    intent.replica,
                    utc_now(),
                ),
            )

    def list_deployment_intents(self) -> list[DeploymentIntent]:
        rows = self._run("SELECT * FROM deployment_intents ORDER BY endpoint, name")
        return [
            DeploymentIntent.model_validate(
                {**r, "spec": _loads(r["spec"]), "all_traffic": bool(r["all_traffic"])}
            )
            for r in rows
        ]

    def delete_deployment_intent(self, endpoint: str, name: str | None = None) -> None:
        """An endpoint's intent for `name`, or all of them."""
        if name is None:
            self._run("DELETE FROM deployment_intents WHERE endpoint = ?", (endpoint,))
        else:
            self._run(
                "DELETE FROM deployment_intents WHERE endpoint = ? AND name = ?", (endpoint, name)
            )

    # -- secrets (encrypted by the caller) ----------------------------------------------
    def put_secret(self, name: str, ciphertext: str, audit: AuditEntry) -> None:
        with self.transaction():
            self._run(
                "INSERT INTO secrets (name, ciphertext, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET ciphertext = excluded.ciphertext, "
                "updated_at = excluded.updated_at",
                (name, ciphertext, utc_now()),
            )
            self._audit(audit)

    def get_secret(self, name: str) -> str | None:
        rows = self._run("SELECT ciphertext FROM secrets WHERE name = ?", (name,))
        return str(rows[0]["ciphertext"]) if rows else None

    def list_secrets(self) -> list[dict[str, str]]:
        rows = self._run("SELECT name, updated_at FROM secrets ORDER BY name")
        return [{"name": r["name"], "updated_at": r["updated_at"]} for r in rows]

    def delete_secret(self, name: str, audit: AuditEntry) -> bool:
        return self._delete_named("secrets", name, audit)


def _admin_token(row: Row) -> AdminTokenRecord:
    return AdminTokenRecord.model_validate({k: row[k] for k in AdminTokenRecord.model_fields})
