"""Keys, tokens, the audit log and CLI failure modes, against a real gateway."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import httpx

from tests.conftest import Gateway, store_contents, write_yaml


def _score(gateway: Gateway, name: str, credential: str) -> int:
    return httpx.post(
        f"{gateway.url}/endpoints/{name}/score",
        json={"input_data": [[1, 2, 3, 4]]},
        headers={"Authorization": f"Bearer {credential}"},
    ).status_code


def _endpoint(
    gateway: Gateway, tmp_path: Path, model_dir: Path, name: str, auth: str = "key"
) -> None:
    gateway.create_endpoint(tmp_path, name, f"auth_mode: {auth}\n")
    gateway.deploy(tmp_path, name, "blue", model_dir / "classifier.onnx")


def test_regenerating_a_key_invalidates_it_at_once(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    _endpoint(gateway, tmp_path, model_dir, unique_name)
    _, out = gateway.cli("endpoint", "get-credentials", "--name", unique_name)
    before = json.loads(out)
    assert set(before) == {"primaryKey", "secondaryKey"}
    assert before["primaryKey"] != before["secondaryKey"]
    assert _score(gateway, unique_name, before["primaryKey"]) == 200
    assert _score(gateway, unique_name, before["secondaryKey"]) == 200

    _, out = gateway.cli(
        "endpoint", "regenerate-keys", "--name", unique_name, "--key-type", "primary"
    )
    after = json.loads(out)
    assert after["primaryKey"] != before["primaryKey"]
    assert after["secondaryKey"] == before["secondaryKey"]
    assert _score(gateway, unique_name, before["primaryKey"]) == 401
    assert _score(gateway, unique_name, after["primaryKey"]) == 200
    assert _score(gateway, unique_name, before["secondaryKey"]) == 200
    # get-credentials shows the same keys again (they are derived, not stored).
    _, out = gateway.cli("endpoint", "get-credentials", "--name", unique_name)
    assert json.loads(out) == after

    code, out = gateway.cli(
        "endpoint", "regenerate-keys", "--name", unique_name, "--key-type", "tertiary", ok=False
    )
    assert code != 0 and "tertiary" in out


def test_keys_are_stored_hashed(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    _endpoint(gateway, tmp_path, model_dir, unique_name)
    _, out = gateway.cli("endpoint", "get-credentials", "--name", unique_name)
    keys = json.loads(out)
    raw = store_contents(gateway)
    for key in keys.values():
        assert key.encode() not in raw


def test_token_auth(gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str) -> None:
    _endpoint(gateway, tmp_path, model_dir, unique_name, auth="aml_token")
    _, out = gateway.cli("endpoint", "get-credentials", "--name", unique_name)
    creds = json.loads(out)
    assert creds["tokenType"] == "Bearer"
    assert datetime.fromisoformat(creds["expiryTimeUtc"]) > datetime.now().astimezone()
    assert _score(gateway, unique_name, creds["accessToken"]) == 200
    forged = creds["accessToken"][:-2] + ("AA" if not creds["accessToken"].endswith("AA") else "BB")
    assert _score(gateway, unique_name, forged) == 401


def test_audit_log_records_who_when_what_before_after(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    _endpoint(gateway, tmp_path, model_dir, unique_name)
    gateway.cli(
        "endpoint",
        "update",
        "-n",
        unique_name,
        "--traffic",
        "blue=0",
        "--reason",
        "maintenance window",
    )
    gateway.cli("endpoint", "regenerate-keys", "-n", unique_name, "--key-type", "secondary")
    _, out = gateway.cli("audit", "list", "--target", f"endpoints/{unique_name}")
    entries = json.loads(out)
    actions = [e["action"] for e in entries]
    # Newest first.
    assert actions == [
        "endpoint.regenerate_key",
        "endpoint.update",
        "endpoint.update",
        "deployment.create",
        "endpoint.create",
    ]
    for entry in entries:
        assert entry["actor"] == "token:owner"  # the admin token's principal, not a header
        assert datetime.fromisoformat(entry["at"]).tzinfo is not None
    traffic_change = entries[1]
    assert traffic_change["before"]["traffic"] == {"blue": 100}
    assert traffic_change["after"]["traffic"] == {"blue": 0}
    assert traffic_change["reason"] == "maintenance window"
    assert entries[2]["reason"] == "--all-traffic"
    created = entries[3]
    assert created["before"] is None and created["after"]["model"]["version"] == 1
    rotated = entries[0]
    assert rotated["before"]["key_hash"] != rotated["after"]["key_hash"]
    assert "secondaryKey" not in json.dumps(rotated)

    gateway.cli("deployment", "delete", "-n", "blue", "-e", unique_name)
    _, out = gateway.cli("audit", "list", "--target", f"endpoints/{unique_name}", "--limit", "2")
    cleanup, deleted = json.loads(out)
    assert deleted["action"] == "deployment.delete"
    assert deleted["before"]["name"] == "blue" and deleted["after"] is None
    # The endpoint stops naming the deleted deployment, and says why.
    assert cleanup["action"] == "endpoint.update" and cleanup["after"]["traffic"] == {}
    assert cleanup["reason"] == "deployment blue deleted"


def test_failed_commands_exit_non_zero_with_the_servers_message(
    gateway: Gateway, tmp_path: Path, unique_name: str
) -> None:
    spec = write_yaml(tmp_path / "e.yml", f"name: {unique_name}\n")
    gateway.cli("endpoint", "create", "-f", str(spec))
    code, out = gateway.cli("endpoint", "create", "-f", str(spec), ok=False)
    assert code == 1 and f"409: endpoint '{unique_name}' already exists" in out
    # A real process, as a user would run it: stderr carries the message, exit code 1.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "servegate",
            "--url",
            gateway.url,
            "--home",
            str(gateway.home),
            "endpoint",
            "show",
            "--name",
            "missing-endpoint",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "endpoint 'missing-endpoint' does not exist" in result.stderr
    # No gateway at that URL.
    code, out = gateway.cli("--url", "http://127.0.0.1:9", "endpoint", "list", ok=False)
    assert code == 1 and "cannot reach the gateway" in out
    # Wrong token.
    code, out = gateway.cli("--token", "wrong", "endpoint", "list", ok=False)
    assert code == 1 and "invalid admin token" in out


def test_openapi_covers_every_route(gateway: Gateway) -> None:
    from gateway.app import create_app
    from gateway.settings import GatewaySettings

    doc = httpx.get(f"{gateway.url}/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    app = create_app(GatewaySettings(home=Path("/nonexistent")))
    for route in app.starlette.routes:  # (the studio's static files are no API route)
        methods = {m.lower() for m in (getattr(route, "methods", None) or ())} - {"head"}
        for method in methods:
            assert method in doc["paths"].get(route.path, {}), f"{method} {route.path} undocumented"


def test_metrics(gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str) -> None:
    _endpoint(gateway, tmp_path, model_dir, unique_name)
    _, out = gateway.cli("endpoint", "get-credentials", "--name", unique_name)
    key = json.loads(out)["primaryKey"]
    for _ in range(3):
        assert _score(gateway, unique_name, key) == 200
    assert _score(gateway, unique_name, "bad") == 401
    text = httpx.get(f"{gateway.url}/metrics").text
    # model_name and model_version beside endpoint and deployment, as Triton and KServe
    # label their series; no _created series.
    model = f'model_name="{unique_name}-blue",model_version="1"'
    assert (
        f'servegate_requests_total{{deployment="blue",endpoint="{unique_name}",{model},'
        f'protocol="score",status="200"}} 3.0'
    ) in text
    assert (
        f'servegate_requests_total{{deployment="",endpoint="{unique_name}",model_name="",'
        f'model_version="",protocol="score",status="401"}} 1.0'
    ) in text
    assert (
        f'servegate_request_duration_seconds_count{{deployment="blue",'
        f'endpoint="{unique_name}",{model}}} 3.0'
    ) in text
    assert (
        f"servegate_inference_duration_seconds_count"
        f'{{deployment="blue",endpoint="{unique_name}",{model}}} 3.0' in text
    )
    assert "_created" not in text


def test_openapi_documents_every_status_real_requests_get(gateway: Gateway) -> None:
    """Probe every documented operation with what clients get wrong (no credential, names
    that do not exist, a body that is not JSON, a query value that is not a number) and
    check each status the gateway answered is in that operation's responses."""
    doc = httpx.get(f"{gateway.url}/openapi.json").json()
    admin = {"Authorization": f"Bearer {gateway.admin_token}"}
    undocumented = []
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for template, operations in doc["paths"].items():
            path = template
            for name in ("endpoint", "deployment", "name", "version", "job", "action"):
                path = path.replace(f"{{{name}}}", "cancel" if name == "action" else "nope-nope")
            for method, operation in operations.items():
                query = {
                    p["name"]: "x²"
                    for p in operation.get("parameters", [])
                    if p["in"] == "query" and p["schema"].get("type") in ("integer", "boolean")
                }
                body = b"{not json" if "requestBody" in operation else None
                probes = [
                    client.request(method, path, content=body),
                    client.request(method, path, content=body, headers=admin),
                    client.request(method, path, content=body, headers=admin, params=query),
                ]
                for response in probes:
                    if str(response.status_code) not in operation["responses"]:
                        undocumented.append(f"{method.upper()} {template}: {response.status_code}")
    assert not undocumented, undocumented


