"""`runtime_options: {convert: onnx}`: a scikit-learn, XGBoost or LightGBM model turned
into ONNX once, at deployment create, and served by onnxruntime.

The converters are skl2onnx (scikit-learn) and onnxmltools (XGBoost, LightGBM): the
`convert` extra. The converted graph gets the native runtime's interface: the same
inputs (one FP64 column per feature, or one FP64 matrix; cast to the FP32 the
converters compute in) and the same output names (`label`, `probabilities`,
`prediction`). It is then checked against the native model on generated rows (numbers
drawn with a fixed seed; for a text column, the values its encoder knows) or
`runtime_options.input_example` (rows in the model's column order); a model whose
answers differ by more than `runtime_options.convert_tolerance` (default 1e-4,
absolute), or whose labels differ at all, is refused with the largest difference.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.base import RuntimeConfig
from runtimes.errors import MissingExtra, ModelLoadError
from runtimes.registry import load_runtime
from runtimes.types import Signature

CONVERTIBLE = ("sklearn", "xgboost", "lightgbm")
DEFAULT_TOLERANCE = 1e-4
#: rows generated for the check when no input_example is given
CHECK_ROWS = 256
#: the ONNX opset the converters target (onnxmltools supports up to 15)
OPSET = 15
_SUFFIX = "__converted"


def to_onnx(runtime: str, model_path: Path, options: Mapping[str, Any]) -> bytes:
    """The model at `model_path` (served by `runtime`) as a checked ONNX model."""
    if runtime not in CONVERTIBLE:
        raise ModelLoadError(
            f"runtime_options.convert: runtime '{runtime}' cannot be converted; "
            f"convert: onnx is for {', '.join(CONVERTIBLE)}"
        )
    try:
        import onnx
    except ImportError as exc:
        raise MissingExtra("convert: onnx needs pip install 'servegate[convert]'") from exc
    kept = {k: v for k, v in options.items() if k in ("outputs", "trusted_types")}
    native = load_runtime(runtime, RuntimeConfig(model_path=model_path, options=kept))
    signature = native.signature
    converted = _convert(runtime, native, signature)
    model = _adapt(converted, signature)
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    _check(native, data, signature, options)
    return data


# -- converting --------------------------------------------------------------------------
def _convert(runtime: str, native: Any, signature: Signature) -> Any:
    try:
        if runtime == "sklearn":
            return _from_sklearn(native, signature)
        from onnxmltools import convert_lightgbm, convert_xgboost
        from onnxmltools.convert.common.data_types import FloatTensorType
    except ImportError as exc:
        raise MissingExtra(
            f"convert: onnx needs {exc.name}: pip install 'servegate[convert]'"
        ) from exc
    width = native.columns.count
    initial = [("input", FloatTensorType([None, width]))]
    try:
        if runtime == "xgboost":
            booster = copy.copy(native.model)
            booster.feature_names = None  # the converter wants f0, f1, ...
            return convert_xgboost(booster, initial_types=initial, target_opset=OPSET)
        return convert_lightgbm(
            native.model, initial_types=initial, target_opset=OPSET, zipmap=False
        )
    except Exception as exc:
        raise ModelLoadError(f"convert: onnx failed: {_short(exc)}") from None


def _from_sklearn(native: Any, signature: Signature) -> Any:
    from skl2onnx import to_onnx as sklearn_to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    columns = native.columns
    if columns.names is None:
        initial = [("input", FloatTensorType([None, columns.count]))]
    else:
        initial = [
            (
                name,
                StringTensorType([None, 1]) if name in columns.text else FloatTensorType([None, 1]),
            )
            for name in columns.names
        ]
    try:
        classifier = hasattr(native.model, "classes_")
        return sklearn_to_onnx(
            native.model,
            initial_types=initial,
            options={"zipmap": False} if classifier else None,
            target_opset={"": OPSET, "ai.onnx.ml": 3},
        )
    except Exception as exc:
        raise ModelLoadError(f"convert: onnx failed: {_short(exc)}") from None


def _short(exc: BaseException) -> str:
    """A converter's error in one line (they put whole node attribute dumps in them)."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(exc).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


