"""Limits that keep one client (or many) from taking the gateway down, each against a
real server: connections and headers, large bodies decoded off the event loop, shared
memory in a 64 MiB /dev/shm, metric labels, and the data collector's buffer."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import Gateway, assert_clean_exit, start_gateway, wait_for
from tests.gateway.test_errors import expect
from tests.gateway.test_security import rss_bytes


def _open(gw: Gateway) -> socket.socket:
    host, port = gw.host_port.split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _answer(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection (then closed here too)."""
    data = b""
    with sock:
        while chunk := sock.recv(65536):
            data += chunk
    return data


# -- connections -----------------------------------------------------------------------
def test_idle_and_half_open_connections_are_closed_and_capped(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path / "home", "--header-timeout-s", "1", "--max-connections", "40")
    try:
        idle = [_open(gw) for _ in range(20)]
        half_open = [_open(gw) for _ in range(20)]
        for sock in half_open:
            sock.sendall(b"POST /endpoints/x/score HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        time.sleep(0.3)
        # Past the cap: refused at once with the reason, and closed.
        extra = _open(gw)
        refused = _answer(extra)
        assert refused.startswith(b"HTTP/1.1 503"), refused
        assert b'"code":"too_many_connections"' in refused and b"--max-connections" in refused
        # The idle and half-open ones are closed after the header timeout, with 408.
        for sock in idle + half_open:
            answer = _answer(sock)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert b"request headers not received within 1 s" in answer
        # Legitimate clients get through again.
        assert httpx.get(f"{gw.url}/v2/health/ready").status_code == 200
    finally:
        assert_clean_exit(gw)


def test_oversized_headers_get_431(gateway: Gateway) -> None:
    with _open(gateway) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"exceed 65536 bytes (--max-header-bytes)" in answer
    # A big header that arrives in pieces is counted across them.
    with _open(gateway) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: a\r\nX-Big: ")
        for _ in range(40):
            try:
                sock.sendall(b"a" * 4096)
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.005)
        assert _answer(sock).startswith(b"HTTP/1.1 431")
    # Headers under the limit, and keep-alive, still work.
    with httpx.Client() as client:
        for _ in range(3):
            r = client.get(f"{gateway.url}/v2", headers={"X-Fine": "b" * 30_000})
            assert r.status_code == 200


# -- large bodies ----------------------------------------------------------------------
def _bytes_body(name: str, count: int, datatype: str = "BYTES") -> tuple[bytes, int]:
    """A v2 binary request with `count` empty BYTES elements (4 bytes each)."""
    import orjson

    data = struct.pack("<I", 0) * count
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": [count],
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(data)},
                }
            ]
        }
    )
    return header + data, len(header)


def _latencies_while(gw: Gateway, url: str, auth: dict[str, str], busy: threading.Event) -> list:
    latencies = []
    with httpx.Client(timeout=30) as client:
        while busy.is_set():
            started = time.perf_counter()
            r = client.post(url, json={"input_data": [[1, 2, 3, 4]]}, headers=auth)
            latencies.append((r.status_code, time.perf_counter() - started))
    return latencies


