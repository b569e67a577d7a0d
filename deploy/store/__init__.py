"""The store: everything the control plane persists.

`Store` is the interface; `open_store(url)` opens one: `sqlite:///path` (the default, a
file under $SERVEGATE_HOME) or `postgresql://...` (several gateway replicas on one
store; needs the `postgres` extra).
"""

from __future__ import annotations

import os
from pathlib import Path

from deploy.errors import StoreUnavailable
from deploy.store.base import AuditEntry, KeyRecord, ModelRecord, Store, utc_now
from deploy.store.sql import SqlStore
from deploy.store.sqlite import SqliteStore

STORE_ENV = "SERVEGATE_STORE"


def default_store_url(home: Path) -> str:
    """`--store` / SERVEGATE_STORE, else the SQLite file in the home."""
    return os.environ.get(STORE_ENV) or f"sqlite:///{home / 'store.db'}"


def open_store(url: str) -> SqlStore:
    """Open (and migrate) the store at `url`. StoreUnavailable names what is wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep:  # a bare path is a SQLite file
        return SqliteStore(Path(url).expanduser())
    if scheme == "sqlite":
        # As SQLAlchemy spells it: sqlite:///relative.db, sqlite:////absolute/store.db.
        if not rest.startswith("/") or rest == "/":
            raise StoreUnavailable(f"store URL '{url}': write sqlite:///path/to/store.db")
        return SqliteStore(Path(rest[1:]).expanduser())
    if scheme in ("postgresql", "postgres"):
        try:
            from deploy.store.postgres import PostgresStore
        except ImportError:
            raise StoreUnavailable(
                "a postgresql:// store needs psycopg: pip install 'servegate[postgres]'"
            ) from None
        return PostgresStore(url)
    raise StoreUnavailable(
        f"store URL '{url}': the scheme must be sqlite:// or postgresql://, got '{scheme}://'"
    )


__all__ = [
    "STORE_ENV",
    "AuditEntry",
    "KeyRecord",
    "ModelRecord",
    "SqlStore",
    "SqliteStore",
    "Store",
    "default_store_url",
    "open_store",
    "utc_now",
]
