"""Shared fixtures: tiny models, a real gateway process on 127.0.0.1, the CLI."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from loadtests.ray_cluster import RAY_ENV, RayCluster, start_ray_cluster
from tests import models

#: The store every gateway of this test run uses: `sqlite` (a file in its home) or
#: `postgresql` (a fresh database per gateway home on the server at SERVEGATE_TEST_POSTGRES,
#: all dropped at the end of the run). CI runs the suite once with each.
STORE_BACKEND = os.environ.get("SERVEGATE_TEST_STORE", "sqlite")
POSTGRES_URL = os.environ.get(
    "SERVEGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
_RUN_ID = f"sgtest_{os.getpid()}_{secrets.token_hex(3)}"
_databases: dict[Path, str] = {}
_created: list[str] = []


def new_postgres_database() -> str:
    """A fresh, empty database for this test run; its URL."""
    import psycopg

    name = f"{_RUN_ID}_{len(_created)}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    _created.append(name)
    return POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"


def store_url_for(home: Path, backend: str | None = None) -> str:
    """The store of the gateway whose home is `home` (the same one when it restarts)."""
    if (backend or STORE_BACKEND) == "sqlite":
        return f"sqlite:///{home / 'store.db'}"
    if home not in _databases:
        _databases[home] = new_postgres_database()
    return _databases[home]


@pytest.fixture(scope="session", autouse=True)
def _drop_test_databases() -> Iterator[None]:
    yield
    if not _created:
        return
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        for name in _created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def store_contents(gw: Gateway) -> bytes:
    """Everything the gateway's store holds, as bytes (what a copy of it would reveal)."""
    if gw.store.startswith("sqlite:"):
        db = gw.home / "store.db"
        return b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists())
    import psycopg

    with psycopg.connect(gw.store) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
        rows = [conn.execute(f'SELECT * FROM "{t}"').fetchall() for (t,) in tables]
    return repr(rows).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Gateway:
    """A `servegate serve` process and how to reach it."""

    process: subprocess.Popen[bytes]
    url: str
    host_port: str
    home: Path
    log: Path
    #: The store URL it was started with (SERVEGATE_STORE)
    store: str = ""

    @property
    def store_args(self) -> tuple[str, str]:
        """`--store URL` for other processes that open this gateway's control plane."""
        return ("--store", self.store)

    @property
    def admin_token(self) -> str:
        return (self.home / "admin_token").read_text().strip()

    def cli(self, *args: str, ok: bool = True, input: str | None = None) -> tuple[int, str]:
        """Run `servegate` in-process (click's runner) against this gateway."""
        from servegate.cli import main

        result = CliRunner().invoke(
            main,
            ["--url", self.url, "--home", str(self.home), *args],
            input=input,
            catch_exceptions=False,
        )
        output = result.output + (result.stderr if result.stderr_bytes else "")
        if ok:
            assert result.exit_code == 0, output
        return result.exit_code, output

    def create_endpoint(self, tmp_path: Path, name: str, extra_yaml: str = "") -> None:
        self.cli(
            "endpoint",
            "create",
            "-f",
            str(write_yaml(tmp_path / f"{name}.endpoint.yml", f"name: {name}\n{extra_yaml}")),
        )

    def deploy(
        self,
        tmp_path: Path,
        endpoint: str,
        name: str,
        model: Path,
        all_traffic: bool = True,
        extra_yaml: str = "",
        update: bool = False,
    ) -> None:
        """Deploy a copy of `model` as `name` through the CLI (`model: {path: ...}`);
        `update`: change an existing deployment (`deployment update`)."""
        local = tmp_path / f"{endpoint}-{name}{model.suffix}"
        local.write_bytes(model.read_bytes())
        spec = write_yaml(
            tmp_path / f"{endpoint}-{name}.yml",
            f"""
name: {name}
endpoint_name: {endpoint}
model: {{path: {local.name}}}
{extra_yaml}""",
        )
        if update:
            self.cli("deployment", "update", "-f", str(spec))
        else:
            self.cli(
                "deployment", "create", "-f", str(spec), *(["--all-traffic"] if all_traffic else [])
            )

    def deploy_fake(
        self,
        tmp_path: Path,
        endpoint: str,
        delay_s: float,
        request_settings: str,
        extra_yaml: str = "",
    ) -> None:
        """An endpoint without auth whose deployment `slow` takes `delay_s` per call."""
        self.create_endpoint(tmp_path, endpoint, "auth_mode: none\n")
        fake = tmp_path / "fake.bin"
        fake.write_bytes(b"fake runtime: no weights")
        self.deploy(
            tmp_path,
            endpoint,
            "slow",
            fake,
            extra_yaml=(
                f"runtime: fake\nruntime_options: {{delay_s: {delay_s}}}\n"
                f"request_settings: {{{request_settings}}}\n{extra_yaml}"
            ),
        )

    def auth(self, endpoint: str, key: str = "primaryKey") -> dict[str, str]:
        """The Authorization header with the endpoint's key (from get-credentials)."""
        _, out = self.cli("endpoint", "get-credentials", "--name", endpoint)
        return {"Authorization": f"Bearer {json.loads(out)[key]}"}

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_gateway(
    home: Path,
    *extra: str,
    prefix: tuple[str, ...] = (),
    store: str | None = None,
    env_extra: dict[str, str] | None = None,
    verify: Any = None,
) -> Gateway:
    """A `servegate serve` on a free port; `prefix` wraps the command (e.g. taskset).
    `store`: the store URL (default: this run's backend, one store per home). `verify`:
    an SSL context that trusts the gateway's certificate (it serves https)."""
    port = free_port()
    log = home.parent / f"gateway-{port}.log"
    store = store or store_url_for(home)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SERVEGATE_STORE": store, **(env_extra or {})}
    env.pop("SERVEGATE_TOKEN", None)
    env.pop("SERVEGATE_CPUS", None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                "-m",
                "servegate",
                "--home",
                str(home),
                "serve",
                "--port",
                str(port),
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"{'https' if verify is not None else 'http'}://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited early:\n{log.read_text()}")
        try:
            ready = httpx.get(f"{url}/v2/health/ready", timeout=1, verify=verify or True)
            if ready.status_code == 200:
                return Gateway(process, url, f"127.0.0.1:{port}", home, log, store)
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"gateway did not become ready:\n{log.read_text()}")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model files built once per test run."""
    root = tmp_path_factory.mktemp("models")
    models.classifier(root / "classifier.onnx", seed=0)
    models.classifier(root / "classifier-v2.onnx", seed=1)
    models.two_inputs(root / "two_inputs.onnx")
    models.text_model(root / "text.onnx")
    models.row_sum(root / "row_sum.onnx")
    (root / "fake.bin").write_bytes(b"fake runtime: no weights")
    return root


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One real gateway for the session; tests create endpoints with their own names."""
    home = tmp_path_factory.mktemp("gw") / "home"
    gw = start_gateway(home)
    yield gw
    assert_clean_exit(gw)


