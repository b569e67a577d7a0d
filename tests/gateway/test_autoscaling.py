"""Autoscaling (`scale_settings: target_utilization`) on a real gateway: instances added
under load and removed after it, drained, with no failed request; scale to zero and a
cold start; every change in the audit log and the instances gauge."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Gateway, Load, wait_for
from tests.gateway.test_engine import metric

SCALE = (
    "scale_settings: {{type: target_utilization, min_instances: {low}, max_instances: {high}, "
    "polling_interval: 1, target_utilization_percentage: 70, scale_down_delay: {delay}}}\n"
)
BODY = {"input_data": [[1.0, 2.0]]}


def deploy_scaled(
    gw: Gateway,
    tmp_path: Path,
    endpoint: str,
    host: str,
    scale: tuple[int, int, int],
    call_s: float = 0.0,
    request_settings: str = "",
) -> None:
    """`slow` (the fake runtime, `call_s` per call, one call per instance at a time)
    autoscaled between `scale`'s min and max instances with its scale_down_delay."""
    low, high, delay = scale
    gw.deploy_fake(
        tmp_path,
        endpoint,
        call_s,
        f"max_concurrent_requests_per_instance: 1, {request_settings}",
        extra_yaml=f"host: {host}\n" + SCALE.format(low=low, high=high, delay=delay),
    )


def instances(gw: Gateway, endpoint: str) -> float:
    (value,) = metric(gw, "servegate_instances", endpoint).values()
    return value


def scaling_entries(gw: Gateway, endpoint: str) -> list[dict]:
    r = httpx.get(
        f"{gw.url}/management/audit",
        params={"target": f"endpoints/{endpoint}/deployments/slow"},
        headers={"Authorization": f"Bearer {gw.admin_token}"},
    )
    assert r.status_code == 200, r.text
    return [e for e in r.json() if e["action"] == "deployment.scale"]


@pytest.mark.parametrize("host", ["thread", "process"])
def test_instances_grow_under_load_and_shrink_after_it_without_failures(
    gateway: Gateway, tmp_path: Path, unique_name: str, host: str
) -> None:
    # Each call takes 50 ms and an instance takes one at a time: 3 clients keep three
    # instances busy; utilization with one is 300% against a target of 70%.
    deploy_scaled(
        gateway, tmp_path, unique_name, host, (1, 3, 2), 0.05, "request_timeout_ms: 20000"
    )
    assert instances(gateway, unique_name) == 1
    url = f"{gateway.url}/endpoints/{unique_name}/score"
    with Load(url, BODY, {}, threads=3) as load:
        wait_for(lambda: instances(gateway, unique_name) == 3, timeout_s=60)
        served_when_grown = len(load.results)
        time.sleep(1.0)  # the grown deployment serves for a while
    assert len(load.results) > served_when_grown
    assert load.failed() == [] and load.errors == []
    # Idle: back to min_instances after scale_down_delay, each instance drained.
    wait_for(lambda: instances(gateway, unique_name) == 1, timeout_s=30)
    entries = scaling_entries(gateway, unique_name)
    ups = [e for e in entries if e["after"]["instances"] > e["before"]["instances"]]
    downs = [e for e in entries if e["after"]["instances"] < e["before"]["instances"]]
    assert ups and downs, entries
    assert {e["actor"] for e in entries} == {"autoscaler"}
    assert max(e["after"]["instances"] for e in ups) == 3
    assert "utilization" in ups[-1]["reason"] and "target 70%" in ups[-1]["reason"]
    assert downs[0]["after"]["instances"] == 1
    assert "scale_down_delay=2 s" in downs[0]["reason"]
    # Still serving after the scale down.
    assert httpx.post(url, json=BODY).status_code == 200


def test_scale_to_zero_and_a_cold_start_that_answers(
    gateway: Gateway, tmp_path: Path, unique_name: str
) -> None:
    # Worker processes: a cold start really starts an interpreter and loads the model.
    # A queue wait far shorter than starting a process: the first request must not be
    # refused for waiting on the cold start.
    settings = "request_timeout_ms: 60000, max_queue_wait_ms: 10"
    deploy_scaled(gateway, tmp_path, unique_name, "process", (0, 2, 1), 0.0, settings)
    # Created with one instance (the model is checked at create), then idle: zero.
    wait_for(lambda: instances(gateway, unique_name) == 0, timeout_s=30)
    (entry,) = scaling_entries(gateway, unique_name)
    assert entry["before"] == {"instances": 1} and entry["after"] == {"instances": 0}
    # The first request waits for an instance to start (past max_queue_wait_ms).
    r = httpx.post(f"{gateway.url}/endpoints/{unique_name}/score", json=BODY, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == {"y": [[2.0, 4.0]]}
    assert instances(gateway, unique_name) == 1
    latest = scaling_entries(gateway, unique_name)[0]
    assert latest["after"] == {"instances": 1} and "cold start" in latest["reason"]


def test_a_cold_start_longer_than_the_request_timeout_is_408(
    gateway: Gateway, tmp_path: Path, unique_name: str
) -> None:
    deploy_scaled(
        gateway, tmp_path, unique_name, "process", (0, 1, 0), 0.0, "request_timeout_ms: 50"
    )
    wait_for(lambda: instances(gateway, unique_name) == 0, timeout_s=30)
    r = httpx.post(f"{gateway.url}/endpoints/{unique_name}/score", json=BODY, timeout=30)
    assert r.status_code == 408, r.text
    assert "request_timeout_ms=50" in r.json()["error"]
    # The instance it started serves the next one.
    wait_for(lambda: instances(gateway, unique_name) == 1, timeout_s=30)
    r = httpx.post(f"{gateway.url}/endpoints/{unique_name}/score", json=BODY, timeout=30)
    assert r.status_code == 200, r.text


def test_scale_settings_are_checked(gateway: Gateway, tmp_path: Path, unique_name: str) -> None:
    gateway.create_endpoint(tmp_path, unique_name)
    for scale, message in (
        ("{type: default, max_instances: 3}", "max_instances go with 'type: target_utilization'"),
        (
            "{type: target_utilization, min_instances: 4, max_instances: 2}",
            "min_instances (4) is above max_instances (2)",
        ),
        ("{type: target_utilization, max_instances: 0}", "max_instances"),
        ("{type: target_utilization, target_utilization_percentage: 0}", "target_utilization"),
        ("{type: sometimes}", "'default' or 'target_utilization'"),
    ):
        spec = tmp_path / "bad.yml"
        spec.write_text(
            f"name: bad\nendpoint_name: {unique_name}\nmodel: {{path: m.bin}}\n"
            f"runtime: fake\nscale_settings: {scale}\n"
        )
        (tmp_path / "m.bin").write_bytes(b"fake")
        code, out = gateway.cli("deployment", "create", "-f", str(spec), ok=False)
        assert code != 0 and "scale_settings" in out and message in out, out
