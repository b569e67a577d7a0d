"""The default store: one SQLite file under $SERVEGATE_HOME.

Several processes on one host may share the file (gateways, batch runners, stream
workers): SQLite's WAL and `BEGIN IMMEDIATE` make their writes one at a time.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deploy.errors import StoreUnavailable
from deploy.store.base import utc_now
from deploy.store.migrations import MIGRATIONS, statements
from deploy.store.sql import Row, SqlStore


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {column[0]: value for column, value in zip(cursor.description, row, strict=True)}


class SqliteStore(SqlStore):
    """`Store` on SQLite. Thread-safe: one connection behind a re-entrant lock."""

    NOW = "((julianday('now') - 2440587.5) * 86400.0)"
    ORDER = "rowid"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
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
            self._db.row_factory = _dict_row
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

    def _migrate(self) -> None:
        # BEGIN IMMEDIATE takes the write lock first: two processes opening a new file
        # together migrate it once.
        with self.transaction():
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            current = self.schema_version
            for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in statements(script):
                    self._db.execute(statement)
                self._db.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?)", (version, utc_now())
                )

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

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    def _run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._lock:
            self._db.executemany(sql, rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()
