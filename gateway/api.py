"""Management API declarations: each route says, next to its handler, what it takes
(path and query parameters, the body's model), what it answers (the model and status),
every error status it can answer, and the permission it needs. The routes and the
management part of the OpenAPI document are both generated from these declarations,
so they cannot drift apart; `servegate.client` parses answers with the same models.

    @operation("GET", "/endpoints/{endpoint}", "Show an endpoint", tag="endpoints",
               permission=Permission.READ, response=EndpointView)
    async def show_endpoint(request, state): ...
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, TypeAdapter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from deploy.errors import NotFound, SpecError
from deploy.roles import Permission
from gateway.access import authorize, authorize_endpoint, principal_of
from gateway.state import GatewayState

PREFIX = "/management"

Handler = Callable[[Request, GatewayState], Awaitable[Response]]


@dataclass(frozen=True)
class Query:
    name: str
    schema: dict[str, Any]
    description: str = ""


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # below PREFIX
    summary: str
    tag: str
    permission: Permission
    handler: Handler
    #: a pydantic model (JSON body), "binary" (an uploaded file), or None
    body: type[BaseModel] | str | None = None
    #: the answer's type (a model, list[Model], or a JSON schema dict); None: no body
    response: Any = None
    ok_status: int = 200
    #: error statuses beyond those the operation's shape implies (see `error_statuses`)
    errors: tuple[int, ...] = ()
    query: tuple[Query, ...] = ()
    #: the media type of the answer when it is not JSON
    media_type: str = "application/json"
    description: str = field(default="")
    #: another success status with the same answer (202: accepted, under way)
    accepted_status: int | None = None

    @property
    def full_path(self) -> str:
        return PREFIX + self.path

    @property
    def path_parameters(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)

    def error_statuses(self) -> list[int]:
        """Every error status this operation can answer. Its shape implies some: a
        wrong admin token (401), one whose roles do not allow it (403), past its rate
        limit (429), an unusable
        store (503), a named thing missing (404), a malformed body (400) or one too
        large (413), a bad query value (400)."""
        statuses = {401, 403, 429, 503, *self.errors}
        if self.path_parameters:
            statuses.add(404)
        if self.body is not None:
            statuses.update((400, 413))
        if self.query:
            statuses.add(400)
        return sorted(statuses)


OPERATIONS: list[Operation] = []


def operation(
    method: str,
    path: str,
    summary: str,
    *,
    tag: str,
    permission: Permission,
    body: type[BaseModel] | str | None = None,
    response: Any = None,
    ok_status: int = 200,
    errors: tuple[int, ...] = (),
    query: tuple[Query, ...] = (),
    media_type: str = "application/json",
    accepted_status: int | None = None,
) -> Callable[[Handler], Handler]:
    """Declare a management route (see the module docstring)."""

    def register(handler: Handler) -> Handler:
        OPERATIONS.append(
            Operation(
                method,
                path,
                summary,
                tag,
                permission,
                handler,
                body,
                response,
                ok_status,
                errors,
                query,
                media_type,
                (handler.__doc__ or "").strip(),
                accepted_status,
            )
        )
        return handler

    return register


def _authenticated(op: Operation) -> Callable[[Request], Awaitable[Response]]:
    what = op.summary[0].lower() + op.summary[1:]

    async def endpoint(request: Request) -> Response:
        state: GatewayState = request.app.state.gateway
        _check_nul(request)
        principal = await principal_of(request, state)
        if state.management_limiter is not None:
            state.management_limiter.take(principal.actor)
        authorize(principal, op.permission, what)
        if "endpoint" in request.path_params:
            authorize_endpoint(principal, request.path_params["endpoint"])
        request.state.principal = principal
        return await op.handler(request, state)

    endpoint.__name__ = op.handler.__name__
    endpoint.__doc__ = op.handler.__doc__
    return endpoint


def _check_nul(request: Request) -> None:
    """No store keeps a NUL character in a text (PostgreSQL refuses one): a name or query
    value holding one is refused here, before anything looks it up."""
    for key, value in request.path_params.items():
        if "\x00" in str(value):
            raise NotFound(f"path parameter '{key}': no such name (it holds a NUL character)")
    for key, value in request.query_params.multi_items():
        if "\x00" in value or "\x00" in key:
            raise SpecError(f"query parameter '{key}': holds a NUL character")


def routes() -> list[Route]:
    """One starlette route per declared operation, each behind the admin check."""
    return [Route(op.full_path, _authenticated(op), methods=[op.method]) for op in OPERATIONS]


# -- OpenAPI ------------------------------------------------------------------------------
_ERROR = {"$ref": "#/components/schemas/Error"}


def error_responses(*statuses: int) -> dict[str, Any]:
    """OpenAPI responses for error statuses: each answers the one error body."""
    error = {"description": "error", "content": {"application/json": {"schema": _ERROR}}}
    return {str(status): error for status in statuses}


def _schema(kind: Any, components: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of a model, list[Model] or a plain schema; models go to components."""
    if isinstance(kind, dict):
        return kind
    schema = TypeAdapter(kind).json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = definition
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        components[kind.__name__] = schema
        return {"$ref": f"#/components/schemas/{kind.__name__}"}
    return schema


def openapi_paths(components: dict[str, Any]) -> dict[str, Any]:
    """The management API's OpenAPI paths, generated from the declarations."""
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        responses: dict[str, Any] = {}
        if op.response is None:
            responses[str(op.ok_status)] = {"description": "done"}
        elif op.media_type != "application/json":
            responses[str(op.ok_status)] = {
                "description": "OK",
                "content": {op.media_type: {"schema": {"type": "string"}}},
            }
        else:
            responses[str(op.ok_status)] = {
                "description": "OK",
                "content": {"application/json": {"schema": _schema(op.response, components)}},
            }
        if op.accepted_status is not None:
            responses[str(op.accepted_status)] = {
                **responses[str(op.ok_status)],
                "description": "Accepted: under way",
            }
        responses.update(error_responses(*op.error_statuses()))
        spec: dict[str, Any] = {
            "summary": op.summary,
            "description": op.description,
            "tags": [op.tag],
            "operationId": op.handler.__name__,
            "security": [{"adminToken": []}],
            "x-servegate-permission": str(op.permission),
            "responses": dict(sorted(responses.items())),
        }
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in op.path_parameters
        ] + [
            {
                "name": q.name,
                "in": "query",
                "required": False,
                "schema": q.schema,
                "description": q.description,
            }
            for q in op.query
        ]
        if parameters:
            spec["parameters"] = parameters
        if op.body == "binary":
            spec["requestBody"] = {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        elif op.body is not None:
            spec["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _schema(op.body, components)}},
            }
        paths.setdefault(op.full_path, {})[op.method.lower()] = spec
    return paths
