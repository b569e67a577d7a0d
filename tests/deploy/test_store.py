"""The SQLite store: migrations, records, atomic changes with their audit entries."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from deploy.store import AuditEntry, KeyRecord, ModelRecord, SqliteStore
from deploy.store.sqlite import MIGRATIONS


def _model(version: int) -> ModelRecord:
    return ModelRecord(
        name="fraud",
        version=version,
        runtime="onnx",
        sha256="ab" * 32,
        artifact=f"artifacts/sha256/{version}.onnx",
        filename="m.onnx",
        size_bytes=10,
        signature={"inputs": [], "outputs": []},
    )


def test_migrations_apply_once_and_record_their_version(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    assert store.schema_version == len(MIGRATIONS)
    store.put_endpoint(
        "ep1", {"name": "ep1"}, AuditEntry("me", "endpoint.create", "endpoints/ep1", None, {})
    )
    store.close()
    reopened = SqliteStore(tmp_path / "s.db")  # re-running migrations must not fail or wipe
    assert reopened.get_endpoint("ep1") == {"name": "ep1"}
    rows = (
        sqlite3.connect(tmp_path / "s.db")
        .execute("SELECT version FROM schema_migrations")
        .fetchall()
    )
    assert rows == [(v,) for v in range(1, len(MIGRATIONS) + 1)]


def test_models_versions(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    for version in (1, 2, 5):
        store.add_model(
            _model(version), AuditEntry("me", "model.register", "models/fraud", None, {})
        )
    assert store.latest_model_version("fraud") == 5
    assert store.get_model("fraud").version == 5  # type: ignore[union-attr]
    assert store.get_model("fraud", 2).version == 2  # type: ignore[union-attr]
    assert store.get_model("fraud", 3) is None
    assert [m.version for m in store.list_models()] == [1, 2, 5]
    with pytest.raises(sqlite3.IntegrityError):
        store.add_model(_model(2), AuditEntry("me", "model.register", "models/fraud", None, {}))


def test_a_failed_transaction_leaves_nothing_behind(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    audit = AuditEntry("me", "endpoint.create", "endpoints/ep1", None, {"name": "ep1"})
    with pytest.raises(RuntimeError), store.transaction():
        store.put_endpoint("ep1", {"name": "ep1"}, audit)
        raise RuntimeError("crash mid-change")
    assert store.get_endpoint("ep1") is None
    assert store.list_audit() == []
    assert store.last_change_id() == 0


def test_deleting_an_endpoint_removes_its_deployments_and_keys(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    audit = AuditEntry("me", "x", "endpoints/ep1", None, None)
    store.put_endpoint("ep1", {"name": "ep1"}, audit)
    store.put_deployment("ep1", "blue", {"name": "blue"}, audit)
    store.put_key(KeyRecord("ep1", "primary", "h", "n", "t"), None)
    store.delete_endpoint("ep1", audit)
    assert store.list_deployments() == [] and store.get_keys("ep1") == {}


def test_audit_filter_and_change_id(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store.put_endpoint("ep1", {}, AuditEntry("alice", "endpoint.create", "endpoints/ep1", None, {}))
    store.put_endpoint("ep10", {}, AuditEntry("bob", "endpoint.create", "endpoints/ep10", None, {}))
    store.put_deployment(
        "ep1",
        "blue",
        {},
        AuditEntry("carol", "deployment.create", "endpoints/ep1/deployments/blue", None, {}),
    )
    assert [e.actor for e in store.list_audit("endpoints/ep1")] == ["carol", "alice"]
    assert store.last_change_id() == 3
