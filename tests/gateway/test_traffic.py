"""Routing by the traffic map, sticky routing, mirror traffic, and changes under load."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.conftest import Gateway, Load, write_yaml
from tests.gateway.test_engine import burst, metric

BODY = {"input_data": [[5.1, 3.5, 1.4, 0.2]]}


BATCHING = "batching: {max_batch_size: 32}\n"  # also lets 64 requests be in flight


def two_deployments(
    gateway: Gateway,
    tmp_path: Path,
    model_dir: Path,
    name: str,
    green_model: str = "classifier-v2.onnx",
) -> dict[str, str]:
    gateway.create_endpoint(tmp_path, name)
    gateway.deploy(tmp_path, name, "blue", model_dir / "classifier.onnx", extra_yaml=BATCHING)
    gateway.deploy(
        tmp_path, name, "green", model_dir / green_model, all_traffic=False, extra_yaml=BATCHING
    )
    return gateway.auth(name)


def test_split_matches_the_traffic_map(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    auth = two_deployments(gateway, tmp_path, model_dir, unique_name)
    gateway.cli("endpoint", "update", "-n", unique_name, "--traffic", "blue=70,green=30")
    url = f"{gateway.url}/endpoints/{unique_name}/score"
    counts: Counter[str] = Counter()
    for _ in range(60):  # 3000 requests, 50 at a time
        for r in asyncio.run(burst(url, [BODY] * 50, auth)):
            assert r.status_code == 200
            counts[r.headers["azureml-model-deployment"]] += 1
    # Binomial: n=3000, p=0.3 -> mean 900, sd 25.1; a fixed tolerance of 5 sd.
    assert sum(counts.values()) == 3000
    assert abs(counts["green"] - 900) <= 125, counts


def test_sticky_routing_keeps_a_user_on_one_deployment(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    auth = two_deployments(gateway, tmp_path, model_dir, unique_name)
    # Sticky routing is an endpoint setting; here it is set through the management API.
    r = httpx.patch(
        f"{gateway.url}/management/endpoints/{unique_name}",
        headers={"Authorization": f"Bearer {gateway.admin_token}"},
        json={"sticky_routing_header": "X-User-Id", "traffic": {"blue": 50, "green": 50}},
    )
    assert r.status_code == 200, r.text
    url = f"{gateway.url}/endpoints/{unique_name}/score"
    seen: dict[str, set[str]] = {}
    with httpx.Client() as client:
        for user in range(40):
            for _ in range(5):
                r = client.post(url, json=BODY, headers={**auth, "x-user-id": f"user-{user}"})
                seen.setdefault(f"user-{user}", set()).add(r.headers["azureml-model-deployment"])
    assert all(len(deployments) == 1 for deployments in seen.values())
    per_deployment = Counter(next(iter(d)) for d in seen.values())
    assert per_deployment["blue"] >= 8 and per_deployment["green"] >= 8, per_deployment


def test_mirror_copies_its_share_and_compares_answers(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    # green runs the same model as blue: every mirrored answer must agree.
    auth = two_deployments(gateway, tmp_path, model_dir, unique_name, green_model="classifier.onnx")
    gateway.cli("endpoint", "update", "-n", unique_name, "--mirror-traffic", "green=20")
    url = f"{gateway.url}/endpoints/{unique_name}/score"
    with httpx.Client() as client:
        for _ in range(1000):
            r = client.post(url, json=BODY, headers=auth)
            assert r.status_code == 200 and r.headers["azureml-model-deployment"] == "blue"
    time.sleep(0.5)  # the last copies finish after their live answers

    def one(name: str) -> float:
        return sum(metric(gateway, name, unique_name).values())

    sent, shed = one("servegate_mirror_sent_total"), one("servegate_mirror_shed_total")
    # Binomial: n=1000, p=0.2 -> 200, sd 12.6; tolerance 5 sd.
    assert abs(sent + shed - 200) <= 63, (sent, shed)
    assert one("servegate_mirror_compared_total") == sent
    assert one("servegate_mirror_same_total") == sent
    assert (
        one("servegate_mirror_argmax_agree_total") == one("servegate_mirror_argmax_rows_total") > 0
    )
    # The mirror's requests are not counted as the deployment's live requests.
    live_green = metric(gateway, "servegate_requests_total", unique_name)
    assert not any('deployment="green"' in k for k in live_green)


def test_a_failing_or_slow_mirror_never_touches_live_answers(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name)
    gateway.deploy(tmp_path, unique_name, "blue", model_dir / "classifier.onnx")
    fake = tmp_path / "fake.bin"
    fake.write_bytes(b"x")
    # Fake models take input `x`; live requests carry `input`, so every copy fails on validation
    # too — and the failing one also raises in the runtime.
    for name, options in (("broken", "{fail: true}"), ("slow", "{delay_s: 0.5}")):
        spec = write_yaml(
            tmp_path / f"{name}.yml",
            f"""