def test_every_command_says_what_it_does() -> None:
    """`servegate <group> <command> --help` has a line for each command and group."""
    import click

    from servegate.cli import main

    silent = []

    def walk(command: click.Command, path: str) -> None:
        if not (command.help or command.short_help):
            silent.append(path)
        if isinstance(command, click.Group):
            for name, child in command.commands.items():
                walk(child, f"{path} {name}")

    walk(main, "servegate")
    assert not silent, silent


def test_a_job_list_as_a_table_fits_a_line(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    """-o table on a pipe fits 100 columns, with the columns that say which job is where;
    times in answers are ISO-8601 strings."""
    from datetime import datetime

    from tests.batch.test_jobs import batch_endpoint, features, invoke, write_input

    batch_endpoint(gateway, tmp_path, model_dir, unique_name)
    write_input(tmp_path / "in", "parquet", features(1, rows=10))
    invoke(gateway, unique_name, str(tmp_path / "in"), str(tmp_path / "out"), "--wait")
    _, out = gateway.cli("batch", "list", "-e", unique_name, "-o", "table")
    lines = out.splitlines()
    assert lines and all(len(line) <= 100 for line in lines), out
    assert lines[0].split()[:4] == ["id", "endpoint", "deployment", "state"], out
    assert "completed" in out
    job = json.loads(gateway.cli("batch", "list", "-e", unique_name)[1])[0]
    shown = json.loads(gateway.cli("batch", "show", job["id"])[1])
    datetime.fromisoformat(shown["runner_started"])
    _, out = gateway.cli(
        "access", "token", "create", "-n", f"{unique_name}-t", "--role", "reader", "--expires", "1d"
    )
    expires = json.loads(out)["expires_at"]
    assert datetime.fromisoformat(expires).tzinfo is not None, expires
    gateway.cli("access", "token", "revoke", "-n", f"{unique_name}-t")
