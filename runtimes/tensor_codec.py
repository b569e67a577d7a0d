"""Tensor encodings of the Open Inference Protocol, shared by the gateway
(requests in, answers out) and the remote runtime (the other way round):
JSON values <-> arrays, and the binary tensor data extension (little-endian,
row-major; BYTES as 4-byte little-endian length + bytes). Errors name the tensor.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from runtimes.errors import InvalidInput
from runtimes.types import DATATYPE_TO_NUMPY, Signature

_LENGTH_PREFIX = struct.Struct("<I")


def numpy_dtype(name: str, datatype: Any) -> np.dtype[Any]:
    if datatype == "BF16":
        raise InvalidInput(f"input '{name}': datatype BF16 is not supported; send FP32 or FP16")
    try:
        return DATATYPE_TO_NUMPY[datatype]
    except (KeyError, TypeError):
        raise InvalidInput(
            f"input '{name}': unknown datatype {datatype!r}; allowed: "
            f"{', '.join(DATATYPE_TO_NUMPY)}"
        ) from None


def array_from_json(name: str, data: Any, datatype: str) -> np.ndarray:
    """A JSON value (nested or flat list, or a scalar) as an array of `datatype`."""
    dtype = numpy_dtype(name, datatype)
    if datatype == "BYTES":
        try:
            raw = np.asarray(data, dtype=object)
        except ValueError as exc:
            raise InvalidInput(f"input '{name}': data is not a regular array: {exc}") from None
        encode = np.vectorize(
            lambda v: v.encode("utf-8") if isinstance(v, str) else _not_text(name, v),
            otypes=[object],
        )
        return encode(raw) if raw.size else raw
    try:
        array = np.asarray(data)
    except ValueError as exc:
        raise InvalidInput(f"input '{name}': data is not a regular array: {exc}") from None
    kind = array.dtype.kind
    if kind in ("U", "S", "O"):
        raise InvalidInput(f"input '{name}': expected numbers for datatype {datatype}")
    if dtype.kind in ("i", "u") and kind == "f":
        raise InvalidInput(f"input '{name}': expected integers for datatype {datatype}")
    if dtype.kind == "b" and kind != "b":
        raise InvalidInput(f"input '{name}': expected true/false for datatype BOOL")
    return array.astype(dtype, copy=False)


def _not_text(name: str, value: Any) -> bytes:
    raise InvalidInput(
        f"input '{name}': BYTES elements must be strings, got {type(value).__name__}"
    )


def reshape(name: str, array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    if list(shape) == [-1]:
        return array
    expected = math.prod(shape)
    if array.size != expected:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} needs {expected} elements, data has {array.size}"
        )
    return array.reshape(shape)


def _bytes_elements(name: str, raw: memoryview, count: int | None) -> np.ndarray:
    """BYTES elements of binary data; with `count` (from the declared shape), a body that
    cannot hold that many elements is refused before any is read."""
    if count is not None and len(raw) < 4 * count:
        raise InvalidInput(
            f"input '{name}': {len(raw)} bytes cannot hold the {count} BYTES elements its "
            "shape declares"
        )
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if count is not None and len(items) == count:
            raise InvalidInput(
                f"input '{name}': binary data holds more than the {count} BYTES elements its "
                "shape declares"
            )
        if offset + 4 > len(raw):
            raise InvalidInput(f"input '{name}': truncated BYTES length prefix")
        (length,) = _LENGTH_PREFIX.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(f"input '{name}': BYTES element runs past its binary data")
        items.append(bytes(raw[offset : offset + length]))
        offset += length
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def array_from_binary(
    name: str, raw: memoryview, datatype: str, shape: Sequence[int]
) -> np.ndarray:
    """Binary tensor data (little-endian, row-major) as an array; no per-element copies."""
    dtype = numpy_dtype(name, datatype)
    if datatype == "BYTES":
        count = None if list(shape) == [-1] else math.prod(shape)
        return reshape(name, _bytes_elements(name, raw, count), shape)
    if len(raw) % dtype.itemsize:
        raise InvalidInput(
            f"input '{name}': {len(raw)} bytes is not a whole number of {datatype} elements"
        )
    return reshape(name, np.frombuffer(raw, dtype=dtype.newbyteorder("<")), shape)


def tensor_bytes(array: np.ndarray) -> bytes:
    """An array as binary tensor data."""
    if array.dtype == object:
        return b"".join(_LENGTH_PREFIX.pack(len(v)) + v for v in map(_as_bytes, array.ravel()))
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def json_data(array: np.ndarray) -> Any:
    """An array as a flat JSON-able value (BYTES as text)."""
    if array.dtype == object:
        return [_as_bytes(v).decode("utf-8", "replace") for v in array.ravel()]
    return np.ascontiguousarray(array).ravel()


def inputs_from_input_data(data: Any, signature: Signature) -> dict[str, np.ndarray]:
    """Azure ML's `input_data`: a list (single-input model) or an object keyed by input
    name, as arrays of the signature's datatypes. Raises InvalidInput naming the field."""
    names = [t.name for t in signature.inputs]
    if isinstance(data, dict):
        by_name = data
    elif isinstance(data, list):
        if len(names) != 1:
            raise InvalidInput(
                f"field 'input_data': the model has {len(names)} inputs ({', '.join(names)}); "
                "give input_data as an object keyed by input name"
            )
        by_name = {names[0]: data}
    else:
        raise InvalidInput("field 'input_data' must be a list or an object keyed by input name")
    inputs = {}
    for name, value in by_name.items():
        spec = signature.input(name)
        if spec is None:
            raise InvalidInput(
                f"unknown input '{name}'; the model's inputs are: {', '.join(names)}"
            )
        inputs[name] = array_from_json(name, value, spec.datatype)
    return inputs
