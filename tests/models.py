"""Tiny deterministic ONNX models, built at test time (never downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gateway.demo import build_classifier


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def classifier(path: Path, seed: int = 0) -> Path:
    """`input` FP32 [-1, 4] -> `probabilities` FP32 [-1, 3], `label` INT64 [-1]."""
    path.write_bytes(build_classifier(seed))
    return path


def two_inputs(path: Path) -> Path:
    """`a` FP32 [-1, 3], `b` FP32 [-1, 3] -> `total` = a + b, `scaled` = a * 2 (INT32 `k` too)."""
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "b"], ["total"]),
            helper.make_node("Mul", ["a", "two"], ["scaled"]),
            helper.make_node("Identity", ["k"], ["k_out"]),
        ],
        "two_inputs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("k", TensorProto.INT32, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("k_out", TensorProto.INT32, ["batch"]),
        ],
        initializer=[two],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def row_sum(path: Path) -> Path:
    """`x` FP32 [-1, -1] -> `total` FP32 [-1]: each row's sum (any width: large tensors)."""
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=0)],
        "row_sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "width"])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch"])],
        initializer=[axes],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def text_model(path: Path) -> Path:
    """`text` BYTES [-1] -> `echo` BYTES [-1] and `token_id` INT64 [-1] (a vocabulary lookup)."""
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["text"], ["echo"]),
            helper.make_node(
                "LabelEncoder",
                ["text"],
                ["token_id"],
                domain="ai.onnx.ml",
                keys_strings=["cat", "dog", "fish"],
                values_int64s=[1, 2, 3],
                default_int64=0,
            ),
        ],
        "text",
        [helper.make_tensor_value_info("text", TensorProto.STRING, [None])],
        [
            helper.make_tensor_value_info("echo", TensorProto.STRING, [None]),
            helper.make_tensor_value_info("token_id", TensorProto.INT64, [None]),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    )
    return _save(model, path)


def torch_models(folder: Path) -> tuple[Path, Path]:
    """The same small MLP as TorchScript (`mlp.pt`) and as a torch.export program with a
    dynamic batch dimension (`mlp.pt2`): `x` FP32 [-1, 4] -> two outputs."""
    import torch

    class Mlp(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            generator = torch.Generator().manual_seed(0)
            self.w = torch.nn.Parameter(torch.randn(4, 3, generator=generator))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = x @ self.w
            return torch.softmax(logits, -1), logits.argmax(-1)

    model = Mlp().eval()
    example = torch.zeros(2, 4)
    script = folder / "mlp.pt"
    torch.jit.save(torch.jit.trace(model, example), str(script))
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
    exported = folder / "mlp.pt2"
    torch.export.save(program, str(exported))
    return script, exported


def simple_add_sub(path: Path) -> Path:
    """Triton's example model `simple`: INT32 `INPUT0`, `INPUT1` [-1, 16] -> `OUTPUT0` =
    INPUT0 + INPUT1, `OUTPUT1` = INPUT0 - INPUT1."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "simple",
        [
            helper.make_tensor_value_info(name, TensorProto.INT32, [None, 16])
            for name in ("INPUT0", "INPUT1")
        ],
        [
            helper.make_tensor_value_info(name, TensorProto.INT32, [None, 16])
            for name in ("OUTPUT0", "OUTPUT1")
        ],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def image_classifier(path: Path, classes: int = 10, side: int = 4) -> Path:
    """densenet's shape, small: `data_0` FP32 [1, 3, side, side] -> `fc6_1` FP32
    [1, classes, 1, 1] (a fixed linear map, so each class's score is known)."""
    weights = np.arange(3 * side * side * classes, dtype=np.float32).reshape(-1, classes)
    weights = np.cos(weights)  # deterministic, varied
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["data_0"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "weights"], ["scores"]),
            helper.make_node("Reshape", ["scores", "shape"], ["fc6_1"]),
        ],
        "image_classifier",
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("fc6_1", TensorProto.FLOAT, [1, classes, 1, 1])],
        [
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(np.array([1, classes, 1, 1], dtype=np.int64), "shape"),
        ],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
