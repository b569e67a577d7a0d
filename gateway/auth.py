"""Authentication: endpoint keys/tokens on the data plane, the admin token on
the management API. Every comparison is constant-time.

Nothing an unauthenticated client sends is kept: credentials longer than any
real key or token are refused before hashing, and only keys that matched are
remembered (so each request need not hash its key again).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

from deploy.credentials import Credentials, hash_key, key_generation
from gateway.errors import Unauthorized
from gateway.routing import EndpointRoute

#: Keys are 43 characters and tokens under 100 plus the endpoint name; anything far
#: longer is no credential of ours.
MAX_CREDENTIAL_CHARS = 512
#: Identity providers' JWTs carry claims and a signature: Entra ID's reach a few KiB.
MAX_JWT_CHARS = 8192
#: Matched keys -> their SHA-256; bounded, and only ever holds valid keys.
_VERIFIED_MAX = 4096
_verified: dict[str, str] = {}


def bearer(authorization: str | None, what: str, max_chars: int = MAX_CREDENTIAL_CHARS) -> str:
    """The credential of an `Authorization: Bearer <value>` header."""
    if not authorization:
        raise Unauthorized(f"header 'Authorization' is missing; send 'Bearer <{what}>'")
    scheme, _, value = authorization.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        raise Unauthorized(f"header 'Authorization' must be 'Bearer <{what}>'")
    if len(value) > max_chars or not (value.isascii() and value.isprintable()):
        raise Unauthorized(
            f"header 'Authorization': not a valid {what} (printable ASCII, at most "
            f"{max_chars} characters)"
        )
    return value


async def admit(
    route: EndpointRoute,
    authorization: str | None,
    credentials: Credentials,
    oidc: Any,
    address: str,
    limit: Callable[[str], None] | None,
) -> None:
    """Authenticate a scoring request and, when the endpoint has a rate limit (`limit`),
    count it against its caller: the credential it proved (the same key however the
    header spells it), else its client address (`auth_mode: none`, whatever header it
    sends). A failed authentication counts against the address too, so guessing is
    limited as scoring is."""
    caller: str | None
    try:
        if route.auth_mode == "aad_token":
            caller = await authenticate_with_provider(route, authorization, oidc)
        else:
            caller = authenticate(route, authorization, credentials)
    except Unauthorized:
        if limit is not None:
            limit(f"address:{address}")
        raise
    if limit is not None:
        limit(f"caller:{caller}" if caller else f"address:{address}")


def _caller(kind: str, secret: str) -> str:
    """A rate-limit bucket's name for a proven credential (hashed: no secret is kept)."""
    return f"{kind}:{hashlib.sha256(secret.encode()).hexdigest()[:32]}"


async def authenticate_with_provider(
    route: EndpointRoute, authorization: str | None, oidc: Any
) -> str:
    """`auth_mode: aad_token`: an identity provider's token for one of the endpoint's
    audiences (gateway.oidc.OidcVerifier; None when the gateway trusts no provider). The
    caller: the token's subject."""
    token = bearer(authorization, "token", MAX_JWT_CHARS)
    if oidc is None:
        raise Unauthorized(
            f"endpoint '{route.name}' takes identity-provider tokens (auth_mode: aad_token), "
            "but this gateway trusts no provider (serve --oidc-issuer)"
        )
    claims = await oidc.verify(token, route.token_audiences or (oidc.settings.audience,))
    subject = claims.get("oid") or claims.get("sub")
    return f"subject:{subject}" if subject else _caller("token", token)


def authenticate(
    route: EndpointRoute, authorization: str | None, credentials: Credentials
) -> str | None:
    """Check a scoring request's credential against the endpoint's auth_mode (all but
    aad_token, which `authenticate_with_provider` checks). The caller it proved (the
    key's hash, a token's), None for `auth_mode: none`."""
    if route.auth_mode == "none":
        return None
    if route.auth_mode == "token":
        token = bearer(authorization, "token")
        if not credentials.verify_token(route.name, token, key_generation(route.key_hashes)):
            raise Unauthorized(
                f"header 'Authorization': invalid or expired token for endpoint '{route.name}'"
            )
        return _caller("token", token)
    key = bearer(authorization, "key")
    cached = _verified.get(key)
    digest = cached if cached is not None else hash_key(key)
    matched = False
    for key_hash in route.key_hashes:  # no early exit: compare against every key
        matched |= hmac.compare_digest(key_hash, digest)
    if not matched:
        raise Unauthorized(f"header 'Authorization': invalid key for endpoint '{route.name}'")
    if cached is None:
        if len(_verified) >= _VERIFIED_MAX:
            _verified.clear()
        _verified[key] = digest
    return digest  # the key's hash: who the caller is (no allocation on the hot path)
