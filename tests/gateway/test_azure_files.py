"""Files in the shape of Azure ML's public samples (examples/azure-ml: managed online
endpoint and deployments with inline and curated environments, registered assets,
the older `local_path` form, a custom data collector; batch deployments with a scoring
script over files and an MLflow model) create unchanged through the CLI, with one
warning per Azure field servegate does not use; --strict refuses them, naming each."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import Gateway, delete_endpoints

EXAMPLES = Path(__file__).parents[2] / "examples" / "azure-ml"
ENVIRONMENT = "environment: ignored; the runtime comes from the model"
INSTANCE_TYPE = "instance_type: ignored; instances run on the gateway's host"
COMPUTE = "compute: ignored; an Azure ML cluster"


@pytest.fixture(scope="module", autouse=True)
def _leave_no_workers(gateway: Gateway) -> Iterator[None]:
    yield
    for prefix in ("my-endpoint", "digits-batch", "azure-layout"):
        delete_endpoints(gateway, prefix)


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the examples with the models and inputs their make script writes."""
    root = tmp_path_factory.mktemp("azure") / "azure-ml"
    shutil.copytree(EXAMPLES, root, ignore=shutil.ignore_patterns("model", "digits", "heart-*"))
    subprocess.run([sys.executable, str(root / "make_models.py"), str(root)], check=True)
    return root


def warnings_of(output: str) -> list[str]:
    """The CLI's warnings, in order (the test harness shows stderr twice: once each)."""
    return list(
        dict.fromkeys(
            [
                line.removeprefix("warning: ")
                for line in output.splitlines()
                if line.startswith("warning: ")
            ]
        )
    )


def test_online_files_create_unchanged_with_a_warning_per_azure_field(
    gateway: Gateway, samples: Path
) -> None:
    online = samples / "online"
    _, out = gateway.cli("endpoint", "create", "-f", str(online / "endpoint.yml"))
    assert [w.split(":")[0] for w in warnings_of(out)] == ["public_network_access"]
    # Inline environment and instance type: one warning each; the model folder is
    # registered under the name the file gives it.
    _, out = gateway.cli(
        "deployment", "create", "-f", str(online / "blue-deployment.yml"), "--all-traffic"
    )
    found = warnings_of(out)
    assert (
        len(found) == 2 and found[0].startswith(ENVIRONMENT) and found[1].startswith(INSTANCE_TYPE)
    )
    _, out = gateway.cli(
        "model", "list", "-n", "sklearn-regression", "-o", "tsv", "--query", "[].version"
    )
    assert out.split() == ["1"]
    # The scoring script finds the model folder under AZUREML_MODEL_DIR, as in Azure.
    _, key = gateway.cli(
        "endpoint", "get-credentials", "-n", "my-endpoint", "-o", "tsv", "--query", "primaryKey"
    )
    request = json.loads((online / "model-1" / "sample-request.json").read_text())
    r = httpx.post(
        f"{gateway.url}/endpoints/my-endpoint/score",
        json=request,
        headers={"Authorization": f"Bearer {key.strip()}"},
    )
    assert r.status_code == 200, r.text
    weights = np.arange(1, 11)
    np.testing.assert_allclose(r.json(), np.array(request["data"]) @ weights + 3.0, rtol=1e-9)

    # A registered model by `azureml:name@latest`, a curated environment, probes and
    # app insights: the same version, no new one.
    _, out = gateway.cli("deployment", "create", "-f", str(online / "green-deployment.yml"))
    assert [w.split(":")[0] for w in warnings_of(out)] == [
        "environment",
        "instance_type",
        "app_insights_enabled",
    ]
    _, shown = gateway.cli("deployment", "show", "-e", "my-endpoint", "-n", "green")
    green = json.loads(shown)
    assert green["model"] == {"name": "sklearn-regression", "version": 1}
    assert green["provisioning_state"] == "Succeeded" and green["instances_ready"] == 1
    assert not {"environment", "app_insights_enabled"} & set(green)
    # Honoured for its worker processes, with Azure's defaults for what the file leaves out.
    assert green["liveness_probe"] == {
        "initial_delay": 10,
        "period": 10,
        "timeout": 2,
        "success_threshold": 1,
        "failure_threshold": 30,
    }
    assert green["readiness_probe"]["initial_delay"] == 1
    _, logs = gateway.cli("deployment", "get-logs", "-e", "my-endpoint", "-n", "green")
    assert "worker 0: passed the readiness probe (1 in a row); taking calls" in logs, logs

    # The older `local_path` spelling of model and code.
    _, out = gateway.cli("deployment", "create", "-f", str(online / "legacy-deployment.yml"))
    assert [w.split(":")[0] for w in warnings_of(out)] == ["environment", "instance_type"]
    _, shown = gateway.cli(
        "deployment",
        "show",
        "-e",
        "my-endpoint",
        "-n",
        "legacy",
        "-o",
        "tsv",
        "--query",
        "model.name",
    )
    assert shown.strip() == "my-endpoint-legacy"

    # Azure's custom logging: the script's Collector(name=...).collect() rows land in
    # their collection's folder, tied to each other by the correlation id; request and
    # response payloads in the deployment's; under the artifacts folder by default.
    _, out = gateway.cli("deployment", "create", "-f", str(online / "collector-deployment.yml"))
    assert [w.split(":")[0] for w in warnings_of(out)] == ["environment", "instance_type"]
    r = httpx.post(
        f"{gateway.url}/endpoints/my-endpoint/score",
        json=request,
        headers={"Authorization": f"Bearer {key.strip()}", "azureml-model-deployment": "logged"},
    )
    assert r.status_code == 200, r.text
    collected = gateway.home / "modelDataCollector" / "my-endpoint" / "logged"
    tables = {}
    deadline = time.monotonic() + 15
    while len(tables) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        tables = {
            name: pq.read_table(next((collected / name).rglob("*.parquet"))).to_pylist()
            for name in ("model_inputs", "model_outputs")
            if list((collected / name).rglob("*.parquet"))
        }
    assert set(tables) == {"model_inputs", "model_outputs"}, "no collected rows"
    inputs, outputs = tables["model_inputs"], tables["model_outputs"]
    assert [[row[f"x{i}"] for i in range(10)] for row in inputs] == request["data"]
    np.testing.assert_allclose([row["prediction"] for row in outputs], r.json(), rtol=1e-12)
    assert {row["correlation_id"] for row in inputs} == {row["correlation_id"] for row in outputs}
    assert list(collected.glob("20*/**/*.parquet")), "no request/response payloads"


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("online/endpoint.yml", ["public_network_access"]),
        ("online/blue-deployment.yml", ["environment", "instance_type"]),
        (
            "online/green-deployment.yml",
            ["environment", "instance_type", "app_insights_enabled"],
        ),
        ("batch/endpoint.yml", ["auth_mode"]),
        ("batch/torch/deployment.yml", ["environment", "compute"]),
        ("batch/mlflow/deployment.yml", ["compute"]),
    ],
)
def test_strict_refuses_the_azure_fields_naming_each(
    gateway: Gateway, samples: Path, path: str, fields: list[str]
) -> None:
    group = ["batch"] if path.startswith("batch/") else []
    kind = "endpoint" if path.endswith("endpoint.yml") else "deployment"
    code, out = gateway.cli(*group, kind, "create", "-f", str(samples / path), "--strict", ok=False)
    assert code != 0
    for field in fields:
        assert f"field '{field}': not used by servegate" in out, out
    assert "refused in strict mode" in out