name: {name}
endpoint_name: {unique_name}
model: {{path: fake.bin}}
runtime: fake
runtime_options: {options}
signature:
  inputs: [{{name: input, datatype: FP32, shape: [-1, 4]}}]
  outputs: [{{name: y, datatype: FP32, shape: [-1, 4]}}]
""",
        )
        gateway.cli("deployment", "create", "-f", str(spec))
    auth = gateway.auth(unique_name)
    url = f"{gateway.url}/endpoints/{unique_name}/score"
    with httpx.Client() as client:
        for _ in range(30):  # warm up, no mirror
            client.post(url, json=BODY, headers=auth)
        baseline = []
        for _ in range(200):
            t0 = time.perf_counter()
            assert client.post(url, json=BODY, headers=auth).status_code == 200
            baseline.append(time.perf_counter() - t0)
        for mirror in ("broken", "slow"):
            gateway.cli("endpoint", "update", "-n", unique_name, "--mirror-traffic", f"{mirror}=50")
            latencies = []
            for _ in range(200):
                t0 = time.perf_counter()
                r = client.post(url, json=BODY, headers=auth)
                latencies.append(time.perf_counter() - t0)
                assert r.status_code == 200 and r.headers["azureml-model-deployment"] == "blue"
            gateway.cli("endpoint", "update", "-n", unique_name, "--mirror-traffic", f"{mirror}=0")
            # Live latency is not the mirror's: the slow mirror takes 500 ms per call.
            assert sorted(latencies)[int(0.99 * len(latencies))] < max(
                sorted(baseline)[197] * 3, 0.05
            )
    failed = metric(gateway, "servegate_mirror_failed_total", unique_name)
    assert sum(v for k, v in failed.items() if 'deployment="broken"' in k) > 0
    shed = metric(gateway, "servegate_mirror_shed_total", unique_name)
    assert sum(v for k, v in shed.items() if 'deployment="slow"' in k) > 0  # shed first under load


def test_mirror_rules(gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str) -> None:
    two_deployments(gateway, tmp_path, model_dir, unique_name)
    code, out = gateway.cli(
        "endpoint", "update", "-n", unique_name, "--mirror-traffic", "green=60", ok=False
    )
    assert code != 0 and "less than or equal to 50" in out
    code, out = gateway.cli(
        "endpoint", "update", "-n", unique_name, "--mirror-traffic", "blue=10", ok=False
    )
    assert code != 0 and "already takes live traffic" in out


def test_traffic_moves_update_and_delete_under_load_fail_nothing(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    auth = two_deployments(gateway, tmp_path, model_dir, unique_name)
    url = f"{gateway.url}/endpoints/{unique_name}/score"
    with Load(url, BODY, auth, threads=6) as load:
        time.sleep(0.5)
        for traffic in (
            "blue=75,green=25",
            "blue=50,green=50",
            "blue=10,green=90",
            "blue=0,green=100",
        ):
            gateway.cli("endpoint", "update", "-n", unique_name, "--traffic", traffic)
            time.sleep(0.3)
        # Update green in place: a new model version and more instances.
        local = tmp_path / "green-v3.onnx"
        local.write_bytes((model_dir / "classifier.onnx").read_bytes())
        spec = write_yaml(
            tmp_path / "green-update.yml",
            f"""
name: green
endpoint_name: {unique_name}
model: {{path: green-v3.onnx}}
instance_count: 2
batching: {{max_batch_size: 8}}
""",
        )
        gateway.cli("deployment", "update", "-f", str(spec))
        time.sleep(0.5)
        gateway.cli("deployment", "delete", "-n", "blue", "-e", unique_name)
        time.sleep(0.5)
    assert len(load.results) > 200 and not load.errors, load.errors[:3]
    assert load.failed() == []
    served = Counter(d for _, d in load.results)
    assert served["blue"] > 0 and served["green"] > 0
    _, out = gateway.cli("deployment", "show", "-n", "green", "-e", unique_name)
    assert json.loads(out)["instance_count"] == 2
