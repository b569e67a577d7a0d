"""The benchmark's two deterministic ONNX models, built with onnx.helper.

- MLP: `input` FP32 [batch, 64] -> 256 -> 256 -> `logits` FP32 [batch, 10]
- CNN: `image` FP32 [batch, 3, 64, 64] -> 4 conv blocks -> `logits` FP32 [batch, 10]
  (a few ms per image on one core)

    python -m loadtests.models OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _weights(rng: np.random.Generator, shape: tuple[int, ...], name: str) -> onnx.TensorProto:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 2 else shape[0]
    values = rng.normal(0, (2.0 / fan_in) ** 0.5, shape).astype(np.float32)
    return numpy_helper.from_array(values, name)


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    weights: list[onnx.TensorProto],
    name: str,
) -> bytes:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def mlp(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    sizes = [(64, 256), (256, 256), (256, 10)]
    weights, nodes, current = [], [], "input"
    for i, (n_in, n_out) in enumerate(sizes):
        weights += [
            _weights(rng, (n_in, n_out), f"w{i}"),
            numpy_helper.from_array(np.zeros(n_out, np.float32), f"b{i}"),
        ]
        out = "logits" if i == len(sizes) - 1 else f"h{i}"
        nodes.append(
            helper.make_node(
                "Gemm", [current, f"w{i}", f"b{i}"], [out if i == len(sizes) - 1 else f"z{i}"]
            )
        )
        if i < len(sizes) - 1:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [out]))
        current = out
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        weights,
        "mlp",
    )


def cnn(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    channels = [3, 64, 128, 256, 256]
    weights, nodes, current = [], [], "image"
    for i in range(4):
        c_in, c_out = channels[i], channels[i + 1]
        weights += [
            _weights(rng, (c_out, c_in, 3, 3), f"k{i}"),
            numpy_helper.from_array(np.zeros(c_out, np.float32), f"c{i}"),
        ]
        nodes += [
            helper.make_node("Conv", [current, f"k{i}", f"c{i}"], [f"conv{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]),
        ]
        if i < 2:  # 64x64 -> 32x32 -> 16x16
            nodes.append(
                helper.make_node(
                    "MaxPool", [f"relu{i}"], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2]
                )
            )
            current = f"pool{i}"
        else:
            current = f"relu{i}"
    weights += [
        _weights(rng, (256, 10), "fc"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fcb"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [current], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        weights,
        "cnn",
    )


def write(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mlp.onnx").write_bytes(mlp())
    (folder / "cnn.onnx").write_bytes(cnn())
    return folder / "mlp.onnx", folder / "cnn.onnx"


if __name__ == "__main__":
    for path in write(Path(sys.argv[1] if len(sys.argv) > 1 else ".")):
        print(path)
