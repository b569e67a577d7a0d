"""Who may do what: every management route against every role, admin tokens (create
once, list without secrets, revoke at once, expiry, endpoint scopes), the audit actor
from the token (never from a header), and secrets by reference (resolved where they are
used, never shown by an answer, the audit log or a log)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import gateway.app  # noqa: F401 - its modules declare the routes
from deploy.roles import ROLES, Permission
from gateway.api import OPERATIONS
from tests.conftest import Gateway, delete_endpoints, store_contents, write_yaml


@pytest.fixture(autouse=True)
def _leave_no_endpoints(gateway: Gateway, unique_name: str) -> Iterator[None]:
    yield
    delete_endpoints(gateway, unique_name)


def new_token(gateway: Gateway, name: str, role: str, *extra: str) -> str:
    _, out = gateway.cli(
        "access",
        "token",
        "create",
        "-n",
        name,
        "--role",
        role,
        *extra,
        "-o",
        "tsv",
        "--query",
        "token",
    )
    return out.strip()


def call(gateway: Gateway, token: str, method: str, path: str, **kwargs: object) -> httpx.Response:
    return httpx.request(
        method,
        gateway.url + path,
        headers={"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})},  # type: ignore[dict-item]
        timeout=60,
        **kwargs,  # type: ignore[arg-type]
    )


#: Path values that name nothing: an allowed call answers 404 or 400, never acts.
_PLACEHOLDERS = {
    "endpoint": "no-such-endpoint",
    "deployment": "no-such-deployment",
    "name": "no-such-name",
    "version": "1",
    "job": "no-such-job",
    "action": "cancel",
}


def test_every_route_allows_exactly_the_roles_with_its_permission(
    gateway: Gateway, unique_name: str
) -> None:
    tokens = {role: new_token(gateway, f"{unique_name}-{role}", role) for role in ROLES}
    checked = 0
    for op in OPERATIONS:
        if op.path == "/secrets/rotate":
            continue  # changes every secret; checked in the secrets test
        path = op.full_path
        for param, value in _PLACEHOLDERS.items():
            path = path.replace("{" + param + "}", value)
        assert "{" not in path, op.path
        for role, token in tokens.items():
            r = call(gateway, token, op.method, path, content=b"{}")
            allowed = op.permission in ROLES[role]
            if allowed:
                assert r.status_code not in (401, 403), (role, op.method, op.path, r.text)
            else:
                assert r.status_code == 403, (role, op.method, op.path, r.text)
                assert f"needs permission '{op.permission}'" in r.json()["error"]
            checked += 1
    # The Triton extensions that read the whole repository need READ too.
    for method, path in (("GET", "/v2/models/stats"), ("POST", "/v2/repository/index")):
        for role, token in tokens.items():
            r = call(gateway, token, method, path)
            assert (r.status_code == 403) != (Permission.READ in ROLES[role]), (role, path)
    assert checked == len(tokens) * (len(OPERATIONS) - 1)
    for role in ROLES:
        gateway.cli("access", "token", "revoke", "-n", f"{unique_name}-{role}")


def test_token_lifecycle_and_the_audit_actor(
    gateway: Gateway, tmp_path: Path, unique_name: str
) -> None:
    name = f"{unique_name}-ci"
    token = new_token(gateway, name, "operator")
    assert len(token) >= 40
    # Listed without the token; the store keeps only its hash.
    _, out = gateway.cli("access", "token", "list")
    listed = {t["name"]: t for t in json.loads(out)}
    assert listed[name]["role"] == "operator" and "token" not in listed[name]
    assert token.encode() not in store_contents(gateway)
    r = call(gateway, token, "GET", "/management/access/whoami")
    assert r.json()["actor"] == f"token:{name}" and r.json()["roles"] == ["operator"]

    # The audit actor is the token's principal; a header claiming otherwise is ignored.
    r = call(
        gateway,
        token,
        "POST",
        "/management/endpoints",
        json={"name": unique_name},
        headers={"x-servegate-actor": "rollout 42"},
    )
    assert r.status_code == 201, r.text
    _, out = gateway.cli("audit", "list", "--target", f"endpoints/{unique_name}")
    assert [e["actor"] for e in json.loads(out)] == [f"token:{name}"]
    # No key reads, no access management for an operator.
    r = call(gateway, token, "POST", f"/management/endpoints/{unique_name}/listKeys")
    assert r.status_code == 403 and "read_keys" in r.json()["error"]
    r = call(gateway, token, "GET", "/management/access/tokens")
    assert r.status_code == 403

    # Revoked: refused from the next request on.
    gateway.cli("access", "token", "revoke", name)
    r = call(gateway, token, "GET", "/management/endpoints")
    assert r.status_code == 401 and "invalid admin token" in r.json()["error"]
    _, out = gateway.cli("audit", "list", "--target", f"admin-tokens/{name}")
    assert [e["action"] for e in json.loads(out)] == ["admin_token.revoke", "admin_token.create"]

    # Expiry.
    short = new_token(gateway, f"{unique_name}-short", "reader", "--expires", "1s")
    assert call(gateway, short, "GET", "/management/endpoints").status_code == 200
    time.sleep(1.2)
    r = call(gateway, short, "GET", "/management/endpoints")
    assert r.status_code == 401 and "has expired" in r.json()["error"]
    gateway.cli("access", "token", "revoke", "-n", f"{unique_name}-short")

    # Bad input: a clear 400 naming the field; a duplicate name 409; an unknown one 404.
    code, out = gateway.cli(
        "access", "token", "create", "-n", "Bad Name", "--role", "reader", ok=False
    )
    assert code != 0 and "name:" in out
    r = httpx.post(
        f"{gateway.url}/management/access/tokens",
        headers={"Authorization": f"Bearer {gateway.admin_token}"},
        json={"name": "x1", "role": "reader", "expires": "soon"},
    )
    assert r.status_code == 400 and "expires" in r.json()["error"]
    code, out = gateway.cli("access", "token", "revoke", "-n", "owner", ok=False)
    assert code != 0 and "last owner token" in out
    code, out = gateway.cli("access", "token", "revoke", "-n", "nobody-here", ok=False)
    assert code != 0 and "does not exist" in out


def test_a_token_scoped_to_endpoints_sees_and_changes_only_those(
    gateway: Gateway, tmp_path: Path, unique_name: str
) -> None:
    mine, other = f"{unique_name}-fraud", f"{unique_name}-churn"
    gateway.create_endpoint(tmp_path, mine)
    gateway.create_endpoint(tmp_path, other)
    token = new_token(
        gateway, f"{unique_name}-scoped", "operator", "--endpoints", f"{unique_name}-fr*"
    )
    assert call(gateway, token, "GET", f"/management/endpoints/{mine}").status_code == 200
    r = call(gateway, token, "GET", f"/management/endpoints/{other}")
    assert r.status_code == 403 and f"'{unique_name}-fr*'" in r.json()["error"]
    r = call(gateway, token, "PATCH", f"/management/endpoints/{other}", json={"traffic": {}})
    assert r.status_code == 403
    listed = [e["name"] for e in call(gateway, token, "GET", "/management/endpoints").json()]
    assert mine in listed and other not in listed
    r = call(gateway, token, "POST", "/management/endpoints", json={"name": f"{unique_name}-x"})
    assert r.status_code == 403
    audit = call(gateway, token, "GET", "/management/audit?limit=1000").json()
    assert {e["target"] for e in audit} == {f"endpoints/{mine}"}
    gateway.cli("access", "token", "revoke", "-n", f"{unique_name}-scoped")


def test_operators_regenerate_keys_they_cannot_read_and_scopes_hold_for_models_and_monitors(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    """The role table's boundaries: an operator changes keys but never sees them; a scoped
    principal registers only models named within its scope, and cannot take another
    endpoint's monitor by updating it."""
    from tests.gateway.test_monitors import deploy_collecting, write_baseline

    mine, other = f"{unique_name}-fraud", f"{unique_name}-churn"
    gateway.create_endpoint(tmp_path, mine)
    operator = new_token(gateway, f"{unique_name}-op", "operator")
    r = call(
        gateway,
        operator,
        "POST",
        f"/management/endpoints/{mine}/regenerateKeys",
        json={"keyType": "secondary"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["regenerated"] == "secondary" and "Key" not in r.text
    assert "read_keys" in r.json()["note"]
    r = call(
        gateway,
        gateway.admin_token,
        "POST",
        f"/management/endpoints/{mine}/regenerateKeys",
        json={"keyType": "secondary"},
    )
    assert set(r.json()) == {"primaryKey", "secondaryKey"}

    scoped = new_token(
        gateway, f"{unique_name}-scoped", "operator", "--endpoints", f"{unique_name}-fr*"
    )
    onnx = (model_dir / "classifier.onnx").read_bytes()
    for model, status in ((f"{other}-model", 403), (f"{mine}-model", 201)):
        r = call(
            gateway,
            scoped,
            "POST",
            f"/management/models/{model}/versions",
            params={"filename": "classifier.onnx"},
            content=onnx,
        )
        assert r.status_code == status, r.text
    assert call(gateway, scoped, "GET", f"/management/models?name={other}-model").json() == []

    deploy_collecting(gateway, tmp_path, model_dir, other, f"{{path: '{tmp_path / 'logged'}'}}")
    write_baseline(model_dir, tmp_path / "baseline.parquet")
    monitor = write_yaml(
        tmp_path / "monitor.yml",
        f"name: {unique_name}-m\nendpoint_name: {other}\ndeployment_name: blue\n"
        "baseline: {path: baseline.parquet}\nfeatures: [f0]\n",
    )
    gateway.cli("monitor", "create", "-f", str(monitor))
    taken = {
        "name": f"{unique_name}-m",
        "endpoint_name": mine,
        "deployment_name": "blue",
        "baseline": {"path": str(tmp_path / "baseline.parquet")},
    }
    r = call(gateway, scoped, "POST", "/management/monitors", json=taken)
    assert r.status_code == 403 and other in r.json()["error"], r.text
    _, out = gateway.cli("monitor", "show", "-n", f"{unique_name}-m")
    assert json.loads(out)["endpoint_name"] == other
    gateway.cli("monitor", "delete", "-n", f"{unique_name}-m")
    for name in ("op", "scoped"):
        gateway.cli("access", "token", "revoke", "-n", f"{unique_name}-{name}")


def test_secrets_are_resolved_where_used_and_never_shown(
    gateway: Gateway, tmp_path: Path, unique_name: str
) -> None:
    value = f"s3cr3t-{unique_name}-value"
    secret_name = f"{unique_name}-db-password"
    gateway.cli("secret", "set", secret_name, input=value + "\n")  # NAME as the argument
    _, out = gateway.cli("secret", "list")
    assert secret_name in out and value not in out

    gateway.create_endpoint(tmp_path, unique_name, "auth_mode: none\n")
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(
        "import os\n"
        "def init():\n"
        "    print('loaded; password set:', bool(os.environ['DB_PASSWORD']))\n"
        "def run(raw_data):\n"
        "    return {'matches': os.environ['DB_PASSWORD'] == raw_data}\n"
    )
    spec = write_yaml(
        tmp_path / "secret.yml",
        f"name: blue\nendpoint_name: {unique_name}\n"
        "code_configuration: {code: code, scoring_script: score.py}\n"
        f"environment_variables: {{DB_PASSWORD: '${{secret:{secret_name}}}',"
        " API_TOKEN: literal}\n",
    )
    _, out = gateway.cli("deployment", "create", "-f", str(spec), "--all-traffic")
    # A literal where a credential goes is warned about; the reference is not.
    assert "environment_variables.API_TOKEN: a literal value where a credential goes" in out
    assert "environment_variables.DB_PASSWORD" not in out
    # The worker got the value: the script compares it with what we send.
    r = httpx.post(f"{gateway.url}/endpoints/{unique_name}/score", content=value.encode())
    assert r.status_code == 200 and r.json() == {"matches": True}, r.text

    # Nowhere to be read: answers, the audit log, the deployment's and the gateway's logs.
    _, shown = gateway.cli("deployment", "show", "-e", unique_name, "-n", "blue")
    env = json.loads(shown)["environment_variables"]
    assert env["DB_PASSWORD"] == f"${{secret:{secret_name}}}" and env["API_TOKEN"] == "***"
    seen = [
        shown,
        gateway.cli("deployment", "list", "-e", unique_name)[1],
        gateway.cli("audit", "list", "--limit", "1000")[1],
        gateway.cli("deployment", "get-logs", "-e", unique_name, "-n", "blue")[1],
        gateway.cli("secret", "list")[1],
        gateway.log.read_text(errors="replace"),
    ]
    assert "password set: True" in seen[3]
    for text in seen:
        assert value not in text
    assert value.encode() not in store_contents(gateway)
    audit = json.loads(gateway.cli("audit", "list", "--target", f"secrets/{secret_name}")[1])
    assert [e["action"] for e in audit] == ["secret.create"]
    assert audit[0]["before"] is None and audit[0]["after"] is None

    # A reference to a missing secret: 400 naming the field and the secret.
    missing = write_yaml(
        tmp_path / "missing.yml",
        f"name: green\nendpoint_name: {unique_name}\n"
        "code_configuration: {code: code, scoring_script: score.py}\n"
        "environment_variables: {DB_PASSWORD: '${secret:nope}'}\n",
    )
    code_, out = gateway.cli("deployment", "create", "-f", str(missing), ok=False)
    assert code_ != 0 and "environment_variables.DB_PASSWORD: secret 'nope' does not exist" in out

    # Rotation keeps every secret readable; deleting one is audited.
    _, out = gateway.cli("secret", "rotate")
    assert json.loads(out)["rotated"] >= 1
    gateway.cli("secret", "delete", "-n", secret_name)
    audit = json.loads(gateway.cli("audit", "list", "--target", f"secrets/{secret_name}")[1])
    assert [e["action"] for e in audit][:2] == ["secret.delete", "secret.rotate"]
    code_, out = gateway.cli("secret", "set", "-n", "bad name!", input="x", ok=False)
    assert code_ != 0 and re.search(r"not a secret name", out)


def test_scoring_rate_limit_per_key(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gateway.create_endpoint(
        tmp_path, unique_name, "rate_limit: {requests_per_second: 2, burst: 3}\n"
    )
    gateway.deploy(tmp_path, unique_name, "blue", model_dir / "classifier.onnx")
    keys = json.loads(gateway.cli("endpoint", "get-credentials", "-n", unique_name)[1])
    url = f"{gateway.url}/endpoints/{unique_name}/score"
    body = {"input_data": [[1.0, 2.0, 3.0, 4.0]]}

    def score(key: str) -> httpx.Response:
        return httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"})

    assert [score(keys["primaryKey"]).status_code for _ in range(3)] == [200, 200, 200]
    limited = score(keys["primaryKey"])
    assert limited.status_code == 429, limited.text
    assert int(limited.headers["retry-after"]) >= 1
    assert "rate limit of endpoint" in limited.json()["error"]
    # Each key has its own bucket; a bucket refills at the rate.
    assert score(keys["secondaryKey"]).status_code == 200
    time.sleep(0.6)
    assert score(keys["primaryKey"]).status_code == 200
    # Off by default: an endpoint without rate_limit takes a burst.
    other = f"{unique_name}-free"
    gateway.create_endpoint(tmp_path, other, "auth_mode: none\n")
    gateway.deploy(tmp_path, other, "blue", model_dir / "classifier.onnx")
    free = [
        httpx.post(f"{gateway.url}/endpoints/{other}/score", json=body).status_code
        for _ in range(20)
    ]
    assert free == [200] * 20


def test_a_rate_limit_counts_the_caller_not_the_header(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    """The same key respelled is the same caller; with auth_mode none, any header is the
    connection's address; failed authentications are limited per address."""
    limit = "rate_limit: {requests_per_second: 0.2, burst: 3}\n"
    gateway.create_endpoint(tmp_path, unique_name, limit)
    gateway.deploy(tmp_path, unique_name, "blue", model_dir / "classifier.onnx")
    key = json.loads(gateway.cli("endpoint", "get-credentials", "-n", unique_name)[1])["primaryKey"]
    body = {"input_data": [[1.0, 2.0, 3.0, 4.0]]}

    def score(endpoint: str, authorization: str | None, source: str = "127.0.0.1") -> int:
        transport = httpx.HTTPTransport(local_address=source)
        with httpx.Client(transport=transport) as client:
            headers = {"Authorization": authorization} if authorization is not None else {}
            return client.post(
                f"{gateway.url}/endpoints/{endpoint}/score", json=body, headers=headers
            ).status_code

    spellings = [f"Bearer {key}", f"bearer  {key}", f"BEARER {key}", f"bearer   {key}"]
    assert [score(unique_name, s) for s in spellings] == [200, 200, 200, 429]
    # Wrong keys: 401 until the address's bucket is empty, then 429.
    wrong = [score(unique_name, f"Bearer {'x' * 43}{i}", "127.0.0.3") for i in range(4)]
    assert wrong == [401, 401, 401, 429]
    # Another address is another bucket.
    assert score(unique_name, f"Bearer {'y' * 43}", "127.0.0.4") == 401

    open_endpoint = f"{unique_name}-open"
    gateway.create_endpoint(tmp_path, open_endpoint, "auth_mode: none\n" + limit)
    gateway.deploy(tmp_path, open_endpoint, "blue", model_dir / "classifier.onnx")
    junk = [score(open_endpoint, f"Bearer junk-{i}", "127.0.0.5") for i in range(4)]
    assert junk == [200, 200, 200, 429]
    assert score(open_endpoint, None, "127.0.0.5") == 429
    assert score(open_endpoint, None, "127.0.0.6") == 200


def test_grpc_peers_are_named_by_address() -> None:
    from gateway.rate_limit import peer_address

    assert peer_address("ipv4:127.0.0.1:50312") == "127.0.0.1"
    assert peer_address("ipv6:[::1]:50312") == "::1"
    assert peer_address("unix:/tmp/grpc.sock") == "/tmp/grpc.sock"
    assert peer_address(None) == "unknown"


def test_management_rate_limit_per_principal(tmp_path: Path) -> None:
    from tests.conftest import start_gateway

    gw = start_gateway(tmp_path / "home", "--management-rate-limit", "0.1:2")
    try:
        other = new_token(gw, "second", "reader")  # the owner's first request
        r = call(gw, gw.admin_token, "GET", "/management/endpoints")  # its second
        assert r.status_code == 200
        r = call(gw, gw.admin_token, "GET", "/management/endpoints")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 5, r.text
        assert "rate limit of the management API" in r.json()["error"]
        assert call(gw, other, "GET", "/management/endpoints").status_code == 200
    finally:
        gw.stop()
