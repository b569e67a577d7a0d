"""Every runtime end to end through a real gateway: torch (TorchScript and
torch.export), Python scoring scripts in worker processes, a remote Open
Inference Protocol server, and onnxruntime in worker processes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests import models
from tests.conftest import Gateway, assert_clean_exit, start_gateway, write_yaml
from tests.gateway.test_server import in_process

X = np.random.default_rng(7).normal(size=(5, 4)).astype(np.float32)
SIGNATURE_YAML = """signature:
  inputs: [{name: x, datatype: FP32, shape: [-1, 4]}]
  outputs:
    - {name: probabilities, datatype: FP32, shape: [-1, 3]}
    - {name: label, datatype: INT64, shape: [-1]}
"""


def v2(
    gateway: Gateway,
    endpoint: str,
    auth: dict[str, str],
    x: np.ndarray,
    name: str = "x",
    **params: object,
) -> httpx.Response:
    body = {
        "inputs": [
            {"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }
    if params:
        body["parameters"] = params
    return httpx.post(
        f"{gateway.url}/v2/models/{endpoint}/infer", json=body, headers=auth, timeout=30
    )


def outputs(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in response.json()["outputs"]}


@pytest.fixture(scope="module")
def torch_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return models.torch_models(tmp_path_factory.mktemp("torch"))


def test_torchscript_with_signature_from_the_deployment(
    gateway: Gateway, tmp_path: Path, torch_files: tuple[Path, Path], unique_name: str
) -> None:
    script, _ = torch_files
    gateway.create_endpoint(tmp_path, unique_name)
    gateway.deploy(
        tmp_path,
        unique_name,
        "torchscript",
        script,
        extra_yaml=SIGNATURE_YAML + "batching: {max_batch_size: 8}\n",
    )
    auth = gateway.auth(unique_name)
    module = torch.jit.load(str(script))
    want_p, want_l = (t.detach().numpy() for t in module(torch.from_numpy(X)))
    got = outputs(v2(gateway, unique_name, auth, X))
    np.testing.assert_allclose(got["probabilities"], want_p, rtol=1e-6)
    np.testing.assert_array_equal(got["label"], want_l)
    meta = httpx.get(f"{gateway.url}/v2/models/{unique_name}", headers=auth).json()
    assert meta["platform"] == "pytorch_libtorch" and meta["inputs"][0]["shape"] == [-1, 4]


def test_torchscript_without_signature_is_refused_with_advice(
    gateway: Gateway, tmp_path: Path, torch_files: tuple[Path, Path], unique_name: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name)
    local = tmp_path / "m.pt"
    local.write_bytes(torch_files[0].read_bytes())
    spec = write_yaml(
        tmp_path / "d.yml",
        f"name: torchscript\nendpoint_name: {unique_name}\nmodel: {{path: m.pt}}\n",
    )
    code, out = gateway.cli("deployment", "create", "-f", str(spec), ok=False)
    assert code != 0 and "carries no signature" in out and "signature:" in out


def test_torch_export_program_carries_its_signature(
    gateway: Gateway, tmp_path: Path, torch_files: tuple[Path, Path], unique_name: str
) -> None:
    _, exported = torch_files
    gateway.create_endpoint(tmp_path, unique_name)
    gateway.deploy(tmp_path, unique_name, "exported", exported)
    auth = gateway.auth(unique_name)
    meta = httpx.get(f"{gateway.url}/v2/models/{unique_name}", headers=auth).json()
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["output_0", "output_1"]
    program = torch.export.load(str(exported)).module()
    want_p, want_l = (t.detach().numpy() for t in program(torch.from_numpy(X)))
    got = outputs(v2(gateway, unique_name, auth, X))
    np.testing.assert_allclose(got["output_0"], want_p, rtol=1e-6)
    np.testing.assert_array_equal(got["output_1"], want_l)
    # /score works for torch deployments too.
    r = httpx.post(
        f"{gateway.url}/endpoints/{unique_name}/score",
        headers=auth,
        json={"input_data": X[:2].tolist()},
    )
    assert r.json()["output_1"] == want_l[:2].tolist()


SCORE_PY = """
import json, os, time