def test_batch_files_create_unchanged_and_run_azure_style(
    gateway: Gateway, samples: Path, tmp_path: Path
) -> None:
    batch = samples / "batch"
    _, out = gateway.cli("batch", "endpoint", "create", "-f", str(batch / "endpoint.yml"))
    assert [w.split(":")[0] for w in warnings_of(out)] == ["auth_mode"]
    _, out = gateway.cli(
        "batch", "deployment", "create", "-f", str(batch / "torch" / "deployment.yml")
    )
    found = warnings_of(out)
    assert [w.split(":")[0] for w in found] == ["environment", "compute"]
    assert found[1].startswith(COMPUTE)
    _, out = gateway.cli(
        "batch", "deployment", "create", "-f", str(batch / "mlflow" / "deployment.yml")
    )
    assert [w.split(":")[0] for w in warnings_of(out)] == ["compute"]
    # Azure's resources.instance_count and settings are honoured; the first deployment
    # is the default.
    _, out = gateway.cli(
        "batch",
        "deployment",
        "show",
        "-e",
        "digits-batch",
        "-n",
        "classifier-mlflow",
        "-o",
        "tsv",
        "--query",
        "[compute.instance_count, settings.mini_batch_size]",
    )
    assert out.split() == ["2", "2"]
    _, out = gateway.cli(
        "batch",
        "endpoint",
        "show",
        "-n",
        "digits-batch",
        "-o",
        "tsv",
        "--query",
        "defaults.deployment_name",
    )
    assert out.strip() == "torch-dpl"

    # Azure's invoke flags: -n, --input-type, --output-path.
    gateway.cli(
        "batch",
        "invoke",
        "-n",
        "digits-batch",
        "--input",
        str(batch / "torch" / "digits"),
        "--input-type",
        "uri_folder",
        "--output-path",
        str(tmp_path / "digits"),
        "--wait",
    )
    with (tmp_path / "digits" / "predictions.csv").open() as predictions:
        rows = list(csv.DictReader(predictions))
    assert len(rows) == 12 and {r["file"] for r in rows} == {
        f"digit-{i:02d}.npy" for i in range(12)
    }
    gateway.cli(
        "batch",
        "invoke",
        "-n",
        "digits-batch",
        "--deployment-name",
        "classifier-mlflow",
        "--input",
        str(batch / "mlflow" / "heart-unlabeled"),
        "--output-path",
        str(tmp_path / "heart"),
        "--wait",
    )
    assert len((tmp_path / "heart" / "predictions.csv").read_text().splitlines()) == 1 + 150
    # For a gateway on another host the CLI uploads local inputs first (forced here: this
    # gateway is local), with the same result read from the gateway's copy.
    _, out = gateway.cli(
        "batch",
        "invoke",
        "-n",
        "digits-batch",
        "--deployment-name",
        "classifier-mlflow",
        "--input",
        str(batch / "mlflow" / "heart-unlabeled"),
        "--output-path",
        str(tmp_path / "uploaded"),
        "--upload",
        "--wait",
    )
    assert f"to the gateway: {gateway.home}" in out
    assert (tmp_path / "uploaded" / "predictions.csv").read_text().count("\n") == 1 + 150


