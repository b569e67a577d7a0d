"""The CLI as `az ml` users script it: -o json|yaml|table|tsv and --query on every
command, --set on create and update, --version, --verbose; create refuses an existing
name (409, pointing at update) and update a missing one (404); batch endpoints and
deployments have show, list, update and delete; JSON Schemas for the YAML kinds."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from deploy.specs import SPEC_KINDS, json_schema
from tests.conftest import Gateway, delete_endpoints, write_yaml

REPO = Path(__file__).parents[2]


@pytest.fixture(autouse=True)
def _leave_no_workers(gateway: Gateway, unique_name: str) -> Iterator[None]:
    yield
    delete_endpoints(gateway, unique_name)


def deployment_yaml(tmp_path: Path, endpoint: str, model: Path, name: str = "blue") -> Path:
    local = tmp_path / f"{endpoint}-{name}.onnx"
    local.write_bytes(model.read_bytes())
    return write_yaml(
        tmp_path / f"{endpoint}-{name}.yml",
        f"name: {name}\nendpoint_name: {endpoint}\nmodel: {{path: {local.name}}}\n",
    )


def test_output_formats_and_query(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name)
    _, keys = gateway.cli("endpoint", "get-credentials", "-n", unique_name)
    primary = json.loads(keys)["primaryKey"]
    # The bare key, as `az ml online-endpoint get-credentials -o tsv --query primaryKey`.
    _, out = gateway.cli(
        "endpoint", "get-credentials", "-n", unique_name, "-o", "tsv", "--query", "primaryKey"
    )
    assert out == primary + "\n"
    # Global options before the command's name work too.
    _, out = gateway.cli(
        "-o", "tsv", "--query", "primaryKey", "endpoint", "get-credentials", "-n", unique_name
    )
    assert out == primary + "\n"
    _, out = gateway.cli("endpoint", "show", "-n", unique_name, "-o", "yaml")
    assert yaml.safe_load(out)["name"] == unique_name
    _, out = gateway.cli("endpoint", "list", "-o", "table", "--query", f"[?name=='{unique_name}']")
    header, row = out.splitlines()[:2]
    assert header.split()[:2] == ["name", "auth_mode"] and row.split()[:2] == [unique_name, "key"]
    # A list of scalars is one tab-separated line; a list of objects a line each.
    _, out = gateway.cli(
        "endpoint", "show", "-n", unique_name, "-o", "tsv", "--query", "[name, auth_mode]"
    )
    assert out == f"{unique_name}\tkey\n"
    code, out = gateway.cli("endpoint", "show", "-n", unique_name, "--query", "[?", ok=False)
    assert code != 0 and "JMESPath" in out


def test_update_without_a_file_sets_fields_of_the_stored_deployment(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    """`az ml online-deployment update -n blue -e E --set instance_count=2`: no file; the
    rest of the deployment, its secrets included (answers mask them), stays as it was."""
    gateway.create_endpoint(tmp_path, unique_name)
    spec = deployment_yaml(tmp_path, unique_name, model_dir / "classifier.onnx")
    gateway.cli(
        "deployment", "create", "-f", str(spec), "--set", "environment_variables.API_KEY=s3cret"
    )
    gateway.cli(
        "deployment", "update", "-n", "blue", "-e", unique_name, "--set", "instance_count=2"
    )
    shown = json.loads(gateway.cli("deployment", "show", "-n", "blue", "-e", unique_name)[1])
    assert shown["instance_count"] == 2 and shown["instances_ready"] == 2
    assert shown["model"]["version"] == 1  # the same model: no new version
    from deploy.home import ControlPlaneSettings, open_control_plane

    control = open_control_plane(ControlPlaneSettings.resolve(gateway.home, gateway.store))
    try:
        stored = control.get_deployment(unique_name, "blue")
    finally:
        control.store.close()
    assert stored.environment_variables == {"API_KEY": "s3cret"} and stored.instance_count == 2
    code, out = gateway.cli("deployment", "update", "-n", "blue", "-e", unique_name, ok=False)
    assert code != 0 and "--set PATH=VALUE" in out
    code, out = gateway.cli(
        "deployment", "update", "-n", "nosuch", "-e", unique_name, "--set", "x=1", ok=False
    )
    assert code != 0 and "does not exist" in out
    code, out = gateway.cli(
        "deployment",
        "update",
        "-n",
        "blue",
        "-e",
        unique_name,
        "--set",
        "instance_count=0",
        ok=False,
    )
    assert code != 0 and "instance_count" in out


def test_set_create_update_semantics_and_verbose(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name)
    spec = deployment_yaml(tmp_path, unique_name, model_dir / "classifier.onnx")
    _, out = gateway.cli(
        "deployment",
        "create",
        "-f",
        str(spec),
        "--set",
        "instance_count=2",
        "-o",
        "tsv",
        "--query",
        "instance_count",
    )
    assert out.strip() == "2"
    # The same content again is the same model version, not a new one.
    code, out = gateway.cli("deployment", "create", "-f", str(spec), ok=False)
    assert code != 0 and "409" in out and "servegate deployment update" in out
    _, out = gateway.cli(
        "deployment",
        "update",
        "-f",
        str(spec),
        "--set",
        "request_settings.max_concurrent_requests_per_instance=4",
        "-o",
        "tsv",
        "--query",
        "[request_settings.max_concurrent_requests_per_instance, model.version]",
    )
    assert out.split() == ["4", "1"]
    code, out = gateway.cli("deployment", "update", "-f", str(spec), "-n", "nosuch", ok=False)
    assert code != 0 and "404" in out and "does not exist" in out
    code, out = gateway.cli(
        "deployment", "create", "-f", str(spec), "--set", "instance_count", ok=False
    )
    assert code != 0 and "PATH=VALUE" in out
    # --verbose: each call on stderr with its status and time.
    _, out = gateway.cli(
        "deployment",
        "show",
        "-e",
        unique_name,
        "-n",
        "blue",
        "--verbose",
        "-o",
        "tsv",
        "--query",
        "provisioning_state",
    )
    assert "/deployments/blue -> 200 (" in out and "Succeeded" in out.splitlines()
    _, out = gateway.cli("--version")
    assert out.startswith("servegate ")


def test_batch_endpoint_and_deployment_verbs(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    batch = f"{unique_name}-b"
    gateway.cli(
        "batch",
        "endpoint",
        "create",
        "-f",
        str(write_yaml(tmp_path / "be.yml", f"name: {batch}\n")),
    )
    model = tmp_path / "m.onnx"
    model.write_bytes((model_dir / "classifier.onnx").read_bytes())
    for name in ("blue", "green"):
        spec = write_yaml(
            tmp_path / f"{name}.yml",
            f"name: {name}\nendpoint_name: {batch}\nmodel: {{path: m.onnx}}\n",
        )
        gateway.cli("batch", "deployment", "create", "-f", str(spec))
    code, out = gateway.cli(
        "batch", "deployment", "create", "-f", str(tmp_path / "blue.yml"), ok=False
    )
    assert code != 0 and "409" in out
    _, out = gateway.cli(
        "batch",
        "endpoint",
        "list",
        "-o",
        "tsv",
        "--query",
        f"[?name=='{batch}'].defaults.deployment_name",
    )
    assert out.strip() == "blue"
    _, out = gateway.cli(
        "batch", "deployment", "list", "-e", batch, "-o", "tsv", "--query", "[].name"
    )
    assert out.split() == ["blue", "green"]
    # The default cannot go while another remains; --set-default moves it.
    code, out = gateway.cli(
        "batch", "deployment", "delete", "-e", batch, "-n", "blue", "--yes", ok=False
    )
    assert code != 0 and "default deployment" in out
    gateway.cli("batch", "deployment", "update", "-f", str(tmp_path / "green.yml"), "--set-default")
    _, out = gateway.cli(
        "batch", "endpoint", "show", "-n", batch, "-o", "tsv", "--query", "defaults.deployment_name"
    )
    assert out.strip() == "green"
    gateway.cli("batch", "deployment", "delete", "-e", batch, "-n", "blue", "--yes")
    _, out = gateway.cli(
        "batch",
        "endpoint",
        "update",
        "-n",
        batch,
        "--set",
        "description=nightly scoring",
        "-o",
        "tsv",
        "--query",
        "description",
    )
    assert out.strip() == "nightly scoring"
    code, out = gateway.cli(
        "batch",
        "endpoint",
        "update",
        "-n",
        batch,
        "--set",
        "defaults.deployment_name=blue",
        ok=False,
    )
    assert code != 0 and "has no deployment 'blue'" in out
    gateway.cli("batch", "endpoint", "delete", "-n", batch, "--yes")
    code, out = gateway.cli("batch", "endpoint", "show", "-n", batch, ok=False)
    assert code != 0 and "404" in out
    _, out = gateway.cli(
        "audit", "list", "--target", f"batch-endpoints/{batch}", "-o", "tsv", "--query", "[].action"
    )
    assert "batch_endpoint.delete" in out.split()


def test_published_schemas_are_current_and_validate_the_examples() -> None:
    import jsonschema

    for kind in SPEC_KINDS:
        published = json.loads((REPO / "schemas" / f"{kind}.schema.json").read_text())
        assert published == json_schema(kind), (
            f"schemas/{kind}.schema.json: run servegate schema {kind} --write schemas"
        )
    checked = 0
    for path in sorted((REPO / "examples").rglob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        hint = doc.get("$schema", "")
        if hint.startswith("http"):
            continue
        schema = json.loads((path.parent / hint).read_text())
        jsonschema.validate(doc, schema)
        checked += 1
    assert checked >= 8


def create_script_deployment(
    gateway: Gateway, tmp_path: Path, endpoint: str, score_py: str, extra_yaml: str = ""
) -> None:
    """Deployment `blue` of a fresh endpoint (no auth): a scoring script in worker
    processes, taking all traffic."""
    gateway.create_endpoint(tmp_path, endpoint, "auth_mode: none\n")
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(score_py)
    spec = write_yaml(
        tmp_path / "script.yml",
        f"name: blue\nendpoint_name: {endpoint}\n"
        f"code_configuration: {{code: code, scoring_script: score.py}}\n{extra_yaml}",
    )
    gateway.cli("deployment", "create", "-f", str(spec), "--all-traffic")


def test_get_logs_shows_what_a_scoring_script_prints(
    gateway: Gateway, tmp_path: Path, unique_name: str
) -> None:
    create_script_deployment(
        gateway,
        tmp_path,
        unique_name,
        "import logging\n"
        "def init():\n"
        "    print('loading the model')\n"
        "def run(raw_data):\n"
        "    print('scoring', len(raw_data), 'bytes')\n"
        "    logging.getLogger('fraud').warning('a low balance')\n"
        "    return {'ok': True}\n",
    )
    r = httpx.post(
        f"{gateway.url}/endpoints/{unique_name}/score",
        content=b'{"x": 1}',
        headers={"x-request-id": "req-42"},
    )
    assert r.status_code == 200, r.text
    _, out = gateway.cli("deployment", "get-logs", "-e", unique_name, "-n", "blue")
    lines = out.splitlines()
    assert any(line.endswith("worker 0: loading the model") for line in lines), out
    assert any("started (pid" in line for line in lines), out
    # What the script logs while serving a request names the request.
    served = "worker 0 (request req-42): "
    assert any(line.endswith(served + "scoring 8 bytes") for line in lines), out
    assert any(line.endswith(served + "WARNING fraud: a low balance") for line in lines), out
    _, out = gateway.cli(
        "deployment",
        "get-logs",
        "-e",
        unique_name,
        "-n",
        "blue",
        "--lines",
        "1",
        "-o",
        "tsv",
        "--query",
        "[].line",
    )
    assert out.strip() == "worker 0 (request req-42): WARNING fraud: a low balance"


def test_a_worker_that_stops_answering_its_liveness_probe_is_replaced(
    gateway: Gateway, tmp_path: Path, unique_name: str
) -> None:
    create_script_deployment(
        gateway,
        tmp_path,
        unique_name,
        "import os, signal, threading, time\n"
        "def init():\n"
        "    pass\n"
        "def run(raw_data):\n"
        "    if raw_data == 'freeze':  # stop this whole process once the answer is out\n"
        "        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGSTOP)).start()\n"
        "    return {'pid': os.getpid()}\n",
        "liveness_probe: {initial_delay: 0, period: 1, timeout: 1, failure_threshold: 2}\n",
    )
    url = f"{gateway.url}/endpoints/{unique_name}/score"
    first = httpx.post(url, content=b"freeze")
    assert first.status_code == 200, first.text
    # Frozen, it misses two probes (1 s each), is replaced, and the next request is
    # answered by a new process.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        _, out = gateway.cli("deployment", "get-logs", "-e", unique_name, "-n", "blue")
        _, failed, after = out.rpartition("liveness probe failed (2/2")
        if failed and "started (pid" in after:
            break
        time.sleep(0.5)
    second = httpx.post(url, content=b"hello", timeout=30)
    assert second.status_code == 200, second.text
    assert second.json()["pid"] != first.json()["pid"]
    _, out = gateway.cli("deployment", "get-logs", "-e", unique_name, "-n", "blue")
    assert "liveness probe failed (2/2" in out and "exited or hung" in out, out


def test_a_worker_failing_its_readiness_probe_gets_no_calls_until_it_passes_again(
    gateway: Gateway, tmp_path: Path, unique_name: str
) -> None:
    started = time.monotonic()
    create_script_deployment(
        gateway,
        tmp_path,
        unique_name,
        "import os\ndef init():\n    pass\ndef run(raw_data):\n    return {'pid': os.getpid()}\n",
        "instance_count: 2\n"
        "readiness_probe: {initial_delay: 1, period: 1, timeout: 1, success_threshold: 2,"
        " failure_threshold: 2}\n",
    )
    # Created once both workers answered two probes in a row, a second apart.
    assert time.monotonic() - started >= 2.0
    show = ("deployment", "show", "-e", unique_name, "-n", "blue", "-o", "tsv", "--query")
    assert gateway.cli(*show, "instances_ready")[1].strip() == "2"
    _, logs = gateway.cli("deployment", "get-logs", "-e", unique_name, "-n", "blue")
    assert logs.count("passed the readiness probe (2 in a row); taking calls") == 2, logs
    pids = [int(p.split(")")[0]) for p in logs.split("started (pid ")[1:]]
    url = f"{gateway.url}/endpoints/{unique_name}/score"

    def wait_for(line: str, times: int = 1) -> str:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            _, out = gateway.cli("deployment", "get-logs", "-e", unique_name, "-n", "blue")
            if out.count(line) >= times:
                return out
            time.sleep(0.3)
        raise AssertionError(f"not in the deployment's log: {line}\n{out}")

    os.kill(pids[0], signal.SIGSTOP)
    try:
        wait_for("failed the readiness probe 2 times in a row; no calls until it passes again")
        assert gateway.cli(*show, "instances_ready")[1].strip() == "1"
        # Out of rotation, not replaced: every request goes to the other worker.
        answers = {httpx.post(url, content=b"x", timeout=10).json()["pid"] for _ in range(6)}
        assert answers == {pids[1]}
    finally:
        os.kill(pids[0], signal.SIGCONT)
    out = wait_for("passed the readiness probe (2 in a row); taking calls", times=3)
    assert gateway.cli(*show, "instances_ready")[1].strip() == "2"
    assert "exited or hung" not in out


def test_no_wait_answers_at_once_and_show_tells_the_outcome(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name, "auth_mode: none\n")
    fake = tmp_path / "slow.bin"
    fake.write_bytes(b"fake runtime: no weights")
    spec = write_yaml(
        tmp_path / "slow.yml",
        f"name: blue\nendpoint_name: {unique_name}\nmodel: {{path: slow.bin}}\n"
        "runtime: fake\nruntime_options: {load_s: 2.0}\n",
    )
    started = time.monotonic()
    _, out = gateway.cli(
        "deployment",
        "create",
        "-f",
        str(spec),
        "--no-wait",
        "--all-traffic",
        "-o",
        "tsv",
        "--query",
        "provisioning_state",
    )
    assert out.strip() == "Creating" and time.monotonic() - started < 1.5

    def state() -> str:
        _, shown = gateway.cli(
            "deployment",
            "show",
            "-e",
            unique_name,
            "-n",
            "blue",
            "-o",
            "tsv",
            "--query",
            "provisioning_state",
        )
        return shown.strip()

    assert state() == "Creating"
    deadline = time.monotonic() + 30
    while state() == "Creating" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert state() == "Succeeded"
    # One that cannot load: Failed, with the reason, and nothing stored or routed.
    bad = write_yaml(
        tmp_path / "bad.yml",
        f"name: green\nendpoint_name: {unique_name}\nmodel: {{path: slow.bin}}\n"
        "runtime: fake\nruntime_options: {fail_load: true}\n",
    )
    gateway.cli("deployment", "create", "-f", str(bad), "--no-wait")
    deadline = time.monotonic() + 30
    shown: dict[str, object] = {}
    while time.monotonic() < deadline:
        shown = json.loads(gateway.cli("deployment", "show", "-e", unique_name, "-n", "green")[1])
        if shown["provisioning_state"] != "Creating":
            break
        time.sleep(0.2)
    assert shown["provisioning_state"] == "Failed" and shown["error"], shown
    _, listed = gateway.cli(
        "deployment", "list", "-e", unique_name, "-o", "tsv", "--query", "[].name"
    )
    assert listed.split() == ["blue"]


def test_az_mls_group_names_work_as_they_are(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    """`az ml online-endpoint ...`, `online-deployment`, `batch-endpoint invoke`: the
    same commands under Azure's group names."""
    endpoint = write_yaml(tmp_path / "endpoint.yml", "auth_mode: key\n")
    gateway.cli("online-endpoint", "create", "-n", unique_name, "-f", str(endpoint))
    spec = deployment_yaml(tmp_path, unique_name, model_dir / "classifier.onnx")
    gateway.cli("online-deployment", "create", "-f", str(spec), "--all-traffic")
    _, out = gateway.cli(
        "online-endpoint", "show", "-n", unique_name, "-o", "tsv", "--query", "traffic.blue"
    )
    assert out.strip() == "100"
    _, out = gateway.cli(
        "online-endpoint", "get-credentials", "-n", unique_name, "--query", "primaryKey"
    )
    assert len(json.loads(out)) > 20
    delete_endpoints(gateway, unique_name)
