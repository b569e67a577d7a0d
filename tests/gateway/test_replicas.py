"""Several gateway processes on one PostgreSQL store (the server on this machine, a fresh
database per test), with a client spreading load over all of them: changes made through
one replica reach the others within a second, a rollout survives the SIGKILL of the
replica driving it, and rollout gates judge the whole cluster's traffic."""

from __future__ import annotations

import json
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    Gateway,
    Load,
    new_postgres_database,
    s3_bucket,
    start_gateway,
    wait_for,
    write_yaml,
)

BODY = {"input_data": [[5.1, 3.5, 1.4, 0.2]]}
FAST = "batching: {max_batch_size: 32}\n"
#: The store, artifacts and secret every replica shares, as an operator would set them.
SECRET = secrets.token_urlsafe(32)


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = new_postgres_database()
        self.artifacts = root / "shared-artifacts"
        self.replicas: list[Gateway] = []

    def start(self, count: int, **env: str) -> list[Gateway]:
        started = []
        for _ in range(count):
            home = self.root / f"replica{len(self.replicas) + 1}" / "home"
            home.mkdir(parents=True)
            if self.replicas:  # the operator hands the owner token to every replica's host
                token = home / "admin_token"
                token.write_text(self.replicas[0].admin_token)
                token.chmod(0o600)
            gw = start_gateway(
                home,
                store=self.store,
                env_extra={
                    "SERVEGATE_SECRET_KEY": SECRET,
                    "SERVEGATE_ARTIFACTS": str(self.artifacts),
                    **env,
                },
            )
            self.replicas.append(gw)
            started.append(gw)
        return started

    def stop(self) -> None:
        for gw in self.replicas:
            gw.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.stop()


def _answered_by(gw: Gateway, endpoint: str, auth: dict[str, str], **headers: str) -> str:
    r = httpx.post(
        f"{gw.url}/endpoints/{endpoint}/score", json=BODY, headers={**auth, **headers}, timeout=10
    )
    return f"{r.status_code}:{r.headers.get('azureml-model-deployment', '')}"


def _slowest_round_trip(gw: Gateway, endpoint: str, auth: dict[str, str]) -> float:
    """The slowest of five scoring round trips now (seconds)."""
    slowest = 0.0
    for _ in range(5):
        started = time.monotonic()
        _answered_by(gw, endpoint, auth)
        slowest = max(slowest, time.monotonic() - started)
    return slowest


def _seen_within(check, limit_s: float) -> float:  # type: ignore[no-untyped-def]
    """Seconds until `check()` holds (polled every 20 ms); fails past `limit_s`."""
    started = time.monotonic()
    wait_for(check, limit_s, every_s=0.02)
    return time.monotonic() - started


