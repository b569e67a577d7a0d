"""Wire formats in and out, without a server."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import orjson
import pytest

from gateway import protocol
from gateway.errors import MalformedRequest, PayloadTooLarge
from runtimes.errors import InvalidInput
from runtimes.tensor_codec import tensor_bytes
from runtimes.types import DATATYPE_TO_NUMPY, Signature, TensorSpec

SIG = Signature((TensorSpec("x", "FP32", (-1, 2)),), (TensorSpec("y", "FP32", (-1, 2)),))


def _binary_request(
    arrays: dict[str, tuple[str, np.ndarray]], extra: dict | None = None
) -> tuple[bytes, str]:
    inputs, chunks = [], []
    for name, (datatype, array) in arrays.items():
        chunk = tensor_bytes(array)
        inputs.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(chunk)},
            }
        )
        chunks.append(chunk)
    header = json.dumps({"inputs": inputs, **(extra or {})}).encode()
    return header + b"".join(chunks), str(len(header))


def test_binary_round_trip_all_numeric_datatypes() -> None:
    for datatype, dtype in DATATYPE_TO_NUMPY.items():
        if datatype == "BYTES":
            continue
        array = (np.arange(6) % 2 == 0) if datatype == "BOOL" else np.arange(6).astype(dtype)
        body, length = _binary_request({"x": (datatype, array.reshape(2, 3))})
        signature = Signature((TensorSpec("x", datatype, (-1, 3)),), SIG.outputs)
        parsed = protocol.parse_v2_request(body, length, signature)
        assert parsed.inputs["x"].dtype == dtype
        np.testing.assert_array_equal(parsed.inputs["x"], array.reshape(2, 3))


def test_bytes_binary_layout_is_length_prefixed() -> None:
    array = np.array([b"ab", b"", "\u00e9".encode()], dtype=object)
    encoded = tensor_bytes(array)
    assert (
        encoded
        == struct.pack("<I", 2)
        + b"ab"
        + struct.pack("<I", 0)
        + struct.pack("<I", 2)
        + "\u00e9".encode()
    )
    body, length = _binary_request({"t": ("BYTES", array)})
    signature = Signature((TensorSpec("t", "BYTES", (-1,)),), SIG.outputs)
    assert protocol.parse_v2_request(body, length, signature).inputs["t"].tolist() == (
        array.tolist()
    )


def test_inputs_are_checked_against_the_model_before_their_data_is_decoded() -> None:
    # 1M BYTES elements declared for an FP32 input: refused from the header alone.
    body, length = _binary_request({"x": ("BYTES", np.array([b""] * 1_000_000, dtype=object))})
    with pytest.raises(InvalidInput, match="input 'x': expected datatype FP32, received BYTES"):
        protocol.parse_v2_request(body, length, SIG)
    # A BYTES body with fewer bytes than its shape's elements need: refused before reading.
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "t",
                    "shape": [1000],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 8},
                }
            ]
        }
    )
    signature = Signature((TensorSpec("t", "BYTES", (-1,)),), SIG.outputs)
    with pytest.raises(InvalidInput, match="8 bytes cannot hold the 1000 BYTES elements"):
        protocol.parse_v2_request(header + bytes(8), str(len(header)), signature)


def test_json_request_nested_or_flat_and_outputs() -> None:
    for data in ([[1, 2], [3, 4]], [1, 2, 3, 4]):
        body = orjson.dumps(
            {
                "id": 5,
                "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": data}],
                "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
                "parameters": {"binary_data_output": False},
            }
        )
        parsed = protocol.parse_v2_request(body, None, SIG)
        assert parsed.id == "5"
        assert parsed.inputs["x"].shape == (2, 2) and parsed.inputs["x"].dtype == np.float32
        assert parsed.outputs == [protocol.RequestedOutput("y", True)]


def test_response_mixes_json_and_binary_outputs() -> None:
    results = {"y": np.array([[1.5, 2.5]], dtype=np.float32), "t": np.array([b"hi"], dtype=object)}
    outputs = [protocol.RequestedOutput("y", True), protocol.RequestedOutput("t", False)]
    body, headers = protocol.encode_v2_response("ep", "blue", "r1", results, outputs)
    split = int(headers[protocol.HEADER_LENGTH])
    doc = json.loads(body[:split])
    assert doc["id"] == "r1" and doc["model_version"] == "blue"
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == 8
    assert np.frombuffer(body[split:], dtype="<f4").tolist() == [1.5, 2.5]
    assert doc["outputs"][1]["data"] == ["hi"] and doc["outputs"][1]["datatype"] == "BYTES"

    body, headers = protocol.encode_v2_response(
        "ep", "blue", None, results, [protocol.RequestedOutput("y", False)]
    )
    assert protocol.HEADER_LENGTH not in headers and "id" not in json.loads(body)


def test_raw_binary_request_is_batch_one() -> None:
    parsed = protocol.parse_v2_request(np.array([1, 2], dtype="<f4").tobytes(), "0", SIG)
    assert parsed.inputs["x"].shape == (1, 2) and parsed.binary_output


def test_score_request_converts_to_the_signature_dtype() -> None:
    sig = Signature((TensorSpec("n", "INT64", (-1,)), TensorSpec("s", "BYTES", (-1,))), ())
    inputs = protocol.parse_score_request(b'{"input_data": {"n": [1, 2], "s": ["a", "b"]}}', sig)
    assert inputs["n"].dtype == np.int64 and inputs["s"].tolist() == [b"a", b"b"]
    with pytest.raises(InvalidInput, match="input 'n': expected integers"):
        protocol.parse_score_request(b'{"input_data": {"n": [1.5]}}', sig)
    with pytest.raises(InvalidInput, match="input 's': BYTES elements must be strings"):
        protocol.parse_score_request(b'{"input_data": {"s": [1]}}', sig)


def test_score_response_is_nested_like_the_tensor() -> None:
    out = protocol.encode_score_response(
        {
            "p": np.array([[0.5, 0.25]], dtype=np.float32),
            "l": np.array([3], dtype=np.int64),
            "h": np.array([1.0], dtype=np.float16),
        }
    )
    assert json.loads(out) == {"p": [[0.5, 0.25]], "l": [3], "h": [1.0]}


def test_decompression_is_bounded() -> None:
    payload = b"x" * 10_000
    assert protocol.decompress(gzip.compress(payload), "gzip", 10_000) == payload
    with pytest.raises(PayloadTooLarge):
        protocol.decompress(gzip.compress(payload), "gzip", 9_999)
    with pytest.raises(MalformedRequest, match="Content-Encoding"):
        protocol.decompress(payload, "zstd", 10_000)


def test_response_compression_negotiation() -> None:
    body = b"y" * 1000
    packed, encoding = protocol.compress(body, "gzip, deflate")
    assert encoding == "gzip" and gzip.decompress(packed) == body
    assert protocol.compress(body, None) == (body, None)
