"""A standard Open Inference Protocol client (tritonclient.http) against the
gateway, with its defaults (binary tensors) and in JSON mode."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import Gateway
from tests.gateway.test_server import in_process


@pytest.fixture
def client(gateway: Gateway) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url=gateway.host_port)
    yield c
    c.close()


def deploy(gateway: Gateway, tmp_path: Path, name: str, model: Path) -> dict[str, str]:
    gateway.create_endpoint(tmp_path, name)
    gateway.deploy(tmp_path, name, "main", model)
    return gateway.auth(name)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_classifier(
    gateway: Gateway,
    client: triton.InferenceServerClient,
    tmp_path: Path,
    model_dir: Path,
    unique_name: str,
    binary: bool,
) -> None:
    headers = deploy(gateway, tmp_path, unique_name, model_dir / "classifier.onnx")
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "servegate"
    assert client.is_model_ready(unique_name, headers=headers)
    assert client.is_model_ready(unique_name, "main", headers=headers)
    meta = client.get_model_metadata(unique_name, headers=headers)
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["platform"] == "onnxruntime_onnx"

    x = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)
    infer_input = triton.InferInput("input", list(x.shape), "FP32")
    infer_input.set_data_from_numpy(x, binary_data=binary)
    if binary:
        outputs = None  # the client's default: every output, binary
    else:
        outputs = [
            triton.InferRequestedOutput("probabilities", binary_data=False),
            triton.InferRequestedOutput("label", binary_data=False),
        ]
    result = client.infer(
        unique_name, [infer_input], outputs=outputs, request_id="abc", headers=headers
    )
    want = in_process(model_dir / "classifier.onnx", {"input": x})
    np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], rtol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("label"), want["label"])
    assert result.get_response()["id"] == "abc"

    # The versions path targets the deployment by name.
    result = client.infer(unique_name, [infer_input], model_version="main", headers=headers)
    np.testing.assert_array_equal(result.as_numpy("label"), want["label"])


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bytes_tensor(
    gateway: Gateway,
    client: triton.InferenceServerClient,
    tmp_path: Path,
    model_dir: Path,
    unique_name: str,
    binary: bool,
) -> None:
    headers = deploy(gateway, tmp_path, unique_name, model_dir / "text.onnx")
    words = np.array([b"dog", b"zebra", b"fish", "caf\u00e9".encode()], dtype=object)
    infer_input = triton.InferInput("text", [4], "BYTES")
    infer_input.set_data_from_numpy(words, binary_data=binary)
    outputs = [
        triton.InferRequestedOutput("echo", binary_data=binary),
        triton.InferRequestedOutput("token_id", binary_data=binary),
    ]
    result = client.infer(unique_name, [infer_input], outputs=outputs, headers=headers)
    assert result.as_numpy("token_id").tolist() == [2, 0, 3, 0]
    echoed = [v if isinstance(v, bytes) else v.encode() for v in result.as_numpy("echo").tolist()]
    assert echoed == words.tolist()


def test_multiple_inputs_compression_and_output_selection(
    gateway: Gateway,
    client: triton.InferenceServerClient,
    tmp_path: Path,
    model_dir: Path,
    unique_name: str,
) -> None:
    headers = deploy(gateway, tmp_path, unique_name, model_dir / "two_inputs.onnx")
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.ones((2, 3), dtype=np.float32)
    k = np.array([7, 9], dtype=np.int32)
    inputs = []
    for name, array, datatype in (("a", a, "FP32"), ("b", b, "FP32"), ("k", k, "INT32")):
        item = triton.InferInput(name, list(array.shape), datatype)
        item.set_data_from_numpy(array, binary_data=name != "b")  # mixed JSON and binary
        inputs.append(item)
    for algorithm in ("gzip", "deflate"):
        result = client.infer(
            unique_name,
            inputs,
            outputs=[triton.InferRequestedOutput("total")],
            headers=headers,
            request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm,
        )
        np.testing.assert_array_equal(result.as_numpy("total"), a + b)
        assert result.as_numpy("scaled") is None


def test_errors_surface_with_the_gateways_message(
    gateway: Gateway,
    client: triton.InferenceServerClient,
    tmp_path: Path,
    model_dir: Path,
    unique_name: str,
) -> None:
    headers = deploy(gateway, tmp_path, unique_name, model_dir / "classifier.onnx")
    wrong_shape = triton.InferInput("input", [2, 3], "FP32")
    wrong_shape.set_data_from_numpy(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(
        InferenceServerException,
        match=r"input 'input': expected shape \[-1, 4\], received \[2, 3\]",
    ):
        client.infer(unique_name, [wrong_shape], headers=headers)

    wrong_dtype = triton.InferInput("input", [1, 4], "FP64")
    wrong_dtype.set_data_from_numpy(np.zeros((1, 4), dtype=np.float64))
    with pytest.raises(InferenceServerException, match="expected datatype FP32, received FP64"):
        client.infer(unique_name, [wrong_dtype], headers=headers)

    good = triton.InferInput("input", [1, 4], "FP32")
    good.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="invalid key") as info:
        client.infer(unique_name, [good], headers={"Authorization": "Bearer nope"})
    assert info.value.status() == "401"
    with pytest.raises(
        InferenceServerException,
        match="Request for unknown model: 'no-such-endpoint' is not found: no endpoint",
    ):
        client.infer("no-such-endpoint", [good], headers=headers)
    with pytest.raises(InferenceServerException, match="deployment 'ghost' does not exist"):
        client.infer(unique_name, [good], model_version="ghost", headers=headers)
    with pytest.raises(InferenceServerException, match="unknown output 'nope'"):
        client.infer(
            unique_name, [good], outputs=[triton.InferRequestedOutput("nope")], headers=headers
        )
    with pytest.raises(InferenceServerException, match="Request for unknown model"):
        client.get_model_metadata("no-such-endpoint", headers=headers)


def test_statistics_config_and_repository_extensions(
    gateway: Gateway,
    client: triton.InferenceServerClient,
    tmp_path: Path,
    model_dir: Path,
    unique_name: str,
) -> None:
    headers = deploy(gateway, tmp_path, unique_name, model_dir / "classifier.onnx")
    x = np.random.default_rng(4).normal(size=(2, 4)).astype(np.float32)
    infer_input = triton.InferInput("input", list(x.shape), "FP32")
    infer_input.set_data_from_numpy(x)
    for _ in range(3):
        client.infer(unique_name, [infer_input], headers=headers)
    stats = client.get_inference_statistics(unique_name, headers=headers)["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [(unique_name, "main")]
    # Each batch element is an inference, as in Triton: 3 requests of 2 rows.
    assert stats[0]["inference_count"] == 6 and stats[0]["execution_count"] >= 1
    success = stats[0]["inference_stats"]["success"]
    assert success["count"] == 3 and success["ns"] > 0 and stats[0]["last_inference"] > 0
    config = client.get_model_config(unique_name, "main", headers=headers)
    assert config["name"] == unique_name and config["platform"] == "onnxruntime_onnx"
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [-1, 4]}]
    assert config["max_batch_size"] == 0
    admin = {"Authorization": f"Bearer {gateway.admin_token}"}
    index = client.get_model_repository_index(headers=admin)
    assert {"name": unique_name, "version": "main", "state": "READY", "reason": ""} in index
    with pytest.raises(InferenceServerException, match="management API"):
        client.load_model(unique_name, headers=admin)
    with pytest.raises(InferenceServerException):
        client.get_model_repository_index(headers=headers)  # an endpoint key is no admin token
    everything = client.get_inference_statistics(headers=admin)["model_stats"]
    assert unique_name in {s["name"] for s in everything}
