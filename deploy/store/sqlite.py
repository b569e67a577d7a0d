"""The default store: one SQLite file under $SERVEGATE_HOME, with migrations."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from deploy.errors import StoreUnavailable
from deploy.masking import mask_secrets
from deploy.store.base import AuditEntry, KeyRecord, ModelRecord, utc_now

# Each entry upgrades the schema by one version; never edit a released one,
# append a new one. The applied version is kept in schema_migrations.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE models (
        name TEXT NOT NULL, version INTEGER NOT NULL, runtime TEXT NOT NULL,
        sha256 TEXT NOT NULL, artifact TEXT NOT NULL, filename TEXT NOT NULL,
        size_bytes INTEGER NOT NULL, signature TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '', tags TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL, PRIMARY KEY (name, version));
    CREATE TABLE endpoints (
        name TEXT PRIMARY KEY, spec TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
    CREATE TABLE deployments (
        endpoint TEXT NOT NULL REFERENCES endpoints(name) ON DELETE CASCADE,
        name TEXT NOT NULL, spec TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
        PRIMARY KEY (endpoint, name));
    CREATE TABLE endpoint_keys (
        endpoint TEXT NOT NULL REFERENCES endpoints(name) ON DELETE CASCADE,
        key_type TEXT NOT NULL, key_hash TEXT NOT NULL, nonce TEXT NOT NULL,
        created_at TEXT NOT NULL, PRIMARY KEY (endpoint, key_type));
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, actor TEXT NOT NULL,
        action TEXT NOT NULL, target TEXT NOT NULL, before TEXT, after TEXT,
        reason TEXT NOT NULL DEFAULT '');
    CREATE INDEX audit_log_target ON audit_log(target);
    """,
    # 2: rollouts (issue 4): the controller's state, so a rollout survives restarts.
    """
    CREATE TABLE rollouts (
        id TEXT PRIMARY KEY, endpoint TEXT NOT NULL, state TEXT NOT NULL,
        record TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
    CREATE INDEX rollouts_endpoint ON rollouts(endpoint, created_at);
    """,
    # 3: batch endpoints, deployments, jobs and their mini-batches (issue 5).
    """
    CREATE TABLE batch_endpoints (
        name TEXT PRIMARY KEY, spec TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
    CREATE TABLE batch_deployments (
        endpoint TEXT NOT NULL REFERENCES batch_endpoints(name) ON DELETE CASCADE,
        name TEXT NOT NULL, spec TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (endpoint, name));
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY, endpoint TEXT NOT NULL, state TEXT NOT NULL,
        record TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
    CREATE INDEX jobs_endpoint ON jobs(endpoint, created_at);
    CREATE TABLE mini_batches (
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, idx INTEGER NOT NULL,
        state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, items INTEGER NOT NULL,
        failed_items INTEGER NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '',
        seconds REAL NOT NULL DEFAULT 0, updated_at TEXT NOT NULL, PRIMARY KEY (job_id, idx));
    """,
]


