"""`host: ray`: deployments as Ray Serve applications on a real local Ray cluster
(`ray start --head` on 127.0.0.1), called by a real gateway through deployment handles."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from loadtests.ray_cluster import start_ray_cluster
from tests.conftest import (
    RAY_ENV,
    Gateway,
    Load,
    RayCluster,
    assert_clean_exit,
    free_port,
    start_gateway,
    wait_for,
)
from tests.gateway.test_engine import metric
from tests.gateway.test_runtimes import SCORE_PY
from tests.gateway.test_server import in_process

# Runs once, on the SQLite pass: what it checks does not depend on the store.
pytestmark = pytest.mark.store_independent

#: Replicas ask for a quarter of a CPU: the test cluster has 2, and an update runs the
#: old and the new application side by side. Azure's default of one request per instance
#: (two in flight) would turn a few concurrent clients into 429s.
CONCURRENT = "request_settings: {max_concurrent_requests_per_instance: 8}\n"
RAY = "host: ray\nray_actor_options: {num_cpus: 0.25}\n" + CONCURRENT
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]]


@pytest.fixture(autouse=True)
def _free_the_cluster(ray_gateway: Gateway) -> Iterator[None]:
    """Each test's endpoints go after it: their replicas would otherwise hold the module
    cluster's 2 CPUs, and later tests (and the batch tests' actors) wait for room."""
    yield
    for endpoint in json.loads(ray_gateway.cli("endpoint", "list")[1]):
        ray_gateway.cli("endpoint", "delete", "--name", endpoint["name"], "--yes")


def replica_pids(cluster: RayCluster, endpoint: str) -> list[int]:
    """The processes of an endpoint's Ray Serve replicas (`ray::ServeReplica:<app>`)."""
    return cluster.processes_named("ServeReplica", endpoint)


def test_a_ray_deployment_scores_like_onnxruntime_in_process(
    ray_gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gw = ray_gateway
    gw.create_endpoint(tmp_path, unique_name)
    gw.deploy(tmp_path, unique_name, "blue", model_dir / "classifier.onnx", extra_yaml=RAY)
    auth = gw.auth(unique_name)
    x = np.array(ROWS, dtype=np.float32)
    want = in_process(model_dir / "classifier.onnx", {"input": x})

    r = httpx.post(
        f"{gw.url}/endpoints/{unique_name}/score", json={"input_data": ROWS}, headers=auth
    )
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["probabilities"], want["probabilities"], rtol=1e-6)
    assert r.json()["label"] == want["label"].tolist()

    # tritonclient: binary tensors both ways, then JSON.
    client = triton.InferenceServerClient(url=gw.host_port)
    try:
        assert client.is_model_ready(unique_name, headers=auth)
        meta = client.get_model_metadata(unique_name, headers=auth)
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
        for binary in (True, False):
            infer_input = triton.InferInput("input", list(x.shape), "FP32")
            infer_input.set_data_from_numpy(x, binary_data=binary)
            outputs = [
                triton.InferRequestedOutput("probabilities", binary_data=binary),
                triton.InferRequestedOutput("label", binary_data=binary),
            ]
            # A copy: tritonclient writes its own headers into the dict it is given.
            result = client.infer(unique_name, [infer_input], outputs=outputs, headers={**auth})
            np.testing.assert_allclose(
                result.as_numpy("probabilities"), want["probabilities"], rtol=1e-6
            )
            np.testing.assert_array_equal(result.as_numpy("label"), want["label"])
    finally:
        client.close()

    # A bad request is the model's 400, as for a local host.
    r = httpx.post(
        f"{gw.url}/endpoints/{unique_name}/score", json={"input_data": [[1.0, 2.0]]}, headers=auth
    )
    assert r.status_code == 400, r.text


