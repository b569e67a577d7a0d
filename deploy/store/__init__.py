"""The store: models, endpoints, deployments, endpoint keys and the audit log.

`Store` is the interface; `SqliteStore` the default implementation (a
PostgreSQL one for several gateway replicas satisfies the same interface).
"""

from deploy.store.base import AuditEntry, KeyRecord, ModelRecord, Store, utc_now
from deploy.store.sqlite import SqliteStore

__all__ = ["AuditEntry", "KeyRecord", "ModelRecord", "SqliteStore", "Store", "utc_now"]
