"""Access management routes: who am I, admin tokens (create shows the token once; the
store keeps its hash), and secrets (set, list names, delete; never read back)."""

from __future__ import annotations

import re
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from deploy.errors import SpecError
from deploy.records import AdminTokenRecord, iso
from deploy.roles import Permission
from gateway.access import principal
from gateway.api import operation
from gateway.api_models import (
    AdminTokenCreate,
    AdminTokenCreated,
    AdminTokenView,
    PrincipalView,
    SecretValue,
    SecretView,
)
from gateway.management import _body, _json
from gateway.state import GatewayState

_DURATION = re.compile(r"^(\d{1,6})([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_s(raw: str, field: str) -> float:
    """`30d`, `12h`, `90m`, `3600s` in seconds."""
    match = _DURATION.match(raw.strip())
    if match is None or int(match.group(1)) == 0:
        raise SpecError(f"{field}: '{raw}' is not a duration (e.g. 30d, 12h, 90m, 3600s)")
    return int(match.group(1)) * _SECONDS[match.group(2)]


def _parsed(model: type[AdminTokenCreate] | type[SecretValue], doc: dict) -> object:
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise SpecError(f"request body: {problems}") from None


@operation(
    "GET",
    "/access/whoami",
    "Who the request's token signs in as: its roles, permissions and endpoints",
    tag="access",
    permission=Permission.SIGNED_IN,
    response=PrincipalView,
)
async def whoami(request: Request, state: GatewayState) -> Response:
    return _json(principal(request).to_dict())


@operation(
    "POST",
    "/access/tokens",
    "Create an admin token (shown once; stored hashed)",
    tag="access",
    permission=Permission.MANAGE_ACCESS,
    body=AdminTokenCreate,
    response=AdminTokenCreated,
    ok_status=201,
    errors=(409,),
)
async def create_token(request: Request, state: GatewayState) -> Response:
    order = _parsed(AdminTokenCreate, await _body(request))
    assert isinstance(order, AdminTokenCreate)
    expires_in = duration_s(order.expires, "expires") if order.expires else None
    record, token = await run_in_threadpool(
        state.control.create_admin_token,
        order.name,
        order.role,
        order.endpoints,
        expires_in,
        principal(request).actor,
    )
    # Not through _json: its masking must not hide the one time the token is shown.
    return Response(
        orjson.dumps({**_token_view(record), "token": token}), 201, media_type="application/json"
    )


@operation(
    "GET",
    "/access/tokens",
    "List admin tokens (names, roles, expiry; never the tokens)",
    tag="access",
    permission=Permission.MANAGE_ACCESS,
    response=list[AdminTokenView],
)
async def list_tokens(request: Request, state: GatewayState) -> Response:
    tokens = await run_in_threadpool(state.control.store.list_admin_tokens)
    return _json([_token_view(t) for t in tokens])


@operation(
    "DELETE",
    "/access/tokens/{name}",
    "Revoke an admin token (refused at once by every replica)",
    tag="access",
    permission=Permission.MANAGE_ACCESS,
    ok_status=204,
    errors=(409,),
)
async def revoke_token(request: Request, state: GatewayState) -> Response:
    await run_in_threadpool(
        state.control.revoke_admin_token, request.path_params["name"], principal(request).actor
    )
    return Response(status_code=204)


@operation(
    "PUT",
    "/secrets/{name}",
    "Set a secret (stored encrypted; deployments refer to it as ${secret:NAME})",
    tag="access",
    permission=Permission.MANAGE_ACCESS,
    body=SecretValue,
    ok_status=204,
)
async def set_secret(request: Request, state: GatewayState) -> Response:
    order = _parsed(SecretValue, await _body(request))
    assert isinstance(order, SecretValue)
    await run_in_threadpool(
        state.control.set_secret, request.path_params["name"], order.value, principal(request).actor
    )
    return Response(status_code=204)


@operation(
    "GET",
    "/secrets",
    "List secrets (names and when each changed; never the values)",
    tag="access",
    permission=Permission.MANAGE_ACCESS,
    response=list[SecretView],
)
async def list_secrets(request: Request, state: GatewayState) -> Response:
    return _json(await run_in_threadpool(state.control.list_secrets))


@operation(
    "DELETE",
    "/secrets/{name}",
    "Delete a secret",
    tag="access",
    permission=Permission.MANAGE_ACCESS,
    ok_status=204,
)
async def delete_secret(request: Request, state: GatewayState) -> Response:
    await run_in_threadpool(
        state.control.delete_secret, request.path_params["name"], principal(request).actor
    )
    return Response(status_code=204)


@operation(
    "POST",
    "/secrets/rotate",
    "Re-encrypt every secret with the newest key (after adding one first in SERVEGATE_SECRETS_KEY)",
    tag="access",
    permission=Permission.MANAGE_ACCESS,
    response={"type": "object", "properties": {"rotated": {"type": "integer"}}},
)
async def rotate_secrets(request: Request, state: GatewayState) -> Response:
    rotated = await run_in_threadpool(state.control.rotate_secrets, principal(request).actor)
    return _json({"rotated": rotated})


def _token_view(record: AdminTokenRecord) -> dict[str, Any]:
    """A token as answered: its expiry as an ISO-8601 time."""
    return {**record.model_dump(), "expires_at": iso(record.expires_at)}
