"""A model monitor end to end: a deployment's data collector logs requests and answers
to Parquet, a monitor compares each window with a baseline file. Requests from the
baseline's distribution: no breach. Requests with one feature shifted: a breach on that
feature, an audit entry, a webhook event and the drift in /metrics. An empty window is
reported as such. The same from a collector that sends to a Kafka topic."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.batch.conftest import start_broker
from tests.batch.test_streaming import consume_all, create_topics
from tests.conftest import Gateway, delete_endpoints, free_port, metric_samples, write_yaml
from tests.gateway.test_server import in_process

FEATURES = ["f0", "f1", "f2", "f3"]


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    events: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            events.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/events", events
    server.shutdown()
    server.server_close()


def rows(count: int, seed: int, shift_f2: float = 0.0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(count, 4)).astype(np.float32)
    x[:, 2] += shift_f2
    return x


def logged_rows(folder: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in folder.rglob("*.parquet"))


def score_all(gw: Gateway, endpoint: str, x: np.ndarray, logged: Callable[[], int]) -> None:
    """Score `x` in requests of 10 rows; wait until the collector logged a record each."""
    before = logged()
    for chunk in np.split(x, len(x) // 10):
        r = httpx.post(f"{gw.url}/endpoints/{endpoint}/score", json={"input_data": chunk.tolist()})
        assert r.status_code == 200, r.text
    deadline = time.monotonic() + 20
    while logged() < before + len(x) // 10:
        assert time.monotonic() < deadline, "the collector did not log the requests"
        time.sleep(0.3)


def deploy_collecting(
    gw: Gateway, tmp_path: Path, model_dir: Path, endpoint: str, destination: str
) -> None:
    """An endpoint with a deployment `blue` that logs requests and answers to `destination`."""
    gw.create_endpoint(tmp_path, endpoint, "auth_mode: none\n")
    gw.deploy(
        tmp_path,
        endpoint,
        "blue",
        model_dir / "classifier.onnx",
        extra_yaml=f"data_collector: {{destination: {destination}, rolling_rate: Minute,"
        " collections: {request: {enabled: true}, response: {enabled: true}}}\n",
    )


def write_baseline(model_dir: Path, path: Path) -> None:
    """5,000 rows of the features' distribution, with the model's labels for them."""
    baseline = rows(5000, seed=0)
    labels = in_process(model_dir / "classifier.onnx", {"input": baseline})["label"]
    pq.write_table(
        pa.table({**{f: baseline[:, i] for i, f in enumerate(FEATURES)}, "label": labels}), path
    )


def test_a_monitor_finds_the_shifted_feature(
    gateway: Gateway,
    tmp_path: Path,
    model_dir: Path,
    unique_name: str,
    webhook: tuple[str, list[dict[str, Any]]],
) -> None:
    url, events = webhook
    collected = tmp_path / "collected"
    deploy_collecting(gateway, tmp_path, model_dir, unique_name, f"{{path: '{collected}'}}")
    write_baseline(model_dir, tmp_path / "baseline.parquet")
    monitor = write_yaml(
        tmp_path / "monitor.yml",
        f"""
