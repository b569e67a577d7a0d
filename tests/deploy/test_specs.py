"""YAML specs: Azure ML's field names and defaults; every invalid case names the
file, the field and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.errors import SpecError
from deploy.specs import EndpointSpec, ModelRef, OnlineDeploymentSpec, load_spec
from tests.conftest import write_yaml


def test_endpoint_defaults(tmp_path: Path) -> None:
    spec = load_spec(
        EndpointSpec,
        write_yaml(
            tmp_path / "e.yml",
            """
$schema: https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json
name: my-endpoint
""",
        ),
    )
    assert spec.auth_mode == "key" and spec.traffic == {} and spec.mirror_traffic == {}


def test_deployment_defaults_follow_azure_ml(tmp_path: Path) -> None:
    spec = load_spec(
        OnlineDeploymentSpec,
        write_yaml(
            tmp_path / "d.yml",
            """
name: blue
endpoint_name: my-endpoint
model:
  path: ./model.onnx
environment_variables: {A: "1"}
tags: {team: fraud}
""",
        ),
    )
    assert spec.runtime == "onnx"  # from the suffix
    assert spec.instance_count == 1 and spec.device == "cpu"
    settings = spec.request_settings
    assert (
        settings.request_timeout_ms,
        settings.max_concurrent_requests_per_instance,
        settings.max_queue_wait_ms,
    ) == (5000, 1, 500)


@pytest.mark.parametrize(
    "text, ref",
    [
        ("fraud:3", ModelRef(name="fraud", version=3)),
        ("azureml:fraud:3", ModelRef(name="fraud", version=3)),
        ("fraud", ModelRef(name="fraud")),
        ("{name: fraud, version: 2}", ModelRef(name="fraud", version=2)),
        ("{path: m.onnx}", ModelRef(path="m.onnx")),
    ],
)
def test_model_reference_forms(tmp_path: Path, text: str, ref: ModelRef) -> None:
    spec = load_spec(
        OnlineDeploymentSpec,
        write_yaml(
            tmp_path / "d.yml", f"name: blue\nendpoint_name: ep1\nruntime: onnx\nmodel: {text}\n"
        ),
    )
    assert spec.model == ref


DEPLOYMENT = "name: blue\nendpoint_name: ep1\nmodel: fraud:1\n"


@pytest.mark.parametrize(
    "kind, text, fragments",
    [
        # endpoint
        ("endpoint", "name: ab\n", ["field 'name'", "3-32 letters"]),
        ("endpoint", "name: 9lives\n", ["field 'name'", "starting with a letter"]),
        ("endpoint", "name: has_underscore\n", ["field 'name'", "letters, digits or dashes"]),
        ("endpoint", "name: " + "a" * 33 + "\n", ["field 'name'", "3-32"]),
        ("endpoint", "description: no name\n", ["field 'name'", "required"]),
        (
            "endpoint",
            "name: good\nauth_mode: password\n",
            ["field 'auth_mode'", "'key', 'token', 'aad_token' or 'none'"],
        ),
        (
            "endpoint",
            "name: good\ncompte: k8s\n",
            ["field 'compte'", "unknown field", "allowed fields:", "auth_mode"],
        ),
        ("endpoint", "name: good\ntraffic: {blue: 90}\n", ["field 'traffic'", "sum to 0 or 100"]),
        (
            "endpoint",
            "name: good\ntraffic: {blue: 120}\n",
            ["field 'traffic.blue'", "less than or equal to 100"],
        ),
        (
            "endpoint",
            "name: good\ntraffic: {blue: -5, green: 105}\n",
            ["field 'traffic.blue'", "greater than or equal to 0"],
        ),
        (
            "endpoint",
            "name: good\ntraffic: {blue: lots}\n",
            ["field 'traffic.blue'", "integer", "'lots'"],
        ),
        (
            "endpoint",
            "name: good\nmirror_traffic: {green: 60}\n",
            ["field 'mirror_traffic.green'", "less than or equal to 50"],
        ),
        (
            "endpoint",
            "name: good\nmirror_traffic: {green: 10, red: 10}\n",
            ["field 'mirror_traffic'", "one deployment"],
        ),
        (
            "endpoint",
            "name: good\ntraffic: {blue: 100}\nmirror_traffic: {blue: 10}\n",
            ["field 'mirror_traffic'", "already takes live traffic"],
        ),
        ("endpoint", "name: good\ntags: [a, b]\n", ["field 'tags'", "dictionary"]),
        ("endpoint", "- just\n- a list\n", ["expected a mapping"]),
        ("endpoint", "name: [unclosed\n", ["not valid YAML"]),
        # deployment
        (
            "deployment",
            "name: blue\nendpoint_name: ep1\n",
            ["'model' is required for runtime 'onnx'"],
        ),
        (
            "deployment",
            DEPLOYMENT + "instance_count: 0\n",
            ["field 'instance_count'", "greater than or equal to 1"],
        ),
        (
            "deployment",
            DEPLOYMENT + "instance_count: two\n",
            ["field 'instance_count'", "integer", "'two'"],
        ),
        ("deployment", DEPLOYMENT + "device: gpu\n", ["field 'device'", "cpu, cuda or cuda:N"]),
        (
            "deployment",
            DEPLOYMENT + "runtime: tensorflow\n",
            ["field 'runtime'", "unknown runtime 'tensorflow'", "onnx"],
        ),
        (
            "deployment",
            DEPLOYMENT + "request_settings: {request_timeout_ms: 200000}\n",
            ["field 'request_settings.request_timeout_ms'", "less than or equal to 180000"],
        ),
        (
            "deployment",
            DEPLOYMENT + "request_settings: {request_timeout_ms: 0}\n",
            ["field 'request_settings.request_timeout_ms'", "greater than or equal to 1"],
        ),
        (
            "deployment",
            DEPLOYMENT + "request_settings: {max_concurrent_requests_per_instance: 0}\n",
            ["max_concurrent_requests_per_instance", "greater than or equal to 1"],
        ),
        (
            "deployment",
            DEPLOYMENT + "request_settings: {timeout: 5}\n",
            ["field 'request_settings.timeout'", "unknown field", "request_timeout_ms"],
        ),
        (
            "deployment",
            DEPLOYMENT + "instance_typo: Standard_DS3_v2\n",
            ["field 'instance_typo'", "unknown field", "instance_count"],
        ),
        (
            "deployment",
            DEPLOYMENT + "environment_variables: {A: [1]}\n",
            ["field 'environment_variables.A'", "string"],
        ),
        (
            "deployment",
            "name: blue\nendpoint_name: ep1\nmodel: 'fraud:x'\n",
            ["field 'model'", "not a model reference"],
        ),
        (
            "deployment",
            "name: blue\nendpoint_name: ep1\nmodel: {description: d}\n",
            ["field 'model'", "give 'path' (a file or folder) or 'name'"],
        ),
        (
            "deployment",
            "name: blue\nendpoint_name: ep1\nmodel: {path: m.onnx, version: 2}\n",
            ["field 'model'", "'version' with 'path' needs 'name'"],
        ),
        (
            "deployment",
            "name: blue\nendpoint_name: ep1\nmodel: {name: m, version: 0}\n",
            ["field 'model.version'", "greater than or equal to 1"],
        ),
        (
            "deployment",
            "name: blue\nendpoint_name: ep1\nmodel: {path: weights.bin}\n",
            ["'runtime' is not set", "weights.bin"],
        ),
        ("deployment", "name: b\nendpoint_name: ep1\nmodel: m:1\n", ["field 'name'", "3-32"]),
        # An unknown field in an optional block lists that block's fields.
        (
            "deployment",
            DEPLOYMENT + "batching: {max_batch: 8}\n",
            ["field 'batching.max_batch'", "allowed fields: max_batch_size, max_batch_delay_ms"],
        ),
    ],
)
def test_invalid_specs(tmp_path: Path, kind: str, text: str, fragments: list[str]) -> None:
    path = write_yaml(tmp_path / f"{kind}.yml", text)
    model = EndpointSpec if kind == "endpoint" else OnlineDeploymentSpec
    with pytest.raises(SpecError) as info:
        load_spec(model, path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_missing_file() -> None:
    with pytest.raises(SpecError, match="nowhere.yml: cannot read"):
        load_spec(EndpointSpec, "nowhere.yml")


def test_cli_reports_spec_errors_before_contacting_the_gateway(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from servegate.cli import main

    path = write_yaml(tmp_path / "endpoint.yml", "name: ok-name\nauth_mode: password\n")
    result = CliRunner().invoke(
        main, ["--url", "http://127.0.0.1:9", "--token", "t", "endpoint", "create", "-f", str(path)]
    )
    assert result.exit_code == 1
    assert f"{path}: field 'auth_mode'" in result.output
