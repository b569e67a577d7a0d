"""Triton model repositories (`model: {type: triton_model, path: <folder>}`, Azure ML's
no-code Triton layout): `<model>/[config.pbtxt]` and `<model>/<version>/model.onnx`.

The ONNX Runtime backend is served by servegate's onnxruntime runtime, with Triton's
semantics on the wire:

- `config.pbtxt` is optional, as with Triton's auto-complete: what it leaves out (or all
  of it) comes from the ONNX file. A model whose inputs and outputs all have a variable
  first dimension batches (`max_batch_size` 4, Triton's default, with dynamic batching);
  one with fixed dimensions does not (`max_batch_size` 0, `dims` the whole shape).
- A tensor's wire shape is its `dims`, after a batch dimension when `max_batch_size` > 0;
  `reshape` is the shape the model itself has, so inputs are reshaped on the way in and
  outputs on the way out (densenet's `[1, 1000, 1, 1]` answers as `dims: [1000]`).
- The model is named as its folder is (or as `name:` says: `densenet_onnx`, `model_1`),
  and served at the version the version policy picks (the highest by default).
- `max_batch_size` and `dynamic_batching` become the deployment's `batching` when it sets
  none; `label_filename` gives the classification extension its labels.

Other backends (TensorRT, PyTorch, Python, ...) are refused, naming the backend. The
folder may be the repository (holding one model) or the model's own folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.base import RuntimeConfig
from runtimes.errors import InvalidInput, MissingExtra, ModelLoadError
from runtimes.types import Signature, TensorSpec

CONFIG = "config.pbtxt"
#: Triton's backends (and platforms) served here
ONNX_BACKENDS = {"onnxruntime", "onnxruntime_onnx"}
ONNX_PLATFORM = "onnxruntime_onnx"
DEFAULT_MODEL_FILE = "model.onnx"
#: Triton's auto-complete gives a model that can batch this max_batch_size
#: (`--backend-config=default-max-batch-size`, 4 by default)
DEFAULT_MAX_BATCH_SIZE = 4
#: int64 fields of Triton's model configuration that its JSON renders as numbers
_INTEGER_FIELDS = frozenset(
    {
        "dims",
        "shape",
        "versions",
        "num_versions",
        "preferred_batch_size",
        "max_queue_delay_microseconds",
        "default_timeout_microseconds",
    }
)


@dataclass(frozen=True)
class TritonModel:
    """One model of a repository, as Triton configures it."""

    name: str
    folder: Path
    #: the version folder served
    version: int
    model_file: Path
    #: the tensors on the wire (dims, after a batch dimension when the model batches)
    signature: Signature
    #: the tensors of the ONNX file itself (reshape when given)
    model_signature: Signature
    max_batch_size: int
    #: Triton's dynamic_batching: max_queue_delay in ms (None: not configured)
    batch_delay_ms: float | None
    #: the configuration as Triton's HTTP API renders it (auto-completed)
    config: Mapping[str, Any]
    #: output -> the class labels of its label_filename
    labels: Mapping[str, tuple[str, ...]]

    def batching(self) -> dict[str, Any] | None:
        """The deployment `batching` this config means (None: no dynamic batching)."""
        if self.batch_delay_ms is None or self.max_batch_size < 2:
            return None
        return {"max_batch_size": self.max_batch_size, "max_batch_delay_ms": self.batch_delay_ms}


def _version_folders(folder: Path) -> list[tuple[int, Path]]:
    return sorted((int(p.name), p) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def _is_model_folder(path: Path) -> bool:
    return (path / CONFIG).is_file() or bool(_version_folders(path))


def model_folder(path: Path) -> Path:
    """The model's folder: `path` itself when it holds config.pbtxt or version folders,
    else the one subfolder that does."""
    if _is_model_folder(path):
        return path
    found = sorted(p for p in path.iterdir() if p.is_dir() and _is_model_folder(p))
    if len(found) == 1:
        return found[0]
    if not found:
        raise ModelLoadError(
            f"'{path.name}' holds no Triton model: a model folder has a numbered version "
            f"folder (e.g. 1/{DEFAULT_MODEL_FILE}) and, optionally, {CONFIG}"
        )
    raise ModelLoadError(
        f"the repository '{path.name}' holds {len(found)} models "
        f"({', '.join(p.name for p in found)}); a deployment serves one: point model.path at "
        "its folder"
    )


def _messages() -> tuple[Any, Any, Any]:
    try:
        from google.protobuf import json_format, text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise MissingExtra(
            f"Triton model repositories need {exc.name}: pip install 'servegate[triton]'"
        ) from exc
    return text_format, json_format, model_config_pb2


def _parse(text: str, where: str) -> Any:
    text_format, _, model_config_pb2 = _messages()
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ModelLoadError(f"{where}: {exc}") from None


def _datatype(value: int, name: str, where: str) -> str:
    _, _, model_config_pb2 = _messages()
    datatype = model_config_pb2.DataType.Name(value).removeprefix("TYPE_")
    datatype = "BYTES" if datatype == "STRING" else datatype
    if datatype in ("INVALID", "BF16"):
        raise ModelLoadError(f"{where}: tensor '{name}' has data_type TYPE_{datatype}")
    return datatype


def _served_version(config: Any, folder: Path, where: str) -> tuple[int, Path]:
    """The version the config's version_policy picks (the highest of them: one version is
    served per deployment)."""
    versions = _version_folders(folder)
    if not versions:
        raise ModelLoadError(
            f"{folder.name}: no numbered version folder (e.g. 1/{DEFAULT_MODEL_FILE})"
        )
    policy = config.version_policy
    if policy.HasField("specific"):
        wanted = set(policy.specific.versions)
        chosen = [(v, p) for v, p in versions if v in wanted]
        if not chosen:
            raise ModelLoadError(
                f"{where}: version_policy names versions {sorted(wanted)}, which are not "
                f"among the folder's ({', '.join(str(v) for v, _ in versions)})"
            )
        return chosen[-1]
    return versions[-1]


def _complete(config: Any, onnx: Signature, where: str) -> None:
    """Fill what config.pbtxt leaves out from the ONNX file, as Triton's auto-complete
    does for the ONNX Runtime backend."""
    _, _, model_config_pb2 = _messages()
    tensors = list(onnx.inputs) + list(onnx.outputs)
    if not config.input and not config.output and config.max_batch_size == 0:
        batches = bool(tensors) and all(t.shape and t.shape[0] < 0 for t in tensors)
        if batches:
            config.max_batch_size = DEFAULT_MAX_BATCH_SIZE
            if not config.HasField("dynamic_batching"):
                config.dynamic_batching.SetInParent()
    skip = 1 if config.max_batch_size > 0 else 0
    for declared, found in ((config.input, onnx.inputs), (config.output, onnx.outputs)):
        if declared:
            continue
        for spec in found:
            tensor = declared.add()
            tensor.name = spec.name
            tensor.data_type = model_config_pb2.DataType.Value(
                "TYPE_STRING" if spec.datatype == "BYTES" else f"TYPE_{spec.datatype}"
            )
            tensor.dims.extend(spec.shape[skip:] if spec.shape[skip:] else [1])
    if not config.platform and not config.backend:
        config.platform = ONNX_PLATFORM
    if not config.default_model_filename:
        config.default_model_filename = DEFAULT_MODEL_FILE


def _json(config: Any) -> dict[str, Any]:
    """The configuration as Triton's HTTP API renders it: proto field names, numbers."""
    _, json_format, _ = _messages()
    try:  # protobuf >= 5.26
        doc: dict[str, Any] = json_format.MessageToDict(
            config, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    except TypeError:  # older protobuf names it otherwise
        doc = json_format.MessageToDict(
            config, preserving_proto_field_name=True, including_default_value_fields=True
        )

    def numbers(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: numbers(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [numbers(v, key) for v in value]
        if key in _INTEGER_FIELDS and isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
        return value

    converted: dict[str, Any] = numbers(doc)
    return converted


def read_model(path: Path) -> TritonModel:
    from runtimes.onnx_impl import read_signature as onnx_signature

    folder = model_folder(path)
    where = f"{folder.name}/{CONFIG}"
    has_config = (folder / CONFIG).is_file()
    _, _, model_config_pb2 = _messages()
    config = _parse((folder / CONFIG).read_text(), where) if has_config else None
    config = config or model_config_pb2.ModelConfig()
    backend = config.backend or config.platform
    if backend and backend not in ONNX_BACKENDS:
        raise ModelLoadError(
            f"{where}: backend '{backend}' is not served here; servegate serves Triton's "
            "onnxruntime backend (platform onnxruntime_onnx). Export the model to ONNX, or "
            "deploy its file with the matching runtime"
        )
    version, version_folder = _served_version(config, folder, where)
    model_file = version_folder / (config.default_model_filename or DEFAULT_MODEL_FILE)
    if not model_file.is_file():
        raise ModelLoadError(f"{folder.name}: no {model_file.relative_to(folder)}")
    _complete(config, onnx_signature(model_file), where)
    if not config.name:
        config.name = folder.name
    batch = (-1,) if config.max_batch_size > 0 else ()

    def specs(tensors: Any, model_side: bool) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(
                t.name,
                _datatype(t.data_type, t.name, where),
                batch
                + tuple(
                    int(d)
                    for d in (t.reshape.shape if model_side and t.HasField("reshape") else t.dims)
                ),
            )
            for t in tensors
        )

    labels = {}
    for output in config.output:
        if output.label_filename:
            label_file = folder / output.label_filename
            if not label_file.is_file():
                raise ModelLoadError(f"{where}: output '{output.name}': no {output.label_filename}")
            labels[output.name] = tuple(label_file.read_text().splitlines())
    delay = None
    if config.HasField("dynamic_batching"):
        delay = config.dynamic_batching.max_queue_delay_microseconds / 1000
    return TritonModel(
        name=config.name,
        folder=folder,
        version=version,
        model_file=model_file,
        signature=Signature(specs(config.input, False), specs(config.output, False)),
        model_signature=Signature(specs(config.input, True), specs(config.output, True)),
        max_batch_size=int(config.max_batch_size),
        batch_delay_ms=delay,
        config=_json(config),
        labels=labels,
    )


def _check_against_file(model: TritonModel, actual: Signature) -> None:
    """The config's tensors are the ONNX file's: same names, datatypes and dims."""
    declared_signature = model.model_signature
    for declared, side in (
        (declared_signature.inputs, "input"),
        (declared_signature.outputs, "output"),
    ):
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


def describe(path: Path) -> dict[str, Any]:
    """What the Open Inference Protocol routes say of the model: its Triton name and
    version, its configuration and its outputs' class labels."""
    model = read_model(path)
    return {
        "name": model.name,
        "version": model.version,
        "platform": ONNX_PLATFORM,
        "config": dict(model.config),
        "labels": {k: list(v) for k, v in model.labels.items()},
    }


def read_signature(path: Path) -> Signature:
    from runtimes.onnx_impl import read_signature as onnx_signature

    model = read_model(path)
    _check_against_file(model, onnx_signature(model.model_file))
    return model.signature


def _reshaped(name: str, array: np.ndarray, shape: tuple[int, ...], batched: bool) -> np.ndarray:
    target = ((array.shape[0],) if batched else ()) + shape[1 if batched else 0 :]
    if array.shape == target:
        return array
    try:
        return array.reshape(target)
    except ValueError:
        raise InvalidInput(
            f"tensor '{name}': shape {list(array.shape)} cannot become {list(target)}"
        ) from None


class TritonRuntime:
    """The repository's ONNX model in onnxruntime, under the config's signature."""

    def __init__(self, config: RuntimeConfig) -> None:
        from runtimes.onnx_impl import OnnxRuntime

        self._model = read_model(config.require_model())
        self._onnx = OnnxRuntime(replace(config, model_path=self._model.model_file))
        _check_against_file(self._model, self._onnx.signature)
        batched = self._model.max_batch_size > 0
        self._batched = batched
        wire, inner = self._model.signature, self._model.model_signature
        #: tensors whose wire and model shapes differ (reshape)
        self._into_model = {
            s.name: m.shape for s, m in zip(wire.inputs, inner.inputs, strict=True) if s != m
        }
        self._onto_wire = {
            s.name: s.shape for s, m in zip(wire.outputs, inner.outputs, strict=True) if s != m
        }

    @property
    def signature(self) -> Signature:
        return self._model.signature

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        batched = self._batched
        if self._into_model:
            inputs = {
                name: _reshaped(name, array, self._into_model[name], batched)
                if name in self._into_model
                else array
                for name, array in inputs.items()
            }
        outputs = self._onnx.infer(inputs, output_names)
        for name, shape in self._onto_wire.items():
            if name in outputs:
                outputs[name] = _reshaped(name, outputs[name], shape, batched)
        return outputs

    def close(self) -> None:
        self._onnx.close()