def test_traffic_splits_between_a_ray_and_a_thread_deployment(
    ray_gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gw = ray_gateway
    gw.create_endpoint(tmp_path, unique_name)
    gw.deploy(tmp_path, unique_name, "blue", model_dir / "classifier.onnx")
    gw.deploy(
        tmp_path, unique_name, "green", model_dir / "classifier-v2.onnx", False, extra_yaml=RAY
    )
    gw.cli("endpoint", "update", "--name", unique_name, "--traffic", "blue=50,green=50")
    auth = gw.auth(unique_name)
    x = np.array(ROWS, dtype=np.float32)
    want = {
        "blue": in_process(model_dir / "classifier.onnx", {"input": x}),
        "green": in_process(model_dir / "classifier-v2.onnx", {"input": x}),
    }
    seen = {"blue": 0, "green": 0}
    with httpx.Client() as client:
        for _ in range(60):
            r = client.post(
                f"{gw.url}/endpoints/{unique_name}/score", json={"input_data": ROWS}, headers=auth
            )
            assert r.status_code == 200, r.text
            answered = r.headers["azureml-model-deployment"]
            seen[answered] += 1
            np.testing.assert_allclose(
                r.json()["probabilities"], want[answered]["probabilities"], rtol=1e-6
            )
    assert seen["blue"] >= 10 and seen["green"] >= 10, seen


def test_batching_coalesces_requests_inside_the_replica(
    ray_gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gw = ray_gateway
    gw.create_endpoint(tmp_path, unique_name)
    gw.deploy(
        tmp_path,
        unique_name,
        "blue",
        model_dir / "classifier.onnx",
        extra_yaml=RAY + "batching: {max_batch_size: 8, max_batch_delay_ms: 20}\n",
    )
    auth = gw.auth(unique_name)
    rng = np.random.default_rng(11)
    bodies = [rng.normal(size=(int(rng.integers(1, 4)), 4)).astype(np.float32) for _ in range(40)]

    def score(x: np.ndarray) -> tuple[int, list[list[float]]]:
        r = httpx.post(
            f"{gw.url}/endpoints/{unique_name}/score",
            json={"input_data": x.tolist()},
            headers=auth,
            timeout=30,
        )
        return r.status_code, r.json().get("probabilities")

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(score, bodies))
    for x, (status, probabilities) in zip(bodies, answers, strict=True):
        assert status == 200
        want = in_process(model_dir / "classifier.onnx", {"input": x})
        np.testing.assert_allclose(probabilities, want["probabilities"], rtol=1e-5, atol=1e-6)


def test_a_rollout_from_thread_to_ray_under_load_fails_no_request(
    ray_gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gw = ray_gateway
    gw.create_endpoint(tmp_path, unique_name)
    gw.deploy(tmp_path, unique_name, "blue", model_dir / "classifier.onnx", extra_yaml=CONCURRENT)
    gw.deploy(
        tmp_path, unique_name, "green", model_dir / "classifier-v2.onnx", False, extra_yaml=RAY
    )
    url, auth = f"{gw.url}/endpoints/{unique_name}/score", gw.auth(unique_name)
    with Load(url, {"input_data": ROWS}, auth, threads=3) as load:
        gw.cli(
            "rollout",
            "start",
            "-e",
            unique_name,
            "--to",
            "green",
            "--steps",
            "50,100",
            "--step-interval",
            "1s",
            "--min-requests",
            "5",
        )

        def finished() -> bool:
            _, out = gw.cli("rollout", "status", "-e", unique_name)
            return '"succeeded"' in out

        wait_for(finished, 60, 0.5)
        time.sleep(0.5)
    assert load.results and not load.failed() and not load.errors, (load.failed(), load.errors)
    assert {"blue", "green"} <= {deployment for _, deployment in load.results}


def test_a_killed_replica_fails_at_most_its_requests_in_flight(
    ray_gateway: Gateway,
    ray_cluster: RayCluster,
    tmp_path: Path,
    model_dir: Path,
    unique_name: str,
) -> None:
    gw = ray_gateway
    gw.create_endpoint(tmp_path, unique_name)
    gw.deploy(
        tmp_path,
        unique_name,
        "blue",
        model_dir / "classifier.onnx",
        extra_yaml=RAY + "instance_count: 2\n",
    )
    url, auth = f"{gw.url}/endpoints/{unique_name}/score", gw.auth(unique_name)
    pids = wait_for(lambda: replica_pids(ray_cluster, unique_name), 30)
    assert len(pids) == 2, pids
    assert list(metric(gw, "servegate_instances", unique_name).values()) == [2.0]
    with Load(url, {"input_data": ROWS}, auth, threads=2) as load:
        time.sleep(1)
        os.kill(pids[0], signal.SIGKILL)
        # Ray starts a new replica; the gateway keeps serving meanwhile.
        wait_for(lambda: len(replica_pids(ray_cluster, unique_name)) == 2, 60, 0.5)
        served = len(load.results)
        wait_for(lambda: len(load.results) > served + 20, 30)
    failed = load.failed()
    assert len(failed) <= 2, failed  # two clients: at most one request in flight each
    assert all(status == 503 for status, _ in failed), failed
    assert len(load.results) > 40


def test_an_unreachable_ray_cluster_is_a_clear_error_at_create(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    home = tmp_path_factory.mktemp("noray") / "home"
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    gw = start_gateway(home, env_extra={**RAY_ENV, "SERVEGATE_RAY_ADDRESS": address})
    try:
        gw.create_endpoint(tmp_path, unique_name)
        local = tmp_path / "m.onnx"
        local.write_bytes((model_dir / "classifier.onnx").read_bytes())
        spec = tmp_path / "ray.yml"
        spec.write_text(f"name: blue\nendpoint_name: {unique_name}\nmodel: {{path: m.onnx}}\n{RAY}")
        code, out = gw.cli("deployment", "create", "-f", str(spec), ok=False)
        assert code == 1 and address in out and "Ray cluster" in out, out
        # Nothing was stored: the endpoint has no deployment.
        _, listed = gw.cli("deployment", "list", "-e", unique_name)
        assert "blue" not in listed
    finally:
        assert_clean_exit(gw)


def test_an_update_under_load_fails_no_request_and_a_delete_removes_the_application(
    ray_gateway: Gateway,
    ray_cluster: RayCluster,
    tmp_path: Path,
    model_dir: Path,
    unique_name: str,
) -> None:
    gw = ray_gateway
    gw.create_endpoint(tmp_path, unique_name)
    gw.deploy(tmp_path, unique_name, "blue", model_dir / "classifier.onnx", extra_yaml=RAY)
    url, auth = f"{gw.url}/endpoints/{unique_name}/score", gw.auth(unique_name)
    assert len(wait_for(lambda: replica_pids(ray_cluster, unique_name), 30)) == 1
    x = np.array(ROWS, dtype=np.float32)
    want_v2 = in_process(model_dir / "classifier-v2.onnx", {"input": x})
    with Load(url, {"input_data": ROWS}, auth, threads=3) as load:
        time.sleep(1)
        # The same deployment, another model: a new application, healthy before the
        # gateway routes to it; the old one serves until it is drained.
        gw.deploy(
            tmp_path,
            unique_name,
            "blue",
            model_dir / "classifier-v2.onnx",
            extra_yaml=RAY,
            update=True,
        )
        time.sleep(1)
    assert load.results and not load.failed() and not load.errors, (load.failed(), load.errors)
    r = httpx.post(url, json={"input_data": ROWS}, headers=auth)
    np.testing.assert_allclose(r.json()["probabilities"], want_v2["probabilities"], rtol=1e-6)
    # The replaced application is deleted once other gateway replicas had time to follow.
    wait_for(lambda: len(replica_pids(ray_cluster, unique_name)) == 1, 40, 0.5)

    gw.deploy(tmp_path, unique_name, "green", model_dir / "classifier.onnx")  # all traffic
    gw.cli("deployment", "delete", "-e", unique_name, "--name", "blue")
    wait_for(lambda: not replica_pids(ray_cluster, unique_name), 40, 0.5)


def test_replicas_that_do_not_fit_the_cluster_fail_the_create_with_the_reason(
    ray_gateway: Gateway, ray_cluster: RayCluster, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gw = ray_gateway
    gw.create_endpoint(tmp_path, unique_name)
    local = tmp_path / "m.onnx"
    local.write_bytes((model_dir / "classifier.onnx").read_bytes())
    spec = tmp_path / "big.yml"
    spec.write_text(
        f"name: big\nendpoint_name: {unique_name}\nmodel: {{path: m.onnx}}\n"
        "host: ray\nray_actor_options: {num_cpus: 64}\n"  # the test cluster has 2
    )
    started = time.monotonic()
    code, out = gw.cli("deployment", "create", "-f", str(spec), ok=False)
    assert code == 1 and "not running after 20 s" in out and "'num_cpus': 64" in out, out
    assert time.monotonic() - started < 60
    _, listed = gw.cli("deployment", "list", "-e", unique_name)
    assert "big" not in listed
    # Its application is deleted: nothing is left waiting for CPUs on the cluster.
    wait_for(lambda: not ray_cluster.processes_named("ServeReplica", unique_name), 30)


def test_a_scoring_script_runs_on_ray_with_its_model_folder_and_environment(
    ray_gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gw = ray_gateway
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "score.py").write_text(SCORE_PY)
    (tmp_path / "model.onnx").write_bytes((model_dir / "classifier.onnx").read_bytes())
    gw.create_endpoint(tmp_path, unique_name)
    spec = tmp_path / "script.yml"
    spec.write_text(
        f"name: script\nendpoint_name: {unique_name}\nmodel: {{path: model.onnx}}\n"
        "code_configuration: {code: src, scoring_script: score.py}\n"
        "environment_variables: {GREETING: hello}\n" + RAY
    )
    gw.cli("deployment", "create", "--all-traffic", "-f", str(spec))
    url, auth = f"{gw.url}/endpoints/{unique_name}/score", gw.auth(unique_name)
    r = httpx.post(url, headers=auth, content=b'{"values": [1, 2, 3.5]}')
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["total"] == 6.5 and answer["files"] == ["model.onnx"]
    assert answer["greeting"] == "hello" and answer["pid"] != gw.process.pid
    r = httpx.post(url, headers=auth, content=b'{"fail": "bad row 7"}')
    assert r.status_code == 424, r.text
    assert r.json()["error"] == "scoring script raised ValueError: cannot score: bad row 7"


def test_ray_serve_scales_the_replicas_with_scale_settings(
    ray_gateway: Gateway, tmp_path: Path, ray_cluster: RayCluster, unique_name: str
) -> None:
    """`scale_settings: target_utilization` becomes the application's autoscaling_config:
    Ray Serve adds a replica under load and removes it after; the gateway's gauge and
    audit log follow, and no request fails."""
    gw = ray_gateway
    gw.deploy_fake(
        tmp_path,
        unique_name,
        0.05,
        "max_concurrent_requests_per_instance: 1, request_timeout_ms: 20000",
        # No CPU asked: the module's earlier deployments may hold the cluster's 2 CPUs, and
        # the added replica must find room whatever ran before.
        extra_yaml="host: ray\nray_actor_options: {num_cpus: 0}\n"
        "scale_settings: {type: target_utilization, min_instances: 1, max_instances: 2, "
        "polling_interval: 1, scale_down_delay: 2}\n",
    )
    assert len(replica_pids(ray_cluster, unique_name)) == 1

    def gauge() -> float:
        (value,) = metric(gw, "servegate_instances", unique_name).values()
        return value

    url = f"{gw.url}/endpoints/{unique_name}/score"
    with Load(url, {"input_data": [[1.0]]}, {}, threads=3) as load:
        wait_for(lambda: gauge() == 2, timeout_s=60)
    assert load.failed() == [] and load.errors == [] and load.results
    assert len(replica_pids(ray_cluster, unique_name)) == 2
    wait_for(lambda: gauge() == 1, timeout_s=60)
    r = httpx.get(
        f"{gw.url}/management/audit",
        params={"target": f"endpoints/{unique_name}/deployments/slow"},
        headers={"Authorization": f"Bearer {gw.admin_token}"},
    )
    changes = [
        (e["before"]["instances"], e["after"]["instances"])
        for e in reversed(r.json())
        if e["action"] == "deployment.scale"
    ]
    assert changes == [(1, 2), (2, 1)], r.json()
    assert all("Ray Serve scaled" in e["reason"] for e in r.json() if e["actor"] == "autoscaler")


def test_a_cluster_that_goes_away_is_a_503_naming_it_and_readiness_reports_it(
    tmp_path: Path, model_dir: Path
) -> None:
    """Its own cluster, stopped under a running gateway: scoring on it fails at once with
    503 (not a hang until the deadline), /v2/health/ready says why, and the gateway keeps
    serving its other deployments."""
    cluster = start_ray_cluster(cpus=1)
    gw = start_gateway(
        tmp_path / "home", env_extra={**RAY_ENV, "SERVEGATE_RAY_ADDRESS": cluster.address}
    )
    try:
        gw.deploy_fake(
            tmp_path,
            "onray",
            0.0,
            "max_concurrent_requests_per_instance: 2",
            extra_yaml="host: ray\nray_actor_options: {num_cpus: 0.25}\n",
        )
        gw.create_endpoint(tmp_path, "local", "auth_mode: none\n")
        gw.deploy(tmp_path, "local", "blue", model_dir / "classifier.onnx")
        body = {"input_data": [[1.0]]}
        assert httpx.post(f"{gw.url}/endpoints/onray/score", json=body).status_code == 200
        cluster.stop()
        ready = wait_for(
            lambda: (r := httpx.get(f"{gw.url}/v2/health/ready")).status_code == 503 and r,
            timeout_s=15,
        )
        assert f"the Ray cluster at '{cluster.address}' is unreachable" in ready.json()["error"]
        assert "onray/slow" in ready.json()["deployments"]
        r = httpx.post(f"{gw.url}/endpoints/onray/score", json=body, timeout=30)
        assert r.status_code == 503, r.text  # at once, not a 408 at the deadline
        assert f"the Ray cluster at '{cluster.address}' is unreachable" in r.json()["error"]
        r = httpx.get(f"{gw.url}/v2/models/onray/ready")
        assert r.status_code == 503 and "unreachable" in r.json()["error"]
        r = httpx.post(f"{gw.url}/endpoints/local/score", json={"input_data": ROWS})
        assert r.status_code == 200, r.text
    finally:
        cluster.stop()
        assert_clean_exit(gw)