def _dumps(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


class SqliteStore:
    """`Store` on SQLite. Thread-safe: one connection behind a re-entrant lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._depth = 0
        # Owner only (also a store an older version left 0644): it holds key nonces and
        # specs. Created here, before SQLite creates it; SQLite gives its -wal and -shm
        # files the store's mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f"{self.path}{suffix}", 0o600)
        self._identity = self._file_identity()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: commits survive a crash of any process; only power loss can
            # take the last ones. FULL fsyncs every commit: 3 per batch mini-batch.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreUnavailable(f"{self.path}: not a usable servegate store: {exc}") from None

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_dev, stat.st_ino

    def check_file(self) -> None:
        """Raise StoreUnavailable if the store's file was removed or replaced since it was
        opened: writes would go to an unlinked file and vanish at the next start."""
        if self._file_identity() != self._identity:
            raise StoreUnavailable(
                f"the store file {self.path} was removed or replaced while this process "
                "ran; changes are refused so none is lost. Restore it, or restart to open "
                "the new file"
            )

    # -- plumbing -----------------------------------------------------------
    def _migrate(self) -> None:
        with self.transaction():
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            row = self._db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
            current = row[0] or 0
            for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in filter(str.strip, script.split(";")):
                    self._db.execute(statement)
                self._db.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?)", (version, utc_now())
                )

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            outermost = self._depth == 0
            if outermost:
                self.check_file()
                self._db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if outermost:
                    self._db.execute("ROLLBACK")
                raise
            self._depth -= 1
            if outermost:
                self._db.execute("COMMIT")

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _audit(self, entry: AuditEntry) -> None:
        self._db.execute(
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

    # -- models ------------------------------------------------------------
    def add_model(self, record: ModelRecord, audit: AuditEntry) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    def _model(row: sqlite3.Row) -> ModelRecord:
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
            rows = self._query(
                "SELECT * FROM models WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)
            )
        else:
            rows = self._query(
                "SELECT * FROM models WHERE name = ? AND version = ?", (name, version)
            )
        return self._model(rows[0]) if rows else None

    def list_models(self, name: str | None = None) -> list[ModelRecord]:
        if name is None:
            rows = self._query("SELECT * FROM models ORDER BY name, version")
        else:
            rows = self._query("SELECT * FROM models WHERE name = ? ORDER BY version", (name,))
        return [self._model(r) for r in rows]

    def latest_model_version(self, name: str) -> int:
        rows = self._query("SELECT MAX(version) FROM models WHERE name = ?", (name,))
        return int(rows[0][0] or 0)

    # -- endpoints ---------------------------------------------------------
    def put_endpoint(self, name: str, spec: dict[str, Any], audit: AuditEntry) -> None:
        now = utc_now()
        with self.transaction():
            self._db.execute(
                "INSERT INTO endpoints VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE "
                "SET spec = excluded.spec, updated_at = excluded.updated_at",
                (name, _dumps(spec), now, now),
            )
            self._audit(audit)

    def get_endpoint(self, name: str) -> dict[str, Any] | None:
        rows = self._query("SELECT spec FROM endpoints WHERE name = ?", (name,))
        return _loads(rows[0]["spec"]) if rows else None

    def list_endpoints(self) -> list[dict[str, Any]]:
        return [_loads(r["spec"]) for r in self._query("SELECT spec FROM endpoints ORDER BY name")]

    def delete_endpoint(self, name: str, audit: AuditEntry) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM endpoints WHERE name = ?", (name,))
            self._audit(audit)

    # -- deployments -------------------------------------------------------
    def put_deployment(
        self, endpoint: str, name: str, spec: dict[str, Any], audit: AuditEntry
    ) -> None:
        now = utc_now()
        with self.transaction():
            self._db.execute(
                "INSERT INTO deployments VALUES (?, ?, ?, ?, ?) ON CONFLICT(endpoint, name) "
                "DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
                (endpoint, name, _dumps(spec), now, now),
            )
            self._audit(audit)

    def get_deployment(self, endpoint: str, name: str) -> dict[str, Any] | None:
        rows = self._query(
            "SELECT spec FROM deployments WHERE endpoint = ? AND name = ?", (endpoint, name)
        )
        return _loads(rows[0]["spec"]) if rows else None

    def list_deployments(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        if endpoint is None:
            rows = self._query("SELECT spec FROM deployments ORDER BY endpoint, name")
        else:
            rows = self._query(
                "SELECT spec FROM deployments WHERE endpoint = ? ORDER BY name", (endpoint,)
            )
        return [_loads(r["spec"]) for r in rows]

    def delete_deployment(self, endpoint: str, name: str, audit: AuditEntry) -> None:
        with self.transaction():
            self._db.execute(
                "DELETE FROM deployments WHERE endpoint = ? AND name = ?", (endpoint, name)
            )
            self._audit(audit)

    # -- keys --------------------------------------------------------------
    def put_key(self, record: KeyRecord, audit: AuditEntry | None) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT INTO endpoint_keys VALUES (?, ?, ?, ?, ?) "
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
        rows = self._query("SELECT * FROM endpoint_keys WHERE endpoint = ?", (endpoint,))
        return {
            r["key_type"]: KeyRecord(
                r["endpoint"], r["key_type"], r["key_hash"], r["nonce"], r["created_at"]
            )
            for r in rows
        }

    # -- rollouts -----------------------------------------------------------
    def put_rollout(self, record: dict[str, Any], audit: AuditEntry | None = None) -> None:
        now = utc_now()
        with self.transaction():
            self._db.execute(
                "INSERT INTO rollouts VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "state = excluded.state, record = excluded.record, "
                "updated_at = excluded.updated_at",
                (record["id"], record["endpoint"], record["state"], _dumps(record), now, now),
            )
            if audit is not None:
                self._audit(audit)

    def get_rollout(self, rollout_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT record FROM rollouts WHERE id = ?", (rollout_id,))
        return _loads(rows[0]["record"]) if rows else None

    def list_rollouts(self, endpoint: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        if endpoint is None:
            rows = self._query(
                "SELECT record FROM rollouts ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,)
            )
        else:
            rows = self._query(
                "SELECT record FROM rollouts WHERE endpoint = ? "
                "ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (endpoint, limit),
            )
        return [_loads(r["record"]) for r in rows]

    # -- batch endpoints and deployments --------------------------------------
    def put_batch_endpoint(self, name: str, spec: dict[str, Any], audit: AuditEntry) -> None:
        now = utc_now()
        with self.transaction():
            self._db.execute(
                "INSERT INTO batch_endpoints VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE "
                "SET spec = excluded.spec, updated_at = excluded.updated_at",
                (name, _dumps(spec), now, now),
            )
            self._audit(audit)

    def get_batch_endpoint(self, name: str) -> dict[str, Any] | None:
        rows = self._query("SELECT spec FROM batch_endpoints WHERE name = ?", (name,))
        return _loads(rows[0]["spec"]) if rows else None

    def list_batch_endpoints(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT spec FROM batch_endpoints ORDER BY name")
        return [_loads(r["spec"]) for r in rows]

    def put_batch_deployment(
        self, endpoint: str, name: str, spec: dict[str, Any], audit: AuditEntry
    ) -> None:
        now = utc_now()
        with self.transaction():
            self._db.execute(
                "INSERT INTO batch_deployments VALUES (?, ?, ?, ?, ?) ON CONFLICT(endpoint, name) "
                "DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
                (endpoint, name, _dumps(spec), now, now),
            )
            self._audit(audit)

    def get_batch_deployment(self, endpoint: str, name: str) -> dict[str, Any] | None:
        rows = self._query(
            "SELECT spec FROM batch_deployments WHERE endpoint = ? AND name = ?", (endpoint, name)
        )
        return _loads(rows[0]["spec"]) if rows else None

    def list_batch_deployments(self, endpoint: str) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT spec FROM batch_deployments WHERE endpoint = ? ORDER BY name", (endpoint,)
        )
        return [_loads(r["spec"]) for r in rows]

    # -- batch jobs and mini-batches -------------------------------------------
    def put_job(self, record: dict[str, Any], audit: AuditEntry | None = None) -> None:
        now = utc_now()
        with self.transaction():
            self._db.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "state = excluded.state, record = excluded.record, "
                "updated_at = excluded.updated_at",
                (record["id"], record["endpoint"], record["state"], _dumps(record), now, now),
            )
            if audit is not None:
                self._audit(audit)

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT record FROM jobs WHERE id = ?", (job_id,))
        return _loads(rows[0]["record"]) if rows else None

    def list_jobs(self, endpoint: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        if endpoint is None:
            rows = self._query(
                "SELECT record FROM jobs ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,)
            )
        else:
            rows = self._query(
                "SELECT record FROM jobs WHERE endpoint = ? "
                "ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (endpoint, limit),
            )
        return [_loads(r["record"]) for r in rows]

    def add_mini_batches(self, job_id: str, items: list[int]) -> None:
        """Register a job's mini-batches (item counts: rows or files), all pending."""
        now = utc_now()
        with self.transaction():
            self._db.execute("DELETE FROM mini_batches WHERE job_id = ?", (job_id,))
            self._db.executemany(
                "INSERT INTO mini_batches (job_id, idx, state, items, updated_at) "
                "VALUES (?, ?, 'pending', ?, ?)",
                [(job_id, i, n, now) for i, n in enumerate(items)],
            )

    def update_mini_batch(self, job_id: str, index: int, **fields: Any) -> None:
        columns = ", ".join(f"{name} = ?" for name in fields)
        with self.transaction():
            self._db.execute(
                f"UPDATE mini_batches SET {columns}, updated_at = ? WHERE job_id = ? AND idx = ?",
                (*fields.values(), utc_now(), job_id, index),
            )

    def list_mini_batches(self, job_id: str) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT idx, state, attempts, items, failed_items, error, seconds "
            "FROM mini_batches WHERE job_id = ? ORDER BY idx",
            (job_id,),
        )
        return [dict(r) for r in rows]

    # -- audit -------------------------------------------------------------
    def list_audit(self, target: str | None = None, limit: int = 100) -> list[AuditEntry]:
        if target is None:
            rows = self._query("SELECT * FROM audit_log ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._query(
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
        return int(self._query("SELECT MAX(id) FROM audit_log")[0][0] or 0)

    def close(self) -> None:
        with self._lock:
            self._db.close()
