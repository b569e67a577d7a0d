"""The schema, as numbered migrations shared by SQLite and PostgreSQL.

Each entry upgrades the schema by one version; never edit a released one, append a new
one. The applied version is kept in `schema_migrations`. The SQL is written once, in the
subset both dialects agree on; `for_postgresql` rewrites the few type names that differ,
and `POSTGRESQL_EXTRA` adds what only PostgreSQL needs.
"""

from __future__ import annotations

import re

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
    # 4: several gateways on one store (issue 10): leases (one replica drives a rollout,
    # one runner a job), the replicas' heartbeats with the counters they publish for
    # cluster-wide rollout gates, and admin tokens (hashed) shared by every replica.
    # Times are seconds since the epoch on the database's clock, so replicas on hosts
    # whose clocks disagree still agree on who holds a lease.
    """
    CREATE TABLE leases (
        name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at REAL NOT NULL,
        acquired_at TEXT NOT NULL);
    CREATE TABLE replicas (
        id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, url TEXT NOT NULL,
        version TEXT NOT NULL, started_at TEXT NOT NULL, heartbeat_at REAL NOT NULL,
        applied_change INTEGER NOT NULL DEFAULT 0, stats TEXT NOT NULL DEFAULT '{}');
    CREATE TABLE admin_tokens (
        name TEXT PRIMARY KEY, token_hash TEXT NOT NULL, role TEXT NOT NULL,
        created_at TEXT NOT NULL);
    """,
    # 5: deployments' own logs (issue 13): what scoring scripts print and log, worker
    # starts and exits, load errors; the last lines per deployment, from every replica.
    """
    CREATE TABLE deployment_logs (
        id INTEGER PRIMARY KEY AUTOINCREMENT, endpoint TEXT NOT NULL,
        deployment TEXT NOT NULL, at TEXT NOT NULL, replica TEXT NOT NULL,
        line TEXT NOT NULL);
    CREATE INDEX deployment_logs_by_deployment ON deployment_logs(endpoint, deployment, id);
    """,
    # 6: access control (issue 14): admin tokens scoped to endpoints (a name pattern),
    # with an expiry (epoch seconds on the gateway's clock) and who created them; secrets
    # by reference, encrypted with a key the store does not hold.
    """
    ALTER TABLE admin_tokens ADD COLUMN endpoints TEXT NOT NULL DEFAULT '';
    ALTER TABLE admin_tokens ADD COLUMN expires_at REAL;
    ALTER TABLE admin_tokens ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
    CREATE UNIQUE INDEX admin_tokens_by_hash ON admin_tokens(token_hash);
    CREATE TABLE secrets (
        name TEXT PRIMARY KEY, ciphertext TEXT NOT NULL, updated_at TEXT NOT NULL);
    """,
    # 7: model monitoring (issue 15): monitors, and each run's window and results.
    """
    CREATE TABLE monitors (
        name TEXT PRIMARY KEY, spec TEXT NOT NULL, created_at TEXT NOT NULL);
    CREATE TABLE monitor_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT, monitor TEXT NOT NULL, at TEXT NOT NULL,
        window_start REAL NOT NULL, window_end REAL NOT NULL, state TEXT NOT NULL,
        result TEXT NOT NULL);
    CREATE INDEX monitor_runs_by_monitor ON monitor_runs(monitor, id);
    """,
    # 8: a deployment create or update answered 202 (no_wait) is an intent in the store
    # until it is done or failed, so a gateway that dies under it finishes it on restart
    # (issue 25) and every replica shows it.
    """
    CREATE TABLE deployment_intents (
        endpoint TEXT NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL, spec TEXT NOT NULL,
        actor TEXT NOT NULL, all_traffic INTEGER NOT NULL DEFAULT 0,
        error TEXT NOT NULL DEFAULT '', replica TEXT NOT NULL, updated_at TEXT NOT NULL,
        PRIMARY KEY (endpoint, name));
    """,
]

#: Version -> statements PostgreSQL runs after that migration. SQLite orders rollouts and
#: jobs created in the same millisecond by `rowid`; PostgreSQL has no rowid, so it gets
#: an identity column for the same order.
POSTGRESQL_EXTRA: dict[int, str] = {
    2: "ALTER TABLE rollouts ADD COLUMN seq BIGINT GENERATED BY DEFAULT AS IDENTITY",
    3: "ALTER TABLE jobs ADD COLUMN seq BIGINT GENERATED BY DEFAULT AS IDENTITY",
}


def statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def for_postgresql(script: str) -> str:
    """The type names the dialects spell differently. SQLite's INTEGER is 64-bit,
    PostgreSQL's 32-bit (a model's size_bytes passes 2**31)."""
    script = script.replace(
        "INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    )
    script = re.sub(r"\bINTEGER\b", "BIGINT", script)
    # PostgreSQL's REAL is 4 bytes: an epoch time in it is off by up to two minutes.
    return re.sub(r"\bREAL\b", "DOUBLE PRECISION", script)
