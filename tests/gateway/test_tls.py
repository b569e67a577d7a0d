"""TLS with certificates made by trustme: HTTPS and gRPC over TLS; a client that does
not trust the CA is refused, one that does (the CLI with --ca-bundle) gets through;
mutual TLS refuses a client without a certificate."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from tests.conftest import free_port, start_gateway

# Runs once, on the SQLite pass: what it checks does not depend on the store.
pytestmark = pytest.mark.store_independent


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[trustme.CA, Path, Path]]:
    authority = trustme.CA()
    folder = tmp_path_factory.mktemp("tls")
    server = authority.issue_cert("127.0.0.1", "localhost")
    chain, ca_file = folder / "server.pem", folder / "ca.pem"
    server.private_key_and_cert_chain_pem.write_to_path(str(chain))
    authority.cert_pem.write_to_path(str(ca_file))
    yield authority, chain, ca_file


def _context(ca_file: Path, client: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    if client is not None:
        context.load_cert_chain(str(client))
    return context


def test_https_and_grpc_over_tls(
    ca: tuple[trustme.CA, Path, Path], tmp_path: Path, model_dir: Path
) -> None:
    _, chain, ca_file = ca
    grpc_port = free_port()
    gw = start_gateway(
        tmp_path / "home",
        "--ssl-certfile",
        str(chain),
        "--grpc-port",
        str(grpc_port),
        verify=_context(ca_file),
    )
    try:
        # Without the CA: the handshake fails; plain HTTP is not served.
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{gw.url}/v2/health/live")
        with pytest.raises(httpx.TransportError):
            httpx.get(gw.url.replace("https", "http") + "/v2/health/live")
        assert httpx.get(f"{gw.url}/v2/health/live", verify=_context(ca_file)).status_code == 200
        # The CLI with --ca-bundle (or SERVEGATE_CA_BUNDLE).
        code, out = gw.cli("endpoint", "list", ok=False)
        assert code != 0 and "CERTIFICATE_VERIFY_FAILED" in out
        endpoint = tmp_path / "tls.yml"
        endpoint.write_text("name: tls\nauth_mode: none\n")
        _, out = gw.cli("--ca-bundle", str(ca_file), "endpoint", "create", "-f", str(endpoint))
        assert '"scoring_uri": "https://' in out
        # gRPC over TLS with the same certificate.
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(
            f"127.0.0.1:{grpc_port}", ssl=True, root_certificates=str(ca_file)
        )
        assert client.is_server_live()
    finally:
        gw.stop()


def test_mutual_tls_refuses_a_client_without_a_certificate(
    ca: tuple[trustme.CA, Path, Path], tmp_path: Path
) -> None:
    authority, chain, ca_file = ca
    client_pem = tmp_path / "client.pem"
    authority.issue_cert("ci-pipeline@example.com").private_key_and_cert_chain_pem.write_to_path(
        str(client_pem)
    )
    gw = start_gateway(
        tmp_path / "home",
        "--ssl-certfile",
        str(chain),
        "--ssl-ca-certs",
        str(ca_file),
        verify=_context(ca_file, client_pem),
    )
    try:
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{gw.url}/v2/health/live", verify=_context(ca_file))
        r = httpx.get(f"{gw.url}/v2/health/live", verify=_context(ca_file, client_pem))
        assert r.status_code == 200
        _, out = gw.cli(
            "--ca-bundle", str(ca_file), "--client-cert", str(client_pem), "endpoint", "list"
        )
        assert out.strip().startswith("[")
    finally:
        gw.stop()
