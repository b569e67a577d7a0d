"""The Open Inference Protocol over gRPC (`serve --grpc-port`), through tritonclient.grpc
unchanged: metadata and readiness, FP32 / INT32 / BYTES tensors as typed contents and as
raw contents, a traffic split, a gRPC deadline that expires, auth failures."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.conftest import Gateway
from tests.gateway.test_server import in_process


def key_of(gw: Gateway, endpoint: str) -> dict[str, str]:
    return {"authorization": gw.auth(endpoint)["Authorization"]}


def test_metadata_readiness_and_fp32_infer(
    grpc_gateway: tuple[Gateway, str], tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gw, url = grpc_gateway
    gw.create_endpoint(tmp_path, unique_name)
    gw.deploy(tmp_path, unique_name, "main", model_dir / "classifier.onnx")
    headers = key_of(gw, unique_name)
    client = tg.InferenceServerClient(url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata().name == "servegate"
    assert client.is_model_ready(unique_name, headers=headers)
    assert client.is_model_ready(unique_name, "main", headers=headers)
    meta = client.get_model_metadata(unique_name, headers=headers)
    assert meta.platform == "onnxruntime_onnx" and list(meta.versions) == ["main"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP32", [-1, 4])
    ]
    x = np.random.default_rng(5).normal(size=(6, 4)).astype(np.float32)
    tensor = tg.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)  # raw_input_contents, the client's way
    result = client.infer(unique_name, [tensor], headers=headers)
    expected = in_process(model_dir / "classifier.onnx", {"input": x})
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), expected["probabilities"], rtol=1e-6
    )
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    assert result.get_response().model_version == "main"
    # Only the outputs asked for.
    only = client.infer(
        unique_name, [tensor], outputs=[tg.InferRequestedOutput("label")], headers=headers
    )
    assert [o.name for o in only.get_response().outputs] == ["label"]


def test_int32_and_bytes_as_raw_and_typed_contents(
    grpc_gateway: tuple[Gateway, str], tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gw, url = grpc_gateway
    gw.create_endpoint(tmp_path, unique_name)
    gw.deploy(tmp_path, unique_name, "pair", model_dir / "two_inputs.onnx")
    gw.create_endpoint(tmp_path, f"{unique_name}t")
    gw.deploy(tmp_path, f"{unique_name}t", "text", model_dir / "text.onnx")
    client = tg.InferenceServerClient(url)
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    k = np.array([7, -3], dtype=np.int32)
    inputs = []
    for name, array, datatype in (("a", a, "FP32"), ("b", a, "FP32"), ("k", k, "INT32")):
        tensor = tg.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer(unique_name, inputs, headers=key_of(gw, unique_name))
    np.testing.assert_array_equal(result.as_numpy("total"), a + a)
    np.testing.assert_array_equal(result.as_numpy("k_out"), k)
    words = np.array([b"dog", b"cat", b"emu"], dtype=object)
    text = tg.InferInput("text", [3], "BYTES")
    text.set_data_from_numpy(words)
    headers = key_of(gw, f"{unique_name}t")
    result = client.infer(f"{unique_name}t", [text], headers=headers)
    assert list(result.as_numpy("echo")) == list(words)
    assert list(result.as_numpy("token_id")) == [2, 1, 0]
    # Typed contents (what other KServe clients send) instead of raw bytes.
    stub = service_pb2_grpc.GRPCInferenceServiceStub(client._channel)
    request = service_pb2.ModelInferRequest(model_name=unique_name)
    for name, values in (("a", a), ("b", a)):
        request.inputs.add(name=name, datatype="FP32", shape=[2, 3]).contents.fp32_contents.extend(
            values.ravel().tolist()
        )
    request.inputs.add(name="k", datatype="INT32", shape=[2]).contents.int_contents.extend([7, -3])
    reply = stub.ModelInfer(request, metadata=tuple(key_of(gw, unique_name).items()))
    names = [o.name for o in reply.outputs]
    total = np.frombuffer(reply.raw_output_contents[names.index("total")], dtype=np.float32)
    np.testing.assert_array_equal(total.reshape(2, 3), a + a)
    request = service_pb2.ModelInferRequest(model_name=f"{unique_name}t")
    request.inputs.add(name="text", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(
        [b"fish", b"dog"]
    )
    reply, call = stub.ModelInfer.with_call(
        request, metadata=(*headers.items(), ("x-request-id", "grpc-req-9"))
    )
    names = [o.name for o in reply.outputs]
    ids = np.frombuffer(reply.raw_output_contents[names.index("token_id")], dtype=np.int64)
    assert ids.tolist() == [3, 2]
    # The request id comes back in the trailing metadata, as x-request-id over HTTP.
    assert ("x-request-id", "grpc-req-9") in tuple(call.trailing_metadata())


def test_errors_deadlines_and_auth(
    grpc_gateway: tuple[Gateway, str], tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gw, url = grpc_gateway
    gw.deploy_fake(tmp_path, unique_name, 0.5, "request_timeout_ms: 5000")
    client = tg.InferenceServerClient(url)
    slow = tg.InferInput("x", [1, 4], "FP32")
    slow.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    with pytest.raises(tg.InferenceServerException) as info:
        client.infer(unique_name, [slow], client_timeout=0.1)
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    doubled = client.infer(unique_name, [slow], client_timeout=5).as_numpy("y")
    np.testing.assert_array_equal(doubled, np.full((1, 4), 2.0, dtype=np.float32))
    tensor = tg.InferInput("input", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))

    keyed = f"{unique_name}k"
    gw.create_endpoint(tmp_path, keyed)
    gw.deploy(tmp_path, keyed, "main", model_dir / "classifier.onnx")
    with pytest.raises(tg.InferenceServerException) as info:
        client.infer(keyed, [tensor], headers={"authorization": "Bearer wrong"})
    assert info.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(tg.InferenceServerException) as info:
        client.infer(keyed, [tensor])
    assert info.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(tg.InferenceServerException) as info:
        client.infer("no-such-endpoint", [tensor])
    assert info.value.status() == "StatusCode.NOT_FOUND"
    wrong = tg.InferInput("input", [1, 3], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(tg.InferenceServerException) as info:
        client.infer(keyed, [wrong], headers=key_of(gw, keyed))
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and "input" in info.value.message()


def test_a_traffic_split_holds_over_grpc(
    grpc_gateway: tuple[Gateway, str], tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gw, url = grpc_gateway
    gw.create_endpoint(tmp_path, unique_name)
    gw.deploy(tmp_path, unique_name, "blue", model_dir / "classifier.onnx")
    gw.deploy(tmp_path, unique_name, "green", model_dir / "classifier-v2.onnx", all_traffic=False)
    gw.cli("endpoint", "update", "-n", unique_name, "--traffic", "blue=50,green=50")
    headers = key_of(gw, unique_name)
    client = tg.InferenceServerClient(url)
    tensor = tg.InferInput("input", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    seen = Counter(
        client.infer(unique_name, [tensor], headers=headers).get_response().model_version
        for _ in range(400)
    )
    assert set(seen) == {"blue", "green"} and 150 <= seen["blue"] <= 250, seen
    # A version pins the deployment, as the azureml-model-deployment header does.
    pinned = client.infer(unique_name, [tensor], model_version="green", headers=headers)
    assert pinned.get_response().model_version == "green"
    text = httpx.get(f"{gw.url}/metrics").text
    assert f'deployment="blue",endpoint="{unique_name}",' in text and 'protocol="grpc"' in text
    # A mirror gets copies of gRPC calls routed by weight, compared with the live answers.
    gw.cli("endpoint", "update", "-n", unique_name, "--traffic", "blue=100,green=0")
    gw.cli("endpoint", "update", "-n", unique_name, "--mirror-traffic", "green=50")
    for _ in range(100):
        client.infer(unique_name, [tensor], headers=headers)
    compared = 0.0
    deadline = time.monotonic() + 10
    while compared < 20 and time.monotonic() < deadline:
        time.sleep(0.2)
        for line in httpx.get(f"{gw.url}/metrics").text.splitlines():
            if line.startswith("servegate_mirror_compared_total") and (
                f'deployment="green",endpoint="{unique_name}"' in line
            ):
                compared = float(line.split()[-1])
    assert 20 <= compared <= 80, compared


def test_stream_infer_answers_each_request_in_order(
    grpc_gateway: tuple[Gateway, str], tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    import queue

    gw, url = grpc_gateway
    gw.create_endpoint(tmp_path, unique_name)
    gw.deploy(tmp_path, unique_name, "main", model_dir / "classifier.onnx")
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = tg.InferenceServerClient(url)
    client.start_stream(
        lambda result, error: answers.put((result, error)), headers=key_of(gw, unique_name)
    )
    rows = np.random.default_rng(6).normal(size=(4, 1, 4)).astype(np.float32)
    for i, x in enumerate(rows):
        tensor = tg.InferInput("input" if i != 2 else "nope", [1, 4], "FP32")
        tensor.set_data_from_numpy(x)
        client.async_stream_infer(unique_name, [tensor], request_id=str(i))
    got = [answers.get(timeout=10) for _ in rows]
    client.stop_stream()
    expected = in_process(model_dir / "classifier.onnx", {"input": rows.reshape(4, 4)})
    for i, (result, error) in enumerate(got):
        if i == 2:  # an unknown input: its error, and the stream goes on
            assert result is None and "nope" in str(error)
            continue
        assert error is None and result.get_response().id == str(i)
        np.testing.assert_allclose(
            result.as_numpy("probabilities")[0], expected["probabilities"][i], rtol=1e-6
        )