def init():
    global files
    files = sorted(os.listdir(os.environ["AZUREML_MODEL_DIR"]))
    assert os.environ["SERVEGATE_MODEL_DIR"] == os.environ["AZUREML_MODEL_DIR"]

def run(raw_data):
    data = json.loads(raw_data)
    if "fail" in data:
        raise ValueError("cannot score: " + data["fail"])
    if "sleep" in data:
        time.sleep(data["sleep"])
    if "exit" in data:
        os._exit(3)
    return {"total": sum(data["values"]), "files": files, "pid": os.getpid(),
            "greeting": os.environ.get("GREETING")}
"""


@pytest.fixture
def script_endpoint(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> tuple[str, dict[str, str]]:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "score.py").write_text(SCORE_PY)
    (tmp_path / "model.onnx").write_bytes((model_dir / "classifier.onnx").read_bytes())
    gateway.create_endpoint(tmp_path, unique_name)
    spec = write_yaml(
        tmp_path / "d.yml",
        f"""
name: script
endpoint_name: {unique_name}
model: {{path: model.onnx}}
code_configuration: {{code: src, scoring_script: score.py}}
instance_count: 2
environment_variables: {{GREETING: hello}}
request_settings: {{request_timeout_ms: 1500}}
""",
    )
    gateway.cli("deployment", "create", "--all-traffic", "-f", str(spec))
    return unique_name, gateway.auth(unique_name)


def test_scoring_script_init_run_and_errors(
    gateway: Gateway, script_endpoint: tuple[str, dict[str, str]]
) -> None:
    name, auth = script_endpoint
    url = f"{gateway.url}/endpoints/{name}/score"
    r = httpx.post(url, headers=auth, content=b'{"values": [1, 2, 3.5]}')
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["total"] == 6.5 and answer["files"] == ["model.onnx"]
    assert answer["greeting"] == "hello"  # environment_variables reach the worker
    assert answer["pid"] != gateway.process.pid  # a worker process, not the gateway

    r = httpx.post(url, headers=auth, content=b'{"fail": "bad row 7"}')
    assert r.status_code == 424
    assert r.json()["error"] == "scoring script raised ValueError: cannot score: bad row 7"
    assert r.headers["ms-azureml-model-error-reason"] == "model_error"
    assert r.headers["ms-azureml-model-error-statuscode"] == "500"
    # The gateway and the worker are still fine.
    assert httpx.post(url, headers=auth, content=b'{"values": [1]}').json()["total"] == 1
    r = httpx.post(f"{gateway.url}/v2/models/{name}/infer", headers=auth, json={"inputs": []})
    assert r.status_code == 400 and "scoring script" in r.json()["error"]


def test_a_crashed_or_hung_worker_is_replaced(
    gateway: Gateway, script_endpoint: tuple[str, dict[str, str]]
) -> None:
    name, auth = script_endpoint
    url = f"{gateway.url}/endpoints/{name}/score"
    r = httpx.post(url, headers=auth, content=b'{"exit": true}')
    assert r.status_code == 503 and "exited (exit code 3)" in r.json()["error"]
    assert "being replaced" in r.json()["error"]
    r = httpx.post(url, headers=auth, content=b'{"sleep": 30}', timeout=30)
    assert r.status_code == 408, r.text
    # Both workers come back and serve again: two calls at once run on both (one at a
    # time runs on the most recently used worker).
    deadline = time.monotonic() + 30
    pids: set[int] = set()
    body = b'{"values": [2], "sleep": 0.2}'
    with ThreadPoolExecutor(2) as pool:
        while time.monotonic() < deadline and len(pids) < 2:
            both = list(pool.map(lambda _: httpx.post(url, headers=auth, content=body), [0, 1]))
            pids = {r.json()["pid"] for r in both if r.status_code == 200}
    assert len(pids) == 2


def _worker_pids(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[3]) == parent and b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return pids


def test_worker_killed_mid_load_others_keep_serving(tmp_path: Path, model_dir: Path) -> None:
    gw = start_gateway(tmp_path / "home")
    try:
        gw.create_endpoint(tmp_path, "procs", "auth_mode: none\n")
        gw.deploy(
            tmp_path,
            "procs",
            "blue",
            model_dir / "classifier.onnx",
            extra_yaml="host: process\ninstance_count: 2\n"
            "request_settings: {max_concurrent_requests_per_instance: 2}\n",
        )
        workers = _worker_pids(gw.process.pid)
        assert len(workers) == 4  # instance_count x max_concurrent_requests_per_instance
        want = in_process(model_dir / "classifier.onnx", {"input": X})["label"].tolist()
        statuses: list[int] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client() as client:
                while not stop.is_set():
                    r = client.post(
                        f"{gw.url}/endpoints/procs/score",
                        json={"input_data": X.tolist()},
                        timeout=30,
                    )
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        assert r.json()["label"] == want
                    else:
                        assert r.status_code in (429, 503), r.text

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        os.kill(workers[0], signal.SIGKILL)
        time.sleep(3.0)
        stop.set()
        for t in threads:
            t.join(30)
        ok = statuses.count(200)
        failed = [s for s in statuses if s != 200]
        assert ok > 50 and len(failed) <= 1, (ok, failed)  # only the killed worker's request
        replaced = _worker_pids(gw.process.pid)
        assert len(replaced) == 4 and workers[0] not in replaced
    finally:
        assert_clean_exit(gw)


@pytest.fixture
def remote_server(tmp_path: Path, model_dir: Path) -> Iterator[Gateway]:
    """A second, real Open Inference Protocol server (another servegate) with two models."""
    gw = start_gateway(tmp_path / "remote-home")
    try:
        gw.create_endpoint(tmp_path, "upstream")
        gw.deploy(tmp_path, "upstream", "version1", model_dir / "classifier.onnx")
        gw.create_endpoint(tmp_path, "words")
        gw.deploy(tmp_path, "words", "version1", model_dir / "text.onnx")
        yield gw
    finally:
        assert_clean_exit(gw)


def test_remote_runtime_fronts_another_server(
    gateway: Gateway, remote_server: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name)
    for deployment, model in (("remote", "upstream"), ("words", "words")):
        headers = json.dumps(remote_server.auth(model))
        spec = write_yaml(
            tmp_path / f"{deployment}.yml",
            f"""