def assert_clean_exit(gw: Gateway) -> None:
    """uvicorn re-raises SIGTERM after a graceful shutdown, so -15 is a clean exit too."""
    code = gw.stop()
    log = gw.log.read_text()
    assert code in (0, -signal.SIGTERM), log
    assert "Application shutdown complete" in log, log


_counter = iter(range(1, 1_000_000))


@pytest.fixture
def unique_name() -> str:
    """An endpoint name no other test uses (Azure rule: 3-32 chars, starts with a letter)."""
    return f"ep{os.getpid() % 10000}-{next(_counter)}"


def delete_endpoints(gw: Gateway, prefix: str) -> None:
    """Delete the online and batch endpoints whose names start with `prefix`: a test whose
    deployments run worker processes (or probe them) leaves the session's gateway as it
    found it."""
    for kind in (("endpoint",), ("batch", "endpoint")):
        for endpoint in json.loads(gw.cli(*kind, "list")[1]):
            if endpoint["name"].startswith(prefix):
                gw.cli(*kind, "delete", "--name", endpoint["name"], "--yes", ok=False)


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


class Load:
    """Continuous concurrent scoring requests from threads until stopped; records
    every status and the deployment that answered."""

    def __init__(
        self, url: str | list[str], body: dict, headers: dict[str, str], threads: int = 4
    ) -> None:
        import threading

        #: Several URLs (the same endpoint on several gateway replicas): each thread
        #: goes round them in turn.
        self.urls = [url] if isinstance(url, str) else list(url)
        self.body, self.headers = body, headers
        self.results: list[tuple[int, str]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def _loop(self) -> None:
        turn = 0
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                url = self.urls[turn % len(self.urls)]
                turn += 1
                try:
                    r = client.post(url, json=self.body, headers=self.headers)
                except httpx.TransportError as exc:
                    self.errors.append(repr(exc))
                    time.sleep(0.05)
                    continue
                self.results.append((r.status_code, r.headers.get("azureml-model-deployment", "")))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def failed(self) -> list[tuple[int, str]]:
        return [r for r in self.results if r[0] != 200]


def wait_for(condition, timeout_s: float = 30.0, every_s: float = 0.1):  # type: ignore[no-untyped-def]
    """Poll `condition()` until it returns something truthy; return it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"condition not met within {timeout_s}s")


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A real S3-compatible server (moto's standalone server) on loopback."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:

        def up() -> bool:
            try:
                return httpx.get(env["AWS_ENDPOINT_URL"], timeout=1).status_code < 500
            except httpx.TransportError:
                return False

        wait_for(up, 30)
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.terminate()
        server.wait(10)


def s3_bucket(s3: dict[str, str], bucket: str) -> Any:
    """A pyarrow filesystem on the `s3` fixture's server, with `bucket` created."""
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(
        endpoint_override=s3["AWS_ENDPOINT_URL"].removeprefix("http://"),
        scheme="http",
        region="us-east-1",
        allow_bucket_creation=True,
    )
    fs.create_dir(bucket)
    return fs


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """One Ray cluster for the test run (started by the first test that needs it)."""
    cluster = start_ray_cluster(cpus=2)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def ray_gateway(
    tmp_path_factory: pytest.TempPathFactory, ray_cluster: RayCluster
) -> Iterator[Gateway]:
    """A gateway whose `host: ray` deployments and `executor: ray` jobs use `ray_cluster`."""
    home = tmp_path_factory.mktemp("raygw") / "home"
    env = {
        **RAY_ENV,
        "SERVEGATE_RAY_ADDRESS": ray_cluster.address,
        # A deployment that cannot start fails in seconds, not after the default 120.
        "SERVEGATE_RAY_START_TIMEOUT_S": "20",
    }
    gw = start_gateway(home, env_extra=env)
    yield gw
    assert_clean_exit(gw)


def metric_samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of series `name` on `url`/metrics: (labels, value) each."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics").text
    return [
        (dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]