name: {unique_name}-drift
endpoint_name: {unique_name}
deployment_name: blue
baseline: {{path: baseline.parquet}}
features: [f0, f1, f2, f3]
predictions: [label]
every_minutes: 60
alert: {{webhook: '{url}'}}
""",
    )

    def logged() -> int:
        return logged_rows(collected) if collected.exists() else 0

    try:
        gateway.cli("monitor", "create", "-f", str(monitor))
        name = f"{unique_name}-drift"

        # Requests like the baseline: judged, no breach, no event.
        score_all(gateway, unique_name, rows(500, seed=1), logged)
        _, out = gateway.cli("monitor", "run", "-n", name)
        run = json.loads(out)
        assert run["state"] == "ok", run
        assert run["result"]["rows"] == 500
        assert {f["feature"] for f in run["result"]["features"]} == set(FEATURES)
        assert [p["feature"] for p in run["result"]["predictions"]] == ["label"]
        assert events == []

        # f2 shifted by two standard deviations: a breach on f2 (and the predictions it
        # moves), none on the other features.
        score_all(gateway, unique_name, rows(500, seed=2, shift_f2=2.0), logged)
        _, out = gateway.cli("monitor", "run", "-n", name)
        run = json.loads(out)
        assert run["state"] == "breach", run
        breached = set(run["result"]["breached"])
        assert "f2" in breached and not breached & {"f0", "f1", "f3"}, breached
        f2 = next(f for f in run["result"]["features"] if f["feature"] == "f2")
        assert f2["psi"] > 0.2 and "psi" in f2["breaches"]
        deadline = time.monotonic() + 10
        while not events and time.monotonic() < deadline:
            time.sleep(0.1)
        (event,) = events
        assert event["type"] == "servegate.monitor.breach" and event["monitor"] == name
        assert "f2" in {b["feature"] for b in event["breached"]}
        _, out = gateway.cli("audit", "list", "--target", f"monitors/{name}")
        actions = [e["action"] for e in json.loads(out)]
        assert actions[0] == "monitor.breach" and actions[-1] == "monitor.create"
        drift = {
            labels["feature"]: value
            for labels, value in metric_samples(gateway.url, "servegate_monitor_drift")
            if labels["monitor"] == name and labels["measure"] == "psi"
        }
        assert drift["f2"] == pytest.approx(f2["psi"]) and drift["f0"] < 0.2

        # Nothing logged since: the window is reported empty, not judged.
        _, out = gateway.cli("monitor", "run", "-n", name)
        assert json.loads(out)["state"] == "no_data"
        _, out = gateway.cli("monitor", "runs", "-n", name)
        runs = json.loads(out)
        assert [r["state"] for r in runs] == ["no_data", "breach", "ok"]
        # Each run's window, as every time in an answer: ISO-8601.
        from datetime import datetime

        assert runs[0]["window_start"] == runs[1]["window_end"]
        assert datetime.fromisoformat(runs[0]["window_start"]) < datetime.fromisoformat(
            runs[0]["window_end"]
        )
        assert runs[1]["result"]["window"]["end"] == runs[1]["window_end"]
        _, out = gateway.cli("monitor", "show", "-n", name)
        assert json.loads(out)["last_run"]["state"] == "no_data"
    finally:
        gateway.cli("monitor", "delete", "-n", f"{unique_name}-drift", ok=False)
        delete_endpoints(gateway, unique_name)


def test_a_monitor_of_a_deployment_that_collects_nothing_is_refused(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name)
    gateway.deploy(tmp_path, unique_name, "blue", model_dir / "classifier.onnx")
    pq.write_table(pa.table({"f0": [1.0]}), tmp_path / "b.parquet")
    monitor = write_yaml(
        tmp_path / "m.yml",
        f"name: {unique_name}-m\nendpoint_name: {unique_name}\ndeployment_name: blue\n"
        "baseline: {path: b.parquet}\n",
    )
    code, out = gateway.cli("monitor", "create", "-f", str(monitor), ok=False)
    assert code != 0 and "does not collect 'request'" in out
    code, out = gateway.cli("monitor", "show", "-n", f"{unique_name}-m", ok=False)
    assert code != 0 and "does not exist" in out
    delete_endpoints(gateway, unique_name)


def test_a_monitor_reads_a_collector_kafka_topic(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    """Two partitions; one monitor against a baseline file (the topic read from the
    window's start), one against the first 200 rows logged (read from the beginning)."""
    address = f"127.0.0.1:{free_port()}"
    broker = start_broker(address, tmp_path / "tansu.log")
    try:
        create_topics(address, ("collected", 2))
        deploy_collecting(
            gateway,
            tmp_path,
            model_dir,
            unique_name,
            f"{{kafka: {{bootstrap_servers: '{address}', topic: collected}}}}",
        )
        write_baseline(model_dir, tmp_path / "baseline.parquet")
        for name, baseline in (
            ("file", "{path: baseline.parquet}"),
            ("first", "{first_rows: 200}"),
        ):
            monitor = write_yaml(
                tmp_path / f"{name}.yml",
                f"name: {unique_name}-{name}\nendpoint_name: {unique_name}\n"
                f"deployment_name: blue\nbaseline: {baseline}\nfeatures: [f0, f1, f2, f3]\n"
                "predictions: [label]\nmin_rows: 100\n",
            )
            gateway.cli("monitor", "create", "-f", str(monitor))

        def logged() -> int:
            return len(consume_all(address, "collected", 2))

        score_all(gateway, unique_name, rows(500, seed=1), logged)
        run = json.loads(gateway.cli("monitor", "run", "-n", f"{unique_name}-file")[1])
        assert run["state"] == "ok" and run["result"]["rows"] == 500, run
        run = json.loads(gateway.cli("monitor", "run", "-n", f"{unique_name}-first")[1])
        assert run["state"] == "ok" and run["result"]["rows"] == 500, run

        score_all(gateway, unique_name, rows(500, seed=2, shift_f2=2.0), logged)
        for name in ("file", "first"):
            run = json.loads(gateway.cli("monitor", "run", "-n", f"{unique_name}-{name}")[1])
            assert run["state"] == "breach", run
            # Only the new window's rows, though the topic holds both.
            assert run["result"]["rows"] == 500
            breached = set(run["result"]["breached"])
            assert "f2" in breached and not breached & {"f0", "f1", "f3"}, (name, breached)

        # The broker gone: the run fails and says why (nothing lost, no 5xx).
        broker.terminate()
        broker.wait(10)
        _, out = gateway.cli("monitor", "run", "-n", f"{unique_name}-file")
        run = json.loads(out)
        assert (
            run["state"] == "failed" and "cannot read topic 'collected'" in run["result"]["error"]
        )
    finally:
        broker.terminate()
        broker.wait(10)
        for name in ("file", "first"):
            gateway.cli("monitor", "delete", "-n", f"{unique_name}-{name}", ok=False)
        delete_endpoints(gateway, unique_name)
