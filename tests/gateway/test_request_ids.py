"""Request ids end to end: every answer carries `x-request-id` and `x-ms-request-id`
(the client's id, or one made by the gateway), and the id is in the gateway's log lines
(JSON with `--log-format json`), the access log, a scoring script's log lines and the
data collector's record."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq

from tests.conftest import Gateway, start_gateway, write_yaml

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
ROW = {"input_data": [[1.0, 2.0, 3.0, 4.0]]}


def test_every_answer_carries_a_request_id(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name, "auth_mode: none\n")
    gateway.deploy(tmp_path, unique_name, "blue", model_dir / "classifier.onnx")
    url = f"{gateway.url}/endpoints/{unique_name}/score"
    made = [httpx.post(url, json=ROW) for _ in range(2)]
    ids = [r.headers["x-request-id"] for r in made]
    assert all(UUID.match(i) for i in ids) and ids[0] != ids[1], ids
    assert [r.headers["x-ms-request-id"] for r in made] == ids
    # The client's id, under either name; one that is no id is replaced.
    assert (
        httpx.post(url, json=ROW, headers={"x-request-id": "abc-1"}).headers["x-request-id"]
        == "abc-1"
    )
    r = httpx.post(url, json=ROW, headers={"x-ms-client-request-id": "az-7"})
    assert r.headers["x-request-id"] == r.headers["x-ms-request-id"] == "az-7"
    r = httpx.post(url, json=ROW, headers={"x-request-id": "x" * 500})
    assert UUID.match(r.headers["x-request-id"])
    # Errors, the v2 protocol, health, metadata and the management API too.
    others = [
        httpx.post(f"{gateway.url}/endpoints/no-such-endpoint/score", json=ROW),
        httpx.post(f"{gateway.url}/v2/models/{unique_name}/infer", content=b"{"),
        httpx.get(f"{gateway.url}/v2/health/ready"),
        httpx.get(f"{gateway.url}/v2/models/{unique_name}"),
        httpx.get(f"{gateway.url}/management/endpoints", headers={"x-request-id": "mgmt-1"}),
    ]
    assert [r.status_code for r in others] == [404, 400, 200, 200, 401]
    assert all(r.headers["x-request-id"] == r.headers["x-ms-request-id"] for r in others)
    assert others[-1].headers["x-request-id"] == "mgmt-1"


def complete_lines(log: Path) -> list[str]:
    """The log's whole lines (a line being written has no newline yet)."""
    text = log.read_text()
    return text.splitlines()[: text.count("\n")]


def test_json_logs_and_the_access_log_name_the_request(tmp_path: Path, model_dir: Path) -> None:
    gw = start_gateway(tmp_path / "home", "--log-format", "json", "--access-log", "full")
    try:
        collected = tmp_path / "collected"
        gw.create_endpoint(tmp_path, "logged", "auth_mode: none\n")
        gw.deploy(
            tmp_path,
            "logged",
            "blue",
            model_dir / "classifier.onnx",
            extra_yaml=f"data_collector: {{destination: {{path: {collected}}},"
            " rolling_rate: Minute, collections: {request: {enabled: true},"
            " response: {enabled: true}}}\n",
        )
        r = httpx.post(
            f"{gw.url}/endpoints/logged/score", json=ROW, headers={"x-request-id": "trace-me"}
        )
        assert r.status_code == 200
        httpx.get(f"{gw.url}/management/endpoints", headers={"x-request-id": "no-token"})
        # The access log is buffered (flushed every 0.5 s): wait for both lines, reading
        # only whole lines (the last one may be under way).
        deadline = time.monotonic() + 30
        while True:
            records = [json.loads(line) for line in complete_lines(gw.log) if line]
            access = [r for r in records if r["logger"] == "servegate.access"]
            if {"trace-me", "no-token"} <= {r["request_id"] for r in access}:
                break
            assert time.monotonic() < deadline, access
            time.sleep(0.2)
        # Every line is one JSON object with the fields a log pipeline indexes.
        assert all({"time", "level", "logger", "request_id", "message"} <= set(r) for r in records)
        scored = next(r for r in access if r["request_id"] == "trace-me")
        assert scored["endpoint"] == "logged" and scored["deployment"] == "blue"
        assert scored["status"] == 200 and scored["latency_ms"] > 0
        assert scored["path"] == "/endpoints/logged/score"
        refused = next(r for r in access if r["request_id"] == "no-token")
        assert refused["status"] == 401 and refused["path"] == "/management/endpoints"
        # The data collector's record carries the same id.
        ids: set[str] = set()
        deadline = time.monotonic() + 20
        while "trace-me" not in ids and time.monotonic() < deadline:
            time.sleep(0.5)
            for part in collected.rglob("*.parquet"):
                ids.update(pq.read_table(part).column("request_id").to_pylist())
        assert "trace-me" in ids, ids
    finally:
        gw.stop()


def test_text_logs_and_script_lines_carry_the_request_id(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(
        "import logging\ndef init():\n    pass\n"
        "def run(raw_data):\n    print('scoring', raw_data)\n"
        "    raise ValueError('cannot score this')\n"
    )
    gw = start_gateway(tmp_path / "home", "--access-log", "full")
    try:
        gw.create_endpoint(tmp_path, "failing", "auth_mode: none\n")
        spec = write_yaml(
            tmp_path / "d.yml",
            "name: blue\nendpoint_name: failing\n"
            "code_configuration: {code: code, scoring_script: score.py}\n",
        )
        gw.cli("deployment", "create", "-f", str(spec), "--all-traffic")
        r = httpx.post(
            f"{gw.url}/endpoints/failing/score", content=b"x", headers={"x-request-id": "bad-1"}
        )
        assert r.status_code == 424
        _, out = gw.cli("deployment", "get-logs", "-e", "failing", "-n", "blue")
        assert "worker 0 (request bad-1): scoring x" in out, out
        # Other lines of the request (its error) come before the buffered access line.
        deadline = time.monotonic() + 30
        while not any("servegate.access [bad-1]" in x for x in complete_lines(gw.log)):
            assert time.monotonic() < deadline, gw.log.read_text()[-2000:]
            time.sleep(0.2)
        line = next(x for x in complete_lines(gw.log) if "servegate.access [bad-1]" in x)
        assert "servegate.access [bad-1]: POST /endpoints/failing/score 424" in line, line
    finally:
        gw.stop()