def test_changes_through_one_replica_reach_every_replica_within_a_second(
    cluster: Cluster, tmp_path: Path, model_dir: Path
) -> None:
    (r1,) = cluster.start(1)
    name = "spread"
    _rollout_endpoint(r1, tmp_path, model_dir, name, "model")
    r2, r3 = cluster.start(2)
    keys = json.loads(r1.cli("endpoint", "get-credentials", "--name", name)[1])
    # Every replica accepts the same keys: one secret, one store.
    for gw in (r1, r2, r3):
        assert json.loads(gw.cli("endpoint", "get-credentials", "--name", name)[1]) == keys
    secondary = {"Authorization": f"Bearer {keys['secondaryKey']}"}
    primary = {"Authorization": f"Bearer {keys['primaryKey']}"}
    urls = [f"{gw.url}/endpoints/{name}/score" for gw in (r1, r2, r3)]
    with Load(urls, BODY, secondary, threads=3) as load:
        time.sleep(0.5)
        # A second, unless this machine is so loaded that requests themselves take long:
        # then a few of their round trips (measured now, under the same load).
        within_s = max(1.0, 5 * _slowest_round_trip(r2, name, primary))
        # A traffic change through replica 1 ...
        r1.cli("endpoint", "update", "--name", name, "--traffic", "blue=0,green=100")
        for gw in (r2, r3):  # ... is what replicas 2 and 3 route by within 1 s.
            _seen_within(lambda gw=gw: _answered_by(gw, name, primary) == "200:green", within_s)
        # A key regenerated through replica 1 is refused by replicas 2 and 3 within 1 s.
        r1.cli("endpoint", "regenerate-keys", "--name", name, "--key-type", "primary")
        for gw in (r2, r3):
            _seen_within(lambda gw=gw: _answered_by(gw, name, primary).startswith("401"), within_s)
        # A deployment created through replica 2 serves on all three (loaded and warmed
        # on each before its snapshot routes to it).
        started = time.monotonic()
        r2.deploy(tmp_path, name, "red", model_dir / "classifier.onnx", all_traffic=False)
        limit_s = spread_limit_s(time.monotonic() - started)
        for gw in (r1, r2, r3):
            wait_for(
                lambda gw=gw: (
                    _answered_by(gw, name, secondary, **{"azureml-model-deployment": "red"})
                    == "200:red"
                ),
                limit_s,
            )
        time.sleep(0.3)
    assert load.errors == [] and load.failed() == [], (load.errors, load.failed()[:5])
    assert len(load.results) > 100

    # `servegate status` lists the three replicas, all on the newest change (as of their
    # last heartbeat, at most a second old).
    def all_current() -> dict | None:
        status = json.loads(r3.cli("status")[1])
        applied = {r["applied_change"] for r in status["replicas"]}
        return status if applied == {status["latest_change"]} else None

    status = wait_for(all_current, 3)
    assert len(status["replicas"]) == 3
    assert "secret" not in json.dumps(status)


#: How long a change may take to reach the other replicas: they load and warm what it
#: brings as its replica did, so the limit is judged against how long that took here (a
#: loaded CI machine slows both alike), and 10 s at least.
SPREAD_RATIO, SPREAD_FLOOR_S = 5.0, 10.0


def spread_limit_s(created_s: float) -> float:
    return max(SPREAD_FLOOR_S, SPREAD_RATIO * created_s)


def _rollout_endpoint(gw: Gateway, tmp_path: Path, model_dir: Path, name: str, green: str) -> float:
    """The endpoint with blue (100%) and green (0%); how long the two took to create."""
    started = time.monotonic()
    gw.create_endpoint(tmp_path, name)
    gw.deploy(tmp_path, name, "blue", model_dir / "classifier.onnx", extra_yaml=FAST)
    if green == "script":
        _script_green(gw, tmp_path, name)
    else:
        gw.deploy(
            tmp_path,
            name,
            "green",
            model_dir / "classifier-v2.onnx",
            all_traffic=False,
            extra_yaml=FAST,
        )
    return time.monotonic() - started


