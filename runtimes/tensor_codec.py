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
    """Azure ML's `input_data`: a list (single-input model), an object keyed by input
    name, or, for a model that takes a table (one 1-D input per column), pandas' split
    orientation (`{"columns": [...], "data": [[...]]}`) or rows in the model's column
    order; as arrays of the signature's datatypes. Raises InvalidInput naming the field."""
    names = [t.name for t in signature.inputs]
    if isinstance(data, dict):
        if _split_orientation(data, names):
            return _from_split(data, signature)
        by_name = data
    elif isinstance(data, list):
        if len(names) != 1:
            if _takes_columns(signature):
                return _from_rows(data, names, signature)
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


def _takes_columns(signature: Signature) -> bool:
    """A table model: one 1-D input per column."""
    return all(len(t.shape) == 1 for t in signature.inputs)


def _split_orientation(data: dict[str, Any], names: list[str]) -> bool:
    return "columns" in data and "data" in data and not set(data) & set(names)


def _from_split(doc: dict[str, Any], signature: Signature) -> dict[str, np.ndarray]:
    columns, rows = doc["columns"], doc["data"]
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise InvalidInput("field 'input_data.columns' must be a list of column names")
    names = [t.name for t in signature.inputs]
    if not _takes_columns(signature):
        if len(names) != 1:
            raise InvalidInput(
                f"field 'input_data': the model has {len(names)} inputs ({', '.join(names)}), "
                "not a table; give input_data as an object keyed by input name"
            )
        # A model trained on a plain array: the columns are positional.
        _check_rows(rows, len(columns), "input_data.data")
        return {names[0]: array_from_json(names[0], rows, signature.inputs[0].datatype)}
    unknown = [c for c in columns if signature.input(c) is None]
    if unknown:
        raise InvalidInput(
            f"unknown column(s) {', '.join(repr(c) for c in unknown)}; the model's columns "
            f"are: {', '.join(names)}"
        )
    missing = [n for n in names if n not in columns]
    if missing:
        raise InvalidInput(f"missing column(s): {', '.join(missing)}")
    _check_rows(rows, len(columns), "input_data.data")
    return {
        name: array_from_json(
            name, [row[i] for row in rows], signature.inputs[names.index(name)].datatype
        )
        for i, name in enumerate(columns)
    }


def _from_rows(rows: Any, names: list[str], signature: Signature) -> dict[str, np.ndarray]:
    _check_rows(rows, len(names), "input_data")
    return {
        name: array_from_json(name, [row[i] for row in rows], spec.datatype)
        for i, (name, spec) in enumerate(zip(names, signature.inputs, strict=True))
    }


def _check_rows(rows: Any, width: int, field: str) -> None:
    if not isinstance(rows, list) or not rows:
        raise InvalidInput(f"field '{field}' must be a non-empty list of rows")
    for number, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != width:
            got = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
            raise InvalidInput(
                f"field '{field}': row {number} has {got}; the model takes {width} columns"
            )
