"""End to end through the CLI and a real gateway process: register, create,
deploy, score; answers equal onnxruntime run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import Gateway, write_yaml

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [0.0, -1.0, 2.5, 9.0]]


def in_process(model: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def setup_endpoint(gw: Gateway, tmp_path: Path, name: str, model_dir: Path) -> str:
    """Via the CLI: register two model versions, create the endpoint, blue (100%) and green."""
    gw.cli(
        "model", "register", "--name", f"{name}-clf", "--path", str(model_dir / "classifier.onnx")
    )
    gw.cli(
        "model",
        "register",
        "--name",
        f"{name}-clf",
        "--path",
        str(model_dir / "classifier-v2.onnx"),
    )
    gw.cli(
        "endpoint",
        "create",
        "-f",
        str(
            write_yaml(
                tmp_path / "endpoint.yml",
                f"""
$schema: https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json
name: {name}
auth_mode: key
description: test endpoint
""",
            )
        ),
    )
    gw.cli(
        "deployment",
        "create",
        "--all-traffic",
        "-f",
        str(
            write_yaml(
                tmp_path / "blue.yml",
                f"""
name: blue
endpoint_name: {name}
model: {name}-clf:1
instance_count: 2
request_settings:
  request_timeout_ms: 3000
""",
            )
        ),
    )
    gw.cli(
        "deployment",
        "create",
        "-f",
        str(
            write_yaml(
                tmp_path / "green.yml",
                f"""
name: green
endpoint_name: {name}
model:
  name: {name}-clf
  version: 2
""",
            )
        ),
    )
    _, out = gw.cli("endpoint", "get-credentials", "--name", name)
    return str(json.loads(out)["primaryKey"])


def test_cli_flow_scores_like_onnxruntime(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    key = setup_endpoint(gateway, tmp_path, unique_name, model_dir)
    auth = {"Authorization": f"Bearer {key}"}
    x = np.array(ROWS, dtype=np.float32)
    want_blue = in_process(model_dir / "classifier.onnx", {"input": x})
    want_green = in_process(model_dir / "classifier-v2.onnx", {"input": x})

    # Azure-style /score: all traffic goes to blue.
    r = httpx.post(
        f"{gateway.url}/endpoints/{unique_name}/score", json={"input_data": ROWS}, headers=auth
    )
    assert r.status_code == 200, r.text
    assert r.headers["azureml-model-deployment"] == "blue"
    np.testing.assert_allclose(r.json()["probabilities"], want_blue["probabilities"], rtol=1e-6)
    assert r.json()["label"] == want_blue["label"].tolist()

    # The header targets green, which takes 0% of traffic.
    r = httpx.post(
        f"{gateway.url}/endpoints/{unique_name}/score",
        json={"input_data": {"input": ROWS}},
        headers={**auth, "azureml-model-deployment": "green"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["azureml-model-deployment"] == "green"
    np.testing.assert_allclose(r.json()["probabilities"], want_green["probabilities"], rtol=1e-6)

    # Open Inference Protocol v2 JSON, both paths.
    body = {
        "id": "req-7",
        "inputs": [
            {"name": "input", "shape": [3, 4], "datatype": "FP32", "data": x.ravel().tolist()}
        ],
    }
    r = httpx.post(f"{gateway.url}/v2/models/{unique_name}/infer", json=body, headers=auth)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["id"] == "req-7" and doc["model_name"] == unique_name
    outputs = {o["name"]: o for o in doc["outputs"]}
    assert outputs["probabilities"]["shape"] == [3, 3]
    np.testing.assert_allclose(
        np.array(outputs["probabilities"]["data"]).reshape(3, 3),
        want_blue["probabilities"],
        rtol=1e-6,
    )
    r = httpx.post(
        f"{gateway.url}/v2/models/{unique_name}/versions/green/infer",
        json={**body, "outputs": [{"name": "label"}]},
        headers=auth,
    )
    assert r.status_code == 200, r.text
    assert [o["name"] for o in r.json()["outputs"]] == ["label"]
    assert r.json()["outputs"][0]["data"] == want_green["label"].tolist()

    # The CLI's invoke reaches the same answer.
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps({"input_data": ROWS}))
    _, out = gateway.cli(
        "endpoint",
        "invoke",
        "--name",
        unique_name,
        "--request-file",
        str(request_file),
        "--deployment",
        "green",
    )
    assert json.loads(out)["label"] == want_green["label"].tolist()


def test_model_registry_reads_signature_and_versions(
    gateway: Gateway, model_dir: Path, unique_name: str
) -> None:
    name = f"{unique_name}-sig"
    _, out = gateway.cli(
        "model", "register", "--name", name, "--path", str(model_dir / "two_inputs.onnx")
    )
    first = json.loads(out)
    assert first["version"] == 1 and first["runtime"] == "onnx"
    assert first["signature"]["inputs"] == [
        {"name": "a", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "b", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "k", "datatype": "INT32", "shape": [-1]},
    ]
    _, out = gateway.cli(
        "model", "register", "--name", name, "--path", str(model_dir / "two_inputs.onnx")
    )
    assert json.loads(out)["version"] == 2
    # Same content, one artifact.
    assert json.loads(out)["sha256"] == first["sha256"]
    _, out = gateway.cli(
        "model",
        "register",
        "--name",
        name,
        "--version",
        "7",
        "--path",
        str(model_dir / "text.onnx"),
    )
    assert json.loads(out)["signature"]["inputs"][0]["datatype"] == "BYTES"
    code, out = gateway.cli(
        "model",
        "register",
        "--name",
        name,
        "--version",
        "7",
        "--path",
        str(model_dir / "text.onnx"),
        ok=False,
    )
    assert code != 0 and "version 7 already exists" in out
    _, out = gateway.cli("model", "list", "--name", name)
    assert [m["version"] for m in json.loads(out)] == [1, 2, 7]
    _, out = gateway.cli("model", "show", "--name", name)
    assert json.loads(out)["version"] == 7
    code, out = gateway.cli("model", "show", "--name", name, "--version", "3", ok=False)
    assert code != 0 and "version 3" in out and "not registered" in out


def test_multi_input_model_and_local_model_path(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    """A deployment YAML with `model: {path: ...}` uploads the file; /score takes named inputs."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.onnx").write_bytes((model_dir / "two_inputs.onnx").read_bytes())
    gateway.create_endpoint(tmp_path, unique_name)
    spec = f"name: main\nendpoint_name: {unique_name}\nmodel:\n  path: m/model.onnx\n"
    gateway.cli(
        "deployment", "create", "--all-traffic", "-f", str(write_yaml(tmp_path / "d.yml", spec))
    )
    _, out = gateway.cli("deployment", "show", "--name", "main", "--endpoint-name", unique_name)
    shown = json.loads(out)
    assert shown["model"] == {"name": f"{unique_name}-main", "version": 1}
    assert shown["runtime"] == "onnx"
    auth = gateway.auth(unique_name, "secondaryKey")
    r = httpx.post(
        f"{gateway.url}/endpoints/{unique_name}/score",
        headers=auth,
        json={"input_data": {"a": [[1, 2, 3]], "b": [[0.5, 0.5, 0.5]], "k": [4]}},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"total": [[1.5, 2.5, 3.5]], "scaled": [[2.0, 4.0, 6.0]], "k_out": [4]}
    # A list is only accepted for a single-input model; the message says why.
    r = httpx.post(
        f"{gateway.url}/endpoints/{unique_name}/score",
        headers=auth,
        json={"input_data": [[1, 2, 3]]},
    )
    assert r.status_code == 400 and "input_data" in r.json()["error"]
    assert "a, b, k" in r.json()["error"]


