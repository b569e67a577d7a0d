"""Management requests: authenticated once, here, to a principal, and checked against
the permission their route declares. The audit log's actor is the principal; nothing a
client sends names it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from deploy.roles import ROLES, Permission, Principal
from gateway.auth import MAX_CREDENTIAL_CHARS, MAX_JWT_CHARS, bearer
from gateway.errors import Forbidden, Unauthorized
from gateway.state import GatewayState


async def principal_of(request: Request, state: GatewayState) -> Principal:
    """Who sends this request: an admin token looked up in the store on every request
    (so a revoked one is refused at once on every replica), or an identity provider's
    token when the gateway trusts one."""
    return await principal_for(request.headers.get("authorization"), state)


async def principal_for(authorization: str | None, state: GatewayState) -> Principal:
    """principal_of, from an `Authorization` value (HTTP header or gRPC metadata)."""
    oidc = state.oidc
    limit = MAX_JWT_CHARS if oidc is not None else MAX_CREDENTIAL_CHARS
    token = bearer(authorization, "admin token", limit)
    if oidc is not None and token.count(".") == 2:  # a JWT; our tokens have no dots
        return await oidc.principal(token)
    record = await asyncio.to_thread(state.control.admin_token, token)
    if record is None:
        raise Unauthorized("header 'Authorization': invalid admin token")
    if record.expires_at is not None and record.expires_at <= time.time():
        raise Unauthorized(f"header 'Authorization': admin token '{record.name}' has expired")
    return Principal(record.name, "service", (record.role,), record.endpoints)


def authorize(principal: Principal, permission: Permission, what: str) -> None:
    if not principal.can(permission):
        raise Forbidden(
            f"{principal.actor} (roles: {', '.join(principal.roles) or 'none'}) may not "
            f"{what}: that needs permission '{permission}' (roles with it: "
            f"{', '.join(_granting(permission))})"
        )


def authorize_endpoint(principal: Principal, endpoint: str) -> None:
    """Refuse a principal scoped to other endpoints."""
    if not principal.may_act_on(endpoint):
        raise Forbidden(
            f"{principal.actor} may act only on endpoints matching '{principal.endpoints}', "
            f"not on '{endpoint}'"
        )


def authorize_model(principal: Principal, model: str) -> None:
    """Models are shared: any reader reads them and any deployment may use one. Writing a
    version is scoped: a principal scoped to endpoints registers only models named within
    its pattern (inline models are named `<endpoint>-<deployment>`), so one team cannot
    push a version of a model another team deploys."""
    if not principal.may_act_on(model):
        raise Forbidden(
            f"{principal.actor} may register only models named like its endpoints "
            f"('{principal.endpoints}'), not '{model}'"
        )


def in_scope(request: Request, items: list, endpoint_of: Callable[[Any], str]) -> list:
    """The items (endpoints, jobs, audit entries) of the endpoints the request's
    principal may act on."""
    scoped = principal(request)
    if not scoped.endpoints:
        return items
    return [item for item in items if scoped.may_act_on(endpoint_of(item))]


def principal(request: Request) -> Principal:
    """The principal `principal_of` resolved for this request."""
    found: Principal = request.state.principal
    return found


def _granting(permission: Permission) -> list[str]:
    return [role for role, granted in ROLES.items() if permission in granted]