def test_bytes_bodies_never_stall_other_requests(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name)
    gateway.deploy(tmp_path, unique_name, "blue", model_dir / "classifier.onnx")
    gateway.deploy(tmp_path, unique_name, "words", model_dir / "text.onnx", all_traffic=False)
    auth = gateway.auth(unique_name)
    score_url = f"{gateway.url}/endpoints/{unique_name}/score"

    def small_requests_while(work: Callable[[], Any]) -> tuple[list, Any, float]:
        """Small requests from a thread while `work` runs: their (status, seconds), what
        `work` returned, and how long it took."""
        busy = threading.Event()
        busy.set()
        results: list = []
        probe = threading.Thread(
            target=lambda: results.extend(_latencies_while(gateway, score_url, auth, busy))
        )
        probe.start()
        time.sleep(0.2)
        started = time.perf_counter()
        done = work()
        took = time.perf_counter() - started
        busy.clear()
        probe.join()
        return results, done, took

    # This machine's small requests now, with nothing large going on: the baseline that
    # the limits below are judged against (a loaded CI machine slows both alike).
    baseline, _, _ = small_requests_while(lambda: time.sleep(1.0))
    usual = max(seconds for _, seconds in baseline)
    # 8M BYTES elements to an FP32 model: refused from the header, before any decoding.
    body, split = _bytes_body("input", 8_000_000)
    started = time.perf_counter()
    r = httpx.post(
        f"{gateway.url}/v2/models/{unique_name}/versions/blue/infer",
        content=body,
        headers={**auth, "Inference-Header-Content-Length": str(split)},
        timeout=60,
    )
    expect(r, 400, "expected datatype FP32, received BYTES")
    refused_s = time.perf_counter() - started
    # Refused from the header: as quick as sending the body (decoding 8M elements took
    # tens of seconds).
    assert refused_s < max(5.0, 50 * usual), (refused_s, usual)
    # 2M elements to a BYTES model: decoded off the event loop; small requests go on.
    body, split = _bytes_body("text", 2_000_000)
    results, r, large_s = small_requests_while(
        lambda: httpx.post(
            f"{gateway.url}/v2/models/{unique_name}/versions/words/infer",
            content=body,
            headers={**auth, "Inference-Header-Content-Length": str(split)},
            timeout=120,
        )
    )
    assert r.status_code == 200, r.text[:300]
    assert all(status == 200 for status, _ in results)
    worst = max(seconds for _, seconds in results)
    # A small request behind the large one on the event loop would wait for most of it.
    limit = max(0.5 * large_s, 5 * usual)
    assert worst < limit, (
        f"a small request waited {worst:.2f} s while the large body took {large_s:.2f} s "
        f"(small requests took at most {usual:.3f} s before)"
    )


def test_large_tensor_to_a_process_host_in_a_64_mib_shm(
    tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    """Docker's default /dev/shm is 64 MiB: an 80 MiB tensor used to kill the gateway with
    SIGBUS. The gateway runs in its own mount namespace with a 64 MiB tmpfs /dev/shm."""
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True
    )
    if probe.returncode != 0:
        pytest.fail(f"unshare -m is not permitted here: {probe.stderr.decode()}")
    prefix = (
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        'mount -t tmpfs -o size=64m tmpfs /dev/shm && exec "$@"',
        "sh",
    )
    gw = start_gateway(tmp_path / "home", prefix=prefix)
    try:
        gw.create_endpoint(tmp_path, unique_name, "auth_mode: none\n")
        gw.deploy(
            tmp_path, unique_name, "blue", model_dir / "row_sum.onnx", extra_yaml="host: process\n"
        )
        url = f"{gw.url}/v2/models/{unique_name}/infer"
        for rows, width in ((1, 20 * 2**20), (4, 1024)):  # 80 MiB, then a small one
            x = np.random.default_rng(0).random((rows, width), dtype=np.float32)
            header = (
                b'{"inputs":[{"name":"x","shape":[%d,%d],"datatype":"FP32",'
                b'"parameters":{"binary_data_size":%d}}],'
                b'"outputs":[{"name":"total","parameters":{"binary_data":false}}]}'
            ) % (rows, width, x.nbytes)
            r = httpx.post(
                url,
                content=header + x.tobytes(),
                headers={"Inference-Header-Content-Length": str(len(header))},
                timeout=120,
            )
            assert r.status_code == 200, r.text[:300]
            total = np.array(r.json()["outputs"][0]["data"], dtype=np.float32)
            np.testing.assert_allclose(total, x.sum(axis=1), rtol=1e-3)
        assert gw.process.poll() is None
    finally:
        assert_clean_exit(gw)


