"""Identity-provider tokens (OpenID Connect JWTs, as Azure ML's `aad_token`): for the
management API (a claim mapped to roles) and for scoring on endpoints with
`auth_mode: aad_token`. Signing keys come from the issuer's discovery document
(`<issuer>/.well-known/openid-configuration` -> `jwks_uri`) or a JWKS file, and are
fetched again when a token names a key not seen yet (the provider rotated its keys).

Only asymmetric algorithms are accepted: `alg: none` and HMAC tokens (whose key would be
the public JWKS) are refused before any key is looked up.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt

from deploy.roles import ROLES, Principal
from gateway.errors import Unauthorized

#: RSA, RSA-PSS, ECDSA and EdDSA: what identity providers sign with
ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
#: a token's `exp`/`nbf` may be this far off the gateway's clock
LEEWAY_S = 30
#: refetch keys for an unknown `kid` at most this often (a flood of forged kids must not
#: become a flood of requests to the provider)
REFETCH_INTERVAL_S = 30.0
#: after the discovery document could not be fetched, the failure stands this long
DISCOVERY_RETRY_S = 30.0
_VERIFIED_MAX = 4096


@dataclass
class OidcSettings:
    issuer: str
    #: the audience management tokens must be issued for
    audience: str
    #: a JWKS file (or URL) instead of the issuer's discovery document
    jwks: str | None = None
    #: the claim whose values map to roles (`roles`, `groups`)
    roles_claim: str = "roles"
    #: claim value -> role; a value that is a role's own name maps to it
    role_map: dict[str, str] = field(default_factory=dict)
    #: claims naming the user in the audit log, first present wins
    name_claims: tuple[str, ...] = ("preferred_username", "upn", "email", "sub")
    #: the studio's client at the provider (a public client: authorization code with
    #: PKCE, redirect URI `<gateway>/studio/`); None: the studio signs in with tokens only
    client_id: str | None = None
    #: what the studio asks for; the access token it gets must be for `audience`
    scope: str = "openid profile"


class OidcVerifier:
    def __init__(self, settings: OidcSettings) -> None:
        self.settings = settings
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()
        #: token -> (its claims, its expiry): a token is verified once, then looked up
        self._verified: dict[str, tuple[dict[str, Any], float]] = {}
        self._discovery: dict[str, Any] | None = None
        self._discovery_lock = asyncio.Lock()
        self._discovery_error: Exception | None = None
        self._discovery_retry_at = 0.0

    async def principal(self, token: str) -> Principal:
        """The management principal a token signs in as (kind user)."""
        settings = self.settings
        claims = await self.verify(token, (settings.audience,))
        values = claims.get(settings.roles_claim, [])
        values = [values] if isinstance(values, str) else list(values or [])
        roles = {settings.role_map.get(str(v), str(v)) for v in values}
        name = next((str(claims[c]) for c in settings.name_claims if claims.get(c)), "unknown")
        return Principal(name, "user", tuple(sorted(r for r in roles if r in ROLES)))

    async def verify(self, token: str, audiences: tuple[str, ...]) -> dict[str, Any]:
        """The token's claims, once its signature, issuer, audience and times hold."""
        cached = self._verified.get(token)
        if cached is not None and cached[1] > time.time():
            claims = cached[0]
            if _audience_matches(claims, audiences):
                return claims
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("header 'Authorization': not a valid JWT") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise Unauthorized(
                f"header 'Authorization': token algorithm '{algorithm}' is not accepted "
                f"(allowed: {', '.join(ALGORITHMS)})"
            )
        key = await self._key(header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=list(audiences),
                issuer=self.settings.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("header 'Authorization': the token has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized(
                f"header 'Authorization': the token's audience is not {' or '.join(audiences)}"
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthorized(
                f"header 'Authorization': the token's issuer is not {self.settings.issuer}"
            ) from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("header 'Authorization': the token's signature is invalid") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"header 'Authorization': invalid token ({exc})") from None
        if len(self._verified) >= _VERIFIED_MAX:
            self._verified.clear()
        self._verified[token] = (claims, float(claims["exp"]))
        return claims

    async def _key(self, kid: str | None) -> jwt.PyJWK:
        found = self._lookup(kid)
        if found is None:
            async with self._lock:
                found = self._lookup(kid)
                if found is None and time.monotonic() - self._fetched_at >= REFETCH_INTERVAL_S:
                    await self._fetch()
                    found = self._lookup(kid)
        if found is None:
            raise Unauthorized(
                f"header 'Authorization': the token's signing key ({kid or 'no kid'}) is not "
                f"one of {self.settings.issuer}'s"
            )
        return found

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:  # a provider with one key may leave kid out
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def discovery(self) -> dict[str, Any]:
        """The issuer's discovery document (fetched once). One fetch at a time: callers
        that come while it runs wait for it (a provider that hangs gets one connection,
        not one per caller), and after a failure the same error is answered at once for
        DISCOVERY_RETRY_S (the studio's public sign-in page asks for it)."""
        if self._discovery is not None:
            return self._discovery
        async with self._discovery_lock:
            if self._discovery is not None:
                return self._discovery
            if self._discovery_error is not None and time.monotonic() < self._discovery_retry_at:
                raise self._discovery_error
            try:
                async with httpx.AsyncClient(timeout=10) as client:
                    found = await client.get(
                        f"{self.settings.issuer.rstrip('/')}/.well-known/openid-configuration"
                    )
                    found.raise_for_status()
                    document = found.json()
                if not isinstance(document, dict):
                    raise ValueError("the discovery document is not a JSON object")
            except (httpx.HTTPError, ValueError) as exc:
                self._discovery_error = exc
                self._discovery_retry_at = time.monotonic() + DISCOVERY_RETRY_S
                raise
            self._discovery = document
            return document

    def browser_origins(self) -> tuple[str, ...]:
        """The origins a browser signing in here talks to (the issuer's, and its token
        endpoint's once discovered): what the studio's content security policy allows."""
        urls = [self.settings.issuer, (self._discovery or {}).get("token_endpoint")]
        origins = []
        for url in urls:
            parts = urlsplit(str(url))
            if parts.scheme in ("http", "https") and parts.netloc:
                origins.append(f"{parts.scheme}://{parts.netloc}")
        return tuple(dict.fromkeys(origins))

    async def browser_sign_in(self) -> dict[str, Any] | None:
        """What the studio needs to sign a user in at the provider (authorization code
        with PKCE), or None when no client is configured or the provider's document
        cannot be read now."""
        settings = self.settings
        if settings.client_id is None:
            return None
        try:
            document = await self.discovery()
            return {
                "issuer": settings.issuer,
                "client_id": settings.client_id,
                "scope": settings.scope,
                "authorization_endpoint": str(document["authorization_endpoint"]),
                "token_endpoint": str(document["token_endpoint"]),
            }
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    async def _fetch(self) -> None:
        self._fetched_at = time.monotonic()
        source = self.settings.jwks
        try:
            if source and not source.startswith(("http://", "https://")):
                document = json.loads(Path(source).read_text())
            else:
                async with httpx.AsyncClient(timeout=10) as client:
                    uri = source if source is not None else (await self.discovery())["jwks_uri"]
                    answer = await client.get(uri)
                    answer.raise_for_status()
                    document = answer.json()
            keys = jwt.PyJWKSet.from_dict(document).keys
        except (OSError, ValueError, KeyError, httpx.HTTPError, jwt.PyJWTError) as exc:
            raise Unauthorized(
                f"header 'Authorization': the identity provider's keys cannot be read ({exc})"
            ) from None
        self._keys = {key.key_id or f"key-{i}": key for i, key in enumerate(keys)}


def _audience_matches(claims: dict[str, Any], audiences: tuple[str, ...]) -> bool:
    aud = claims.get("aud")
    given = {aud} if isinstance(aud, str) else set(aud or ())
    return bool(given & set(audiences))
