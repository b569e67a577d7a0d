"""Authentication: endpoint keys/tokens on the data plane, the admin token on
the management API. Every comparison is constant-time."""

from __future__ import annotations

import hmac

from deploy.credentials import Credentials, hash_key
from gateway.errors import Unauthorized
from gateway.routing import EndpointRoute


def bearer(authorization: str | None, what: str) -> str:
    """The credential of an `Authorization: Bearer <value>` header."""
    if not authorization:
        raise Unauthorized(f"header 'Authorization' is missing; send 'Bearer <{what}>'")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized(f"header 'Authorization' must be 'Bearer <{what}>'")
    return value.strip()


def authenticate(route: EndpointRoute, authorization: str | None, credentials: Credentials) -> None:
    """Check a scoring request's credential against the endpoint's auth_mode."""
    if route.auth_mode == "none":
        return
    if route.auth_mode == "token":
        token = bearer(authorization, "token")
        if not credentials.verify_token(route.name, token):
            raise Unauthorized(
                f"header 'Authorization': invalid or expired token for endpoint '{route.name}'"
            )
        return
    digest = hash_key(bearer(authorization, "key"))
    matched = False
    for key_hash in route.key_hashes:  # no early exit: compare against every key
        matched |= hmac.compare_digest(key_hash, digest)
    if not matched:
        raise Unauthorized(f"header 'Authorization': invalid key for endpoint '{route.name}'")


def authenticate_admin(authorization: str | None, admin_token: str) -> None:
    if not hmac.compare_digest(bearer(authorization, "admin token"), admin_token):
        raise Unauthorized("header 'Authorization': invalid admin token")