# -- metrics -----------------------------------------------------------------------------
def test_unknown_endpoints_share_one_metric_label(gateway: Gateway) -> None:
    async def scan() -> None:
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            for start in range(0, 400, 50):
                await asyncio.gather(
                    *(
                        client.post(f"/endpoints/random-{i}/score", json={})
                        for i in range(start, start + 50)
                    )
                )

    asyncio.run(scan())
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert "random-" not in metrics
    assert 'endpoint="(unknown)"' in metrics


# -- the data collector ------------------------------------------------------------------
def test_collector_memory_is_bounded_with_a_stalled_broker(
    tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    # A stalled broker: it accepts connections and never answers, so every send waits
    # out its timeout while payloads keep coming.
    stalled = socket.create_server(("127.0.0.1", 0), backlog=128)
    dead_broker = f"127.0.0.1:{stalled.getsockname()[1]}"
    gw = start_gateway(tmp_path / "home")
    try:
        gw.create_endpoint(tmp_path, unique_name, "auth_mode: none\n")
        gw.deploy(
            tmp_path,
            unique_name,
            "blue",
            model_dir / "classifier.onnx",
            extra_yaml=f"""request_settings: {{max_concurrent_requests_per_instance: 8}}
data_collector:
  collections: {{request: {{enabled: true}}, response: {{enabled: true}}}}
  destination: {{kafka: {{bootstrap_servers: "{dead_broker}", topic: payloads}}}}
""",
        )
        # 1 MiB bodies that are cheap to score (one row, and a long field the model
        # ignores): what stays in memory is what the collector keeps.
        import orjson

        body = orjson.dumps({"input_data": [[5.1, 3.5, 1.4, 0.2]], "note": "x" * 2**20})
        url = f"{gw.url}/endpoints/{unique_name}/score"
        with httpx.Client(timeout=60) as client:
            for _ in range(5):
                assert client.post(url, content=body).status_code == 200
            before = rss_bytes(gw.process.pid)
            for _ in range(300):
                assert client.post(url, content=body).status_code == 200
        growth = rss_bytes(gw.process.pid) - before
        assert growth < 100 * 2**20, f"RSS grew by {growth / 2**20:.0f} MiB"
        dropped = httpx.get(f"{gw.url}/metrics").text
        assert "servegate_collector_dropped_total" in dropped
    finally:
        assert_clean_exit(gw)
        stalled.close()


def test_collected_records_cap_payloads_and_skip_bodies_of_errors(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    import pyarrow.dataset as ds

    out = tmp_path / "payloads"
    gateway.create_endpoint(tmp_path, unique_name, "auth_mode: none\n")
    gateway.deploy(
        tmp_path,
        unique_name,
        "blue",
        model_dir / "classifier.onnx",
        extra_yaml=f"""data_collector:
  collections: {{request: {{enabled: true}}, response: {{enabled: true}}}}
  destination: {{path: "{out}"}}
""",
    )
    url = f"{gateway.url}/endpoints/{unique_name}/score"
    big = {"input_data": [[5.1, 3.5, 1.4, 0.2]] * 20_000}  # ~440 KB, over the 256 KiB cap
    assert httpx.post(url, json=big, timeout=30).status_code == 200
    assert httpx.post(url, content=b'{"input_data": "secret text"}').status_code == 400

    def table():  # type: ignore[no-untyped-def]
        files = list(out.rglob("*.parquet"))
        if not files:
            return None
        t = ds.dataset([str(f) for f in files], format="parquet").to_table()
        return t if t.num_rows >= 2 else None

    rows = {r["status"]: r for r in wait_for(table, 15).to_pylist()}
    ok, bad = rows[200], rows[400]
    assert ok["request_truncated"] is True and ok["request_bytes"] > 256 * 1024
    assert len(ok["request"].encode()) <= 256 * 1024
    assert bad["request"] is None and bad["response"] is None and bad["request_bytes"] > 0
