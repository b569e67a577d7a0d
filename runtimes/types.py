"""Tensor signatures and the Open Inference Protocol datatypes.

Datatype names are the protocol's (`FP32`, `INT64`, `BYTES`, ...); `-1` marks
a dynamic dimension. BYTES tensors are numpy object arrays of `bytes`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtimes.errors import InvalidInput

#: Protocol datatype -> numpy dtype. BYTES is object (each element `bytes`).
DATATYPE_TO_NUMPY: Mapping[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
NUMPY_TO_DATATYPE: Mapping[np.dtype[Any], str] = {v: k for k, v in DATATYPE_TO_NUMPY.items()}


def datatype_of(array: np.ndarray) -> str:
    """The protocol datatype of a numpy array (unicode/bytes arrays are BYTES)."""
    if array.dtype.kind in ("U", "S", "O"):
        return "BYTES"
    try:
        return NUMPY_TO_DATATYPE[array.dtype]
    except KeyError:
        raise InvalidInput(f"unsupported numpy dtype {array.dtype}") from None


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model: name, protocol datatype, shape (-1 = dynamic)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), str(data["datatype"]), tuple(int(d) for d in data["shape"]))

    def accepts_shape(self, shape: Sequence[int]) -> bool:
        if len(shape) != len(self.shape):
            return False
        # A loop, not all(<generator>): this runs for every input of every request.
        for want, got in zip(self.shape, shape):  # noqa: B905, SIM110 (lengths checked above)
            if want >= 0 and want != got:
                return False
        return True


@dataclass(frozen=True)
class Signature:
    """A model's inputs and outputs, in the model's order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    _inputs_by_name: Mapping[str, TensorSpec] = field(init=False, repr=False, compare=False)
    _output_names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_inputs_by_name", {t.name: t for t in self.inputs})
        object.__setattr__(self, "_output_names", tuple(t.name for t in self.outputs))

    def input(self, name: str) -> TensorSpec | None:
        return self._inputs_by_name.get(name)

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._output_names

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signature:
        return cls(
            tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
        )

    def check_input(self, name: str, datatype: str, shape: Sequence[int]) -> None:
        """Check one input's name, datatype and shape; raise InvalidInput naming it. Used on
        a request's declared header before its data is decoded, so a body that cannot fit
        costs no decoding."""
        spec = self._inputs_by_name.get(name)
        if spec is None:
            known = ", ".join(t.name for t in self.inputs)
            raise InvalidInput(f"unknown input '{name}'; the model's inputs are: {known}")
        if datatype != spec.datatype:
            raise InvalidInput(
                f"input '{name}': expected datatype {spec.datatype}, received {datatype}"
            )
        if not spec.accepts_shape(shape):
            raise InvalidInput(
                f"input '{name}': expected shape {_shape_text(spec.shape)}, "
                f"received {_shape_text(shape)}"
            )

    def validate(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Check names, datatypes and shapes of `inputs`; raise InvalidInput naming the input."""
        for name, array in inputs.items():
            self.check_input(name, datatype_of(array), array.shape)
        self.check_complete(inputs)

    def check_complete(self, inputs: Mapping[str, Any]) -> None:
        """Raise InvalidInput if any of the model's inputs is absent."""
        if len(inputs) == len(self.inputs):  # every name was checked to be known
            return
        missing = [t.name for t in self.inputs if t.name not in inputs]
        if missing:
            raise InvalidInput(f"missing input(s): {', '.join(missing)}")


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join("-1" if d < 0 else str(d) for d in shape) + "]"
