"""Identity-provider tokens: a small OpenID Connect provider started by the test (its
discovery document and JWKS over HTTP), tokens signed by the test with PyJWT. Good
tokens sign in with the roles their groups map to; expired ones, ones for another
audience, signed by another key, with `alg: none` or HMAC are refused. Endpoints with
`auth_mode: aad_token` take them for scoring."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.errors import Unauthorized
from gateway.oidc import OidcSettings, OidcVerifier
from tests.conftest import Gateway, start_gateway, write_yaml


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def provider() -> Iterator[tuple[str, rsa.RSAPrivateKey, dict[str, Any]]]:
    """An identity provider on loopback: its issuer URL, its signing key, its JWKS."""
    key = _rsa()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = {"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}

    class Provider(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
            documents = {
                "/.well-known/openid-configuration": {
                    "issuer": issuer,
                    "jwks_uri": f"{issuer}/keys",
                },
                "/keys": jwks,
            }
            body = json.dumps(documents.get(self.path, {})).encode()
            self.send_response(200 if self.path in documents else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Provider)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", key, jwks
    server.shutdown()
    server.server_close()


def token(issuer: str, key: Any, algorithm: str = "RS256", kid: str = "k1", **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": issuer,
        "aud": "servegate",
        "sub": "u-123",
        "preferred_username": "alice@example.com",
        "groups": ["ml-ops"],
        "iat": now,
        "exp": now + 300,
        **claims,
    }
    return jwt.encode(body, key, algorithm=algorithm, headers={"kid": kid})


@pytest.fixture(scope="module")
def oidc_gateway(
    provider: tuple[str, Any, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    issuer = provider[0]
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
    oidc_gateway: Gateway, provider: tuple[str, Any, Any]
) -> None:
    gw, (issuer, key, _) = oidc_gateway, provider
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
        "signature is invalid": token(issuer, _rsa()),
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
    oidc_gateway: Gateway, provider: tuple[str, Any, Any], tmp_path: Path, model_dir: Path
) -> None:
    gw, (issuer, key, _) = oidc_gateway, provider
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


def test_keys_from_a_jwks_file(tmp_path: Path, provider: tuple[str, Any, Any]) -> None:
    issuer, key, jwks = provider
    jwks_file = write_yaml(tmp_path / "jwks.json", json.dumps(jwks))
    verifier = OidcVerifier(OidcSettings(issuer, "servegate", str(jwks_file), "groups"))
    principal = asyncio.run(verifier.principal(token(issuer, key, groups=["reader"])))
    assert principal.roles == ("reader",) and principal.name == "alice@example.com"
    with pytest.raises(Unauthorized, match="signature is invalid"):
        asyncio.run(verifier.principal(token(issuer, _rsa())))