def test_endpoint_list_show_update_and_delete(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    setup_endpoint(gateway, tmp_path, unique_name, model_dir)
    _, out = gateway.cli(
        "endpoint", "update", "--name", unique_name, "--traffic", "blue=70,green=30"
    )
    assert json.loads(out)["traffic"] == {"blue": 70, "green": 30}
    _, out = gateway.cli("endpoint", "show", "--name", unique_name)
    shown = json.loads(out)
    assert shown["deployments"] == ["blue", "green"]
    assert shown["scoring_uri"].endswith(f"/endpoints/{unique_name}/score")
    _, out = gateway.cli("endpoint", "list")
    assert unique_name in [e["name"] for e in json.loads(out)]
    _, out = gateway.cli("deployment", "list", "--endpoint-name", unique_name)
    assert [d["name"] for d in json.loads(out)] == ["blue", "green"]

    # Deleting a deployment that takes traffic is refused with a clear message.
    code, out = gateway.cli("deployment", "delete", "-n", "green", "-e", unique_name, ok=False)
    assert code != 0 and "still takes 30% of traffic" in out
    gateway.cli("endpoint", "update", "--name", unique_name, "--traffic", "blue=100 green=0")
    gateway.cli("deployment", "delete", "-n", "green", "-e", unique_name)
    _, out = gateway.cli("endpoint", "show", "--name", unique_name)
    assert json.loads(out)["deployments"] == ["blue"]
    assert json.loads(out)["traffic"] == {"blue": 100}

    gateway.cli("endpoint", "delete", "--name", unique_name, "--yes")
    code, out = gateway.cli("endpoint", "show", "--name", unique_name, ok=False)
    assert code != 0 and f"endpoint '{unique_name}' does not exist" in out


@pytest.mark.parametrize(
    "traffic, message",
    [
        ("blue=60,green=30", "sum to 0 or 100, they sum to 90"),
        ("blue=100,purple=0", "names deployment 'purple', which does not exist"),
        ("blue=100 green=0", ""),
        ("blue=50,red=50", "names deployment 'red', which does not exist"),
        ("blue=ninety", "'blue=ninety' is not NAME=PERCENT"),
    ],
)
def test_traffic_validation(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str, traffic: str, message: str
) -> None:
    setup_endpoint(gateway, tmp_path, unique_name, model_dir)
    code, out = gateway.cli(
        "endpoint", "update", "--name", unique_name, "--traffic", traffic, ok=not message
    )
    if message:
        assert code != 0 and message in out
