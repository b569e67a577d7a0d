"""Rollouts through a real gateway under continuous load: a healthy one completes,
a failing candidate is rolled back on its own, one survives a gateway restart,
abort rolls back, and the mirror phase judges agreement."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import (
    Gateway,
    Load,
    assert_clean_exit,
    metric_samples,
    start_gateway,
    wait_for,
    write_yaml,
)

BODY = {"input_data": [[5.1, 3.5, 1.4, 0.2]]}
FAST = "batching: {max_batch_size: 32}\n"


def setup(
    gw: Gateway,
    tmp_path: Path,
    model_dir: Path,
    name: str,
    green: str = "classifier-v2.onnx",
    green_yaml: str = FAST,
) -> tuple[str, dict[str, str]]:
    gw.create_endpoint(tmp_path, name)
    gw.deploy(tmp_path, name, "blue", model_dir / "classifier.onnx", extra_yaml=FAST)
    if green == "broken":
        fake = tmp_path / "fake.bin"
        fake.write_bytes(b"x")
        spec = write_yaml(
            tmp_path / "green.yml",
            f"""
name: green
endpoint_name: {name}
model: {{path: fake.bin}}
runtime: fake
runtime_options: {{fail: true}}
signature:
  inputs: [{{name: input, datatype: FP32, shape: [-1, 4]}}]
  outputs: [{{name: y, datatype: FP32, shape: [-1, 4]}}]
