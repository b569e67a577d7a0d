"""The torch runtime: TorchScript files (`.pt`, `.pth`) and `torch.export`
programs (`.pt2`), on cpu or cuda, under `torch.inference_mode`, optionally
through `torch.compile` (`runtime_options: {compile: true}`).

A `.pt2` program carries its signature (input names, dtypes, shapes; symbolic
dims are -1). A TorchScript file carries none: the deployment gives it with
`signature:`. Outputs are named by the signature, else `output_0`, `output_1`...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtimes.base import RuntimeConfig
from runtimes.errors import DeviceUnavailable, InferenceFailed, InvalidInput, ModelLoadError
from runtimes.types import DATATYPE_TO_NUMPY, Signature, TensorSpec

TORCH_TO_DATATYPE = {
    torch.bool: "BOOL",
    torch.uint8: "UINT8",
    torch.int8: "INT8",
    torch.int16: "INT16",
    torch.int32: "INT32",
    torch.int64: "INT64",
    torch.float16: "FP16",
    torch.float32: "FP32",
    torch.float64: "FP64",
}
UNKNOWN = Signature((), ())


def _spec(name: str, value: Any) -> TensorSpec:
    datatype = TORCH_TO_DATATYPE.get(value.dtype)
    if datatype is None:
        raise ModelLoadError(f"tensor '{name}' has unsupported torch dtype {value.dtype}")
    shape = tuple(d if isinstance(d, int) else -1 for d in value.shape)
    return TensorSpec(name, datatype, shape)


def _exported_signature(program: Any) -> Signature:
    """Input names and example shapes/dtypes of a torch.export program."""
    graph_signature = program.graph_signature
    nodes = {node.name: node for node in program.graph.nodes}
    inputs = tuple(_spec(name, nodes[name].meta["val"]) for name in graph_signature.user_inputs)
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    values = [arg.meta["val"] for arg in output_node.args[0] if hasattr(arg, "meta")]
    outputs = tuple(_spec(f"output_{i}", v) for i, v in enumerate(values))
    return Signature(inputs, outputs)


def read_signature(path: Path) -> Signature:
    """A `.pt2` program's signature; TorchScript has none (the deployment gives it)."""
    if path.suffix.lower() != ".pt2":
        try:
            torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ModelLoadError(f"not a loadable TorchScript file: {path.name}: {exc}") from exc
        return UNKNOWN
    try:
        return _exported_signature(torch.export.load(str(path)))
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"not a loadable torch.export program: {path.name}: {exc}") from exc


def _device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceUnavailable(f"device '{name}' needs CUDA, which torch on this host lacks")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceUnavailable(
            f"device '{name}': this host has {torch.cuda.device_count()} CUDA device(s)"
        )
    return device


class TorchRuntime:
    def __init__(self, config: RuntimeConfig) -> None:
        path = config.require_model()
        self._device = _device(config.device)
        options = dict(config.options)
        if options.get("num_threads"):
            torch.set_num_threads(int(options["num_threads"]))
        try:
            if path.suffix.lower() == ".pt2":
                program = torch.export.load(str(path))
                derived = _exported_signature(program)
                module: Any = program.module().to(self._device)
            else:
                module = torch.jit.load(str(path), map_location=self._device)
                module.eval()
                derived = UNKNOWN
        except Exception as exc:
            raise ModelLoadError(f"cannot load {path.name}: {exc}") from exc
        self._signature = config.signature or derived
        if not self._signature.inputs:
            raise ModelLoadError(
                f"{path.name} is TorchScript, which carries no signature: give the deployment a "
                "'signature:' with inputs and outputs (name, datatype, shape)"
            )
        if options.get("compile"):
            module = torch.compile(module)
        self._module = module
        self._warm_up()

    @property
    def signature(self) -> Signature:
        return self._signature

    def _warm_up(self) -> None:
        inputs = {
            spec.name: np.zeros(
                tuple(1 if d < 0 else d for d in spec.shape), dtype=DATATYPE_TO_NUMPY[spec.datatype]
            )
            for spec in self._signature.inputs
        }
        self.infer(inputs)

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        try:
            args = [
                torch.from_numpy(np.ascontiguousarray(inputs[spec.name])).to(self._device)
                for spec in self._signature.inputs
            ]
        except TypeError as exc:
            raise InvalidInput(f"torch cannot take these inputs: {exc}") from None
        try:
            with torch.inference_mode():
                raw = self._module(*args)
        except Exception as exc:
            raise InferenceFailed(f"torch failed: {exc}") from exc
        if isinstance(raw, torch.Tensor):
            values = [raw]
        elif isinstance(raw, dict):
            values = [raw[name] for name in self._signature.output_names]
        else:
            values = list(raw)
        names = self._signature.output_names or tuple(f"output_{i}" for i in range(len(values)))
        results = {
            name: value.detach().cpu().numpy() for name, value in zip(names, values, strict=False)
        }
        if output_names:
            return {name: results[name] for name in output_names}
        return results

    def close(self) -> None:
        del self._module
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
