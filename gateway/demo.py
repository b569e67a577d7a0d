"""`servegate serve --demo`: a tiny classifier built at start, endpoint `demo`
with deployments `blue` (100%) and `green` (0%). Nothing is downloaded."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploy.control import ControlPlane
from deploy.specs import EndpointSpec, OnlineDeploymentSpec

log = logging.getLogger(__name__)

DEMO_ENDPOINT = "demo"
DEMO_MODEL = "demo-classifier"
DEMO_ACTOR = "servegate-demo"
DEMO_INPUT = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


def build_classifier(
    seed: int, n_features: int = 4, n_hidden: int = 8, n_classes: int = 3
) -> bytes:
    """A two-layer MLP classifier as ONNX bytes: `input` FP32 [-1, n_features] ->
    `probabilities` FP32 [-1, n_classes] and `label` INT64 [-1]. Deterministic per seed."""
    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.normal(0, 1, (n_features, n_hidden)).astype(np.float32),
        "b1": rng.normal(0, 0.1, n_hidden).astype(np.float32),
        "w2": rng.normal(0, 1, (n_hidden, n_classes)).astype(np.float32),
        "b2": rng.normal(0, 0.1, n_classes).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["z0"]),
        helper.make_node("Add", ["z0", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=-1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", n_features])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", n_classes]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by onnxruntime releases from 1.14 on
    onnx.checker.check_model(model)
    return model.SerializeToString()


def ensure_demo(control: ControlPlane) -> None:
    """Create the demo model versions, endpoint and deployments if absent."""
    if control.store.get_endpoint(DEMO_ENDPOINT) is not None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for version, seed in ((1, 0), (2, 1)):
            if control.store.get_model(DEMO_MODEL, version) is None:
                path = Path(tmp) / f"v{version}.onnx"
                path.write_bytes(build_classifier(seed))
                control.register_model(DEMO_MODEL, "classifier.onnx", path, DEMO_ACTOR, version)
    control.create_endpoint(
        EndpointSpec(name=DEMO_ENDPOINT, description="servegate demo classifier"), DEMO_ACTOR
    )
    for name, version, all_traffic in (("blue", 1, True), ("green", 2, False)):
        spec = OnlineDeploymentSpec.model_validate(
            {
                "name": name,
                "endpoint_name": DEMO_ENDPOINT,
                "model": {"name": DEMO_MODEL, "version": version},
                # Room for the README's load example (2,000 req/s, open loop): 2 x 128
                # requests in flight ride out a 100 ms stall of a shared machine; batched.
                "batching": {"max_batch_size": 32},
                "request_settings": {"max_concurrent_requests_per_instance": 128},
            }
        )
        control.put_deployment(
            control.resolve_deployment(spec, DEMO_ACTOR), DEMO_ACTOR, all_traffic
        )
    log.info("created demo endpoint '%s' (blue 100%%, green 0%%)", DEMO_ENDPOINT)


def curl_command(host: str, port: int, key: str) -> str:
    import orjson

    body = orjson.dumps({"input_data": DEMO_INPUT[:1]}).decode()
    return (
        f"curl -s http://{host}:{port}/endpoints/{DEMO_ENDPOINT}/score "
        f"-H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' -d '{body}'"
    )
