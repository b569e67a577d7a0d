"""Fixtures shared by the gateway tests."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import Gateway, free_port, start_gateway

#: the client id the studio signs in with at the test's identity provider
STUDIO_CLIENT = "servegate-studio"


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


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


@dataclass
class IdentityProvider:
    issuer: str
    key: rsa.RSAPrivateKey
    jwks: dict[str, Any]
    #: the claims of whoever signs in next through the browser flow
    user: dict[str, Any] = field(default_factory=dict)
    #: authorization codes issued and not redeemed yet: code -> what was asked
    codes: dict[str, dict[str, str]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def grpc_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str]]:
    """A gateway of the module's own that also speaks the protocol over gRPC: the gateway
    and the gRPC address."""
    port = free_port()
    gw = start_gateway(tmp_path_factory.mktemp("grpc") / "home", "--grpc-port", str(port))
    yield gw, f"127.0.0.1:{port}"
    gw.stop()


@pytest.fixture(scope="module")
def provider() -> Iterator[IdentityProvider]:
    """An OpenID Connect provider on loopback: discovery, JWKS, and the authorization
    code flow with PKCE (S256) for a public client, as a browser app signs in. Its user
    is signed in already: /authorize answers at once with a code."""
    key = new_rsa_key()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = {"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}
    idp: IdentityProvider

    class Provider(BaseHTTPRequestHandler):
        def _answer(self, status: int, document: Any, **headers: str) -> None:
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            issuer = idp.issuer
            url = urlsplit(self.path)
            if url.path == "/authorize":
                asked = {k: v[0] for k, v in parse_qs(url.query).items()}
                if (
                    asked.get("client_id") != STUDIO_CLIENT
                    or asked.get("code_challenge_method") != "S256"
                ):
                    self._answer(400, {"error": "invalid_request"})
                    return
                code = secrets.token_urlsafe(16)
                idp.codes[code] = asked
                back = urlencode({"code": code, "state": asked.get("state", "")})
                self.send_response(302)
                self.send_header("Location", f"{asked['redirect_uri']}?{back}")
                self.end_headers()
                return
            documents = {
                "/.well-known/openid-configuration": {
                    "issuer": issuer,
                    "jwks_uri": f"{issuer}/keys",
                    "authorization_endpoint": f"{issuer}/authorize",
                    "token_endpoint": f"{issuer}/token",
                    "code_challenge_methods_supported": ["S256"],
                },
                "/keys": jwks,
            }
            found = url.path in documents
            self._answer(200 if found else 404, documents.get(url.path, {}))

        def do_POST(self) -> None:
            cors = {"Access_Control_Allow_Origin": "*"}  # a browser app redeems the code
            form = {
                k: v[0]
                for k, v in parse_qs(
                    self.rfile.read(int(self.headers["Content-Length"])).decode()
                ).items()
            }
            asked = idp.codes.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "").encode()
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest())
            if (
                urlsplit(self.path).path != "/token"
                or form.get("grant_type") != "authorization_code"
                or asked is None
                or form.get("client_id") != asked["client_id"]
                or form.get("redirect_uri") != asked["redirect_uri"]
                or challenge.rstrip(b"=").decode() != asked["code_challenge"]
            ):
                self._answer(400, {"error": "invalid_grant"}, **cors)
                return
            access = token(idp.issuer, key, **idp.user)
            self._answer(
                200,
                {"access_token": access, "token_type": "Bearer", "expires_in": 300},
                **cors,
            )

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Provider)
    idp = IdentityProvider(f"http://127.0.0.1:{server.server_address[1]}", key, jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield idp
    server.shutdown()
    server.server_close()


@pytest.fixture
def scored(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> tuple[str, dict[str, str]]:
    """An endpoint with the classifier as `blue` (100%), and its key header."""
    gateway.create_endpoint(tmp_path, unique_name)
    gateway.deploy(tmp_path, unique_name, "blue", model_dir / "classifier.onnx")
    return unique_name, gateway.auth(unique_name)
