"""Wire formats: Open Inference Protocol v2 (JSON and the binary tensor data
extension) and Azure ML's `/score` JSON. Bytes in, our types out, and back.

Nothing outside this module parses a request body or renders a response body.
Every decoding error is `MalformedRequest` or `InvalidInput`, naming the field.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from gateway.errors import MalformedRequest, PayloadTooLarge
from runtimes.errors import InvalidInput
from runtimes.tensor_codec import (
    array_from_binary,
    array_from_json,
    inputs_from_input_data,
    json_data,
    numpy_dtype,
    reshape,
    tensor_bytes,
)
from runtimes.types import DATATYPE_TO_NUMPY, Signature, datatype_of

HEADER_LENGTH = "inference-header-content-length"


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    #: the classification extension: the top N classes, as "value:index[:label]" BYTES
    classification: int = 0


@dataclass
class InferRequest:
    """A decoded inference request: tensors by input name and what to send back."""

    inputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    #: None = every output of the model, each binary iff `binary_output`.
    outputs: list[RequestedOutput] | None = None
    binary_output: bool = False
    #: an output asks for the classification extension
    classified: bool = False


# -- bodies ------------------------------------------------------------------
def decompress(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """Undo `Content-Encoding: gzip|deflate`, refusing to inflate past `limit` bytes."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("identity", ""):
        return body
    if encoding == "gzip":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        inflater = zlib.decompressobj()
    else:
        raise MalformedRequest(
            f"header 'Content-Encoding': '{content_encoding}' is not supported "
            "(use gzip or deflate)"
        )
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise MalformedRequest(f"body is not valid {encoding} data: {exc}") from None
    if len(data) > limit:
        raise PayloadTooLarge(f"decompressed body exceeds the limit of {limit} bytes")
    return data


def compress(body: bytes, accept_encoding: str | None) -> tuple[bytes, str | None]:
    """Compress an answer if the client asked for gzip or deflate (gzip preferred)."""
    accepted = {part.split(";")[0].strip() for part in (accept_encoding or "").lower().split(",")}
    if "gzip" in accepted:
        deflater = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return deflater.compress(body) + deflater.flush(), "gzip"
    if "deflate" in accepted:
        return zlib.compress(body, 6), "deflate"
    return body, None


def _json(body: bytes, what: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"{what} is not valid JSON: {exc}") from None


# -- tensors -----------------------------------------------------------------
def _shape(name: str, value: Any) -> list[int]:
    # A plain loop rather than all(<generator>): this runs for every input of every request.
    if isinstance(value, list):
        for d in value:
            if type(d) is not int or d < 0:
                break
        else:
            return value
    raise InvalidInput(f"input '{name}': field 'shape' must be a list of non-negative integers")


def _parameters(item: dict[str, Any], where: str, position: int) -> dict[str, Any]:
    """`where[position].parameters` of a request, which must be an object if given."""
    parameters = item.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise MalformedRequest(f"field '{where}[{position}].parameters' must be an object")
    return parameters


# -- Open Inference Protocol v2 requests --------------------------------------
def tabular_input(
    signature: Signature, name: str, datatype: str, inputs: int
) -> tuple[str, str | None]:
    """KServe's sklearn and xgboost servers' leniency, for a table model: the model's one
    input under another name (KServe's `input-0`), and numbers that cast without loss
    (FP32 or INT32 data for an FP64 column). The input's name for the model, and the
    datatype to cast to (None: none). Anything else is checked as usual."""
    if signature.input(name) is None and inputs == 1 and len(signature.inputs) == 1:
        name = signature.inputs[0].name
    spec = signature.input(name)
    if spec is None or spec.datatype == datatype or datatype not in DATATYPE_TO_NUMPY:
        return name, None
    source, target = DATATYPE_TO_NUMPY[datatype], DATATYPE_TO_NUMPY[spec.datatype]
    if datatype != "BYTES" and spec.datatype != "BYTES" and np.can_cast(source, target, "safe"):
        return name, spec.datatype
    return name, None


