"""A gateway's life: the demo, restarts that keep state, graceful shutdown."""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from gateway.demo import DEMO_INPUT, build_classifier
from tests.conftest import assert_clean_exit, start_gateway


def test_demo_prints_a_curl_that_returns_the_prediction(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path / "home", "--demo")
    try:
        lines = [
            ln.strip() for ln in gw.log.read_text().splitlines() if ln.strip().startswith("curl ")
        ]
        assert len(lines) == 1, gw.log.read_text()
        command = shlex.split(lines[0])
        if shutil.which("curl") is None:  # the same request without the curl binary
            pytest.fail("curl is needed to run the printed command")
        output = subprocess.run(
            command, capture_output=True, text=True, timeout=30, check=True
        ).stdout
        session = ort.InferenceSession(build_classifier(0), providers=["CPUExecutionProvider"])
        probabilities, label = session.run(None, {"input": np.array(DEMO_INPUT[:1], np.float32)})
        answer = json.loads(output)
        np.testing.assert_allclose(answer["probabilities"], probabilities, rtol=1e-6)
        assert answer["label"] == label.tolist()
        _, out = gw.cli("endpoint", "show", "-n", "demo")
        assert json.loads(out)["traffic"] == {"blue": 100, "green": 0}
    finally:
        assert_clean_exit(gw)


def test_restart_keeps_models_endpoints_keys_and_traffic(tmp_path: Path, model_dir: Path) -> None:
    home = tmp_path / "home"
    gw = start_gateway(home)
    gw.create_endpoint(tmp_path, "durable")
    gw.deploy(tmp_path, "durable", "blue", model_dir / "classifier.onnx")
    auth = gw.auth("durable")
    assert_clean_exit(gw)

    gw = start_gateway(home)  # same home, new process
    try:
        r = httpx.post(
            f"{gw.url}/endpoints/durable/score",
            json={"input_data": [[1, 2, 3, 4]]},
            headers=auth,
        )
        assert r.status_code == 200 and r.headers["azureml-model-deployment"] == "blue"
    finally:
        assert_clean_exit(gw)


def test_a_no_wait_create_survives_the_gateway_that_took_it(tmp_path: Path) -> None:
    """Answered 202, then the gateway is killed: the restarted one finishes the create
    (and records a failure as Failed with its reason) instead of forgetting it."""
    from tests.conftest import write_yaml

    home = tmp_path / "home"
    gw = start_gateway(home)
    gw.create_endpoint(tmp_path, "later", "auth_mode: none\n")
    (tmp_path / "slow.bin").write_bytes(b"fake runtime: no weights")
    for name, options in (("blue", "{load_s: 3.0}"), ("green", "{load_s: 3.0, fail_load: true}")):
        spec = write_yaml(
            tmp_path / f"{name}.yml",
            f"name: {name}\nendpoint_name: later\nmodel: {{path: slow.bin}}\n"
            f"runtime: fake\nruntime_options: {options}\n",
        )
        _, out = gw.cli(
            "deployment",
            "create",
            "-f",
            str(spec),
            "--no-wait",
            *(["--all-traffic"] if name == "blue" else []),
            "-o",
            "tsv",
            "--query",
            "provisioning_state",
        )
        assert out.strip() == "Creating"
    gw.process.kill()  # before either finished loading
    gw.process.wait()

    gw = start_gateway(home)
    try:

        def state(name: str) -> dict[str, object]:
            return json.loads(gw.cli("deployment", "show", "-e", "later", "-n", name)[1])

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            state("blue")["provisioning_state"] == "Creating"
            or state("green")["provisioning_state"] == "Creating"
        ):
            time.sleep(0.3)
        assert state("blue")["provisioning_state"] == "Succeeded"
        failed = state("green")
        assert failed["provisioning_state"] == "Failed"
        assert "configured not to load" in str(failed["error"])
        r = httpx.post(f"{gw.url}/endpoints/later/score", json={"input_data": [[1.0, 2.0]]})
        assert r.status_code == 200 and r.json() == {"y": [[2.0, 4.0]]}
        # A failed create is cleared by deleting it.
        gw.cli("deployment", "delete", "-e", "later", "-n", "green")
        code, out = gw.cli("deployment", "show", "-e", "later", "-n", "green", ok=False)
        assert code != 0 and "does not exist" in out
    finally:
        assert_clean_exit(gw)


def test_sigterm_lets_in_flight_requests_finish(tmp_path: Path, model_dir: Path) -> None:
    gw = start_gateway(tmp_path / "home")
    gw.create_endpoint(tmp_path, "slow", "auth_mode: none\n")
    gw.deploy(
        tmp_path,
        "slow",
        "slow",
        model_dir / "fake.bin",
        extra_yaml="runtime: fake\nruntime_options: {delay_s: 1.5}\n",
    )
    results: list[httpx.Response] = []
    client = threading.Thread(
        target=lambda: results.append(
            httpx.post(
                f"{gw.url}/endpoints/slow/score", json={"input_data": [[1.0, 2.0]]}, timeout=30
            )
        )
    )
    client.start()
    time.sleep(0.5)  # the request is inside the runtime now
    gw.process.send_signal(signal.SIGTERM)
    client.join(30)
    assert results and results[0].status_code == 200, results
    assert results[0].json() == {"y": [[2.0, 4.0]]}
    assert_clean_exit(gw)
    # After shutdown nothing listens any more.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{gw.url}/v2/health/live", timeout=2)


def test_first_run_home_port_and_where_things_are(tmp_path: Path) -> None:
    """`servegate serve --home DIR` (the option after the command, as the README and the
    CLI's own errors say it); the log says where the studio and the admin token are; a
    second gateway on the same port is refused at once, before loading anything."""
    import os
    import sys

    from tests.conftest import free_port

    home, port = tmp_path / "first", free_port()
    log = tmp_path / "first.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SERVEGATE_HOME", None)
    with log.open("wb") as out:
        first = subprocess.Popen(
            [sys.executable, "-m", "servegate", "serve", "--home", str(home), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while "servegate is ready" not in log.read_text():
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert (home / "admin_token").is_file()
        ready = next(line for line in log.read_text().splitlines() if "servegate is ready" in line)
        assert f"http://127.0.0.1:{port}/studio/" in ready
        assert str(home / "admin_token") in ready
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "servegate",
                "serve",
                "--home",
                str(tmp_path / "second"),
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert second.returncode == 1
        assert f"port {port} on 127.0.0.1 is in use (a gateway already runs on {port}?)" in (
            second.stderr
        ), second.stderr
        assert "--port" in second.stderr and "Traceback" not in second.stderr
        assert "application startup" not in second.stderr  # refused before starting
        assert not (tmp_path / "second" / "store.db").exists()
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(30)
