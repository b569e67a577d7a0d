"""The SQLite store: migrations, records, atomic changes with their audit entries."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from deploy.records import JobRecord, JobState, MiniBatchState, ReplicaIdentity
from deploy.specs import EndpointSpec, OnlineDeploymentSpec
from deploy.store import AuditEntry, KeyRecord, ModelRecord, SqliteStore
from deploy.store.sqlite import MIGRATIONS


def _endpoint(name: str) -> EndpointSpec:
    return EndpointSpec(name=name)


def _deployment(endpoint: str, name: str) -> OnlineDeploymentSpec:
    return OnlineDeploymentSpec.model_validate(
        {"name": name, "endpoint_name": endpoint, "model": "fraud:1"}
    )


def _job(job_id: str, state: JobState) -> JobRecord:
    return JobRecord.model_validate(
        {
            "id": job_id,
            "endpoint": "ep1",
            "deployment": "blue",
            "kind": "online",
            "input": "/data/in.parquet",
            "output": "/data/out",
            "settings": {"mini_batch_size": 10},
            "runtime_name": "onnx",
            "deployment_spec": _deployment("ep1", "blue").to_dict(),
            "state": state,
            "created_at": "2026-11-29T00:00:00.000+00:00",
            "created_by": "me",
        }
    )


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
        _endpoint("ep1"), AuditEntry("me", "endpoint.create", "endpoints/ep1", None, {})
    )
    store.close()
    reopened = SqliteStore(tmp_path / "s.db")  # re-running migrations must not fail or wipe
    assert reopened.get_endpoint("ep1") == _endpoint("ep1")
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
        store.put_endpoint(_endpoint("ep1"), audit)
        raise RuntimeError("crash mid-change")
    assert store.get_endpoint("ep1") is None
    assert store.list_audit() == []
    assert store.last_change_id() == 0


def test_deleting_an_endpoint_removes_its_deployments_and_keys(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    audit = AuditEntry("me", "x", "endpoints/ep1", None, None)
    store.put_endpoint(_endpoint("ep1"), audit)
    store.put_deployment(_deployment("ep1", "blue"), audit)
    store.put_key(KeyRecord("ep1", "primary", "h", "n", "t"), None)
    store.delete_endpoint("ep1", audit)
    assert store.list_deployments() == [] and store.get_keys("ep1") == {}


def test_audit_filter_and_change_id(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store.put_endpoint(
        _endpoint("ep1"), AuditEntry("alice", "endpoint.create", "endpoints/ep1", None, {})
    )
    store.put_endpoint(
        _endpoint("ep10"), AuditEntry("bob", "endpoint.create", "endpoints/ep10", None, {})
    )
    store.put_deployment(
        _deployment("ep1", "blue"),
        AuditEntry("carol", "deployment.create", "endpoints/ep1/deployments/blue", None, {}),
    )
    assert [e.actor for e in store.list_audit("endpoints/ep1")] == ["carol", "alice"]
    assert store.last_change_id() == 3


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The same store interface on both backends (a fresh PostgreSQL database)."""
    from deploy.store import open_store
    from tests.conftest import new_postgres_database

    url = f"sqlite:///{tmp_path / 's.db'}" if request.param == "sqlite" else new_postgres_database()
    store = open_store(url)
    yield store
    store.close()


def test_a_lease_has_one_holder_until_it_expires(any_store) -> None:  # type: ignore[no-untyped-def]
    assert any_store.acquire_lease("rollout/x", "replica-a", 0.4)
    assert any_store.acquire_lease("rollout/x", "replica-a", 0.4)  # renewal
    assert not any_store.acquire_lease("rollout/x", "replica-b", 0.4)
    assert any_store.lease_holder("rollout/x") == "replica-a"
    time.sleep(0.6)  # the holder stopped renewing
    assert any_store.lease_holder("rollout/x") is None
    assert any_store.acquire_lease("rollout/x", "replica-b", 5)
    any_store.release_lease("rollout/x", "replica-a")  # not the holder: nothing happens
    assert [lease.holder for lease in any_store.list_leases()] == ["replica-b"]
    any_store.release_lease("rollout/x", "replica-b")
    assert any_store.list_leases() == []


def test_heartbeats_list_live_replicas_with_their_counters(any_store) -> None:  # type: ignore[no-untyped-def]
    replica = ReplicaIdentity(
        id="r1", host="h", pid=1, url="http://h:1", version="1", started_at="now"
    )
    any_store.heartbeat(replica, 7, {"deployments": {"e/d": {"statuses": {"200": 3}}}})
    (row,) = any_store.list_replicas(5)
    assert row.id == "r1" and row.applied_change == 7
    assert row.stats["deployments"]["e/d"]["statuses"] == {"200": 3}
    assert 0 <= row.heartbeat_age_s < 5
    time.sleep(0.3)
    assert any_store.list_replicas(0.2) == []  # silent for longer than asked: gone
    any_store.acquire_lease("job/j", "r1", 5)
    any_store.remove_replica("r1")  # a clean stop gives its leases back
    assert any_store.list_replicas(5) == [] and any_store.lease_holder("job/j") is None


def test_records_and_audit_on_both_stores(any_store) -> None:  # type: ignore[no-untyped-def]
    audit = AuditEntry("me", "endpoint.create", "endpoints/ep1", None, {})
    any_store.put_endpoint(_endpoint("ep1"), audit)
    any_store.add_model(_model(1), AuditEntry("me", "model.register", "models/fraud/1", None, {}))
    any_store.add_model(_model(2), AuditEntry("me", "model.register", "models/fraud/2", None, {}))
    assert any_store.latest_model_version("fraud") == 2
    for n in range(3):
        any_store.put_job(_job(f"j{n}", JobState.RUNNING))
    any_store.put_job(_job("j1", JobState.COMPLETED))
    assert [j.id for j in any_store.list_jobs("ep1")] == ["j2", "j1", "j0"]
    assert [j.id for j in any_store.list_unfinished_jobs()] == ["j0", "j2"]
    # Records come back as they went in: typed, with their enums and nested specs.
    job = any_store.get_job("j1")
    assert job == _job("j1", JobState.COMPLETED) and job.state is JobState.COMPLETED
    assert isinstance(job.deployment_spec, OnlineDeploymentSpec)
    any_store.add_mini_batches("j1", [10, 7])
    first, second = any_store.list_mini_batches("j1")
    any_store.put_mini_batch("j1", second.changed(state="failed", attempts=3, error="boom"))
    assert any_store.list_mini_batches("j1") == [
        first,
        second.changed(state=MiniBatchState.FAILED, attempts=3, error="boom"),
    ]
    assert first.state is MiniBatchState.PENDING and first.items == 10
    assert any_store.last_change_id() == 3
    assert [e.action for e in any_store.list_audit("endpoints/ep1")] == ["endpoint.create"]
