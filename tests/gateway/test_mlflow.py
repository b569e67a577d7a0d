"""MLflow model folders deployed without a scoring script: a native flavor (scikit-learn)
in its own runtime, python_function and pytorch models through mlflow.pyfunc in a worker
process, all saved by MLflow here; missing requirements are warnings at create."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import Gateway, write_yaml
from tests.tabular_models import FEATURES, frame, numbers, three_classes


def create(gw: Gateway, tmp_path: Path, endpoint: str, model: str) -> str:
    gw.create_endpoint(tmp_path, endpoint, "auth_mode: none\n")
    spec = write_yaml(
        tmp_path / f"{endpoint}.yml", f"name: blue\nendpoint_name: {endpoint}\nmodel: {model}\n"
    )
    return gw.cli("deployment", "create", "--all-traffic", "-f", str(spec))[1]


def split(x: np.ndarray) -> dict[str, Any]:
    return {"input_data": {"columns": FEATURES, "data": x.tolist()}}


@pytest.fixture(scope="module")
def sklearn_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    x = frame(numbers(300))
    model = LogisticRegression().fit(x, three_classes(x.to_numpy()))
    folder = tmp_path_factory.mktemp("mlflow") / "churn"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # see below
        mlflow.sklearn.save_model(
            model, folder, signature=infer_signature(x, model.predict(x)), input_example=x.head(2)
        )
    return folder, model


def test_an_mlflow_sklearn_model_is_served_by_the_sklearn_runtime(
    gateway: Gateway, tmp_path: Path, unique_name: str, sklearn_model: tuple[Path, Any]
) -> None:
    folder, model = sklearn_model
    create(gateway, tmp_path, unique_name, f"{{type: mlflow_model, path: {folder}}}")
    stored = json.loads(gateway.cli("deployment", "show", "-e", unique_name, "-n", "blue")[1])
    assert stored["runtime"] == "mlflow" and stored["host"] == "process"
    x = numbers(5, seed=8)
    r = httpx.post(f"{gateway.url}/endpoints/{unique_name}/score", json=split(x))
    assert r.status_code == 200, r.text
    assert r.json()["label"] == model.predict(frame(x)).tolist()
    np.testing.assert_allclose(r.json()["probabilities"], model.predict_proba(frame(x)), rtol=1e-9)
    # Found from its MLmodel file without `type`, with the same default host.
    create(gateway, tmp_path, f"{unique_name}b", f"{{path: {folder}}}")
    shown = gateway.cli("deployment", "show", "-e", f"{unique_name}b", "-n", "blue")[1]
    assert json.loads(shown)["runtime"] == "mlflow" and json.loads(shown)["host"] == "process"
    r = httpx.post(f"{gateway.url}/endpoints/{unique_name}b/score", json=split(x))
    assert r.status_code == 200 and r.json()["label"] == model.predict(frame(x)).tolist()


def test_a_pyfunc_model_runs_through_mlflow_in_a_worker_process(
    gateway: Gateway, tmp_path: Path, unique_name: str
) -> None:
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models import infer_signature

    class Weighted(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
        def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
            return model_input["age"] + 10 * model_input["income"]

    x = frame(numbers(20))
    folder = tmp_path / "weighted"
    with warnings.catch_warnings():
        # MLflow reads predict's type hints and warns it cannot validate with them.
        warnings.simplefilter("ignore", UserWarning)
        mlflow.pyfunc.save_model(
            folder,
            python_model=Weighted(),
            signature=infer_signature(x, x["age"] + 10 * x["income"]),
        )
    (folder / "requirements.txt").write_text(
        (folder / "requirements.txt").read_text() + "\nservegate-no-such-package==1.2\n"
    )
    out = create(gateway, tmp_path, unique_name, f"{{type: mlflow_model, path: {folder.name}}}")
    assert "requires servegate-no-such-package==1.2, which is not installed here" in out
    rows = numbers(4, seed=2)
    r = httpx.post(f"{gateway.url}/endpoints/{unique_name}/score", json=split(rows))
    assert r.status_code == 200, r.text
    (values,) = r.json().values()
    np.testing.assert_allclose(values, rows[:, 0] + 10 * rows[:, 1], rtol=1e-12)
    # A column missing: 400 naming it.
    r = httpx.post(
        f"{gateway.url}/endpoints/{unique_name}/score",
        json={"input_data": {"columns": FEATURES[:3], "data": rows[:, :3].tolist()}},
    )
    assert r.status_code == 400 and "missing column(s): tenure" in r.json()["error"], r.text


def test_a_pytorch_flavor_model_runs_through_mlflow_pyfunc(
    gateway: Gateway, tmp_path: Path, unique_name: str
) -> None:
    import mlflow.pytorch
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    torch.manual_seed(0)
    net = torch.nn.Linear(len(FEATURES), 2).eval()
    folder = tmp_path / "net"
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(FEATURES)))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 2))]),
    )
    example = numbers(2, seed=3).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        # MLflow's default format (a traced graph) needs an example to trace with.
        mlflow.pytorch.save_model(net, folder, signature=signature, input_example=example)
    create(gateway, tmp_path, unique_name, f"{{type: mlflow_model, path: {folder.name}}}")
    shown = json.loads(gateway.cli("deployment", "show", "-e", unique_name, "-n", "blue")[1])
    assert shown["runtime"] == "mlflow" and shown["host"] == "process"
    x = numbers(3, seed=4).astype(np.float32)
    r = httpx.post(f"{gateway.url}/endpoints/{unique_name}/score", json={"input_data": x.tolist()})
    assert r.status_code == 200, r.text
    (values,) = r.json().values()
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(values, expected, rtol=1e-6)


def test_a_model_whose_own_input_example_fails_is_refused_at_create(
    gateway: Gateway, tmp_path: Path, unique_name: str, sklearn_model: tuple[Path, Any]
) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(sklearn_model[0], folder)
    example = json.loads((folder / "input_example.json").read_text())
    example["columns"][0] = "not-a-feature"
    (folder / "input_example.json").write_text(json.dumps(example))
    gateway.create_endpoint(tmp_path, unique_name)
    spec = write_yaml(
        tmp_path / "bad.yml",
        f"name: blue\nendpoint_name: {unique_name}\nmodel: {{type: mlflow_model, path: broken}}\n",
    )
    code, out = gateway.cli("deployment", "create", "-f", str(spec), ok=False)
    assert code != 0
    assert "broken: its own input_example does not score: unknown column(s) 'not-a-feature'" in out


def test_an_mlflow_model_from_an_older_scikit_learn_loads_with_a_warning_unless_strict(
    gateway: Gateway, tmp_path: Path, unique_name: str, sklearn_model: tuple[Path, Any]
) -> None:
    """Azure ML warns and loads a model saved by another scikit-learn; so does servegate,
    as a no-code batch deployment too; --strict refuses it."""
    import mlflow.sklearn
    import sklearn
    from mlflow.models import infer_signature

    _, model = sklearn_model
    old = tmp_path / "old-churn"
    x = frame(numbers(300))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        # Pickled, as Azure ML's samples are (MLflow 3 saves skops unless told).
        mlflow.sklearn.save_model(
            model,
            old,
            signature=infer_signature(x, model.predict(x)),
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
        )
    current = sklearn.__version__
    aged = "0" * len(current)
    pickled = old / "model.pkl"
    data = pickled.read_bytes()
    assert data.count(current.encode()) >= 1
    pickled.write_bytes(data.replace(current.encode(), aged.encode()))
    code, out = gateway.cli(
        "model",
        "create",
        "-n",
        f"{unique_name}-old",
        "--type",
        "mlflow_model",
        "-p",
        str(old),
        "--strict",
        ok=False,
    )
    assert code != 0 and f"was saved with scikit-learn {aged}" in out, out
    _, out = gateway.cli(
        "model", "create", "-n", f"{unique_name}-old", "--type", "mlflow_model", "-p", str(old)
    )
    assert f"warning: model.pkl was saved with scikit-learn {aged}" in out, out
    # A no-code batch deployment of it scores a folder of CSV files.
    gateway.cli(
        "batch",
        "endpoint",
        "create",
        "-f",
        str(write_yaml(tmp_path / "be.yml", f"name: {unique_name}\n")),
    )
    gateway.cli(
        "batch",
        "deployment",
        "create",
        "--set-default",
        "-f",
        str(
            write_yaml(
                tmp_path / "bd.yml",
                f"name: main\nendpoint_name: {unique_name}\n"
                f"model: azureml:{unique_name}-old@latest\nsettings: {{mini_batch_size: 20}}\n",
            )
        ),
    )
    (tmp_path / "in").mkdir()
    x = frame(numbers(50, seed=3))
    x.to_csv(tmp_path / "in" / "rows.csv", index=False)
    gateway.cli(
        "batch",
        "invoke",
        "-e",
        unique_name,
        "--input",
        str(tmp_path / "in"),
        "--output-path",
        str(tmp_path / "out"),
        "--wait",
    )
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    # Rows, for a model without a scoring script: 50 rows, 20 a mini-batch.
    assert summary["state"] == "completed" and summary["mini_batches"]["total"] == 3, summary
    import csv

    with (tmp_path / "out" / "predictions.csv").open() as predictions:
        labels = [int(float(r["label"])) for r in csv.DictReader(predictions)]
    assert labels == model.predict(x).tolist()