name: {deployment}
endpoint_name: {unique_name}
url: {remote_server.url}/v2/models/{model}/versions/version1
runtime_options: {{headers: {headers}}}
""",
        )
        gateway.cli(
            "deployment",
            "create",
            "-f",
            str(spec),
            *(["--all-traffic"] if deployment == "remote" else []),
        )
    auth = gateway.auth(unique_name)
    meta = httpx.get(f"{gateway.url}/v2/models/{unique_name}", headers=auth).json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    got = outputs(v2(gateway, unique_name, auth, X, name="input"))
    want = in_process(model_dir / "classifier.onnx", {"input": X})
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-6)
    # BYTES through the remote, both ways.
    r = httpx.post(
        f"{gateway.url}/endpoints/{unique_name}/score",
        json={"input_data": ["dog", "owl"]},
        headers={**auth, "azureml-model-deployment": "words"},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"echo": ["dog", "owl"], "token_id": [2, 0]}
    # The remote's own validation error comes back as the caller's 400.
    r = httpx.post(
        f"{gateway.url}/v2/models/{unique_name}/infer",
        headers=auth,
        json={
            "inputs": [
                {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
            ],
            "outputs": [{"name": "nope"}],
        },
    )
    assert r.status_code == 400
    # The remote going away is the model failing (424), not the gateway.
    assert_clean_exit(remote_server)
    r = v2(gateway, unique_name, auth, X, name="input")
    assert r.status_code == 424 and "remote" in r.json()["error"]
