"""The onnxruntime runtime: CPU, CUDA and TensorRT execution providers."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from runtimes.base import RuntimeConfig
from runtimes.errors import DeviceUnavailable, InferenceFailed, InvalidInput, ModelLoadError
from runtimes.types import DATATYPE_TO_NUMPY, Signature, TensorSpec

log = logging.getLogger(__name__)

ONNX_TO_DATATYPE: Mapping[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

_OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def _tensor_spec(arg: Any) -> TensorSpec:
    datatype = ONNX_TO_DATATYPE.get(arg.type)
    if datatype is None:
        raise ModelLoadError(f"tensor '{arg.name}' has unsupported ONNX type {arg.type}")
    # Symbolic (str) and unknown (None) dims are dynamic.
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, datatype, shape)


def _signature_of(session: ort.InferenceSession) -> Signature:
    return Signature(
        tuple(_tensor_spec(a) for a in session.get_inputs()),
        tuple(_tensor_spec(a) for a in session.get_outputs()),
    )


def read_signature(path: Path) -> Signature:
    """Read an ONNX file's signature without optimising or warming it up."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelLoadError(f"not a loadable ONNX model: {path.name}: {exc}") from exc
    return _signature_of(session)


def providers_for(device: str, options: Mapping[str, Any]) -> list[Any]:
    """Execution providers for `device`; raise DeviceUnavailable when absent."""
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    device_id = int(device.split(":", 1)[1]) if ":" in device else 0
    if "CUDAExecutionProvider" not in available:
        raise DeviceUnavailable(
            f"device '{device}' needs onnxruntime's CUDAExecutionProvider, which this host "
            f"lacks (available: {', '.join(available)}); install servegate[gpu] on a CUDA host"
        )
    cuda_options = {"device_id": device_id, **dict(options.get("cuda_options", {}))}
    providers: list[Any] = [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]
    if options.get("tensorrt"):
        if "TensorrtExecutionProvider" not in available:
            raise DeviceUnavailable(
                "runtime option 'tensorrt' needs onnxruntime's TensorrtExecutionProvider, "
                f"which this host lacks (available: {', '.join(available)})"
            )
        trt_options = {"device_id": device_id, **dict(options.get("tensorrt_options", {}))}
        providers.insert(0, ("TensorrtExecutionProvider", trt_options))
    return providers


def _to_onnx(array: np.ndarray, datatype: str) -> np.ndarray:
    if datatype != "BYTES":
        return array
    # onnxruntime wants str elements for tensor(string); the protocol carries bytes.
    try:
        return np.vectorize(
            lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v), otypes=[object]
        )(array)
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"BYTES input is not valid UTF-8 text: {exc}") from exc


def _from_onnx(array: Any) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind in ("O", "U"):
        return np.vectorize(
            lambda v: v.encode("utf-8") if isinstance(v, str) else bytes(v), otypes=[object]
        )(array)
    return array


class OnnxRuntime:
    """One onnxruntime InferenceSession; `Runtime` for `.onnx` files."""

    def __init__(self, config: RuntimeConfig) -> None:
        options = dict(config.options)
        providers = providers_for(config.device, options)
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = int(options.get("intra_op_num_threads", 0))
        session_options.inter_op_num_threads = int(options.get("inter_op_num_threads", 0))
        level = str(options.get("graph_optimization_level", "all"))
        if level not in _OPTIMIZATION_LEVELS:
            raise ModelLoadError(
                f"graph_optimization_level '{level}' is not one of "
                f"{', '.join(_OPTIMIZATION_LEVELS)}"
            )
        session_options.graph_optimization_level = _OPTIMIZATION_LEVELS[level]
        try:
            model_path = config.require_model()
            self._session = ort.InferenceSession(
                str(model_path), session_options, providers=providers
            )
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"cannot load {model_path.name}: {exc}") from exc
        wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        if wanted not in self._session.get_providers():
            # onnxruntime silently falls back to CPU when CUDA libraries are missing.
            raise DeviceUnavailable(
                f"device '{config.device}': onnxruntime could not enable {wanted} "
                f"(enabled: {', '.join(self._session.get_providers())})"
            )
        self._signature = _signature_of(self._session)
        self._datatypes = {t.name: t.datatype for t in self._signature.inputs}
        # On a GPU, bind inputs and outputs in device memory (one copy each way,
        # no staging through onnxruntime's own CPU buffers). `io_binding: false` opts out.
        self._cuda_device_id: int | None = None
        if config.device != "cpu" and options.get("io_binding", True):
            self._cuda_device_id = (
                int(config.device.split(":", 1)[1]) if ":" in config.device else 0
            )
        self._warm_up()

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def _warm_up(self) -> None:
        """One run on zeros (dynamic dims = 1) so the first request pays no lazy init."""
        inputs: dict[str, np.ndarray] = {}
        for spec in self._signature.inputs:
            shape = tuple(1 if d < 0 else d for d in spec.shape)
            if spec.datatype == "BYTES":
                inputs[spec.name] = np.full(shape, b"", dtype=object)
            else:
                inputs[spec.name] = np.zeros(shape, dtype=DATATYPE_TO_NUMPY[spec.datatype])
        try:
            self.infer(inputs)
        except InferenceFailed as exc:
            # A model may reject zeros (e.g. as indices); that is no reason to refuse it.
            log.warning("warm-up run failed, continuing without it: %s", exc)

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        feed = {name: _to_onnx(a, self._datatypes[name]) for name, a in inputs.items()}
        names = list(output_names) if output_names else list(self._signature.output_names)
        try:
            if self._cuda_device_id is not None and "BYTES" not in self._datatypes.values():
                results = self._run_bound(feed, names, self._cuda_device_id)
            else:
                results = self._session.run(names, feed)
        except Exception as exc:
            raise InferenceFailed(f"onnxruntime failed: {exc}") from exc
        return {name: _from_onnx(r) for name, r in zip(names, results, strict=True)}

    def _run_bound(
        self, feed: Mapping[str, np.ndarray], names: list[str], device_id: int
    ) -> list[Any]:
        binding = self._session.io_binding()
        for name, array in feed.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", device_id)
            binding.bind_ortvalue_input(name, value)
        for name in names:
            binding.bind_output(name, "cuda", device_id)
        self._session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())

    def close(self) -> None:
        # Dropping the session frees its memory; onnxruntime has no explicit close.
        del self._session