# -- the native interface on the converted graph -----------------------------------------
def _rename(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in (*graph.input, *graph.output):
        if value.name == old:
            value.name = new


def _adapt(model: Any, signature: Signature) -> Any:
    """Our inputs in front of the converted graph's, our output names behind its."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("", OPSET))
    converted_inputs = {i.name: i for i in graph.input}
    nodes, inputs = [], []
    column = numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), f"column{_SUFFIX}")
    # Named columns in front of a converter that takes one matrix (XGBoost, LightGBM).
    gathered = [s.name for s in signature.inputs] if "input" in converted_inputs else []
    if gathered:
        _rename(graph, "input", "input" + _SUFFIX)
    for spec in signature.inputs:
        target = "input" if gathered else spec.name
        if not gathered:
            _rename(graph, spec.name, spec.name + _SUFFIX)
        is_text = spec.datatype == "BYTES"
        inputs.append(
            helper.make_tensor_value_info(
                spec.name,
                TensorProto.STRING if is_text else TensorProto.DOUBLE,
                ["N", *spec.shape[1:]],
            )
        )
        wants_float = converted_inputs[target].type.tensor_type.elem_type == TensorProto.FLOAT
        source = spec.name
        if len(spec.shape) == 1:  # one column: the converter takes [N, 1]
            nodes.append(helper.make_node("Reshape", [source, column.name], [source + "__2d"]))
            source += "__2d"
        ready = spec.name + ("__part" if gathered and spec.name != "input" else _SUFFIX)
        if wants_float:
            nodes.append(helper.make_node("Cast", [source], [ready], to=TensorProto.FLOAT))
        else:
            nodes.append(helper.make_node("Identity", [source], [ready]))
    if gathered and signature.inputs[0].name != "input":
        parts = [name + "__part" for name in gathered]
        nodes.append(helper.make_node("Concat", parts, ["input" + _SUFFIX], axis=1))
    if any(node.op_type == "Reshape" for node in nodes):
        graph.initializer.append(column)
    flat = numpy_helper.from_array(np.array([-1], dtype=np.int64), f"flat{_SUFFIX}")
    graph.initializer.append(flat)
    produced = [o.name for o in graph.output]
    outputs = []
    for spec in signature.outputs:
        name = spec.name if spec.name in produced else _single_other(produced, signature)
        _rename(graph, name, name + _SUFFIX)
        if len(spec.shape) == 1:
            node = helper.make_node("Reshape", [name + _SUFFIX, flat.name], [spec.name])
        else:
            node = helper.make_node("Identity", [name + _SUFFIX], [spec.name])
        graph.node.append(node)
        elem = next(o for o in graph.output if o.name == name + _SUFFIX).type.tensor_type
        outputs.append(
            helper.make_tensor_value_info(spec.name, elem.elem_type, ["N", *spec.shape[1:]])
        )
    for node in reversed(nodes):
        graph.node.insert(0, node)
    del graph.input[:]
    graph.input.extend(inputs)
    del graph.output[:]
    graph.output.extend(outputs)
    return model


def _single_other(produced: list[str], signature: Signature) -> str:
    named = {t.name for t in signature.outputs}
    others = [p for p in produced if p not in named]
    if len(others) != 1:
        raise ModelLoadError(
            f"convert: onnx: cannot tell which of the converted outputs ({', '.join(produced)}) "
            f"answers {', '.join(sorted(named))}"
        )
    return others[0]


# -- checking ----------------------------------------------------------------------------
def _rows(native: Any, signature: Signature, options: Mapping[str, Any]) -> dict[str, np.ndarray]:
    from runtimes.tensor_codec import inputs_from_input_data

    example = options.get("input_example")
    if example is not None:
        return inputs_from_input_data(example, signature)
    rng = np.random.default_rng(0)
    inputs: dict[str, np.ndarray] = {}
    categories: dict[str, list[str]] = getattr(native, "categories", dict)()
    for spec in signature.inputs:
        if spec.datatype == "BYTES":
            known = categories.get(spec.name) or ["a"]
            picked = rng.choice(np.array(known, dtype=object), size=CHECK_ROWS)
            inputs[spec.name] = np.array([str(v).encode() for v in picked], dtype=object)
        else:
            shape = (CHECK_ROWS, *spec.shape[1:])
            inputs[spec.name] = rng.normal(size=shape)
    return inputs


def _text(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values.ravel()])


def _check(native: Any, data: bytes, signature: Signature, options: Mapping[str, Any]) -> None:
    """Score the same rows with the native model and with the converted one, served the
    way it will be (the onnx runtime)."""
    tolerance = float(options.get("convert_tolerance", DEFAULT_TOLERANCE))
    rows = _rows(native, signature, options)
    want = native.infer(rows)
    with tempfile.TemporaryDirectory(prefix="servegate-convert-") as folder:
        path = Path(folder) / "converted.onnx"
        path.write_bytes(data)
        converted = load_runtime("onnx", RuntimeConfig(model_path=path))
        try:
            got = converted.infer(rows)
        finally:
            converted.close()
    for name, expected in want.items():
        answer = got[name]
        if expected.dtype == object or expected.dtype.kind in ("i", "u"):
            differ = int((_text(expected) != _text(answer)).sum())
            if differ:
                raise ModelLoadError(
                    f"convert: onnx: the converted model's '{name}' differs from the native "
                    f"model's on {differ} of {len(expected)} rows; serve it natively (drop "
                    "convert)"
                )
            continue
        difference = float(np.max(np.abs(answer.astype(np.float64) - expected)))
        if difference > tolerance:
            raise ModelLoadError(
                f"convert: onnx: the converted model's '{name}' differs from the native "
                f"model's by up to {difference:.3g} (convert_tolerance {tolerance:g}); serve "
                "it natively (drop convert) or raise runtime_options.convert_tolerance"
            )
