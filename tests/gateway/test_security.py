"""What an attacker, a careless client or a broken neighbour can do to a real gateway:
credentials, tokens after key changes, a store removed under the server, secrets at
rest and in answers, what a remote runtime may reflect, archives, names, and 500s
that must be 4xx."""

from __future__ import annotations

import http.server
import io
import json
import os
import socket
import stat
import tarfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    Gateway,
    assert_clean_exit,
    free_port,
    start_gateway,
    store_url_for,
    write_yaml,
)
from tests.gateway.test_errors import expect


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# -- credentials ---------------------------------------------------------------------
def test_wrong_keys_are_neither_cached_nor_hashed_when_absurd(
    tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    """Distinct wrong keys used to be memoised (RSS grew by their size and stayed)."""
    gw = start_gateway(tmp_path / "home")
    try:
        gw.create_endpoint(tmp_path, unique_name)
        gw.deploy(tmp_path, unique_name, "blue", model_dir / "classifier.onnx")
        url = f"{gw.url}/endpoints/{unique_name}/score"
        body = {"input_data": [[1, 2, 3, 4]]}
        with httpx.Client() as client:
            for i in range(20):  # warm the allocator and the code paths
                client.post(url, json=body, headers={"Authorization": f"Bearer {i:060000d}"})
            before = rss_bytes(gw.process.pid)
            for i in range(1000):  # 60 MB of distinct keys in all
                r = client.post(url, json=body, headers={"Authorization": f"Bearer {i:060000d}"})
                assert r.status_code == 401
            assert "at most 512 characters" in r.json()["error"]
            # A plausible but wrong key: refused, and a right key still works.
            r = client.post(url, json=body, headers={"Authorization": "Bearer " + "x" * 43})
            expect(r, 401, "invalid key")
            assert client.post(url, json=body, headers=gw.auth(unique_name)).status_code == 200
        growth = rss_bytes(gw.process.pid) - before
        assert growth < 20 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB"
    finally:
        assert_clean_exit(gw)


def test_non_ascii_credentials_are_401_not_500(
    gateway: Gateway, tmp_path: Path, unique_name: str
) -> None:
    bad = {"Authorization": "Bearer cl\u00e9"}
    gateway.create_endpoint(tmp_path, unique_name, "auth_mode: token\n")
    # httpx refuses to send non-ASCII header values; a raw socket does not.
    for method, path in (
        ("GET", "/management/endpoints"),
        ("POST", f"/endpoints/{unique_name}/score"),
    ):
        status, body = raw_request(gateway, method, path, bad)
        assert status == 401, body
        assert "printable ASCII" in json.loads(body)["error"]


def raw_request(
    gw: Gateway, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, str]:
    host, port = gw.host_port.split(":")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall("\r\n".join(lines).encode("utf-8") + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        while len(rest) < length:
            rest += sock.recv(65536)
    return int(head.split()[1]), rest.decode()


def test_tokens_are_revoked_by_key_regeneration_and_endpoint_recreation(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name, "auth_mode: token\n")
    gateway.deploy(tmp_path, unique_name, "blue", model_dir / "classifier.onnx")
    url = f"{gateway.url}/endpoints/{unique_name}/score"
    body = {"input_data": [[1, 2, 3, 4]]}

    def token() -> dict[str, str]:
        _, out = gateway.cli("endpoint", "get-credentials", "--name", unique_name)
        return {"Authorization": f"Bearer {json.loads(out)['accessToken']}"}

    old = token()
    assert httpx.post(url, json=body, headers=old).status_code == 200
    gateway.cli("endpoint", "regenerate-keys", "--name", unique_name, "--key-type", "secondary")
    expect(httpx.post(url, json=body, headers=old), 401, "invalid or expired token")
    fresh = token()
    assert httpx.post(url, json=body, headers=fresh).status_code == 200
    # Deleted and created again under the same name: the old token is worthless.
    gateway.cli("endpoint", "update", "--name", unique_name, "--traffic", "blue=0")
    gateway.cli("deployment", "delete", "--endpoint-name", unique_name, "--name", "blue")
    gateway.cli("endpoint", "delete", "--name", unique_name, "--yes")
    gateway.create_endpoint(tmp_path, unique_name, "auth_mode: token\n")
    gateway.deploy(tmp_path, unique_name, "blue", model_dir / "classifier.onnx")
    expect(httpx.post(url, json=body, headers=fresh), 401, "invalid or expired token")
    assert httpx.post(url, json=body, headers=token()).status_code == 200


# -- the store -------------------------------------------------------------------------
def test_a_removed_store_refuses_writes_and_fails_readiness(
    tmp_path: Path, unique_name: str
) -> None:
    home = tmp_path / "home"  # the SQLite file itself is what this test removes
    gw = start_gateway(home, store=store_url_for(home, "sqlite"))
    try:
        gw.create_endpoint(tmp_path, unique_name)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{gw.home / 'store.db'}{suffix}").unlink(missing_ok=True)
        spec = write_yaml(tmp_path / "second.yml", f"name: {unique_name}x\n")
        code, out = gw.cli("endpoint", "create", "-f", str(spec), ok=False)
        assert code == 1 and "was removed or replaced" in out, out
        r = httpx.get(f"{gw.url}/v2/health/ready")
        assert r.status_code == 503 and "was removed or replaced" in r.json()["error"]
        r = httpx.post(
            f"{gw.url}/management/endpoints",
            json={"name": f"{unique_name}y"},
            headers={"Authorization": f"Bearer {gw.admin_token}"},
        )
        expect(r, 503, "store")
    finally:
        gw.stop()


def test_a_corrupt_store_is_one_line_at_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "store.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(RuntimeError) as failed:
        start_gateway(home, store=store_url_for(home, "sqlite"))
    log = str(failed.value)
    assert "not a usable servegate store" in log
    assert "Traceback" not in log


def test_an_unreachable_postgresql_store_is_one_line_at_start(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(RuntimeError) as failed:
        start_gateway(tmp_path / "home", store=f"postgresql://sg:secret@127.0.0.1:{port}/none")
    log = str(failed.value)
    assert f"postgresql://sg:***@127.0.0.1:{port}/none" in log
    assert "secret" not in log and "Traceback" not in log


def test_an_unknown_store_scheme_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as failed:
        start_gateway(tmp_path / "home", store="mysql://x/y")
    assert "sqlite:// or postgresql://" in str(failed.value)


def test_home_and_store_are_private_and_secrets_masked(
    tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    home = tmp_path / "home"
    gw = start_gateway(home, store=store_url_for(home, "sqlite"))
    try:
        assert stat.S_IMODE(gw.home.stat().st_mode) == 0o700
        assert stat.S_IMODE((gw.home / "store.db").stat().st_mode) == 0o600
        gw.create_endpoint(tmp_path, unique_name)
        gw.deploy(
            tmp_path,
            unique_name,
            "blue",
            model_dir / "classifier.onnx",
            extra_yaml="environment_variables: {DB_PASSWORD: hunter2, API_KEY: k-123, "
            "LOG_LEVEL: debug}\n",
        )
        admin = {"Authorization": f"Bearer {gw.admin_token}"}
        shown = httpx.get(
            f"{gw.url}/management/endpoints/{unique_name}/deployments/blue", headers=admin
        ).text
        audit = httpx.get(f"{gw.url}/management/audit", headers=admin).text
        for text in (shown, audit):
            assert "hunter2" not in text and "k-123" not in text
            assert '"DB_PASSWORD":"***"' in text and '"LOG_LEVEL":"debug"' in text
    finally:
        assert_clean_exit(gw)


# -- a remote runtime that misbehaves -------------------------------------------------
class _Misbehaving(http.server.BaseHTTPRequestHandler):
    """200 with a non-JSON body on GET (metadata); 500 with internals on POST."""

    def do_GET(self) -> None:
        self._answer(200, b"<html>welcome</html>")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        # It echoes the request's headers, as some servers' error pages do.
        echoed = f"headers: {dict(self.headers)}".encode()
        self._answer(500, b"Traceback: password=hunter2 at /srv/model.py line 3; " + echoed)

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def misbehaving() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_remote_that_is_no_inference_server_is_a_clear_400(
    gateway: Gateway, tmp_path: Path, unique_name: str, misbehaving: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name)
    spec = write_yaml(
        tmp_path / "remote.yml",
        f"name: remote\nendpoint_name: {unique_name}\nurl: {misbehaving}/v2/models/m\n",
    )
    code, out = gateway.cli("deployment", "create", "-f", str(spec), ok=False)
    assert code == 1 and "field 'url'" in out and "model metadata" in out, out


def test_remote_error_bodies_are_not_reflected(
    gateway: Gateway, tmp_path: Path, unique_name: str, misbehaving: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name, "auth_mode: none\n")
    spec = write_yaml(
        tmp_path / "remote.yml",
        f"""name: remote
endpoint_name: {unique_name}
url: {misbehaving}/v2/models/m
signature:
  inputs: [{{name: x, datatype: FP32, shape: [-1, 2]}}]
  outputs: [{{name: y, datatype: FP32, shape: [-1]}}]
runtime_options: {{headers: {{Authorization: Bearer remote-secret}}}}
""",
    )
    gateway.cli("deployment", "create", "-f", str(spec), "--all-traffic")
    r = httpx.post(f"{gateway.url}/endpoints/{unique_name}/score", json={"input_data": [[1, 2]]})
    expect(r, 424, "answered 500 Internal Server Error")
    assert "hunter2" not in r.text and "Traceback" not in r.text
    # The body goes to the gateway's log, with the credentials sent to the remote scrubbed.
    deadline = time.monotonic() + 10
    while "answered 500" not in gateway.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    logged = [line for line in gateway.log.read_text().splitlines() if misbehaving in line]
    assert any("answered 500" in line and "Authorization" in line for line in logged), logged
    assert not any("remote-secret" in line for line in logged), logged
    shown = httpx.get(
        f"{gateway.url}/management/endpoints/{unique_name}/deployments/remote",
        headers={"Authorization": f"Bearer {gateway.admin_token}"},
    ).text
    assert "remote-secret" not in shown and '"Authorization":"***"' in shown


# -- management inputs -------------------------------------------------------------------
def test_code_archives_are_capped_when_unpacked(gateway: Gateway, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 300 * 2**20  # 300 MiB of zeros: a few hundred KiB compressed
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert len(buffer.getvalue()) < 2**20
    r = httpx.post(
        f"{gateway.url}/management/code",
        content=buffer.getvalue(),
        headers={"Authorization": f"Bearer {gateway.admin_token}"},
        timeout=60,
    )
    expect(r, 400, "unpacks to 314572800 bytes", "at most 268435456")
    assert not list((gateway.home / "code").glob(".incoming-*"))


def test_management_bodies_are_limited(gateway: Gateway) -> None:
    r = httpx.post(
        f"{gateway.url}/management/endpoints",
        content=b'{"name": "' + b"a" * (2 * 2**20) + b'"}',
        headers={"Authorization": f"Bearer {gateway.admin_token}"},
    )
    expect(r, 413, "exceeds 1048576 bytes")


@pytest.mark.parametrize(
    "path, fragments",
    [
        ("/management/audit?limit=%C2%B2", ["query parameter 'limit'", "²"]),
        ("/management/models/m/versions/%C2%B2", ["model version", "²"]),
    ],
)
def test_unicode_digits_are_400(gateway: Gateway, path: str, fragments: list[str]) -> None:
    r = httpx.get(gateway.url + path, headers={"Authorization": f"Bearer {gateway.admin_token}"})
    expect(r, 400, *fragments)


def test_register_with_unicode_digit_version_is_400(gateway: Gateway) -> None:
    r = httpx.post(
        f"{gateway.url}/management/models/m/versions?filename=m.onnx&version=%C2%B2",
        content=b"x",
        headers={"Authorization": f"Bearer {gateway.admin_token}"},
    )
    expect(r, 400, "query parameter 'version'")


@pytest.mark.parametrize("where", ["inputs", "outputs"])
def test_parameters_that_are_not_objects_are_400(
    gateway: Gateway, scored: tuple[str, dict[str, str]], where: str
) -> None:
    name, auth = scored
    item = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
    doc: dict = {"inputs": [item]}
    if where == "inputs":
        item["parameters"] = ["binary_data_size", 16]
    else:
        doc["outputs"] = [{"name": "label", "parameters": "binary"}]
    r = httpx.post(f"{gateway.url}/v2/models/{name}/infer", json=doc, headers=auth)
    expect(r, 400, f"field '{where}[0].parameters' must be an object")


def test_names_with_a_trailing_newline_are_refused(gateway: Gateway) -> None:
    admin = {"Authorization": f"Bearer {gateway.admin_token}"}
    r = httpx.post(f"{gateway.url}/management/endpoints", json={"name": "abc\n"}, headers=admin)
    expect(r, 400, "field 'name'", "is not a valid name")
    r = httpx.post(
        f"{gateway.url}/management/models/abc%0A/versions?filename=m.onnx",
        content=b"x",
        headers=admin,
    )
    assert r.status_code == 400, r.text


def test_yaml_alias_bomb_is_refused_at_once(gateway: Gateway, tmp_path: Path) -> None:
    layers = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):
        layers.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    spec = write_yaml(
        tmp_path / "bomb.yml",
        "name: blue\nendpoint_name: fraud\nmodel: {path: m.onnx}\nruntime_options:\n"
        + "".join(f"  {layer}\n" for layer in layers)
        + "tags: *a8\n",
    )
    started = time.monotonic()
    code, out = gateway.cli("deployment", "create", "-f", str(spec), ok=False)
    assert time.monotonic() - started < 5
    assert code == 1 and "expands to more than 100000 values" in out
    assert len(out) < 2000


def test_permissions_are_tightened_on_an_existing_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    sqlite = store_url_for(home, "sqlite")
    gw = start_gateway(home, store=sqlite)
    assert_clean_exit(gw)
    os.chmod(home, 0o755)
    os.chmod(home / "store.db", 0o644)  # as an older version left them
    gw = start_gateway(home, store=sqlite)
    try:
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        assert stat.S_IMODE((home / "store.db").stat().st_mode) == 0o600
    finally:
        assert_clean_exit(gw)


# -- values that used to be 500s -------------------------------------------------------
def test_odd_values_are_400s_naming_the_field(
    gateway: Gateway, tmp_path: Path, unique_name: str
) -> None:
    admin = {"Authorization": f"Bearer {gateway.admin_token}"}
    huge = "9" * 30
    nested: dict = {"x": 1}
    for _ in range(300):
        nested = {"a": nested}
    gateway.create_endpoint(tmp_path, unique_name)
    cases = [
        ("POST", "/management/endpoints", {"name": f"{unique_name}-x", "auth_mode": {"a": 1}}),
        ("GET", f"/management/models/m/versions/{huge}", None),
        ("GET", f"/management/audit?limit={huge}", None),
        ("GET", f"/management/endpoints/{unique_name}/deployments/blue/logs?after={huge}", None),
        (
            "POST",
            "/management/batch/jobs",
            {"endpoint": unique_name, "deployment": {"a": 1}, "input": "x", "output": "y"},
        ),
        (
            "POST",
            f"/management/endpoints/{unique_name}/deployments",
            {"name": "blue", "runtime": "fake", "model": {"name": "m", "version": int(huge)}},
        ),
        (
            "POST",
            f"/management/endpoints/{unique_name}/deployments",
            {"name": "blue", "model": {"name": "m"}, "runtime_options": nested},
        ),
    ]
    fields = ["auth_mode", huge, "limit", "after", "deployment", "model.version", "deeper"]
    for (method, path, body), field in zip(cases, fields, strict=True):
        r = httpx.request(method, gateway.url + path, json=body, headers=admin, timeout=30)
        assert r.status_code == 400, (path, r.status_code, r.text[:300])
        assert field in r.json()["error"], (path, r.text[:300])


def test_a_yaml_file_nested_beyond_reading_is_one_line(gateway: Gateway, tmp_path: Path) -> None:
    deep = tmp_path / "deep.yml"
    deep.write_text("name: blue\nendpoint_name: x\nruntime_options: " + "[" * 50_000 + "]" * 50_000)
    code, out = gateway.cli("deployment", "create", "-f", str(deep), ok=False)
    assert code == 1 and "nests too deep to read" in out and "Traceback" not in out


def test_uploads_cut_by_a_crash_are_swept_at_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    gw = start_gateway(home)
    assert_clean_exit(gw)
    left = [home / "incoming" / "tmpcut.onnx", home / "artifacts" / "sha256" / ".incoming-x"]
    for path in left:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a model")
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    fresh = home / "incoming" / "tmpfresh.onnx"  # another process's upload under way
    fresh.write_bytes(b"being written")
    gw = start_gateway(home)
    try:
        assert not any(path.exists() for path in left)
        assert fresh.exists()
    finally:
        assert_clean_exit(gw)


def test_a_store_password_in_the_url_is_never_shown(tmp_path: Path) -> None:
    """libpq takes the password in the user part or as `?password=`: neither reaches
    `servegate status` (a reader sees it) or the log."""
    from deploy.store.postgres import redact
    from tests.conftest import new_postgres_database

    assert redact("postgresql://u:hunter2@h/db?sslmode=require") == (
        "postgresql://u:***@h/db?sslmode=require"
    )
    url = new_postgres_database() + "?password=hunter2&application_name=sg"
    gw = start_gateway(tmp_path / "home", store=url)  # trust auth: the password is ignored
    try:
        _, out = gw.cli("access", "token", "create", "-n", "look", "--role", "reader")
        reader = json.loads(out)["token"]
        r = httpx.get(f"{gw.url}/management/status", headers={"Authorization": f"Bearer {reader}"})
        assert r.status_code == 200 and "hunter2" not in r.text
        assert "password=***" in r.json()["store"]
        assert "hunter2" not in gw.log.read_text()
    finally:
        assert_clean_exit(gw)


# -- browsers ----------------------------------------------------------------------------
def test_answers_carry_browser_protections(gateway: Gateway, scored: tuple[str, dict]) -> None:
    admin = {"Authorization": f"Bearer {gateway.admin_token}"}
    api = httpx.get(f"{gateway.url}/management/endpoints", headers=admin)
    studio = httpx.get(f"{gateway.url}/studio/")
    missing = httpx.get(f"{gateway.url}/no/such/path")
    name, auth = scored
    score = httpx.post(
        f"{gateway.url}/endpoints/{name}/score", json={"input_data": [[1, 2, 3, 4]]}, headers=auth
    )
    assert score.status_code == 200  # the hot path: machine clients, typed JSON answers
    for r in (api, studio, missing):
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert api.headers["content-security-policy"].startswith("default-src 'none'")
    policy = studio.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy, policy


def test_the_public_sign_in_page_asks_a_hanging_provider_once(tmp_path: Path) -> None:
    """While the identity provider hangs, concurrent sign-in pages share one connection
    to it, and after it failed they are answered at once for a while."""
    accepted: list[socket.socket] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def hang() -> None:  # accepts, never answers
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    threading.Thread(target=hang, daemon=True).start()
    issuer = f"http://127.0.0.1:{listener.getsockname()[1]}"
    gw = start_gateway(
        tmp_path / "home",
        "--oidc-issuer",
        issuer,
        "--oidc-audience",
        "api://servegate",
        "--oidc-client-id",
        "studio",
    )
    try:

        def sign_in() -> int:
            return httpx.get(f"{gw.url}/studio/sign-in", timeout=60).status_code

        with ThreadPoolExecutor(20) as pool:
            assert list(pool.map(lambda _: sign_in(), range(20))) == [200] * 20
        assert len(accepted) == 1, len(accepted)
        started = time.monotonic()
        r = httpx.get(f"{gw.url}/studio/sign-in", timeout=60)
        assert r.json() == {"oidc": None} and time.monotonic() - started < 2
        assert len(accepted) == 1
    finally:
        stop.set()
        assert_clean_exit(gw)
        for connection in accepted:
            connection.close()
        listener.close()
