"""Triton model repositories deployed as they are (`model: {type: triton_model, path:
<folder>}`, Azure ML's no-code Triton layout): served by onnxruntime under the config's
names and shapes, with its dynamic batching."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import tritonclient.http as triton

from tests.conftest import Gateway, write_yaml
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
    assert r.json()["label"] == want["label"].tolist()
    client = triton.InferenceServerClient(gateway.host_port)
    item = triton.InferInput("input", list(x.shape), "FP32")
    item.set_data_from_numpy(x)
    answer = client.infer(unique_name, [item])
    np.testing.assert_allclose(answer.as_numpy("probabilities"), want["probabilities"], rtol=1e-6)
    metadata = client.get_model_metadata(unique_name)
    assert metadata["platform"] == "onnxruntime_onnx"
    assert [o["shape"] for o in metadata["outputs"]] == [[-1, 3], [-1]]
    # The model's own folder, without `type`: found from its config.pbtxt.
    create(gateway, tmp_path, unique_name, "{path: models/classifier}", verb="update")
    r = httpx.post(f"{gateway.url}/endpoints/{unique_name}/score", json={"input_data": ROWS})
    assert r.status_code == 200 and r.json()["label"] == want["label"].tolist(), r.text


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