def test_a_rollout_survives_the_sigkill_of_the_replica_driving_it(
    cluster: Cluster, tmp_path: Path, model_dir: Path
) -> None:
    r1, r2, r3 = cluster.start(3)
    name = "takeover"
    limit_s = spread_limit_s(_rollout_endpoint(r1, tmp_path, model_dir, name, "model"))
    auth = r1.auth(name)
    wait_for(lambda: _answered_by(r3, name, auth) == "200:blue", limit_s)
    urls = [f"{gw.url}/endpoints/{name}/score" for gw in (r2, r3)]
    with Load(urls, BODY, auth, threads=3) as load:
        _, out = _start_rollout(r1, name, "10,50,100", "2s", min_requests=10, max_error_rate=0.05)
        rollout_id = json.loads(out)["id"]
        leases = json.loads(r2.cli("status")[1])["leases"]
        assert (f"rollout/{rollout_id}", r1_id(r2, r1)) in {
            (lease["name"], lease["holder"]) for lease in leases
        }  # the replica that started it drives it
        # Replica 1 drives step 1; kill it without a chance to clean up.
        wait_for(lambda: _step_reached(r2, name, "step 1/3"), 10)
        r1.process.send_signal(signal.SIGKILL)
        r1.process.wait()
        record = wait_for(lambda: _finished(r2, name), 60)
    assert record["state"] == "succeeded", record
    assert record["traffic"] == {"blue": 0, "green": 100}
    events = [e["message"] for e in record["events"]]
    assert sum("succeeded" in m for m in events) == 1  # finished exactly once
    takeover = [m for m in events if m.startswith("taken over by replica")]
    assert len(takeover) == 1, events
    # Audit: who drove each step. Step 1 by replica 1, the later ones by the new holder.
    audit = json.loads(r2.cli("audit", "list", "--target", f"endpoints/{name}")[1])
    steps = [e["reason"] for e in reversed(audit) if e["actor"] == f"rollout {rollout_id}"]
    first = next(r for r in steps if "step 1/3" in r)
    last = next(r for r in steps if "step 3/3" in r)
    assert f"[replica {r1_id(r2, r1)}]" in first
    assert f"[replica {r1_id(r2, r1)}]" not in last and "[replica " in last
    assert load.failed() == [], load.failed()[:5]


def r1_id(observer: Gateway, gw: Gateway) -> str:
    """The replica id of `gw` (its pid is part of it)."""
    ids = getattr(r1_id, "cache", {})
    if gw.process.pid not in ids:
        for replica in json.loads(observer.cli("status")[1])["replicas"]:
            ids[replica["pid"]] = replica["id"]
        r1_id.cache = ids  # type: ignore[attr-defined]
    return ids[gw.process.pid]


def _start_rollout(
    gw: Gateway,
    name: str,
    steps: str,
    interval: str,
    min_requests: int,
    max_error_rate: float = 0.01,
) -> tuple[int, str]:
    """`servegate rollout start` from blue to green on `gw`."""
    return gw.cli(
        "rollout",
        "start",
        "-e",
        name,
        "--to",
        "green",
        "--steps",
        steps,
        "--step-interval",
        interval,
        "--min-requests",
        str(min_requests),
        "--max-error-rate",
        str(max_error_rate),
    )


def _rollout(gw: Gateway, name: str) -> dict:
    return json.loads(gw.cli("rollout", "status", "-e", name)[1])


def _step_reached(gw: Gateway, name: str, step: str) -> bool:
    return any(step in e["message"] for e in _rollout(gw, name)["events"])


def _finished(gw: Gateway, name: str) -> dict | None:
    record = _rollout(gw, name)
    return record if record["state"] not in ("mirroring", "stepping") else None


def test_a_rollout_gate_judges_the_traffic_of_every_replica(
    cluster: Cluster, tmp_path: Path, model_dir: Path
) -> None:
    r1, r2 = cluster.start(2)
    (r3,) = cluster.start(1, FAIL_ON_THIS_REPLICA="1")
    name = "gated"
    limit_s = spread_limit_s(_rollout_endpoint(r1, tmp_path, model_dir, name, "script"))
    auth = r1.auth(name)
    for gw in (r2, r3):
        wait_for(lambda gw=gw: _answered_by(gw, name, auth) == "200:blue", limit_s)
    # The candidate fails on replica 3 only; replica 1 drives the rollout and sees only
    # successes of its own.
    urls = [f"{gw.url}/endpoints/{name}/score" for gw in (r1, r2, r3)]
    with Load(urls, BODY, auth, threads=3):
        _start_rollout(r1, name, "50,100", "3s", min_requests=20, max_error_rate=0.05)
        record = wait_for(lambda: _finished(r1, name), 60)
    assert record["state"] == "rolled_back", record
    assert "error rate" in record["reason"]
    assert record["traffic"] == {"blue": 100, "green": 0}
    metrics = httpx.get(f"{r1.url}/metrics").text
    failures_on_r1 = [
        line
        for line in metrics.splitlines()
        if line.startswith("servegate_requests_total")
        and 'deployment="green"' in line
        and 'status="424"' in line
    ]
    assert failures_on_r1 == []  # replica 1 itself saw no failure of green