def parse_v2_request(
    body: bytes, header_length: str | None, signature: Signature, tabular: bool = False
) -> InferRequest:
    """Decode a `/v2/.../infer` body: JSON, JSON + binary tensors, or raw binary.
    `tabular`: a table model's leniency (tabular_input)."""
    if header_length is None:
        json_part, binary = body, memoryview(b"")
    else:
        try:
            split = int(header_length)
        except ValueError:
            raise MalformedRequest(
                f"header 'Inference-Header-Content-Length': '{header_length}' is not an integer"
            ) from None
        if split == 0:
            return _raw_binary_request(body, signature)
        if not 0 < split <= len(body):
            raise MalformedRequest(
                f"header 'Inference-Header-Content-Length': {split} is outside the body "
                f"({len(body)} bytes)"
            )
        json_part, binary = body[:split], memoryview(body)[split:]
    doc = _json(json_part, "request body")
    if not isinstance(doc, dict):
        raise MalformedRequest("request body must be a JSON object")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise MalformedRequest("field 'inputs' must be a non-empty list")
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise MalformedRequest("field 'parameters' must be an object")
    request = InferRequest(
        inputs={},
        id=str(doc["id"]) if doc.get("id") is not None else None,
        parameters=parameters,
        binary_output=bool(parameters.get("binary_data_output", False)),
    )
    offset = 0
    for position, item in enumerate(inputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise MalformedRequest(f"field 'inputs[{position}].name' must be a string")
        name = item["name"]
        shape = _shape(name, item.get("shape"))
        datatype = item.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidInput(f"input '{name}': field 'datatype' must be a string such as FP32")
        cast: str | None = None
        if tabular:
            name, cast = tabular_input(signature, name, datatype, len(inputs))
        if name in request.inputs:
            raise InvalidInput(f"input '{name}' is given twice")
        # Against the model before any data is decoded: a body that cannot fit costs nothing.
        numpy_dtype(name, datatype)  # a datatype the protocol does not know: say so first
        signature.check_input(name, cast or datatype, shape)
        size = _parameters(item, "inputs", position).get("binary_data_size")
        if size is not None:
            if (
                not isinstance(size, int)
                or isinstance(size, bool)
                or size < 0
                or offset + size > len(binary)
            ):
                raise InvalidInput(
                    f"input '{name}': parameters.binary_data_size {size!r} does not fit the "
                    f"{len(binary) - offset} binary bytes left"
                )
            array = array_from_binary(name, binary[offset : offset + size], datatype, shape)
            offset += size
        elif "data" in item:
            array = reshape(name, array_from_json(name, item["data"], datatype), shape)
        else:
            raise InvalidInput(f"input '{name}': needs 'data' or parameters.binary_data_size")
        request.inputs[name] = array if cast is None else array.astype(DATATYPE_TO_NUMPY[cast])
    if offset != len(binary):
        raise MalformedRequest(
            f"{len(binary) - offset} bytes of binary data are not claimed by any input"
        )
    request.outputs = _requested_outputs(doc.get("outputs"), request.binary_output)
    if request.outputs:
        request.classified = any(o.classification for o in request.outputs)
    return request


def _requested_outputs(outputs: Any, binary_default: bool) -> list[RequestedOutput] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise MalformedRequest("field 'outputs' must be a list")
    requested = []
    for position, item in enumerate(outputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise MalformedRequest(f"field 'outputs[{position}].name' must be a string")
        params = _parameters(item, "outputs", position)
        count = params.get("classification", 0)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise InvalidInput(
                f"output '{item['name']}': parameters.classification must be a non-negative "
                f"integer (the number of classes), got {count!r}"
            )
        requested.append(
            RequestedOutput(item["name"], bool(params.get("binary_data", binary_default)), count)
        )
    return requested


def classified(
    results: Mapping[str, np.ndarray],
    outputs: Sequence[RequestedOutput],
    served: Any,
    signature: Signature,
) -> dict[str, np.ndarray]:
    """Triton's classification extension: each output asked for with `classification: N`
    becomes its N largest values as BYTES "value:index" (":label" when the model has labels
    for it), per batch element for a model that batches, else over the whole tensor."""
    labels: Mapping[str, Sequence[str]] = served.labels if served is not None else {}
    if served is not None:
        batched = int(served.config.get("max_batch_size", 0) or 0) > 0
    changed = dict(results)
    for output in outputs:
        if not output.classification:
            continue
        array = results[output.name]
        if array.dtype.kind not in "iufb":
            raise InvalidInput(f"output '{output.name}' is not numeric: it cannot be classified")
        if served is None:
            spec = next((t for t in signature.outputs if t.name == output.name), None)
            batched = spec is not None and bool(spec.shape) and spec.shape[0] < 0
        rows = array.reshape(array.shape[0], -1) if batched and array.ndim else array.reshape(1, -1)
        count = min(output.classification, rows.shape[1])
        names = labels.get(output.name, ())
        picked = []
        for row in rows:
            top = np.argsort(-row, kind="stable")[:count]
            picked.append(
                [f"{float(row[i]):f}:{i}" + (f":{names[i]}" if i < len(names) else "") for i in top]
            )
        table = np.array([[c.encode() for c in row] for row in picked], dtype=object)
        changed[output.name] = table if batched else table.reshape(-1)
    return changed


def _raw_binary_request(body: bytes, signature: Signature) -> InferRequest:
    # Inference-Header-Content-Length: 0 means the body is one input's bytes, batch 1.
    if len(signature.inputs) != 1:
        raise InvalidInput(
            "a raw binary request (Inference-Header-Content-Length: 0) needs a model with one "
            f"input; this one has {len(signature.inputs)}"
        )
    spec = signature.inputs[0]
    dims = [1 if i == 0 and d < 0 else d for i, d in enumerate(spec.shape)]
    flat = array_from_binary(spec.name, memoryview(body), spec.datatype, [-1])
    try:
        array = flat.reshape(dims)  # numpy infers at most one remaining -1
    except ValueError:
        raise InvalidInput(
            f"input '{spec.name}': {flat.size} elements do not fit shape {spec.shape} as batch 1"
        ) from None
    return InferRequest(inputs={spec.name: array}, binary_output=True)


# -- Open Inference Protocol v2 responses -------------------------------------
def select_outputs(
    request: InferRequest, signature: Signature, tabular: bool = False
) -> list[RequestedOutput]:
    """The outputs to compute and return; raise InvalidInput for an unknown name. For a
    table model, `output-N` (KServe's names) is the model's N-th output, answered under
    the name asked for (see rename_outputs)."""
    if request.outputs is None:
        return [RequestedOutput(name, request.binary_output) for name in signature.output_names]
    known = set(signature.output_names)
    for output in request.outputs:
        if output.name not in known and kserve_output(output.name, signature, tabular) is None:
            raise InvalidInput(
                f"unknown output '{output.name}'; the model's outputs are: "
                f"{', '.join(signature.output_names)}"
            )
    return request.outputs


def kserve_output(name: str, signature: Signature, tabular: bool) -> str | None:
    """The model's output that KServe's `output-N` means, for a table model."""
    if not tabular or name in signature.output_names or not name.startswith("output-"):
        return None
    index = name.removeprefix("output-")
    if index.isascii() and index.isdigit() and int(index) < len(signature.outputs):
        return signature.outputs[int(index)].name
    return None


def encode_v2_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    results: Mapping[str, np.ndarray],
    outputs: Sequence[RequestedOutput],
) -> tuple[bytes, dict[str, str]]:
    """Render an inference response; binary outputs follow the JSON header."""
    rendered: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for output in outputs:
        array = results[output.name]
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": datatype_of(array),
            "shape": list(array.shape),
        }
        if output.binary:
            chunk = tensor_bytes(array)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = json_data(array)
        rendered.append(entry)
    doc: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "outputs": rendered,
    }
    if request_id is not None:
        doc["id"] = request_id
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, {"content-type": "application/json"}
    return b"".join([header, *chunks]), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


# -- Azure ML /score -----------------------------------------------------------
def parse_score_request(body: bytes, signature: Signature) -> dict[str, np.ndarray]:
    """`{"input_data": [[...]]}` (single-input model) or `{"input_data": {name: [...]}}`."""
    doc = _json(body, "request body")
    if not isinstance(doc, dict) or "input_data" not in doc:
        raise MalformedRequest("field 'input_data' is required")
    return inputs_from_input_data(doc["input_data"], signature)


def encode_score_response(results: Mapping[str, np.ndarray]) -> bytes:
    """A JSON object keyed by output name, each value nested like the tensor."""
    doc = {
        name: (array.tolist() if array.dtype == object else np.ascontiguousarray(array))
        for name, array in results.items()
    }
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError
