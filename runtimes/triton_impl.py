"""Triton model repositories (`model: {type: triton_model, path: <folder>}`, Azure ML's
no-code Triton layout): `<model>/config.pbtxt` and `<model>/<version>/model.onnx`.

The ONNX Runtime backend is served by servegate's onnxruntime runtime; the input and
output names, datatypes and dims come from `config.pbtxt` (with the batch dimension
Triton adds when `max_batch_size` > 0) and must match the ONNX file's. `max_batch_size`
and `dynamic_batching` become the deployment's `batching` when it sets none. Other
backends (TensorRT, PyTorch, Python, ...) are refused, naming the backend. The folder
may be the repository (holding one model) or the model's own folder; the version served
is the highest numbered one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.base import RuntimeConfig
from runtimes.errors import MissingExtra, ModelLoadError
from runtimes.types import Signature, TensorSpec

CONFIG = "config.pbtxt"
#: Triton's backends (and platforms) served here
ONNX_BACKENDS = {"onnxruntime", "onnxruntime_onnx"}


@dataclass(frozen=True)
class TritonModel:
    """One model of a repository, as its config.pbtxt describes it."""

    name: str
    folder: Path
    model_file: Path
    signature: Signature
    max_batch_size: int
    #: Triton's dynamic_batching: max_queue_delay in ms (None: not configured)
    batch_delay_ms: float | None

    def batching(self) -> dict[str, Any] | None:
        """The deployment `batching` this config means (None: no dynamic batching)."""
        if self.batch_delay_ms is None or self.max_batch_size < 2:
            return None
        return {"max_batch_size": self.max_batch_size, "max_batch_delay_ms": self.batch_delay_ms}


def model_folder(path: Path) -> Path:
    """The model's folder: `path` itself when it holds config.pbtxt, else the one
    subfolder that does."""
    if (path / CONFIG).is_file():
        return path
    found = sorted(p.parent for p in path.glob(f"*/{CONFIG}"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise ModelLoadError(f"no {CONFIG} in '{path.name}' or its subfolders: not a Triton model")
    raise ModelLoadError(
        f"the repository '{path.name}' holds {len(found)} models "
        f"({', '.join(p.name for p in found)}); a deployment serves one: point model.path at "
        "its folder"
    )


def _parse(text: str, where: str) -> Any:
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise MissingExtra(
            f"Triton model repositories need {exc.name}: pip install 'servegate[triton]'"
        ) from exc
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ModelLoadError(f"{where}: {exc}") from None


def _datatype(value: int, name: str, where: str) -> str:
    from tritonclient.grpc import model_config_pb2

    datatype = model_config_pb2.DataType.Name(value).removeprefix("TYPE_")
    datatype = "BYTES" if datatype == "STRING" else datatype
    if datatype in ("INVALID", "BF16"):
        raise ModelLoadError(f"{where}: tensor '{name}' has data_type TYPE_{datatype}")
    return datatype


def read_model(path: Path) -> TritonModel:
    folder = model_folder(path)
    where = f"{folder.name}/{CONFIG}"
    config = _parse((folder / CONFIG).read_text(), where)
    backend = config.backend or config.platform
    if backend not in ONNX_BACKENDS:
        raise ModelLoadError(
            f"{where}: backend '{backend or 'unset'}' is not served here; servegate serves "
            "Triton's onnxruntime backend (platform onnxruntime_onnx). Export the model to "
            "ONNX, or deploy its file with the matching runtime"
        )
    versions = sorted((int(p.name), p) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        raise ModelLoadError(f"{folder.name}: no numbered version folder (e.g. 1/model.onnx)")
    model_file = versions[-1][1] / (config.default_model_filename or "model.onnx")
    if not model_file.is_file():
        raise ModelLoadError(f"{folder.name}: no {model_file.relative_to(folder)}")
    batch = (-1,) if config.max_batch_size > 0 else ()

    def specs(tensors: Any) -> tuple[TensorSpec, ...]:
        # `reshape` gives the shape the model itself has (Triton's [1] for a scalar per row).
        return tuple(
            TensorSpec(
                t.name,
                _datatype(t.data_type, t.name, where),
                batch
                + tuple(int(d) for d in (t.reshape.shape if t.HasField("reshape") else t.dims)),
            )
            for t in tensors
        )

    delay = None
    if config.HasField("dynamic_batching"):
        delay = config.dynamic_batching.max_queue_delay_microseconds / 1000
    return TritonModel(
        name=config.name or folder.name,
        folder=folder,
        model_file=model_file,
        signature=Signature(specs(config.input), specs(config.output)),
        max_batch_size=int(config.max_batch_size),
        batch_delay_ms=delay,
    )


def _check_against_file(model: TritonModel, actual: Signature) -> None:
    """The config's tensors are the ONNX file's: same names, datatypes and dims."""
    for declared, side in ((model.signature.inputs, "input"), (model.signature.outputs, "output")):
        present = {t.name: t for t in (actual.inputs if side == "input" else actual.outputs)}
        for spec in declared:
            found = present.get(spec.name)
            if found is None:
                raise ModelLoadError(
                    f"{model.folder.name}/{CONFIG}: {side} '{spec.name}' is not in "
                    f"{model.model_file.name} (its {side}s: {', '.join(present)})"
                )
            fits = len(found.shape) == len(spec.shape) and all(
                a < 0 or b < 0 or a == b for a, b in zip(found.shape, spec.shape, strict=True)
            )
            if found.datatype != spec.datatype or not fits:
                raise ModelLoadError(
                    f"{model.folder.name}/{CONFIG}: {side} '{spec.name}' is {spec.datatype} "
                    f"{list(spec.shape)}, the ONNX file's is {found.datatype} "
                    f"{list(found.shape)}"
                )


def deployment_defaults(path: Path) -> dict[str, Any]:
    """`batching` from the config's max_batch_size and dynamic_batching."""
    batching = read_model(path).batching()
    return {"batching": batching} if batching else {}


def read_signature(path: Path) -> Signature:
    from runtimes.onnx_impl import read_signature as onnx_signature

    model = read_model(path)
    _check_against_file(model, onnx_signature(model.model_file))
    return model.signature


class TritonRuntime:
    """The repository's ONNX model in onnxruntime, under the config's signature."""

    def __init__(self, config: RuntimeConfig) -> None:
        from runtimes.onnx_impl import OnnxRuntime

        self._model = read_model(config.require_model())
        self._onnx = OnnxRuntime(replace(config, model_path=self._model.model_file))
        _check_against_file(self._model, self._onnx.signature)

    @property
    def signature(self) -> Signature:
        return self._model.signature

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        return self._onnx.infer(inputs, output_names)

    def close(self) -> None:
        self._onnx.close()
