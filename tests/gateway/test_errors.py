"""Each error answer: its status, the one body shape, and a message naming the field."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import onnxruntime as ort
import pytest

from tests.conftest import Gateway, assert_clean_exit, start_gateway, write_yaml


def expect(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "code"}, body
    for fragment in fragments:
        assert fragment in body["error"], body


V2_INPUT = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}


@pytest.mark.parametrize("path_kind", ["score", "v2"])
def test_malformed_json(
    gateway: Gateway, scored: tuple[str, dict[str, str]], path_kind: str
) -> None:
    name, auth = scored
    path = f"/endpoints/{name}/score" if path_kind == "score" else f"/v2/models/{name}/infer"
    expect(
        httpx.post(gateway.url + path, content=b"{not json", headers=auth), 400, "not valid JSON"
    )


@pytest.mark.parametrize(
    "body, fragments",
    [
        ({"data": [[1, 2, 3, 4]]}, ["'input_data' is required"]),
        ({"input_data": "text"}, ["'input_data' must be a list or an object"]),
        ({"input_data": {"pixels": [[1, 2, 3, 4]]}}, ["unknown input 'pixels'", "input"]),
        ({"input_data": [["a", "b", "c", "d"]]}, ["input 'input'", "expected numbers", "FP32"]),
        (
            {"input_data": [[1, 2, 3]]},
            ["input 'input'", "expected shape [-1, 4]", "received [1, 3]"],
        ),
        ({"input_data": [[1, 2, 3, 4], [1, 2]]}, ["input 'input'", "not a regular array"]),
    ],
)
def test_score_invalid_input(
    gateway: Gateway, scored: tuple[str, dict[str, str]], body: dict, fragments: list[str]
) -> None:
    name, auth = scored
    expect(
        httpx.post(f"{gateway.url}/endpoints/{name}/score", json=body, headers=auth),
        400,
        *fragments,
    )


@pytest.mark.parametrize(
    "inputs, fragments",
    [
        ([{**V2_INPUT, "name": "pixels"}], ["unknown input 'pixels'"]),
        (
            [{**V2_INPUT, "datatype": "INT64"}],
            ["input 'input'", "expected datatype FP32, received INT64"],
        ),
        ([{**V2_INPUT, "datatype": "FLOAT"}], ["input 'input'", "unknown datatype 'FLOAT'"]),
        (
            [{**V2_INPUT, "shape": [2, 4]}],
            ["input 'input'", "shape [2, 4] needs 8 elements, data has 4"],
        ),
        (
            [{**V2_INPUT, "shape": [1, 2, 2]}],
            ["input 'input'", "expected shape [-1, 4], received [1, 2, 2]"],
        ),
        ([{**V2_INPUT, "shape": "1x4"}], ["input 'input'", "'shape'"]),
        ([{k: v for k, v in V2_INPUT.items() if k != "data"}], ["input 'input'", "needs 'data'"]),
        ([], ["field 'inputs'"]),
    ],
)
def test_v2_invalid_input(
    gateway: Gateway, scored: tuple[str, dict[str, str]], inputs: list, fragments: list[str]
) -> None:
    name, auth = scored
    r = httpx.post(f"{gateway.url}/v2/models/{name}/infer", json={"inputs": inputs}, headers=auth)
    expect(r, 400, *fragments)


def test_binary_framing_errors(gateway: Gateway, scored: tuple[str, dict[str, str]]) -> None:
    name, auth = scored
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 16},
                }
            ]
        }
    ).encode()
    url = f"{gateway.url}/v2/models/{name}/infer"
    r = httpx.post(
        url,
        content=header + b"\0" * 12,
        headers={**auth, "Inference-Header-Content-Length": str(len(header))},
    )
    expect(r, 400, "input 'input'", "binary_data_size 16")
    r = httpx.post(
        url,
        content=header + b"\0" * 16,
        headers={**auth, "Inference-Header-Content-Length": "many"},
    )
    expect(r, 400, "Inference-Header-Content-Length")
    r = httpx.post(
        url,
        content=header + b"\0" * 20,
        headers={**auth, "Inference-Header-Content-Length": str(len(header))},
    )
    expect(r, 400, "4 bytes of binary data are not claimed")
    # A well-formed binary request without any Content-Type works.
    r = httpx.post(
        url,
        content=header + b"\0" * 16,
        headers={**auth, "Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 200, r.text


def test_no_content_type_and_compressed_bodies(
    gateway: Gateway, scored: tuple[str, dict[str, str]]
) -> None:
    name, auth = scored
    body = json.dumps({"inputs": [V2_INPUT]}).encode()
    url = f"{gateway.url}/v2/models/{name}/infer"
    r = httpx.post(url, content=body, headers=auth)
    assert r.status_code == 200 and "content-type" not in r.request.headers
    r = httpx.post(url, content=gzip.compress(body), headers={**auth, "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    r = httpx.post(
        url, content=zlib.compress(body), headers={**auth, "Content-Encoding": "deflate"}
    )
    assert r.status_code == 200, r.text
    r = httpx.post(url, content=body, headers={**auth, "Content-Encoding": "br"})
    expect(r, 400, "'Content-Encoding'", "br")
    r = httpx.post(url, content=b"not gzip", headers={**auth, "Content-Encoding": "gzip"})
    expect(r, 400, "not valid gzip")


def test_auth_errors(gateway: Gateway, scored: tuple[str, dict[str, str]]) -> None:
    name, _ = scored
    url = f"{gateway.url}/endpoints/{name}/score"
    body = {"input_data": [[1, 2, 3, 4]]}
    expect(httpx.post(url, json=body), 401, "header 'Authorization' is missing")
    expect(httpx.post(url, json=body, headers={"Authorization": "Basic abc"}), 401, "Bearer")
    expect(
        httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}),
        401,
        f"invalid key for endpoint '{name}'",
    )
    expect(httpx.get(f"{gateway.url}/v2/models/{name}"), 401, "'Authorization'")
    expect(
        httpx.get(f"{gateway.url}/management/endpoints", headers={"Authorization": "Bearer wrong"}),
        401,
        "invalid admin token",
    )


def test_not_found_errors(gateway: Gateway, scored: tuple[str, dict[str, str]]) -> None:
    name, auth = scored
    body = {"input_data": [[1, 2, 3, 4]]}
    expect(
        httpx.post(f"{gateway.url}/endpoints/nowhere/score", json=body, headers=auth),
        404,
        "endpoint 'nowhere' does not exist",
    )
    expect(
        httpx.post(
            f"{gateway.url}/endpoints/{name}/score",
            json=body,
            headers={**auth, "azureml-model-deployment": "purple"},
        ),
        404,
        "deployment 'purple' does not exist",
    )
    expect(
        httpx.post(
            f"{gateway.url}/v2/models/{name}/versions/purple/infer",
            json={"inputs": [V2_INPUT]},
            headers=auth,
        ),
        404,
        "deployment 'purple'",
    )
    expect(httpx.get(f"{gateway.url}/v2/unknown/path"), 404, "/v2/unknown/path")
    expect(httpx.delete(f"{gateway.url}/v2"), 405)

    # No deployment takes traffic: Azure ML's 404 wording.
    gateway.cli("endpoint", "update", "-n", name, "--traffic", "blue=0")
    expect(
        httpx.post(f"{gateway.url}/endpoints/{name}/score", json=body, headers=auth),
        404,
        "doesn't have any valid deployment with positive weight",
    )
    expect(httpx.get(f"{gateway.url}/v2/models/{name}/ready", headers=auth), 503, "positive weight")
    # ...but the deployment is still reachable by name, as in Azure ML.
    r = httpx.post(
        f"{gateway.url}/endpoints/{name}/score",
        json=body,
        headers={**auth, "azureml-model-deployment": "blue"},
    )
    assert r.status_code == 200, r.text


def test_timeout_and_model_failure(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name, "auth_mode: none\n")
    for name, options, timeout in (
        ("slow", "{delay_s: 1.0}", 200),
        ("broken", "{fail: true}", 5000),
    ):
        gateway.deploy(
            tmp_path,
            unique_name,
            name,
            model_dir / "fake.bin",
            all_traffic=False,
            extra_yaml=f"runtime: fake\nruntime_options: {options}\n"
            f"request_settings: {{request_timeout_ms: {timeout}}}\n",
        )
    url = f"{gateway.url}/endpoints/{unique_name}/score"
    body = {"input_data": [[1.0, 2.0]]}
    r = httpx.post(url, json=body, headers={"azureml-model-deployment": "slow"})
    expect(r, 408, "request_timeout_ms=200")
    r = httpx.post(url, json=body, headers={"azureml-model-deployment": "broken"})
    expect(r, 424, "fake runtime configured to fail")
    assert r.headers["ms-azureml-model-error-reason"] == "model_error"
    assert r.headers["azureml-model-deployment"] == "broken"


def test_bad_model_and_missing_device_leave_no_trace(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name)
    (tmp_path / "junk.onnx").write_bytes(b"this is not a model")
    spec = write_yaml(
        tmp_path / "junk.yml",
        f"name: junk\nendpoint_name: {unique_name}\nmodel: {{path: junk.onnx}}\n",
    )
    code, out = gateway.cli("deployment", "create", "-f", str(spec), ok=False)
    assert code != 0 and "not a loadable ONNX model" in out

    (tmp_path / "c.onnx").write_bytes((model_dir / "classifier.onnx").read_bytes())
    spec = write_yaml(
        tmp_path / "gpu.yml",
        f"name: gpu\nendpoint_name: {unique_name}\nmodel: {{path: c.onnx}}\ndevice: cuda:0\n",
    )
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    code, out = gateway.cli("deployment", "create", "-f", str(spec), ok=has_cuda)
    if not has_cuda:
        assert code != 0 and "device 'cuda:0'" in out and "CUDAExecutionProvider" in out
        _, out = gateway.cli("deployment", "list", "-e", unique_name)
        assert json.loads(out) == []


@pytest.fixture
def small_gateway(tmp_path: Path, model_dir: Path) -> Iterator[tuple[Gateway, dict[str, str]]]:
    gw = start_gateway(tmp_path / "home", "--max-request-body-bytes", "2000")
    try:
        gw.create_endpoint(tmp_path, "small")
        gw.deploy(tmp_path, "small", "blue", model_dir / "classifier.onnx")
        yield gw, gw.auth("small")
    finally:
        assert_clean_exit(gw)


def test_body_over_limit(small_gateway: tuple[Gateway, dict[str, str]]) -> None:
    gw, auth = small_gateway
    url = f"{gw.url}/endpoints/small/score"
    rows = [[1.0, 2.0, 3.0, 4.0]] * 200
    expect(
        httpx.post(url, json={"input_data": rows}, headers=auth), 413, "max_request_body_bytes=2000"
    )
    # A small gzip body that inflates past the limit is refused too.
    bomb = gzip.compress(json.dumps({"input_data": rows}).encode())
    assert len(bomb) < 2000
    expect(
        httpx.post(url, content=bomb, headers={**auth, "Content-Encoding": "gzip"}),
        413,
        "decompressed body exceeds the limit of 2000 bytes",
    )
    assert httpx.post(url, json={"input_data": rows[:2]}, headers=auth).status_code == 200
