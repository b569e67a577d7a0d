"""The store on PostgreSQL (psycopg 3 and its connection pool), for several gateway
replicas on one control plane.

Writes are one at a time across every replica: each write transaction first takes one
transaction-scoped advisory lock, which gives the read-check-write sequences of the
control plane (create if absent, check then update) the same meaning they have on
SQLite. Each committed change sends a NOTIFY on `CHANGES_CHANNEL`, which the replicas'
change feeds LISTEN to.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg_pool
from psycopg.rows import dict_row

from deploy.errors import StoreUnavailable
from deploy.store.base import utc_now
from deploy.store.migrations import MIGRATIONS, POSTGRESQL_EXTRA, for_postgresql, statements
from deploy.store.sql import Row, SqlStore

CHANGES_CHANNEL = "servegate_changes"
#: Advisory lock keys (any constant bigint, ours alone in this database).
WRITE_LOCK = 0x5E_47_A7_E0
MIGRATION_LOCK = 0x5E_47_A7_E1
POOL_SIZE = 8
CONNECT_TIMEOUT_S = 10.0


#: libpq's URL parameters that hold a secret
_SECRET_PARAMETERS = ("password", "sslpassword")


def redact(url: str) -> str:
    """The URL without its password, in the user part or as a libpq parameter
    (`?password=`), for logs and `servegate status`."""
    url = re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = [
        (name, "***" if name.lower() in _SECRET_PARAMETERS else value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


class PostgresStore(SqlStore):
    NOW = "EXTRACT(EPOCH FROM clock_timestamp())::float8"
    ORDER = "seq"

    def __init__(self, url: str) -> None:
        self.url = redact(url)
        self._conninfo = url
        self._local = threading.local()
        self._sql: dict[str, str] = {}
        self._pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=POOL_SIZE,
            kwargs={"autocommit": True, "row_factory": dict_row},
            open=False,
            name="servegate-store",
        )
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
            self._migrate()
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            self._pool.close()
            raise StoreUnavailable(f"{self.url}: cannot open the store: {exc}") from None

    def _migrate(self) -> None:
        # The advisory lock comes first: replicas starting together against an empty
        # database wait for each other, and the later ones find nothing left to do.
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version BIGINT PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
            current = int(next(iter(row.values())) or 0) if row else 0
            for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in statements(for_postgresql(script)):
                    conn.execute(statement)
                if version in POSTGRESQL_EXTRA:
                    conn.execute(POSTGRESQL_EXTRA[version])
                conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (version, utc_now()))

    def _statement(self, sql: str) -> str:
        converted = self._sql.get(sql)
        if converted is None:
            # Our statements hold no literal '?' or '%'; LIKE patterns come as parameters.
            converted = self._sql[sql] = sql.replace("?", "%s")
        return converted

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if getattr(self._local, "conn", None) is not None:  # nested: the outer one commits
            yield
            return
        try:
            with self._pool.connection() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                self._local.conn = conn
                try:
                    yield
                finally:
                    self._local.conn = None
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"{self.url}: {exc}") from None

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        statement = self._statement(sql)
        conn = getattr(self._local, "conn", None)
        try:
            if conn is not None:
                cursor = conn.execute(statement, tuple(params))
                return cast(list[Row], cursor.fetchall()) if cursor.description else []
            with self._pool.connection() as conn:
                cursor = conn.execute(statement, tuple(params))
                return cast(list[Row], cursor.fetchall()) if cursor.description else []
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise StoreUnavailable(f"{self.url}: {exc}") from None

    def _run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self.transaction():
            self._local.conn.cursor().executemany(self._statement(sql), list(rows))

    def _announce_change(self) -> None:
        # Delivered at commit, and only if the transaction commits.
        self._run(f"NOTIFY {CHANGES_CHANNEL}")

    def listen(self) -> psycopg.Connection[Any]:
        """A connection of its own (outside the pool) that LISTENs to the change channel."""
        conn = psycopg.connect(self._conninfo, autocommit=True)
        conn.execute(f"LISTEN {CHANGES_CHANNEL}")
        return conn

    def close(self) -> None:
        self._pool.close()