def test_two_replicas_starting_at_once_on_an_empty_database_migrate_once(
    tmp_path: Path,
) -> None:
    import psycopg

    store = new_postgres_database()
    started: list[Gateway] = []
    errors: list[BaseException] = []

    def start(i: int) -> None:
        home = tmp_path / f"r{i}" / "home"
        home.mkdir(parents=True)
        try:
            started.append(
                start_gateway(home, store=store, env_extra={"SERVEGATE_SECRET_KEY": SECRET})
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(i,)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == [] and len(started) == 2
        for gw in started:
            assert httpx.get(f"{gw.url}/v2/health/ready").status_code == 200
        with psycopg.connect(store) as conn:
            versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations")]
            owners = conn.execute("SELECT count(*) FROM admin_tokens").fetchone()
        assert sorted(versions) == list(range(1, len(versions) + 1)) and len(versions) >= 4
        assert owners == (1,)  # one owner token, created by whichever started first
    finally:
        for gw in started:
            gw.stop()


def test_replicas_share_models_and_scoring_code_through_s3_artifacts(
    s3: dict[str, str], tmp_path: Path, model_dir: Path
) -> None:
    """No shared filesystem: model files and code archives go to an S3 prefix (a real
    S3-compatible server, moto's), and each replica fetches what it loads."""
    import pyarrow.fs as pafs

    fs = s3_bucket(s3, "artifacts")
    store = new_postgres_database()
    env = {"SERVEGATE_SECRET_KEY": SECRET, "SERVEGATE_ARTIFACTS": "s3://artifacts/servegate"}
    homes = [tmp_path / f"r{i}" / "home" for i in (1, 2)]
    homes[0].parent.mkdir()
    r1 = start_gateway(homes[0], store=store, env_extra=env)
    replicas = [r1]
    try:
        name = "from-s3"
        r1.create_endpoint(tmp_path, name)
        r1.deploy(tmp_path, name, "blue", model_dir / "classifier.onnx")
        _script_green(r1, tmp_path, name)
        homes[1].mkdir(parents=True)  # its own home: nothing shared on disk
        (homes[1] / "admin_token").write_text(r1.admin_token)
        r2 = start_gateway(homes[1], store=store, env_extra=env)
        replicas.append(r2)
        auth = r1.auth(name)
        for gw in replicas:
            assert _answered_by(gw, name, auth) == "200:blue"
            r = httpx.post(
                f"{gw.url}/endpoints/{name}/score",
                json=BODY,
                headers={**auth, "azureml-model-deployment": "green"},
            )
            assert r.status_code == 200 and r.json() == {"ok": True}, r.text
        # Replica 2 fetched them from the object store into its own cache.
        assert list((homes[1] / "artifact-cache" / "artifacts" / "sha256").glob("*.onnx"))
        assert list((homes[1] / "artifact-cache" / "code").iterdir())
        stored = fs.get_file_info(pafs.FileSelector("artifacts/servegate", recursive=True))
        names = [f.path for f in stored if f.type == pafs.FileType.File]
        assert any(n.endswith(".onnx") for n in names) and any(
            n.endswith(".tar.gz") for n in names
        ), names
    finally:
        for gw in replicas:
            gw.stop()


def _script_green(gw: Gateway, tmp_path: Path, name: str) -> None:
    """Deployment `green`: a scoring script answering {"ok": true}, except on a replica
    whose environment has FAIL_ON_THIS_REPLICA."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "score.py").write_text(
        "import os\n"
        "def init():\n    pass\n"
        "def run(raw):\n"
        "    if os.environ.get('FAIL_ON_THIS_REPLICA'):\n"
        "        raise ValueError('this replica cannot score')\n"
        "    return {'ok': True}\n"
    )
    spec = write_yaml(
        tmp_path / "green.yml",
        f"name: green\nendpoint_name: {name}\n"
        "code_configuration: {code: src, scoring_script: score.py}\n",
    )
    gw.cli("deployment", "create", "-f", str(spec))


def test_two_gateways_on_one_sqlite_file_see_each_others_changes(
    tmp_path: Path, model_dir: Path
) -> None:
    """SQLite's change feed (no NOTIFY: the file is checked every 0.2 s): two processes on
    one host sharing the store file."""
    store = f"sqlite:///{tmp_path / 'shared-store.db'}"
    env = {"SERVEGATE_SECRET_KEY": SECRET, "SERVEGATE_ARTIFACTS": str(tmp_path / "artifacts")}
    homes = [tmp_path / f"s{i}" / "home" for i in (1, 2)]
    for home in homes:
        home.mkdir(parents=True)
    first = start_gateway(homes[0], store=store, env_extra=env)
    gateways = [first]
    try:
        name = "on-sqlite"
        first.create_endpoint(tmp_path, name)
        first.deploy(tmp_path, name, "blue", model_dir / "classifier.onnx")
        first.deploy(tmp_path, name, "green", model_dir / "classifier-v2.onnx", all_traffic=False)
        (homes[1] / "admin_token").write_text(first.admin_token)
        second = start_gateway(homes[1], store=store, env_extra=env)
        gateways.append(second)
        auth = first.auth(name)
        assert _answered_by(second, name, auth) == "200:blue"
        within_s = max(1.0, 5 * _slowest_round_trip(second, name, auth))
        first.cli("endpoint", "update", "--name", name, "--traffic", "blue=0,green=100")
        _seen_within(lambda: _answered_by(second, name, auth) == "200:green", within_s)
        second.cli("endpoint", "update", "--name", name, "--traffic", "blue=100,green=0")
        _seen_within(lambda: _answered_by(first, name, auth) == "200:blue", within_s)
    finally:
        for gw in gateways:
            gw.stop()


def test_abort_and_batch_cancel_work_from_a_replica_that_does_not_drive_them(
    cluster: Cluster, tmp_path: Path, model_dir: Path
) -> None:
    from tests.batch.test_jobs import start_sleeping_job

    r1, r2 = cluster.start(2)
    name = "elsewhere"
    _rollout_endpoint(r1, tmp_path, model_dir, name, "model")
    _start_rollout(r1, name, "10,100", "60s", min_requests=1)
    wait_for(lambda: _step_reached(r2, name, "step 1/2"), 10)
    # Replica 1 drives it; replica 2 aborts it: rolled back once, and the driver stops.
    record = json.loads(r2.cli("rollout", "abort", "-e", name)[1])
    assert record["state"] == "aborted" and record["events"][-1]["message"].startswith("aborted")
    time.sleep(3)  # the driver's next look at the store
    final = _rollout(r1, name)
    assert final["state"] == "aborted" and final["traffic"] == {"blue": 100, "green": 0}
    assert len(final["events"]) == len(record["events"])  # nothing written after the abort
    # A batch job started through replica 1 is cancelled through replica 2, at once (its
    # runner may not have started yet: it must not run the job anyway).
    jobs_dir = tmp_path / "jobs"
    jobs_dir.mkdir()
    job_id = start_sleeping_job(r1, jobs_dir, model_dir, "sleepy", 4)
    r2.cli("batch", "cancel", job_id)
    job = wait_for(
        lambda: (j := json.loads(r1.cli("batch", "show", job_id)[1]))["state"] == "cancelled" and j,
        30,
    )
    assert job["reason"].startswith("cancelled by")
    wait_for(lambda: not json.loads(r2.cli("batch", "show", job_id)[1])["runner_alive"], 10)
