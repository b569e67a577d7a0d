"""Triton model repositories deployed as they are (`model: {type: triton_model, path:
<folder>}`, Azure ML's no-code Triton layout): served by onnxruntime under the config's
names and shapes, with its dynamic batching."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests import models
from tests.conftest import Gateway, delete_endpoints, write_yaml
from tests.gateway.test_server import in_process

CONFIG = """
name: "classifier"
backend: "{backend}"
max_batch_size: 16
input [ {{ name: "{input}" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [
  {{ name: "probabilities" data_type: TYPE_FP32 dims: [ 3 ] }},
  {{ name: "label" data_type: TYPE_INT64 dims: [ 1 ] reshape: {{ shape: [ ] }} }}
]
dynamic_batching {{ max_queue_delay_microseconds: 2000 }}
"""
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]]


def repository(
    root: Path, model_dir: Path, backend: str = "onnxruntime", name: str = "input"
) -> Path:
    """`root/classifier/config.pbtxt` and `root/classifier/1/model.onnx`."""
    folder = root / "classifier"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.onnx").write_bytes((model_dir / "classifier.onnx").read_bytes())
    (folder / "config.pbtxt").write_text(CONFIG.format(backend=backend, input=name))
    return root


def create(
    gw: Gateway, tmp_path: Path, endpoint: str, model: str, ok: bool = True, verb: str = "create"
) -> tuple[int, str]:
    spec = write_yaml(
        tmp_path / f"{endpoint}.yml", f"name: blue\nendpoint_name: {endpoint}\nmodel: {model}\n"
    )
    traffic = ["--all-traffic"] if verb == "create" else []
    return gw.cli("deployment", verb, *traffic, "-f", str(spec), ok=ok)


def test_a_triton_repository_is_served_with_its_config(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    repository(tmp_path / "models", model_dir)
    gateway.create_endpoint(tmp_path, unique_name, "auth_mode: none\n")
    create(gateway, tmp_path, unique_name, "{type: triton_model, path: models}")
    stored = json.loads(gateway.cli("deployment", "show", "-e", unique_name, "-n", "blue")[1])
    assert stored["runtime"] == "triton"
    assert stored["batching"] == {"max_batch_size": 16, "max_batch_delay_ms": 2.0}
    x = np.array(ROWS, dtype=np.float32)
    want = in_process(model_dir / "classifier.onnx", {"input": x})
    r = httpx.post(f"{gateway.url}/endpoints/{unique_name}/score", json={"input_data": ROWS})
    assert r.status_code == 200, r.text
    # `label` is dims [1] with reshape [] : [batch, 1] on the wire, as Triton answers it.
    assert r.json()["label"] == [[v] for v in want["label"].tolist()]
    client = triton.InferenceServerClient(gateway.host_port)
    item = triton.InferInput("input", list(x.shape), "FP32")
    item.set_data_from_numpy(x)
    answer = client.infer(unique_name, [item])
    np.testing.assert_allclose(answer.as_numpy("probabilities"), want["probabilities"], rtol=1e-6)
    metadata = client.get_model_metadata(unique_name)
    assert metadata["platform"] == "onnxruntime_onnx"
    assert [o["shape"] for o in metadata["outputs"]] == [[-1, 3], [-1, 1]]
    assert answer.as_numpy("label").tolist() == [[v] for v in want["label"].tolist()]
    assert client.get_model_config(unique_name)["max_batch_size"] == 16
    # The model's own folder, without `type`: found from its config.pbtxt.
    create(gateway, tmp_path, unique_name, "{path: models/classifier}", verb="update")
    r = httpx.post(f"{gateway.url}/endpoints/{unique_name}/score", json={"input_data": ROWS})
    assert r.status_code == 200 and r.json()["label"] == [[v] for v in want["label"]], r.text


def test_a_repository_that_cannot_be_served_is_refused_naming_why(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name)
    for folder, kwargs, message in (
        ("torch", {"backend": "pytorch"}, "backend 'pytorch' is not served here"),
        ("renamed", {"name": "features"}, "input 'features' is not in model.onnx"),
    ):
        repository(tmp_path / folder, model_dir, **kwargs)
        code, out = create(
            gateway, tmp_path, unique_name, f"{{type: triton_model, path: {folder}}}", ok=False
        )
        assert code != 0 and message in out, out
    two = repository(tmp_path / "two", model_dir)
    (two / "other").mkdir()
    (two / "other" / "config.pbtxt").write_text('name: "other"')
    code, out = create(gateway, tmp_path, unique_name, "{type: triton_model, path: two}", ok=False)
    assert code != 0 and "holds 2 models (classifier, other)" in out, out


# -- Triton's own examples, as their clients run them ---------------------------------
SIMPLE_CONFIG = """
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
        { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
         { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
"""
DENSENET_CONFIG = """
name: "densenet_onnx"
platform: "onnxruntime_onnx"
max_batch_size : 0
input [ { name: "data_0" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 4, 4 ]
          reshape { shape: [ 1, 3, 4, 4 ] } } ]
output [ { name: "fc6_1" data_type: TYPE_FP32 dims: [ 10 ]
           reshape { shape: [ 1, 10, 1, 1 ] } label_filename: "labels.txt" } ]
"""
LABELS = [f"CLASS-{i}" for i in range(10)]


def _simple_repository(root: Path) -> Path:
    (root / "simple" / "1").mkdir(parents=True)
    models.simple_add_sub(root / "simple" / "1" / "model.onnx")
    (root / "simple" / "config.pbtxt").write_text(SIMPLE_CONFIG)
    return root / "simple"


def test_triton_simple_example_runs_unchanged(
    grpc_gateway: tuple[Gateway, str], tmp_path: Path
) -> None:
    """simple_http_infer_client's and simple_grpc_health_metadata's calls: infer with and
    without requested outputs, statistics, the config from the file, and the wording
    clients look for when a model is unknown."""
    gw, grpc_url = grpc_gateway
    folder = _simple_repository(tmp_path / "repo")
    gw.create_endpoint(tmp_path, "simple", "auth_mode: none\n")
    create(gw, tmp_path, "simple", f"{{type: triton_model, path: {folder}}}")
    a = np.arange(16, dtype=np.int32)[None, :]
    b = np.full((1, 16), -1, dtype=np.int32)
    client = triton.InferenceServerClient(gw.host_port)
    inputs = [
        triton.InferInput("INPUT0", [1, 16], "INT32"),
        triton.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    inputs[0].set_data_from_numpy(a, binary_data=False)
    inputs[1].set_data_from_numpy(b, binary_data=True)
    outputs = [
        triton.InferRequestedOutput("OUTPUT0", binary_data=True),
        triton.InferRequestedOutput("OUTPUT1", binary_data=False),
    ]
    result = client.infer("simple", inputs, outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.get_response()["model_name"] == "simple"
    assert result.get_response()["model_version"] == "1"
    result = client.infer("simple", inputs)  # no outputs asked: all, binary
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    stats = client.get_inference_statistics(model_name="simple")
    assert len(stats["model_stats"]) == 1
    assert stats["model_stats"][0]["inference_count"] == 2
    assert stats["model_stats"][0]["version"] == "1"
    config = client.get_model_config("simple")
    assert config["max_batch_size"] == 8 and config["input"][0]["dims"] == [16]
    assert client.get_model_metadata("simple")["versions"] == ["1"]
    assert client.is_model_ready("simple", "1")
    with pytest.raises(InferenceServerException) as caught:
        client.infer("wrong_model_name", inputs)
    assert caught.value.message().startswith("Request for unknown model")
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("wrong_model_name")
    assert "Request for unknown model" in caught.value.message()
    # Over gRPC: the same answers, and the calls that were UNIMPLEMENTED.
    rpc = tg.InferenceServerClient(grpc_url)
    assert rpc.get_model_metadata("simple").name == "simple"
    assert rpc.get_model_config("simple").config.max_batch_size == 8
    grpc_inputs = [
        tg.InferInput("INPUT0", [1, 16], "INT32"),
        tg.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    grpc_inputs[0].set_data_from_numpy(a)
    grpc_inputs[1].set_data_from_numpy(b)
    np.testing.assert_array_equal(rpc.infer("simple", grpc_inputs).as_numpy("OUTPUT0"), a + b)
    grpc_stats = rpc.get_inference_statistics("simple")
    assert len(grpc_stats.model_stats) == 1 and grpc_stats.model_stats[0].inference_count == 3
    admin = {"authorization": f"Bearer {gw.admin_token}"}
    index = rpc.get_model_repository_index(headers=admin)
    assert ("simple", "1", "READY") in [(m.name, m.version, m.state) for m in index.models]
    with pytest.raises(InferenceServerException) as caught:
        rpc.infer("wrong_model_name", grpc_inputs)
    assert "Request for unknown model" in caught.value.message()


def test_a_reshaped_model_with_labels_answers_in_triton_shapes_and_classes(
    grpc_gateway: tuple[Gateway, str], tmp_path: Path
) -> None:
    """image_client's model: served under its own name (`densenet_onnx`, which no endpoint
    can be called), reshape on the wire, and the classification extension."""
    gw, grpc_url = grpc_gateway
    folder = tmp_path / "repo" / "densenet_onnx"
    (folder / "1").mkdir(parents=True)
    models.image_classifier(folder / "1" / "model.onnx")
    (folder / "config.pbtxt").write_text(DENSENET_CONFIG)
    (folder / "labels.txt").write_text("\n".join(LABELS))
    gw.create_endpoint(tmp_path, "vision", "auth_mode: none\n")
    create(gw, tmp_path, "vision", f"{{type: triton_model, path: {tmp_path / 'repo'}}}")
    client = triton.InferenceServerClient(gw.host_port)
    metadata = client.get_model_metadata("densenet_onnx")
    assert metadata["name"] == "densenet_onnx" and metadata["versions"] == ["1"]
    assert metadata["inputs"][0]["shape"] == [3, 4, 4]
    assert metadata["outputs"][0]["shape"] == [10]
    config = client.get_model_config("densenet_onnx")
    assert config["max_batch_size"] == 0 and config["input"][0]["format"] == "FORMAT_NCHW"
    image = np.random.default_rng(3).random((3, 4, 4), dtype=np.float32)
    expected = in_process(folder / "1" / "model.onnx", {"data_0": image[None]})["fc6_1"].ravel()
    item = triton.InferInput("data_0", [3, 4, 4], "FP32")
    item.set_data_from_numpy(image)
    scores = client.infer("densenet_onnx", [item]).as_numpy("fc6_1")
    assert scores.shape == (10,)
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    top = client.infer(
        "densenet_onnx", [item], outputs=[triton.InferRequestedOutput("fc6_1", class_count=3)]
    ).as_numpy("fc6_1")
    ranked = np.argsort(-expected)[:3]
    assert top.shape == (3,)
    assert [t.decode().split(":")[1:] for t in top] == [[str(i), LABELS[i]] for i in ranked]
    assert abs(float(top[0].decode().split(":")[0]) - expected[ranked[0]]) < 1e-4
    rpc = tg.InferenceServerClient(grpc_url)
    grpc_item = tg.InferInput("data_0", [3, 4, 4], "FP32")
    grpc_item.set_data_from_numpy(image)
    answer = rpc.infer(
        "densenet_onnx", [grpc_item], outputs=[tg.InferRequestedOutput("fc6_1", class_count=2)]
    ).as_numpy("fc6_1")
    assert [t.decode().split(":")[2] for t in answer] == [LABELS[i] for i in ranked[:2]]
    assert list(rpc.get_model_config("densenet_onnx").config.output[0].dims) == [10]


def test_azure_mls_triton_layout_without_a_config_at_the_endpoint_url(
    grpc_gateway: tuple[Gateway, str], tmp_path: Path
) -> None:
    """Azure ML's Triton sample: `models/model_1/1/model.onnx` and no config.pbtxt (Triton
    completes it from the model), a token endpoint, and tritonclient given the scoring URI
    without `/score`, asking for `model_1` version 1."""
    gw, _ = grpc_gateway
    (tmp_path / "models" / "model_1" / "1").mkdir(parents=True)
    model = tmp_path / "models" / "model_1" / "1" / "model.onnx"
    models.image_classifier(model)
    gw.create_endpoint(tmp_path, "my-endpoint", "auth_mode: aml_token\n")
    spec = write_yaml(
        tmp_path / "deployment.yaml",
        "name: blue\nendpoint_name: my-endpoint\nmodel:\n  name: sample-densenet-onnx-model\n"
        "  version: 1\n  path: ./models\n  type: triton_model\ninstance_count: 1\n"
        "instance_type: STANDARD_NC4AS_T4_V3\n",
    )
    gw.cli("deployment", "create", "-f", str(spec), "--all-traffic")
    scoring_uri = json.loads(gw.cli("endpoint", "show", "-n", "my-endpoint")[1])["scoring_uri"]
    token = json.loads(gw.cli("endpoint", "get-credentials", "-n", "my-endpoint")[1])["accessToken"]
    headers = {"Authorization": f"Bearer {token}"}
    base = scoring_uri.rsplit("/", 1)[0].split("://", 1)[1]
    client = triton.InferenceServerClient(url=base)
    assert client.is_server_ready(headers=headers)
    assert client.is_model_ready("model_1", "1", headers)
    image = np.random.default_rng(4).random((1, 3, 4, 4), dtype=np.float32)
    item = triton.InferInput("data_0", list(image.shape), "FP32")
    item.set_data_from_numpy(image)
    result = client.infer(
        "model_1", [item], outputs=[triton.InferRequestedOutput("fc6_1")], headers=headers
    )
    np.testing.assert_allclose(
        result.as_numpy("fc6_1"), in_process(model, {"data_0": image})["fc6_1"], rtol=1e-5
    )
    config = client.get_model_config("model_1", headers=headers)
    assert config["max_batch_size"] == 0 and config["input"][0]["dims"] == [1, 3, 4, 4]
    with pytest.raises(InferenceServerException) as caught:
        client.infer("model_1", [item])  # no token
    assert caught.value.status() == "401"
    delete_endpoints(gw, "my-endpoint")


def test_repository_errors_name_the_folder_the_user_gave(
    gateway: Gateway, tmp_path: Path, unique_name: str
) -> None:
    (tmp_path / "my-repo" / "empty").mkdir(parents=True)
    gateway.create_endpoint(tmp_path, unique_name)
    code, out = create(
        gateway, tmp_path, unique_name, "{type: triton_model, path: my-repo}", ok=False
    )
    assert code != 0 and "'my-repo' holds no Triton model" in out, out


def test_version_folders_serve_the_version_the_policy_picks(
    grpc_gateway: tuple[Gateway, str], tmp_path: Path
) -> None:
    """`mv/1` and `mv/2` without a config: Triton's default policy serves the highest
    (2), and asking for 1 is an unknown model; `version_policy: {specific: ...}` in
    config.pbtxt picks 1 instead."""
    gw, _ = grpc_gateway
    folder = tmp_path / "repo" / "mv"
    for version, classes in ((1, 3), (2, 5)):
        (folder / str(version)).mkdir(parents=True)
        models.image_classifier(folder / str(version) / "model.onnx", classes=classes)
    gw.create_endpoint(tmp_path, "versions-ep")
    create(gw, tmp_path, "versions-ep", f"{{type: triton_model, path: {folder}}}")
    key = json.loads(gw.cli("endpoint", "get-credentials", "-n", "versions-ep")[1])["primaryKey"]
    headers = {"Authorization": f"Bearer {key}"}
    client = triton.InferenceServerClient(url=gw.url.split("://", 1)[1])
    image = np.ones((1, 3, 4, 4), dtype=np.float32)

    def scores(version: str = "") -> np.ndarray:
        item = triton.InferInput("data_0", list(image.shape), "FP32")
        item.set_data_from_numpy(image)
        return client.infer("mv", [item], model_version=version, headers=headers).as_numpy("fc6_1")

    assert scores().shape == (1, 5, 1, 1) and scores("2").shape == (1, 5, 1, 1)
    assert client.get_model_metadata("mv", headers=headers)["versions"] == ["2"]
    with pytest.raises(InferenceServerException) as caught:
        scores("1")
    assert "Request for unknown model: 'mv' version 1" in caught.value.message()
    assert caught.value.status() == "404"

    (folder / "config.pbtxt").write_text("version_policy: { specific: { versions: [ 1 ] } }\n")
    create(gw, tmp_path, "versions-ep", f"{{type: triton_model, path: {folder}}}", verb="update")
    assert scores("1").shape == (1, 3, 1, 1) and scores().shape == (1, 3, 1, 1)
    with pytest.raises(InferenceServerException):
        scores("2")
    delete_endpoints(gw, "versions-ep")
