"""The Open Inference Protocol over gRPC: the KServe v2 / Triton `GRPCInferenceService`
(`--grpc-port`), so `tritonclient.grpc` and KServe's gRPC clients work unchanged.

The messages and the service stub are the ones tritonclient ships (generated from
Triton's `grpc_service.proto`, a superset of KServe v2's), so what a Triton client sends
is what this server reads, without a second copy of the proto here.

A call goes the same way as an HTTP one: the endpoint's key or token in the
`authorization` metadata, the endpoint's traffic split (or a pin: `model_version`, or
the `azureml-model-deployment` metadata), admission and batching in the deployment's
scheduler, its deadline the shorter of the gRPC deadline and `request_timeout_ms`, and
the same metrics (protocol `grpc`). Tensors arrive as typed `contents` or as
`raw_input_contents`; outputs are sent as `raw_output_contents`, as Triton sends them.
A mirror deployment gets copies of gRPC calls routed by weight, as of HTTP requests; the
data collector logs HTTP payloads only.
"""

from __future__ import annotations

import math
import struct
import time
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from deploy.roles import Permission, Principal
from gateway import model_documents as documents
from gateway import tracing
from gateway.access import authorize, principal_for
from gateway.errors import status_of
from gateway.metadata import EXTENSIONS, SERVER_VERSION
from gateway.protocol import RequestedOutput, classified, tabular_input
from gateway.rate_limit import peer_address
from gateway.request_ids import current, request_id_of
from gateway.routing import DeploymentRoute
from gateway.scoring import (
    DEPLOYMENT_HEADER,
    ScoringEndpoint,
    _infer,
    record_request,
    response_names,
)
from gateway.state import GatewayState
from runtimes.errors import InvalidInput, Retired
from runtimes.scheduler import Timing
from runtimes.types import DATATYPE_TO_NUMPY, datatype_of

PROTOCOL = "grpc"

#: HTTP statuses of our errors -> gRPC status codes (as KServe maps them)
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    424: grpc.StatusCode.INTERNAL,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}

