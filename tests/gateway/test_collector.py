"""The data collector: payloads to Kafka or Parquet files; a stopped broker changes
neither status nor latency of scoring, and the drops are counted."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq

from tests.batch.conftest import start_broker
from tests.batch.test_streaming import consume_all, create_topics
from tests.conftest import Gateway, free_port, wait_for
from tests.gateway.test_engine import metric

BODY = {"input_data": [[5.1, 3.5, 1.4, 0.2]]}


def timed_requests(url: str, auth: dict[str, str], n: int) -> tuple[list[int], list[float]]:
    statuses, latencies = [], []
    with httpx.Client(timeout=30) as client:
        for _ in range(n):
            t0 = time.perf_counter()
            statuses.append(client.post(url, json=BODY, headers=auth).status_code)
            latencies.append(time.perf_counter() - t0)
    return statuses, sorted(latencies)


def test_payloads_to_kafka_and_a_stopped_broker(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    address = f"127.0.0.1:{free_port()}"
    broker = start_broker(address, tmp_path / "tansu.log")
    try:
        create_topics(address, ("payloads", 1))
        gateway.create_endpoint(tmp_path, unique_name)
        gateway.deploy(
            tmp_path,
            unique_name,
            "blue",
            model_dir / "classifier.onnx",
            extra_yaml=f"""
data_collector:
  sampling_rate: 1.0
  collections: {{request: {{enabled: true}}, response: {{enabled: true}}}}
  destination: {{kafka: {{bootstrap_servers: "{address}", topic: payloads}}}}
""",
        )
        auth = gateway.auth(unique_name)
        url = f"{gateway.url}/endpoints/{unique_name}/score"
        statuses, baseline = timed_requests(url, auth, 50)
        assert set(statuses) == {200}
        records = wait_for(
            lambda: r if len(r := consume_all(address, "payloads")) >= 50 else None, 30
        )
        payload = json.loads(records[0].value)
        assert payload["endpoint"] == unique_name and payload["deployment"] == "blue"
        assert json.loads(payload["request"]) == BODY
        assert set(json.loads(payload["response"])) == {"probabilities", "label"}
        assert payload["status"] == 200 and payload["latency_ms"] > 0
    finally:
        broker.terminate()
        broker.wait(10)
    # The broker is gone: scoring answers as before, and the payloads are counted as dropped.
    statuses, latencies = timed_requests(url, auth, 200)
    assert set(statuses) == {200}
    assert latencies[int(0.99 * len(latencies))] < max(
        baseline[int(0.99 * len(baseline))] * 3, 0.05
    )
    dropped = wait_for(
        lambda: (
            sum(metric(gateway, "servegate_collector_dropped_total", unique_name).values()) or None
        ),
        30,
    )
    assert dropped > 0
    logged = sum(metric(gateway, "servegate_collector_records_total", unique_name).values())
    assert logged >= 50
    # The broker comes back (empty: memory storage): logging resumes by itself.
    broker = start_broker(address, tmp_path / "tansu-2.log")
    try:
        create_topics(address, ("payloads", 1))

        def resumed() -> bool:
            timed_requests(url, auth, 5)
            return len(consume_all(address, "payloads")) > 0

        wait_for(resumed, 60, every_s=1.0)
    finally:
        broker.terminate()
        broker.wait(10)


def test_payloads_to_parquet_files_with_sampling(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name)
    out = tmp_path / "collected"
    gateway.deploy(
        tmp_path,
        unique_name,
        "blue",
        model_dir / "classifier.onnx",
        extra_yaml=f"""
data_collector:
  sampling_rate: 0.5
  rolling_rate: Minute
  collections: {{request: {{enabled: true}}}}
  destination: {{path: "{out}"}}
""",
    )
    statuses, _ = timed_requests(
        f"{gateway.url}/endpoints/{unique_name}/score", gateway.auth(unique_name), 400
    )
    assert set(statuses) == {200}

    def rows() -> int:
        files = list(out.rglob("*.parquet"))
        return sum(pq.read_metadata(f).num_rows for f in files)

    wait_for(
        lambda: (
            rows() >= 150
            and rows()
            == sum(metric(gateway, "servegate_collector_records_total", unique_name).values())
        ),
        30,
    )
    assert 150 <= rows() <= 250  # binomial(400, 0.5): 200 +- 5 sd
    table = pq.read_table(next(out.rglob("*.parquet")))
    assert table["response"].null_count == table.num_rows  # response collection not enabled
    assert json.loads(table["request"][0].as_py()) == BODY
    # Rolled by minute: <path>/<endpoint>/<deployment>/YYYY/MM/DD/HH/MM/<file>.parquet
    relative = next(out.rglob("*.parquet")).relative_to(out).parts
    assert relative[:2] == (unique_name, "blue") and len(relative) == 8
