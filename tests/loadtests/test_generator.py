"""`servegate loadtest` against a real gateway: both modes, the report and the plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Gateway

# Runs once, on the SQLite pass: what it checks does not depend on the store.
pytestmark = pytest.mark.store_independent


def _run(gateway: Gateway, tmp_path: Path, url: str, *mode: str) -> dict:
    payload = tmp_path / "request.json"
    payload.write_text(json.dumps({"input_data": [[1, 2, 3, 4]]}))
    report, plot = tmp_path / f"{mode[0]}.json", tmp_path / f"{mode[0]}.png"
    _, out = gateway.cli(
        "loadtest",
        "--url",
        url,
        *mode,
        "--duration",
        "1s",
        "--payload",
        str(payload),
        "--report",
        str(report),
        "--plot",
        str(plot),
    )
    assert "throughput" in out and "p99.9" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads(report.read_text())


def test_closed_and_open_loop(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name, "auth_mode: none\n")
    gateway.deploy(
        tmp_path,
        unique_name,
        "blue",
        model_dir / "classifier.onnx",
        # This tests the generator, not admission: room for a burst, so that a pause in
        # the gateway the whole test session shares does not turn into 429s.
        extra_yaml="batching: {max_batch_size: 16}\n"
        "request_settings: {max_concurrent_requests_per_instance: 100, max_queue_wait_ms: 5000}\n",
    )
    url = f"{gateway.url}/endpoints/{unique_name}/score"

    closed = _run(gateway, tmp_path, url, "--concurrency", "4")
    assert closed["settings"]["mode"] == "closed"
    results = closed["results"]
    assert results["ok"] > 50 and results["statuses"] == {"200": results["ok"]}
    latency = results["latency_ms"]
    assert (
        0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["p99.9"] <= latency["max"]
    )

    opened = _run(gateway, tmp_path, url, "--rate", "200")
    results = opened["results"]
    # The generator keeps the arrival rate: 200/s for 1 s.
    assert 190 <= results["requests"] <= 200 and results["ok"] == results["requests"]


def test_open_loop_counts_from_the_intended_send_time(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    """A deployment that serves ~10 req/s (one call at a time, 0.1 s each), offered 40/s
    for 1 s: the 40th request is meant to leave at ~1 s but finishes at ~4 s. Measured
    from the intended send time its latency is ~3 s; a generator that only sends when
    the last answer came back (coordinated omission) would report ~0.1 s for all."""
    gateway.deploy_fake(
        tmp_path,
        unique_name,
        0.1,
        "max_concurrent_requests_per_instance: 40, max_queue_wait_ms: 10000, "
        "request_timeout_ms: 20000",
        extra_yaml="batching: {max_batch_size: 1}\n",
    )
    payload = tmp_path / "x.json"
    payload.write_text(json.dumps({"input_data": [[1.0]]}))
    report = tmp_path / "slow.json"
    gateway.cli(
        "loadtest",
        "--url",
        f"{gateway.url}/endpoints/{unique_name}/score",
        "--rate",
        "40",
        "--duration",
        "1s",
        "--payload",
        str(payload),
        "--report",
        str(report),
        "--plot",
        str(tmp_path / "slow.png"),
    )
    results = json.loads(report.read_text())["results"]
    assert results["ok"] == 40
    latency = results["latency_ms"]
    assert latency["p50"] >= 1000 and latency["max"] >= 2500, latency


def test_loadtest_refuses_bad_options(gateway: Gateway, tmp_path: Path) -> None:
    payload = tmp_path / "x.json"
    payload.write_text("{}")
    code, out = gateway.cli(
        "loadtest", "--url", "http://127.0.0.1:1/x", "--payload", str(payload), ok=False
    )
    assert code != 0 and "exactly one of --rate" in out
    code, out = gateway.cli(
        "loadtest",
        "--url",
        "https://example/x",
        "--concurrency",
        "1",
        "--payload",
        str(payload),
        ok=False,
    )
    assert code != 0 and "--url" in out


def test_a_plot_without_matplotlib_is_refused_before_the_test_runs(tmp_path: Path) -> None:
    """Without matplotlib the run would end, after its whole duration, in an error: it is
    refused at once instead (and --no-plot writes the report alone)."""
    import subprocess
    import sys
    import time

    payload = tmp_path / "x.json"
    payload.write_text("{}")
    without = "import sys; sys.modules['matplotlib'] = None\nfrom servegate.cli import main\nmain()"
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            without,
            "loadtest",
            "--url",
            "http://127.0.0.1:9/x",
            "--concurrency",
            "1",
            "--duration",
            "30s",
            "--payload",
            str(payload),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 2 and "needs matplotlib" in done.stderr, done.stderr
    assert "--no-plot" in done.stderr and time.monotonic() - started < 20
    assert not (tmp_path / "loadtest.json").exists()