#: the typed `contents` field that holds each datatype
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _bytes_elements(raw: bytes, name: str) -> np.ndarray:
    """Triton's BYTES wire form: each element a 4-byte little-endian length, then bytes."""
    items, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise InvalidInput(f"input '{name}': truncated BYTES element length")
        (size,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + size > len(raw):
            raise InvalidInput(f"input '{name}': BYTES element longer than its data")
        items.append(raw[at : at + size])
        at += size
    return np.array(items, dtype=object)


def _bytes_wire(array: np.ndarray) -> bytes:
    parts = []
    for item in array.ravel():
        data = item if isinstance(item, bytes) else str(item).encode()
        parts += [struct.pack("<I", len(data)), data]
    return b"".join(parts)


def decode_inputs(
    request: service_pb2.ModelInferRequest, route: DeploymentRoute
) -> dict[str, np.ndarray]:
    """The request's tensors, each checked against the model's signature first."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents holds {len(raw)} tensors for {len(request.inputs)} inputs"
        )
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
        if datatype not in DATATYPE_TO_NUMPY:
            raise InvalidInput(f"input '{name}': unknown datatype '{datatype}'")
        cast = None
        if route.kind.tabular:  # KServe's leniency, as over HTTP
            name, cast = tabular_input(route.signature, name, datatype, len(request.inputs))
        route.signature.check_input(name, cast or datatype, shape)
        count = math.prod(shape)
        if raw:
            if datatype == "BYTES":
                array = _bytes_elements(raw[i], name)
            else:
                dtype = DATATYPE_TO_NUMPY[datatype]
                if len(raw[i]) != count * dtype.itemsize:
                    raise InvalidInput(
                        f"input '{name}': {len(raw[i])} bytes of data for shape {shape} "
                        f"of {datatype} ({count * dtype.itemsize} bytes)"
                    )
                array = np.frombuffer(raw[i], dtype=dtype)
        else:
            if datatype not in _CONTENTS:
                raise InvalidInput(f"input '{name}': {datatype} travels in raw_input_contents")
            values = getattr(tensor.contents, _CONTENTS[datatype])
            array = (
                np.array(list(values), dtype=object)
                if datatype == "BYTES"
                else np.asarray(values, dtype=DATATYPE_TO_NUMPY[datatype])
            )
        if array.size != count:
            raise InvalidInput(f"input '{name}': {array.size} values for shape {shape}")
        array = array.reshape(shape)
        inputs[name] = array if cast is None else array.astype(DATATYPE_TO_NUMPY[cast])
    return inputs


def encode_outputs(
    request: service_pb2.ModelInferRequest,
    route: DeploymentRoute,
    results: dict[str, np.ndarray],
) -> service_pb2.ModelInferResponse:
    model_name, model_version = response_names(route, request.model_name)
    response = service_pb2.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request.id
    )
    for name, array in results.items():
        datatype = datatype_of(array)
        response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if datatype == "BYTES":
            response.raw_output_contents.append(_bytes_wire(array))
        else:
            response.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    return response


def _classification(request: service_pb2.ModelInferRequest) -> list[RequestedOutput]:
    """The outputs asked for with Triton's classification extension (none: [])."""
    asked = [
        RequestedOutput(o.name, True, int(o.parameters["classification"].int64_param))
        for o in request.outputs
        if "classification" in o.parameters
    ]
    for output in asked:
        if output.classification < 0:
            raise InvalidInput(f"output '{output.name}': classification must be positive")
    return [o for o in asked if o.classification]


def _parameters(request: service_pb2.ModelInferRequest, context: Any) -> dict[str, Any]:
    """OIP parameters the scheduler reads, with the gRPC deadline as `timeout` (us)."""
    parameters: dict[str, Any] = {}
    for key in ("priority", "timeout"):
        if key in request.parameters:
            parameters[key] = request.parameters[key].int64_param
    remaining = context.time_remaining()
    if remaining is not None:
        deadline_us = max(1, int(remaining * 1e6))
        parameters["timeout"] = min(parameters.get("timeout", deadline_us), deadline_us)
    return parameters


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state: GatewayState) -> None:
        self._state = state

    async def _fail(self, context: Any, exc: Exception) -> None:
        mapped = status_of(exc)
        status, message = (mapped[0], str(exc)) if mapped else (500, "internal server error")
        await context.abort(_CODES.get(status, grpc.StatusCode.INTERNAL), message)

    async def _route(
        self, context: Any, model: str, version: str
    ) -> tuple[Any, DeploymentRoute, str | None]:
        """The model a call names (its endpoint's name or a Triton model's, and a version:
        a deployment or the served version), authenticated, and the deployment that
        answers."""
        state = self._state
        metadata = dict(context.invocation_metadata() or ())
        endpoint, pinned = state.hosts.snapshot.model(model, version or None)
        await state.admit(endpoint, metadata.get("authorization"), peer_address(context.peer()))
        target = pinned or metadata.get(DEPLOYMENT_HEADER)
        return endpoint, ScoringEndpoint._pick(state, endpoint, target, metadata), target

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        state = self._state
        return service_pb2.ServerReadyResponse(ready=state.ready and not state.hosts.problems())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            _, route, _ = await self._route(context, request.name, request.version)
        except Exception as exc:
            mapped = status_of(exc)
            if mapped is not None and mapped[0] in (404, 503):  # as Triton: not ready
                return service_pb2.ModelReadyResponse(ready=False)
            await self._fail(context, exc)
        problem = getattr(route.scheduler.host, "problem", None)
        return service_pb2.ModelReadyResponse(ready=not problem)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerMetadataResponse(
            name=self._state.settings.server_name, version=SERVER_VERSION, extensions=EXTENSIONS
        )

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        try:
            endpoint, route, target = await self._route(context, request.name, request.version)
        except Exception as exc:
            await self._fail(context, exc)
        doc = documents.metadata(request.name, endpoint, route, bool(target))
        return json_format.ParseDict(doc, service_pb2.ModelMetadataResponse())

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        """Triton's model configuration, as over HTTP (get_model_config)."""
        try:
            _, route, _ = await self._route(context, request.name, request.version)
        except Exception as exc:
            await self._fail(context, exc)
        config = json_format.ParseDict(
            documents.config(request.name, route),
            model_config_pb2.ModelConfig(),
            ignore_unknown_fields=True,
        )
        return service_pb2.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        """Triton's statistics extension, as over HTTP: a model's (an endpoint's every
        deployment), or every model's with an admin token when no name is given."""
        try:
            if request.name:
                endpoint, route, target = await self._route(context, request.name, request.version)
                if target or request.name != endpoint.name:
                    routes = [route]
                else:
                    routes = [endpoint.deployment(d) for d in sorted(endpoint.deployments)]
                stats = [documents.statistics(request.name, r) for r in routes]
            else:
                caller = await self._principal(context, Permission.READ, "read model statistics")
                stats = [
                    documents.statistics(r.served.name if r.served else name, r)
                    for name, endpoint in sorted(self._state.hosts.snapshot.endpoints.items())
                    if caller.may_act_on(name)
                    for r in (endpoint.deployment(d) for d in sorted(endpoint.deployments))
                ]
        except Exception as exc:
            await self._fail(context, exc)
        return json_format.ParseDict(
            {"model_stats": stats},
            service_pb2.ModelStatisticsResponse(),
            ignore_unknown_fields=True,
        )

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        """Triton's repository index, as over HTTP (admin token)."""
        try:
            caller = await self._principal(context, Permission.READ, "list the repository")
        except Exception as exc:
            await self._fail(context, exc)
        rows = [
            row
            for name, endpoint in sorted(self._state.hosts.snapshot.endpoints.items())
            if caller.may_act_on(name)
            for row in documents.index_entries(name, endpoint)
        ]
        return json_format.ParseDict({"models": rows}, service_pb2.RepositoryIndexResponse())

    async def _principal(self, context: Any, permission: Permission, what: str) -> Principal:
        metadata = dict(context.invocation_metadata() or ())
        caller = await principal_for(metadata.get("authorization"), self._state)
        authorize(caller, permission, what)
        return caller

    async def _infer_one(self, request: Any, context: Any) -> Any:
        """One inference, recorded in the metrics; our errors raised as they are."""
        state = self._state
        started = time.perf_counter()
        timing = Timing()
        route: DeploymentRoute | None = None
        status = 499
        # The request id, as over HTTP: the client's (metadata x-request-id), else ours;
        # answered in the trailing metadata, and in the log lines about this call.
        given = next(
            (v for k, v in context.invocation_metadata() or () if k == "x-request-id"), None
        )
        request_id = request_id_of(given if isinstance(given, str) else None)
        context.set_trailing_metadata((("x-request-id", request_id),))
        id_token = current.set(request_id)
        span = None
        if tracing.TRACER is not None:
            carrier = {k: v for k, v in context.invocation_metadata() or () if k == "traceparent"}
            span = tracing.RequestSpan(
                "inference.GRPCInferenceService/ModelInfer", carrier, request_id, started
            )
        try:
            endpoint, route, target = await self._route(
                context, request.model_name, request.model_version
            )
            if route.kind.takes_raw_body:
                raise InvalidInput(
                    f"deployment '{route.name}' runs a scoring script, which takes raw "
                    f"requests: use POST /endpoints/{route.endpoint}/score"
                )
            inputs = decode_inputs(request, route)
            names = [o.name for o in request.outputs] or None
            classify = _classification(request)
            parameters = _parameters(request, context)
            try:
                results = await _infer(route, inputs, names, parameters, timing, checked=True)
            except Retired:  # the deployment changed under this request: route it again
                route = ScoringEndpoint._pick(
                    state, state.hosts.snapshot.endpoint(endpoint.name), target, {}
                )
                results = await _infer(route, inputs, names, parameters, timing, checked=True)
            status = 200
            if classify:
                results = classified(results, classify, route.served, route.signature)
            response = encode_outputs(request, route, results)
            self._mirror(endpoint, target, inputs, names, results)
            return response
        except Exception as exc:
            mapped = status_of(exc)
            status = mapped[0] if mapped else 500
            raise
        finally:
            elapsed = time.perf_counter() - started
            shown = route.endpoint if route is not None else request.model_name
            record_request(state, PROTOCOL, shown, route, status, elapsed, timing)
            current.reset(id_token)
            if span is not None:
                deployment = route.name if route is not None else None
                span.finish(status, request.model_name, deployment, timing)

    def _mirror(
        self,
        endpoint: Any,
        target: str | None,
        inputs: dict[str, np.ndarray],
        names: list[str] | None,
        live: dict[str, np.ndarray],
    ) -> None:
        """A copy to the endpoint's mirror deployment, compared with the live answer, as
        for HTTP: only requests routed by weight, after the answer is made."""
        state = self._state
        if endpoint.mirror is None or target:
            return
        name, percent = endpoint.mirror
        candidate = endpoint.deployments.get(name)
        if candidate is None or state.rng.random() * 100 >= percent:
            return

        async def run(route: DeploymentRoute, timing: Timing) -> tuple[int, bytes, Any]:
            return 200, b"", await _infer(route, inputs, names, {}, timing)

        state.mirror.copy(candidate, run, (live, b""))

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        try:
            return await self._infer_one(request, context)
        except Exception as exc:
            await self._fail(context, exc)

    async def ModelStreamInfer(self, requests: Any, context: Any) -> Any:
        """Triton's streaming extension: one answer per request, in order; a request that
        fails answers its error message and the stream goes on."""
        async for request in requests:
            try:
                response = await self._infer_one(request, context)
            except Exception as exc:
                mapped = status_of(exc)
                message = str(exc) if mapped else "internal server error"
                yield service_pb2.ModelStreamInferResponse(error_message=message)
                continue
            yield service_pb2.ModelStreamInferResponse(infer_response=response)


async def start(state: GatewayState, host: str, port: int) -> grpc.aio.Server:
    """Serve the inference service on host:port (messages up to the HTTP body limit)."""
    limit = state.settings.max_request_body_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(state), server)
    settings = state.settings
    if settings.ssl_certfile is None:
        server.add_insecure_port(f"{host}:{port}")
    else:  # the HTTP port's certificate, and its mutual TLS
        key = (settings.ssl_keyfile or settings.ssl_certfile).read_bytes()
        ca = settings.ssl_ca_certs.read_bytes() if settings.ssl_ca_certs else None
        credentials = grpc.ssl_server_credentials(
            [(key, settings.ssl_certfile.read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )
        server.add_secure_port(f"{host}:{port}", credentials)
    await server.start()
    return server
