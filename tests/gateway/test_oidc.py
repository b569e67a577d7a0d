"""Identity-provider tokens: a small OpenID Connect provider started by the test (its
discovery document and JWKS over HTTP, tests/gateway/conftest.py), tokens signed by the
test with PyJWT. Good
tokens sign in with the roles their groups map to; expired ones, ones for another
audience, signed by another key, with `alg: none` or HMAC are refused. Endpoints with
`auth_mode: aad_token` take them for scoring."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from gateway.errors import Unauthorized
from gateway.oidc import OidcSettings, OidcVerifier
from tests.conftest import Gateway, start_gateway, write_yaml
from tests.gateway.conftest import IdentityProvider, new_rsa_key, token


@pytest.fixture(scope="module")
def oidc_gateway(
    provider: IdentityProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    issuer = provider.issuer
    gw = start_gateway(
        tmp_path_factory.mktemp("oidc") / "home",
        "--oidc-issuer",
        issuer,
        "--oidc-audience",
        "servegate",
        "--oidc-roles-claim",
        "groups",
        "--oidc-role",
        "ml-ops=operator",
    )
    yield gw
    gw.stop()


def _as(gw: Gateway, bearer: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method, gw.url + path, headers={"Authorization": f"Bearer {bearer}"}, timeout=60, **kwargs
    )


def test_management_with_identity_provider_tokens(
    oidc_gateway: Gateway, provider: IdentityProvider
) -> None:
    gw, issuer, key = oidc_gateway, provider.issuer, provider.key
    good = token(issuer, key)
    me = _as(gw, good, "GET", "/management/access/whoami").json()
    assert me["kind"] == "user" and me["actor"] == "user:alice@example.com"
    assert me["roles"] == ["operator"]
    r = _as(gw, good, "POST", "/management/endpoints", json={"name": "by-alice"})
    assert r.status_code == 201, r.text
    audit = _as(gw, gw.admin_token, "GET", "/management/audit?target=endpoints/by-alice").json()
    assert [e["actor"] for e in audit] == ["user:alice@example.com"]
    assert _as(gw, good, "POST", "/management/endpoints/by-alice/listKeys").status_code == 403
    # A token whose groups grant no role signs in, and may do nothing.
    nobody = token(issuer, key, groups=["sales"])
    r = _as(gw, nobody, "GET", "/management/endpoints")
    assert r.status_code == 403 and "roles: none" in r.json()["error"]

    bad = {
        "has expired": token(issuer, key, exp=int(time.time()) - 120),
        "audience is not servegate": token(issuer, key, aud="someone-else"),
        "issuer is not": token(issuer, key, iss="https://evil.example"),
        "signature is invalid": token(issuer, new_rsa_key()),
        "signing key (k9)": token(issuer, key, kid="k9"),
        "algorithm 'none'": jwt.encode({"iss": issuer, "aud": "servegate"}, None, "none"),
        "algorithm 'HS256'": token(issuer, "a-shared-secret-of-32-bytes-or-more!", "HS256"),
    }
    for reason, forged in bad.items():
        r = _as(gw, forged, "GET", "/management/endpoints")
        assert r.status_code == 401 and reason in r.json()["error"], (reason, r.text)
    # The owner's admin token still works beside the provider.
    assert _as(gw, gw.admin_token, "GET", "/management/endpoints").status_code == 200


def test_scoring_with_aad_token(
    oidc_gateway: Gateway, provider: IdentityProvider, tmp_path: Path, model_dir: Path
) -> None:
    gw, issuer, key = oidc_gateway, provider.issuer, provider.key
    gw.create_endpoint(
        tmp_path, "idp-scored", "auth_mode: aad_token\ntoken_audiences: [scoring-api]\n"
    )
    gw.deploy(tmp_path, "idp-scored", "blue", model_dir / "classifier.onnx")
    url = f"{gw.url}/endpoints/idp-scored/score"
    body = {"input_data": [[1.0, 2.0, 3.0, 4.0]]}
    ok = httpx.post(
        url, json=body, headers={"Authorization": f"Bearer {token(issuer, key, aud='scoring-api')}"}
    )
    assert ok.status_code == 200, ok.text
    # A token for the management audience is not one for this endpoint; a key is no token.
    for bearer in (token(issuer, key), "not-a-jwt"):
        r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {bearer}"})
        assert r.status_code == 401, r.text
    assert httpx.post(url, json=body).status_code == 401


def test_keys_from_a_jwks_file(tmp_path: Path, provider: IdentityProvider) -> None:
    issuer, key, jwks = provider.issuer, provider.key, provider.jwks
    jwks_file = write_yaml(tmp_path / "jwks.json", json.dumps(jwks))
    verifier = OidcVerifier(OidcSettings(issuer, "servegate", str(jwks_file), "groups"))
    principal = asyncio.run(verifier.principal(token(issuer, key, groups=["reader"])))
    assert principal.roles == ("reader",) and principal.name == "alice@example.com"
    with pytest.raises(Unauthorized, match="signature is invalid"):
        asyncio.run(verifier.principal(token(issuer, new_rsa_key())))