def test_the_azure_output_layout_has_no_header_and_only_what_run_returned(
    gateway: Gateway, samples: Path, tmp_path: Path
) -> None:
    batch = samples / "batch"
    gateway.cli(
        "batch", "endpoint", "create", "-f", str(batch / "endpoint.yml"), "-n", "azure-layout"
    )
    gateway.cli(
        "batch",
        "deployment",
        "create",
        "-f",
        str(batch / "torch" / "deployment.yml"),
        "-e",
        "azure-layout",
        "--set",
        "settings.output_layout=azure",
    )
    _, out = gateway.cli(
        "batch",
        "invoke",
        "-n",
        "azure-layout",
        "--input",
        str(batch / "torch" / "digits"),
        "--output-path",
        str(tmp_path / "out"),
        "-o",
        "tsv",
        "--query",
        "id",
    )
    job = out.split()[0]
    # --follow prints the runner's log as it grows and returns once the job has ended.
    _, log = gateway.cli("batch", "logs", job, "--follow")
    assert f"job {job} completed" in log, log
    with (tmp_path / "out" / "predictions.csv").open() as predictions:
        rows = list(csv.reader(predictions))
    # file, class, probability: what run() returned, as Azure writes it.
    assert len(rows) == 12 and all(len(row) == 3 for row in rows)
    assert {row[0] for row in rows} == {f"digit-{i:02d}.npy" for i in range(12)}
    assert all(0 <= int(row[1]) < 10 and 0 < float(row[2]) <= 1 for row in rows)


def test_a_scoring_script_over_a_folder_gets_file_paths_as_in_azure(
    gateway: Gateway, samples: Path, tmp_path: Path
) -> None:
    """Azure's custom MLflow driver: run(mini_batch) gets the mini-batch's file paths,
    mini_batch_size counts files (3 CSV files, 2 a mini-batch: 2 mini-batches), init()
    finds the registered folder under AZUREML_MODEL_DIR."""
    batch = samples / "batch"
    endpoint = "digits-batch-custom"
    # As Azure's deploy script registers it: `az ml model create --type mlflow_model`.
    gateway.cli(
        "model",
        "create",
        "--name",
        "heart-classifier-mlflow",
        "--type",
        "mlflow_model",
        "--path",
        str(batch / "mlflow" / "model"),
    )
    gateway.cli("batch", "endpoint", "create", "-f", str(batch / "endpoint.yml"), "-n", endpoint)
    gateway.cli(
        "batch",
        "deployment",
        "create",
        "-f",
        str(batch / "mlflow-custom" / "deployment.yml"),
        "-e",
        endpoint,
        "--set-default",
    )
    gateway.cli(
        "batch",
        "invoke",
        "-n",
        endpoint,
        "--input",
        str(batch / "mlflow" / "heart-unlabeled"),
        "--input-type",
        "uri_folder",
        "--output-path",
        str(tmp_path / "out"),
        "--wait",
    )
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["state"] == "completed", summary
    assert summary["mini_batches"] == {"total": 2, "done": 2, "failed": 0, "pending": 0}
    assert summary["items"]["total"] == 3  # files
    with (tmp_path / "out" / "predictions.csv").open() as predictions:
        rows = list(csv.DictReader(predictions))
    assert len(rows) == 150
    assert {r["filename"] for r in rows} == {f"part-{i}.csv" for i in range(3)}
    assert {r["prediction"] for r in rows} <= {"0", "1"}
