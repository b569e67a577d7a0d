"""The OpenAPI 3.1 document of the whole HTTP surface, served at /openapi.json: the data
plane written here, the management API generated from its declarations (`gateway.api`)."""

from __future__ import annotations

from functools import cache
from typing import Any

from gateway import api

_JSON_OBJECT = {"type": "object"}
_errors = api.error_responses


def _responses(ok: dict[str, Any] | None, *errors: int, ok_status: str = "200") -> dict[str, Any]:
    out: dict[str, Any] = {
        ok_status: {"description": "OK"}
        if ok is None
        else {"description": "OK", "content": {"application/json": {"schema": ok}}}
    }
    return {**out, **_errors(*errors)}


#: Statuses that follow from a data-plane operation's shape, so no route can forget
#: them: a credential can be wrong (401), a named thing missing (404), a body or query
#: value malformed (400) or too large (413). (Management routes: `api.Operation`.)
_ERROR_BY_SHAPE = {
    "secured": (401,),
    "path": (404,),
    "query": (400,),
    "body": (400, 413),
}


def _op(
    summary: str,
    tag: str,
    responses: dict[str, Any],
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    secured: str | None = "endpointKey",
) -> dict[str, Any]:
    shapes = {"secured": secured is not None, "body": body is not None}
    for param in params or ():
        shapes[param["in"]] = True
    derived = [
        status for shape, on in shapes.items() if on for status in _ERROR_BY_SHAPE.get(shape, ())
    ]
    responses = {**_errors(*derived), **responses}
    responses = {k: responses[k] for k in sorted(responses)}
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": True, "content": body}
    if params:
        op["parameters"] = params
    if secured:
        op["security"] = [{secured: []}]
    return op


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_V2_BODY = {
    "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
    "application/octet-stream": {
        "schema": {"type": "string", "format": "binary"},
        "description": "JSON header of Inference-Header-Content-Length bytes, then binary tensors",
    },
}
_DEPLOYMENT_HEADER = {
    "name": "azureml-model-deployment",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "target this deployment, whatever its traffic share",
}


def _protocol_paths(prefix: str) -> dict[str, Any]:
    """The Open Inference Protocol's model routes at `prefix` (the gateway's root, or an
    endpoint's URL: `/endpoints/{within}`)."""
    model, version = _path("model"), _path("version")
    base = [_path("within")] if prefix else []
    infer = _op(
        "Run inference (Open Inference Protocol v2, JSON or binary tensor data); the model "
        "is an endpoint's name or a Triton model's",
        "v2",
        _responses(
            {"$ref": "#/components/schemas/InferenceResponse"},
            400,
            401,
            404,
            408,
            413,
            424,
            429,
            503,
        ),
        _V2_BODY,
        [*base, model, _DEPLOYMENT_HEADER],
    )
    metadata = _op(
        "Model metadata: the model's signature",
        "v2",
        _responses(_JSON_OBJECT, 400, 401, 404),
        params=[*base, model],
    )
    ready = _op(
        "Model readiness", "v2", _responses(_JSON_OBJECT, 400, 401, 404, 503), params=[*base, model]
    )
    config = _op(
        "The model's Triton configuration (a Triton model's own, else the deployment's)",
        "v2",
        _responses(_JSON_OBJECT, 400, 401, 404, 503),
        params=[*base, model],
    )
    stats = _op(
        "Triton's statistics extension, from the gateway's counters",
        "v2",
        _responses(_JSON_OBJECT, 400, 401, 404, 503),
        params=[*base, model],
    )
    pinned = [*base, model, version]
    root = f"{prefix}/v2/models/{{model}}"
    at = f"{root}/versions/{{version}}"
    return {
        f"{prefix}/v2": {
            "get": _op("Server metadata", "v2", _responses(_JSON_OBJECT), params=base, secured=None)
        },
        f"{prefix}/v2/health/live": {
            "get": _op("Liveness", "v2", _responses(None), params=base, secured=None)
        },
        f"{prefix}/v2/health/ready": {
            "get": _op("Readiness", "v2", _responses(None, 503), params=base, secured=None)
        },
        root: {"get": metadata},
        f"{root}/ready": {"get": ready},
        f"{root}/infer": {"post": infer},
        at: {"get": {**metadata, "parameters": pinned}},
        f"{at}/ready": {"get": {**ready, "parameters": pinned}},
        f"{at}/infer": {"post": {**infer, "parameters": pinned}},
        f"{root}/config": {"get": config},
        f"{at}/config": {"get": {**config, "parameters": pinned}},
        f"{root}/stats": {"get": stats},
        f"{at}/stats": {"get": {**stats, "parameters": pinned}},
    }


