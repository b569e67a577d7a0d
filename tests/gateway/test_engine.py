"""The runtime engine through a real gateway: dynamic batching, admission
control (429 + Retry-After), and the schedule-policy parameters."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import Gateway
from tests.gateway.test_server import in_process


def metric(gateway: Gateway, name: str, endpoint: str) -> dict[str, float]:
    """Samples of `name` for `endpoint`: {label text: value}."""
    text = httpx.get(f"{gateway.url}/metrics").text
    pattern = re.compile(rf'^{name}\{{(.*endpoint="{endpoint}".*)\}} (\S+)$', re.M)
    return {labels: float(value) for labels, value in pattern.findall(text)}


async def burst(url: str, bodies: list[dict], headers: dict[str, str]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        return await asyncio.gather(*(client.post(url, json=b, headers=headers) for b in bodies))


def test_concurrent_requests_are_coalesced(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name)
    gateway.deploy(
        tmp_path,
        unique_name,
        "blue",
        model_dir / "classifier.onnx",
        extra_yaml="batching: {max_batch_size: 16, max_batch_delay_ms: 50}\n",
    )
    auth = gateway.auth(unique_name)
    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(1 + i % 3, 4)).astype(np.float32) for i in range(24)]
    responses = asyncio.run(
        burst(
            f"{gateway.url}/endpoints/{unique_name}/score",
            [{"input_data": x.tolist()} for x in inputs],
            auth,
        )
    )
    for x, response in zip(inputs, responses, strict=True):
        assert response.status_code == 200, response.text
        want = in_process(model_dir / "classifier.onnx", {"input": x})
        np.testing.assert_allclose(
            response.json()["probabilities"], want["probabilities"], rtol=1e-5
        )
        assert response.json()["label"] == want["label"].tolist()
    requests = metric(gateway, "servegate_batch_requests_sum", unique_name)
    batches = metric(gateway, "servegate_batch_requests_count", unique_name)
    rows = metric(gateway, "servegate_batch_size_sum", unique_name)
    (total_requests,), (total_batches,), (total_rows,) = (
        requests.values(),
        batches.values(),
        rows.values(),
    )
    assert total_requests == 24 and total_rows == sum(len(x) for x in inputs)
    assert total_batches <= 12, f"{total_batches} runtime calls for 24 concurrent requests"
    # No batch went past max_batch_size.
    buckets = metric(gateway, "servegate_batch_size_bucket", unique_name)
    le16 = next(v for k, v in buckets.items() if 'le="16.0"' in k)
    assert le16 == total_batches


def test_overload_is_429_with_retry_after(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gateway.deploy_fake(
        tmp_path,
        unique_name,
        0.3,
        "max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 5000",
    )
    responses = asyncio.run(
        burst(f"{gateway.url}/endpoints/{unique_name}/score", [{"input_data": [[1.0]]}] * 6, {})
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 429, 429, 429, 429]  # 2 x 1 x 1 in flight
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    # The answer names the limit and the setting that raises it.
    message = refused.json()["error"]
    assert "limit (2 x max_concurrent_requests_per_instance x instance_count = 2 x 1 x 1) is 2" in (
        message
    )
    assert "raise request_settings.max_concurrent_requests_per_instance" in message
    rejected = metric(gateway, "servegate_rejected_requests_total", unique_name)
    assert sum(v for k, v in rejected.items() if 'reason="queue_full"' in k) == 4


def test_queue_wait_and_the_timeout_parameter(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gateway.deploy_fake(
        tmp_path,
        unique_name,
        0.4,
        "max_concurrent_requests_per_instance: 2, max_queue_wait_ms: 100",
    )
    url = f"{gateway.url}/endpoints/{unique_name}/score"
    # Two run at once (two slots); the third waits past max_queue_wait_ms.
    responses = asyncio.run(burst(url, [{"input_data": [[1.0]]}] * 3, {}))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 429]
    assert any("max_queue_wait_ms=100" in r.text for r in responses)

    v2 = f"{gateway.url}/v2/models/{unique_name}/infer"
    body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}
    r = httpx.post(v2, json={**body, "parameters": {"timeout": 50_000}}, timeout=10)
    assert r.status_code == 408 and "timeout parameter, 50000 us" in r.json()["error"]
    r = httpx.post(v2, json={**body, "parameters": {"timeout": "soon"}})
    assert r.status_code == 400 and "parameter 'timeout'" in r.json()["error"]
    r = httpx.post(v2, json={**body, "parameters": {"priority": -1}})
    assert r.status_code == 400 and "parameter 'priority'" in r.json()["error"]
    r = httpx.post(
        v2, json={**body, "parameters": {"priority": 1, "timeout": 5_000_000}}, timeout=10
    )
    assert r.status_code == 200, r.text


def test_engine_metrics_are_exposed(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name)
    gateway.deploy(tmp_path, unique_name, "blue", model_dir / "classifier.onnx")
    auth = gateway.auth(unique_name)
    for _ in range(3):
        httpx.post(
            f"{gateway.url}/endpoints/{unique_name}/score",
            json={"input_data": [[1, 2, 3, 4]]},
            headers=auth,
        )
    for name in (
        "servegate_queue_duration_seconds_count",
        "servegate_inference_duration_seconds_count",
        "servegate_gateway_overhead_seconds_count",
    ):
        assert list(metric(gateway, name, unique_name).values()) == [3.0], name
    assert list(metric(gateway, "servegate_in_flight_requests", unique_name).values()) == [0.0]
    assert list(metric(gateway, "servegate_queued_requests", unique_name).values()) == [0.0]
    assert list(metric(gateway, "servegate_instances", unique_name).values()) == [1.0]


@pytest.mark.gpu
@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="needs onnxruntime-gpu and a CUDA device",
)
def test_batching_on_gpu(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name)
    gateway.deploy(
        tmp_path,
        unique_name,
        "gpu",
        model_dir / "classifier.onnx",
        extra_yaml="device: cuda\nbatching: {max_batch_size: 64, max_batch_delay_ms: 20}\n",
    )
    auth = gateway.auth(unique_name)
    inputs = [np.full((2, 4), i, dtype=np.float32) for i in range(48)]
    responses = asyncio.run(
        burst(
            f"{gateway.url}/endpoints/{unique_name}/score",
            [{"input_data": x.tolist()} for x in inputs],
            auth,
        )
    )
    for x, response in zip(inputs, responses, strict=True):
        want = in_process(model_dir / "classifier.onnx", {"input": x})
        # TF32 on Ampere and newer, onnxruntime's default: ~1e-3 relative error.
        np.testing.assert_allclose(
            response.json()["probabilities"], want["probabilities"], rtol=1e-2, atol=1e-3
        )
    (batches,) = metric(gateway, "servegate_batch_requests_count", unique_name).values()
    assert batches < 48


def _torch_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.gpu
@pytest.mark.skipif(not _torch_cuda(), reason="needs torch with CUDA and a GPU")
def test_torch_batching_on_gpu(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    """A torch.export program on `device: cuda` behind the gateway: concurrent requests
    are coalesced into GPU batches and answer what the CPU computes."""
    from runtimes.base import RuntimeConfig
    from runtimes.torch_impl import TorchRuntime
    from tests.models import torch_models

    _, exported = torch_models(tmp_path)
    gateway.create_endpoint(tmp_path, unique_name)
    gateway.deploy(
        tmp_path,
        unique_name,
        "gpu",
        exported,
        extra_yaml="device: cuda\nbatching: {max_batch_size: 64, max_batch_delay_ms: 20}\n",
    )
    auth = gateway.auth(unique_name)
    inputs = [np.full((2, 4), i / 10, dtype=np.float32) for i in range(48)]
    responses = asyncio.run(
        burst(
            f"{gateway.url}/endpoints/{unique_name}/score",
            [{"input_data": x.tolist()} for x in inputs],
            auth,
        )
    )
    cpu = TorchRuntime(RuntimeConfig(exported))
    for x, response in zip(inputs, responses, strict=True):
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(
            response.json()["output_0"], cpu.infer({"x": x})["output_0"], rtol=1e-4, atol=1e-6
        )
    (batches,) = metric(gateway, "servegate_batch_requests_count", unique_name).values()
    assert batches < 48
