"""HTTP errors: the one place where exceptions become status codes.

    GatewayError (status on the class)
    ├── MalformedRequest        400  the body cannot be decoded
    ├── Unauthorized            401  missing or wrong key/token
    ├── AmbiguousModel          400  a model name several endpoints serve, at the root
    ├── EndpointNotFound        404  unknown endpoint/deployment/model, or no traffic
    ├── PayloadTooLarge         413  body over max_request_body_bytes
    └── DeploymentUnavailable   503  the deployment failed to load

Lower layers raise their own trees (runtimes.errors, deploy.errors); `STATUS`
maps those by class, walking the MRO. Every error body is
`{"error": "<message>", "code": "<code>"}`, compatible with the Open Inference
Protocol's `{"error"}` on every path.
"""

from __future__ import annotations

import logging

import orjson
from starlette.responses import Response

from batch.errors import BatchInputError
from deploy.errors import Conflict, ControlPlaneError, NotFound, SpecError, StoreUnavailable
from runtimes.errors import (
    DeviceUnavailable,
    InferenceError,
    InferenceFailed,
    InferenceTimeout,
    InstanceFailed,
    InvalidInput,
    MissingExtra,
    ModelLoadError,
    Overloaded,
    Retired,
)

log = logging.getLogger(__name__)


class GatewayError(Exception):
    status = 500
    code = "internal_error"


class MalformedRequest(GatewayError):
    status = 400
    code = "malformed_request"


class Unauthorized(GatewayError):
    status = 401
    code = "unauthorized"


class Forbidden(GatewayError):
    """Authenticated, but the principal's roles do not allow this."""

    status = 403
    code = "forbidden"


class EndpointNotFound(GatewayError):
    status = 404
    code = "not_found"


class AmbiguousModel(GatewayError):
    """A model name that several endpoints serve, asked for at the gateway's root."""

    status = 400
    code = "ambiguous_model"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "payload_too_large"


class DeploymentUnavailable(GatewayError):
    status = 503
    code = "deployment_unavailable"


#: Lower-layer exception class -> (status, code). Looked up along the MRO.
STATUS: dict[type[Exception], tuple[int, str]] = {
    InvalidInput: (400, "invalid_input"),
    Overloaded: (429, "too_many_requests"),
    InstanceFailed: (503, "instance_failed"),
    Retired: (503, "deployment_changed"),
    InferenceTimeout: (408, "request_timeout"),
    # Azure ML answers 424 when the model itself fails on a request.
    InferenceFailed: (424, "model_error"),
    DeviceUnavailable: (400, "device_unavailable"),
    MissingExtra: (400, "missing_extra"),
    ModelLoadError: (400, "model_load_error"),
    InferenceError: (500, "inference_error"),
    SpecError: (400, "invalid_spec"),
    BatchInputError: (400, "invalid_input"),
    NotFound: (404, "not_found"),
    Conflict: (409, "conflict"),
    StoreUnavailable: (503, "store_unavailable"),
    ControlPlaneError: (400, "control_plane_error"),
}


def status_of(exc: Exception) -> tuple[int, str] | None:
    if isinstance(exc, GatewayError):
        return exc.status, exc.code
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return None


def error_body(exc: Exception) -> tuple[int, bytes]:
    """Status and JSON body for `exc`; unexpected errors are logged, not revealed."""
    mapped = status_of(exc)
    if mapped is None:
        log.exception("unexpected error", exc_info=exc)
        status, code, message = 500, "internal_error", "internal server error"
    else:
        (status, code), message = mapped, str(exc)
    return status, orjson.dumps({"error": message, "code": code})


def error_response(exc: Exception, headers: dict[str, str] | None = None) -> Response:
    """The JSON error answer for `exc` as a starlette Response."""
    status, body = error_body(exc)
    return Response(body, status, headers=headers, media_type="application/json")
