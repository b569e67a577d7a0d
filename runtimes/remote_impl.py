"""A remote Open Inference Protocol v2 server as a runtime (`runtime: remote`,
`url: http://host:port/v2/models/NAME[/versions/V]`): Triton, KServe, MLServer
or another servegate, fronted by this gateway.

One pooled HTTP client per instance, awaited on the event loop. Tensors stay
binary both ways (binary tensor data extension). `runtime_options`: `headers`
(e.g. an Authorization header for the remote), `timeout_s` (default 60).
A 4xx from the remote is the caller's fault (InvalidInput); anything else is
InferenceFailed (424, as Azure ML answers for a failing model container).
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from runtimes import context
from runtimes.base import RuntimeConfig
from runtimes.errors import InferenceFailed, InvalidInput, ModelLoadError
from runtimes.tensor_codec import array_from_binary, array_from_json, reshape, tensor_bytes
from runtimes.types import Signature, TensorSpec, datatype_of

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"


def read_signature(path: Path) -> Signature:  # a remote model has no local file
    return Signature((), ())


def _signature(metadata: Mapping[str, Any]) -> Signature:
    def specs(items: Any) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(t["name"], t["datatype"], tuple(int(d) for d in t["shape"]))
            for t in items or ()
        )

    return Signature(specs(metadata.get("inputs")), specs(metadata.get("outputs")))


def _encode(
    inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None
) -> tuple[bytes, int]:
    descriptions, chunks = [], []
    for name, array in inputs.items():
        chunk = tensor_bytes(array)
        descriptions.append(
            {
                "name": name,
                "datatype": datatype_of(array),
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(chunk)},
            }
        )
        chunks.append(chunk)
    doc: dict[str, Any] = {"inputs": descriptions, "parameters": {"binary_data_output": True}}
    if output_names:
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in output_names]
    header = orjson.dumps(doc)
    return header + b"".join(chunks), len(header)


def _decode(response: httpx.Response) -> dict[str, np.ndarray]:
    body = response.content
    split = int(response.headers.get(HEADER_LENGTH, len(body)))
    doc = orjson.loads(body[:split])
    binary = memoryview(body)[split:]
    offset, results = 0, {}
    for item in doc.get("outputs", []):
        name, shape = item["name"], item["shape"]
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            results[name] = array_from_binary(
                name, binary[offset : offset + size], item["datatype"], shape
            )
            offset += size
        else:
            results[name] = reshape(
                name, array_from_json(name, item["data"], item["datatype"]), shape
            )
    return results


def _scrubbed(body: bytes, secrets: Sequence[str]) -> str:
    """The start of a remote's body for the log, with the values of the headers sent to it
    replaced by '***' (a remote that echoes its request would log our credentials)."""
    text = body[:2000].decode("utf-8", "replace")
    for secret in secrets:
        text = text.replace(secret, "***")
    return text[:500]


def _failure(response: httpx.Response, url: str, secrets: Sequence[str] = ()) -> Exception:
    """The status and its reason only: the remote's body is not ours to reflect to
    clients (it may carry internals); it goes to the log, cut short and scrubbed."""
    log.warning(
        "remote %s answered %d: %r", url, response.status_code, _scrubbed(response.content, secrets)
    )
    text = f"remote {url} answered {response.status_code} {response.reason_phrase}".rstrip()
    return InvalidInput(text) if 400 <= response.status_code < 500 else InferenceFailed(text)


#: What a body that is not the answer we expect can raise while it is decoded.
_MALFORMED = (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError)


class RemoteRuntime:
    def __init__(self, config: RuntimeConfig) -> None:
        if not config.url:
            raise ModelLoadError("runtime 'remote' needs a url")
        self._url = config.url.rstrip("/")
        options = dict(config.options)
        headers = {str(k): str(v) for k, v in dict(options.get("headers") or {}).items()}
        # What the log never shows: each header value, and a bearer's credential alone.
        self._secrets = tuple(
            sorted(
                {
                    part
                    for v in headers.values()
                    for part in (v, v.split(" ", 1)[-1])
                    if len(part) >= 4
                },
                key=len,
                reverse=True,
            )
        )
        timeout = httpx.Timeout(float(options.get("timeout_s", 60.0)))
        limits = httpx.Limits(max_keepalive_connections=64, max_connections=256)
        # An https:// remote is verified against SERVEGATE_CA_BUNDLE when set (a private
        # CA), else the system's CAs.
        bundle = os.environ.get("SERVEGATE_CA_BUNDLE")
        verify: Any = ssl.create_default_context(cafile=bundle) if bundle else True
        self._client = httpx.AsyncClient(
            headers=headers, timeout=timeout, limits=limits, verify=verify
        )
        self._sync = httpx.Client(headers=headers, timeout=timeout, verify=verify)
        try:
            response = self._sync.get(self._url)
        except httpx.HTTPError as exc:
            raise ModelLoadError(f"remote model {self._url} is unreachable: {exc}") from exc
        if response.status_code != 200:
            raise ModelLoadError(
                f"remote model {self._url}: {_failure(response, self._url, self._secrets)}"
            )
        try:
            self._signature = config.signature or _signature(orjson.loads(response.content))
        except _MALFORMED:
            raise ModelLoadError(
                f"field 'url': {self._url} answered 200 but not with Open Inference Protocol "
                "model metadata (JSON with 'inputs' and 'outputs'); is it a /v2/models/NAME URL?"
            ) from None

    @property
    def signature(self) -> Signature:
        return self._signature

    def _post_args(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None
    ) -> dict[str, Any]:
        body, split = _encode(inputs, output_names)
        headers = {HEADER_LENGTH: str(split)}
        # The remote's spans and logs join the request's (one request: its id too).
        traceparent = context.traceparent.get()
        if traceparent:
            headers["traceparent"] = traceparent
        request_id = context.request_id.get()
        if request_id != "-" and "," not in request_id:
            headers["x-request-id"] = request_id
        return {"url": f"{self._url}/infer", "content": body, "headers": headers}

    @contextmanager
    def _transport_errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.HTTPError as exc:
            raise InferenceFailed(
                f"remote {self._url} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def _answer(self, response: httpx.Response) -> dict[str, np.ndarray]:
        if response.status_code != 200:
            raise _failure(response, self._url, self._secrets)
        try:
            return _decode(response)
        except _MALFORMED:
            log.warning(
                "remote %s answered 200 with: %r",
                self._url,
                _scrubbed(response.content, self._secrets),
            )
            raise InferenceFailed(
                f"remote {self._url} answered 200 without a valid inference response"
            ) from None

    async def infer_async(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        with self._transport_errors():
            response = await self._client.post(**self._post_args(inputs, output_names))
        return self._answer(response)

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        with self._transport_errors():
            response = self._sync.post(**self._post_args(inputs, output_names))
        return self._answer(response)

    async def aclose(self) -> None:
        await self._client.aclose()

    def close(self) -> None:
        self._sync.close()