""",
        )
        gw.cli("deployment", "create", "-f", str(spec))
    else:
        gw.deploy(
            tmp_path, name, "green", model_dir / green, all_traffic=False, extra_yaml=green_yaml
        )
    return f"{gw.url}/endpoints/{name}/score", gw.auth(name)


def start_rollout(gw: Gateway, name: str, *flags: str, ok: bool = True) -> tuple[int, str]:
    """`servegate rollout start -e NAME --to green FLAGS...`"""
    return gw.cli("rollout", "start", "-e", name, "--to", "green", *flags, ok=ok)


def status(gw: Gateway, name: str) -> dict:
    _, out = gw.cli("rollout", "status", "-e", name)
    return json.loads(out)


def finished(gw: Gateway, name: str) -> dict | None:
    record = status(gw, name)
    return record if record["state"] not in ("mirroring", "stepping") else None


def test_a_healthy_rollout_completes_and_deletes_the_old(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    url, auth = setup(gateway, tmp_path, model_dir, unique_name)
    with Load(url, BODY, auth) as load:
        _, out = start_rollout(
            gateway,
            unique_name,
            "--steps",
            "25,50,100",
            "--step-interval",
            "0.6s",
            "--min-requests",
            "20",
            "--max-error-rate",
            "0.01",
            "--max-p99-latency-ms",
            "250",
            "--delete-old",
        )
        assert json.loads(out)["from"] == "blue"
        record = wait_for(lambda: finished(gateway, unique_name), 60)
    assert record["state"] == "succeeded", record
    assert record["traffic"] == {"green": 100}
    assert load.failed() == [] and len(load.results) > 100
    _, out = gateway.cli("deployment", "list", "-e", unique_name)
    assert [d["name"] for d in json.loads(out)] == ["green"]
    # Every traffic change is in the audit log, made by the rollout, with its reason.
    _, out = gateway.cli("audit", "list", "--target", f"endpoints/{unique_name}")
    by_rollout = [e for e in json.loads(out) if e["actor"] == f"rollout {record['id']}"]
    reasons = [e["reason"] for e in reversed(by_rollout)]
    assert any("step 1/3: green 25%" in r for r in reasons)
    assert any("step 3/3: green 100%" in r for r in reasons)
    assert any(e["action"] == "deployment.delete" for e in by_rollout)
    _, out = gateway.cli("rollout", "list", "-e", unique_name)
    assert [r["state"] for r in json.loads(out)] == ["succeeded"]


def test_a_failing_candidate_is_rolled_back_with_the_reason(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    url, auth = setup(gateway, tmp_path, model_dir, unique_name, green="broken")
    with Load(url, BODY, auth) as load:
        start_rollout(
            gateway,
            unique_name,
            "--steps",
            "10,50,100",
            "--step-interval",
            "5s",
            "--min-requests",
            "10",
            "--max-error-rate",
            "0.05",
        )
        record = wait_for(lambda: finished(gateway, unique_name), 60)
        time.sleep(0.3)
        after_rollback = len(load.results)
        time.sleep(0.5)
    assert record["state"] == "rolled_back"
    assert record["reason"].startswith("step 10%: error rate 1.0000 > max 0.05")
    assert record["traffic"] == {"blue": 100, "green": 0}
    # After the rollback only blue answers.
    assert all(d == "blue" and s == 200 for s, d in load.results[after_rollback:])
    failed_by_green = [r for r in load.failed() if r[1] == "green"]
    assert 0 < len(failed_by_green) < 100
    _, out = gateway.cli("audit", "list", "--target", f"endpoints/{unique_name}", "--limit", "1")
    (last,) = json.loads(out)
    assert last["reason"].startswith("rollback (rolled_back): step 10%: error rate")
    assert last["after"]["traffic"] == {"blue": 100, "green": 0}
    # Counted for the rollback alert (deploy/grafana/alerts.yml).
    ended = metric_samples(gateway.url, "servegate_rollouts_finished_total")
    assert ({"endpoint": unique_name, "outcome": "rolled_back"}, 1.0) in ended


def test_abort_rolls_back_and_manual_changes_wait(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    url, auth = setup(gateway, tmp_path, model_dir, unique_name)
    with Load(url, BODY, auth):
        start_rollout(
            gateway,
            unique_name,
            "--steps",
            "30,100",
            "--step-interval",
            "60s",
            "--min-requests",
            "5",
        )
        wait_for(lambda: status(gateway, unique_name)["traffic"] == {"blue": 70, "green": 30})
        code, out = gateway.cli(
            "endpoint", "update", "-n", unique_name, "--traffic", "blue=100", ok=False
        )
        assert code != 0 and "abort it first" in out
        code, out = start_rollout(gateway, unique_name, ok=False)
        assert code != 0 and "already has a rollout in progress" in out
        _, out = gateway.cli("rollout", "abort", "-e", unique_name)
    record = json.loads(out)
    assert record["state"] == "aborted" and record["reason"].startswith("aborted by ")
    assert status(gateway, unique_name)["traffic"] == {"blue": 100, "green": 0}
    code, out = gateway.cli("rollout", "abort", "-e", unique_name, ok=False)
    assert code != 0 and "no rollout in progress" in out


@pytest.mark.parametrize(
    "green, passes",
    [("classifier.onnx", True), ("classifier-v2.onnx", False)],
    ids=["same-answers", "different-answers"],
)
def test_mirror_first_judges_agreement(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str, green: str, passes: bool
) -> None:
    url, auth = setup(gateway, tmp_path, model_dir, unique_name, green=green)
    rows = {"input_data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [0.1, 9.0, -2.0, 1.0]]}
    with Load(url, rows, auth):
        start_rollout(
            gateway,
            unique_name,
            "--steps",
            "100",
            "--mirror-first",
            "0.6s",
            "--mirror-percent",
            "50",
            "--min-agreement",
            "0.99",
            "--step-interval",
            "0.5s",
            "--min-requests",
            "10",
        )
        mirroring = wait_for(
            lambda: (
                status(gateway, unique_name)["mirror_traffic"].get("green") == 50
                or finished(gateway, unique_name)
            )
        )
        assert mirroring
        record = wait_for(lambda: finished(gateway, unique_name), 60)
    if passes:
        assert record["state"] == "succeeded", record
        assert any("mirror phase passed" in e["message"] for e in record["events"])
    else:
        assert record["state"] == "rolled_back"
        assert record["reason"].startswith("mirror phase: agreement with the live model")
        assert status(gateway, unique_name)["traffic"] == {"blue": 100, "green": 0}


def test_a_rollout_survives_a_gateway_restart(tmp_path: Path, model_dir: Path) -> None:
    home = tmp_path / "home"
    gw = start_gateway(home)
    url, auth = setup(gw, tmp_path, model_dir, "restart")
    with Load(url, BODY, auth):
        start_rollout(
            gw,
            "restart",
            "--steps",
            "20,60,100",
            "--step-interval",
            "1s",
            "--min-requests",
            "10",
        )
        wait_for(lambda: status(gw, "restart")["step"] >= 1, 30)
    assert_clean_exit(gw)  # mid-rollout
    gw = start_gateway(home)
    try:
        url = f"{gw.url}/endpoints/restart/score"
        with Load(url, BODY, auth) as load:
            record = wait_for(lambda: finished(gw, "restart"), 60)
        assert record["state"] == "succeeded", record
        # The stopped gateway released its lease; the restarted one took the rollout over.
        assert any("taken over by replica" in e["message"] for e in record["events"])
        assert record["traffic"] == {"blue": 0, "green": 100}
        assert load.failed() == []
    finally:
        assert_clean_exit(gw)