@cache
def openapi_document() -> dict[str, Any]:
    ep = _path("endpoint")
    repository_change = _op(
        "Refused (400): deployments change through the management API",
        "v2",
        _responses(None, 400),
        params=[{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
        secured=None,
    )
    paths: dict[str, Any] = {
        "/endpoints/{endpoint}/score": {
            "post": _op(
                'Score (Azure ML style): {"input_data": [[...]]} or {"input_data": {name: [...]}}',
                "scoring",
                _responses(
                    {"type": "object", "additionalProperties": {"type": "array"}},
                    400,
                    401,
                    404,
                    408,
                    413,
                    424,
                    429,
                    503,
                ),
                {"application/json": {"schema": {"$ref": "#/components/schemas/ScoreRequest"}}},
                [ep, _DEPLOYMENT_HEADER],
            )
        },
        **_protocol_paths(""),
        **_protocol_paths("/endpoints/{within}"),
        "/v2/models/stats": {
            "get": _op(
                "Triton statistics of every deployment (admin token)",
                "v2",
                _responses(_JSON_OBJECT, 401),
                secured="adminToken",
            )
        },
        "/v2/repository/index": {
            "post": _op(
                "Triton's repository index: endpoints and deployments (admin token)",
                "v2",
                _responses({"type": "array", "items": _JSON_OBJECT}, 401),
                secured="adminToken",
            )
        },
        "/v2/repository/models/{model}/load": {"post": repository_change},
        "/v2/repository/models/{model}/unload": {"post": repository_change},
        "/metrics": {
            "get": _op(
                "Prometheus metrics",
                "operations",
                {"200": {"description": "text exposition format"}},
                secured=None,
            )
        },
        "/openapi.json": {
            "get": _op("This document", "operations", _responses(_JSON_OBJECT), secured=None)
        },
        "/studio/sign-in": {
            "get": _op(
                "How the studio signs users in: the identity provider's authorization and "
                "token endpoints, client id and scope (authorization code with PKCE), or "
                "{oidc: null} for admin tokens only",
                "operations",
                _responses(_JSON_OBJECT),
                secured=None,
            )
        },
    }
    components: dict[str, Any] = {}
    tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "datatype": {"type": "string"},
            "parameters": _JSON_OBJECT,
            "data": {},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "servegate",
            "version": "1",
            "description": "Model serving gateway: Azure ML style scoring, the Open "
            "Inference Protocol v2, and the management API.",
        },
        "paths": {**paths, **api.openapi_paths(components)},
        "components": {
            "securitySchemes": {
                "endpointKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "endpoint key or token",
                },
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the admin token in $SERVEGATE_HOME/admin_token",
                },
            },
            "schemas": {
                **components,
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}, "code": {"type": "string"}},
                },
                "ScoreRequest": {
                    "type": "object",
                    "required": ["input_data"],
                    "properties": {
                        "input_data": {"oneOf": [{"type": "array"}, {"type": "object"}]}
                    },
                },
                "InferenceRequest": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": _JSON_OBJECT,
                        "inputs": {"type": "array", "items": tensor},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "name": {"type": "string"},
                                    "parameters": _JSON_OBJECT,
                                },
                            },
                        },
                    },
                },
                "InferenceResponse": {
                    "type": "object",
                    "properties": {
                        "model_name": {"type": "string"},
                        "model_version": {"type": "string"},
                        "id": {"type": "string"},
                        "outputs": {"type": "array", "items": tensor},
                    },
                },
            },
        },
    }
