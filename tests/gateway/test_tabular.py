"""scikit-learn, XGBoost and LightGBM models served without a scoring script, online and
in batch, against their own predict/predict_proba in-process."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tritonclient.http as triton

from tests.batch.test_jobs import batch_endpoint, invoke
from tests.conftest import Gateway, write_yaml
from tests.tabular_models import (
    FEATURES,
    TabularModels,
    build,
    frame,
    mixed_frame,
    numbers,
)


@pytest.fixture(scope="session")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> TabularModels:
    return build(tmp_path_factory.mktemp("tabular"))


def deploy(gw: Gateway, tmp_path: Path, models: TabularModels, name: str, endpoint: str) -> str:
    """`endpoint` (no auth) with the model file `name` as its deployment; the score URL."""
    gw.create_endpoint(tmp_path, endpoint, "auth_mode: none\n")
    gw.deploy(tmp_path, endpoint, "blue", models.folder / name)
    return f"{gw.url}/endpoints/{endpoint}/score"


def split(x: np.ndarray, columns: list[str] = FEATURES) -> dict[str, Any]:
    return {"input_data": {"columns": columns, "data": x.tolist()}}


@pytest.mark.parametrize("name", ["pipeline.skops", "pipeline.joblib"])
def test_a_sklearn_pipeline_on_named_columns_answers_as_in_process(
    gateway: Gateway, tmp_path: Path, tabular: TabularModels, unique_name: str, name: str
) -> None:
    url = deploy(gateway, tmp_path, tabular, name, unique_name)
    model, x = tabular.fitted[name], numbers(7, seed=5)
    want_label, want_proba = model.predict(frame(x)), model.predict_proba(frame(x))
    # The same rows as pandas' split orientation (columns in another order), as rows in
    # the model's order, and keyed by column.
    shuffled = FEATURES[::-1]
    bodies = [
        split(x[:, ::-1], shuffled),
        {"input_data": x.tolist()},
        {"input_data": {c: x[:, i].tolist() for i, c in enumerate(FEATURES)}},
    ]
    for body in bodies:
        r = httpx.post(url, json=body)
        assert r.status_code == 200, r.text
        assert r.json()["label"] == want_label.tolist()
        np.testing.assert_allclose(r.json()["probabilities"], want_proba, rtol=1e-9)
    # Open Inference Protocol, one tensor per column, JSON and binary.
    client = triton.InferenceServerClient(gateway.host_port)
    for binary in (False, True):
        items = []
        for i, column in enumerate(FEATURES):
            item = triton.InferInput(column, [len(x)], "FP64")
            item.set_data_from_numpy(np.ascontiguousarray(x[:, i]), binary_data=binary)
            items.append(item)
        answer = client.infer(unique_name, items)
        np.testing.assert_array_equal(answer.as_numpy("label"), want_label)
        np.testing.assert_allclose(answer.as_numpy("probabilities"), want_proba, rtol=1e-9)
    metadata = httpx.get(f"{gateway.url}/v2/models/{unique_name}").json()
    assert [i["name"] for i in metadata["inputs"]] == FEATURES
    assert metadata["platform"] == "sklearn"


def test_a_pipeline_with_text_and_numbers(
    gateway: Gateway, tmp_path: Path, tabular: TabularModels, unique_name: str
) -> None:
    url = deploy(gateway, tmp_path, tabular, "colored.skops", unique_name)
    model, table = tabular.fitted["colored.skops"], mixed_frame(6, seed=9)
    rows = table.values.tolist()
    r = httpx.post(url, json={"input_data": {"columns": list(table.columns), "data": rows}})
    assert r.status_code == 200, r.text
    assert r.json()["label"] == model.predict(table).tolist()
    np.testing.assert_allclose(r.json()["probabilities"], model.predict_proba(table), rtol=1e-9)
    # Numbers where text is expected, and text where numbers are: 400 naming the column.
    rows[0][2] = 7
    r = httpx.post(url, json={"input_data": {"columns": list(table.columns), "data": rows}})
    assert r.status_code == 400 and "'color'" in r.json()["error"], r.text
    rows[0][2], rows[1][0] = "red", "tall"
    r = httpx.post(url, json={"input_data": {"columns": list(table.columns), "data": rows}})
    assert r.status_code == 400 and "'x1'" in r.json()["error"], r.text


@pytest.mark.parametrize(
    ("name", "outputs"),
    [
        ("ridge.pkl", ["prediction"]),
        ("binary.json", ["label", "probabilities"]),
        ("regressor.ubj", ["prediction"]),
        ("multiclass.txt", ["label", "probabilities"]),
    ],
)
def test_boosters_and_array_models_answer_as_in_process(
    gateway: Gateway,
    tmp_path: Path,
    tabular: TabularModels,
    unique_name: str,
    name: str,
    outputs: list[str],
) -> None:
    url = deploy(gateway, tmp_path, tabular, name, unique_name)
    model, x = tabular.fitted[name], numbers(9, seed=6)
    named = name == "binary.json"  # trained on a DataFrame: one input per column
    reference = frame(x) if named else x
    body = split(x) if named else {"input_data": x.tolist()}
    r = httpx.post(url, json=body)
    assert r.status_code == 200, r.text
    assert sorted(r.json()) == sorted(outputs)
    if "probabilities" in outputs:
        np.testing.assert_allclose(
            r.json()["probabilities"], model.predict_proba(reference), rtol=1e-6
        )
        assert r.json()["label"] == model.predict(reference).tolist()
    else:
        np.testing.assert_allclose(r.json()["prediction"], model.predict(reference), rtol=1e-6)
    # Plain-array models take named columns positionally too.
    if not named:
        r = httpx.post(url, json=split(x, ["a", "b", "c", "d"]))
        assert r.status_code == 200, r.text
    # The Open Inference Protocol with binary tensors (tritonclient's default).
    client = triton.InferenceServerClient(gateway.host_port)
    if named:
        items = [triton.InferInput(c, [len(x)], "FP64") for c in FEATURES]
        for i, item in enumerate(items):
            item.set_data_from_numpy(np.ascontiguousarray(x[:, i]))
    else:
        items = [triton.InferInput("input", list(x.shape), "FP64")]
        items[0].set_data_from_numpy(x)
    answer = client.infer(unique_name, items)
    first = outputs[-1]
    want = model.predict_proba(reference) if first == "probabilities" else model.predict(reference)
    np.testing.assert_allclose(answer.as_numpy(first), want, rtol=1e-6)


def test_bad_tables_are_400_naming_the_column(
    gateway: Gateway, tmp_path: Path, tabular: TabularModels, unique_name: str
) -> None:
    url = deploy(gateway, tmp_path, tabular, "pipeline.skops", unique_name)
    x = numbers(2)
    for body, message in (
        (split(x, ["age", "income", "score", "tenur"]), "unknown column(s) 'tenur'"),
        (split(x[:, :3], FEATURES[:3]), "missing column(s): tenure"),
        ({"input_data": [[1.0, 2.0, 3.0]]}, "row 0 has 3 values; the model takes 4 columns"),
        (
            {"input_data": {"columns": FEATURES, "data": [[1, 2, "x", 4]]}},
            "input 'score': expected numbers",
        ),
    ):
        r = httpx.post(url, json=body)
        assert r.status_code == 400, r.text
        assert message in r.json()["error"], r.text


def doubled(x: Any) -> Any:
    return x * 2


def custom_function_model(tmp_path: Path) -> bytes:
    """A skops file that names a function of this module (code skops must not run
    unasked)."""
    import skops.io as sio
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    x = numbers(50)
    model = make_pipeline(FunctionTransformer(doubled), Ridge()).fit(x, x[:, 0])
    sio.dump(model, tmp_path / "made.skops")
    return (tmp_path / "made.skops").read_bytes()


def test_a_model_that_cannot_load_is_refused_at_create(
    gateway: Gateway, tmp_path: Path, tabular: TabularModels, unique_name: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name)
    cases = {
        "broken.joblib": (b"not a pickle at all", "is not a scikit-learn model that loads here"),
        "broken.json": (b'{"learner": 3}', "is not an XGBoost model that loads here"),
        "broken.txt": (b"tree\nversion=v4\n", "is not a LightGBM model that loads here"),
        "estimator.pkl": (pickle.dumps({"not": "a model"}), "not an estimator with predict()"),
        "custom.skops": (
            custom_function_model(tmp_path),
            "holds types that neither skops nor servegate trusts: "
            "tests.gateway.test_tabular.doubled",
        ),
    }
    for filename, (content, message) in cases.items():
        path = tmp_path / filename
        path.write_bytes(content)
        spec = write_yaml(
            tmp_path / "bad.yml",
            f"name: bad\nendpoint_name: {unique_name}\nmodel: {{path: {filename}}}\n",
        )
        code, out = gateway.cli("deployment", "create", "-f", str(spec), ok=False)
        assert code != 0 and message in out, (filename, out)


def test_a_model_saved_by_another_scikit_learn_loads_with_a_warning_unless_strict(
    gateway: Gateway, tmp_path: Path, tabular: TabularModels, unique_name: str
) -> None:
    """As Azure ML loads it (scikit-learn only warns); --strict refuses it."""
    gateway.create_endpoint(tmp_path, unique_name)
    # The pickle names the version it was saved with; make it an old one.
    data = (tabular.folder / "ridge.pkl").read_bytes()
    import sklearn

    current = sklearn.__version__.encode()
    old = b"0" * len(current)
    assert data.count(current) == 1
    (tmp_path / "old.pkl").write_bytes(data.replace(current, old))
    warning = f"old.pkl was saved with scikit-learn {old.decode()}; this is {current.decode()}"
    code, out = gateway.cli(
        "model",
        "register",
        "-n",
        f"{unique_name}-old",
        "-p",
        str(tmp_path / "old.pkl"),
        "--strict",
        ok=False,
    )
    assert code != 0 and warning in out, out
    _, out = gateway.cli("model", "list", "-n", f"{unique_name}-old")
    assert json.loads(out) == []
    spec = write_yaml(
        tmp_path / "old.yml", f"name: old\nendpoint_name: {unique_name}\nmodel: {{path: old.pkl}}\n"
    )
    code, out = gateway.cli("deployment", "create", "-f", str(spec), "--strict", ok=False)
    assert code != 0 and warning in out, out
    _, out = gateway.cli("deployment", "create", "-f", str(spec), "--all-traffic")
    assert f"warning: {warning}" in out
    x = numbers(3)
    r = httpx.post(
        f"{gateway.url}/endpoints/{unique_name}/score",
        json={"input_data": x.tolist()},
        headers=gateway.auth(unique_name),
    )
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["prediction"], tabular.fitted["ridge.pkl"].predict(x))
    # A pickle runs code when loaded: the gateway put it in a worker process.
    _, out = gateway.cli("deployment", "show", "-n", "old", "-e", unique_name)
    assert json.loads(out)["host"] == "process"


@pytest.mark.parametrize("name", ["binary.json", "pipeline.skops", "multiclass.txt"])
def test_a_batch_job_answers_as_in_process(
    gateway: Gateway, tmp_path: Path, tabular: TabularModels, unique_name: str, name: str
) -> None:
    """Named columns map to the features by name (extra columns are left alone); a plain
    array model takes the numeric columns side by side."""
    batch_endpoint(gateway, tmp_path, tmp_path, unique_name, model=tabular.folder / name)
    x = numbers(450, seed=11)
    named = name != "multiclass.txt"
    columns = {c: x[:, i] for i, c in enumerate(FEATURES)}
    table = pa.table(columns | {"id": np.arange(450)} if named else columns)
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "rows.parquet")
    invoke(gateway, unique_name, str(tmp_path / "in"), str(tmp_path / "out"))
    out = pq.read_table(tmp_path / "out" / "predictions.parquet")
    model, reference = tabular.fitted[name], frame(x) if named else x
    np.testing.assert_array_equal(out["label"].to_numpy(), model.predict(reference))
    got = np.stack(out["probabilities"].to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(got, model.predict_proba(reference), rtol=1e-6)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["state"] == "completed"


def test_convert_onnx_serves_with_onnxruntime_after_checking_the_conversion(
    gateway: Gateway, tmp_path: Path, tabular: TabularModels, unique_name: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name, "auth_mode: none\n")
    gateway.deploy(
        tmp_path,
        unique_name,
        "blue",
        tabular.folder / "colored.skops",
        extra_yaml="runtime_options: {convert: onnx}\n",
    )
    _, shown = gateway.cli("deployment", "show", "-e", unique_name, "-n", "blue")
    stored = json.loads(shown)
    assert stored["runtime"] == "onnx"
    assert stored["runtime_options"]["converted_from"] == "sklearn"
    model, table = tabular.fitted["colored.skops"], mixed_frame(8, seed=12)
    body = {"input_data": {"columns": list(table.columns), "data": table.values.tolist()}}
    r = httpx.post(f"{gateway.url}/endpoints/{unique_name}/score", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["label"] == model.predict(table).tolist()
    np.testing.assert_allclose(r.json()["probabilities"], model.predict_proba(table), atol=1e-5)
    metadata = httpx.get(f"{gateway.url}/v2/models/{unique_name}").json()
    assert metadata["platform"] == "onnxruntime_onnx"


def test_convert_onnx_is_refused_with_the_difference_when_it_disagrees(
    gateway: Gateway, tmp_path: Path, tabular: TabularModels, unique_name: str
) -> None:
    # Values near 1e8 lose their units in the FP32 the converted model computes in.
    gateway.create_endpoint(tmp_path, unique_name)
    (tmp_path / "ridge.pkl").write_bytes((tabular.folder / "ridge.pkl").read_bytes())
    spec = write_yaml(
        tmp_path / "convert.yml",
        f"name: blue\nendpoint_name: {unique_name}\nmodel: {{path: ridge.pkl}}\n"
        "runtime_options:\n  convert: onnx\n"
        "  input_example: [[100000003.0, 100000001.0, 300000007.0, 100000005.0]]\n",
    )
    code, out = gateway.cli("deployment", "create", "-f", str(spec), ok=False)
    assert code != 0
    assert "the converted model's 'prediction' differs from the native model's by up to" in out
    assert "convert_tolerance 0.0001" in out


#: KServe's v2 sample request for its sklearn and xgboost servers (iris, as published)
KSERVE_IRIS = {
    "inputs": [
        {
            "name": "input-0",
            "shape": [2, 4],
            "datatype": "FP32",
            "data": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]],
        }
    ]
}


@pytest.mark.parametrize("name", ["regressor.ubj", "ridge.pkl"])
def test_kserves_v2_sample_requests_score_unchanged(
    gateway: Gateway, tmp_path: Path, tabular: TabularModels, unique_name: str, name: str
) -> None:
    """A one-input table model takes KServe's `input-0` with FP32 data (the model's input
    is `input`, FP64) and answers `output-0` when asked for it; other mismatches stay 400s
    naming what is wrong."""
    deploy(gateway, tmp_path, tabular, name, unique_name)
    url = f"{gateway.url}/v2/models/{unique_name}/infer"
    rows = np.array(KSERVE_IRIS["inputs"][0]["data"], dtype=np.float32)
    expected = tabular.fitted[name].predict(rows.astype(np.float64))
    r = httpx.post(url, json=KSERVE_IRIS)
    assert r.status_code == 200, r.text
    (output,) = r.json()["outputs"]
    np.testing.assert_allclose(output["data"], expected, rtol=1e-5)
    # iris_input_v2_binary.json: output-0, as binary.
    client = triton.InferenceServerClient(gateway.host_port)
    item = triton.InferInput("input-0", [2, 4], "FP32")
    item.set_data_from_numpy(rows)
    answer = client.infer(
        unique_name, [item], outputs=[triton.InferRequestedOutput("output-0", binary_data=True)]
    )
    np.testing.assert_allclose(answer.as_numpy("output-0"), expected, rtol=1e-5)
    # What cannot be taken safely stays a precise 400.
    for change, message in (
        ({"datatype": "BYTES", "data": ["a"] * 8}, "expected datatype FP64, received BYTES"),
        ({"shape": [2, 3], "data": [[1, 2, 3], [4, 5, 6]]}, "expected shape [-1, 4]"),
    ):
        body = {"inputs": [{**KSERVE_IRIS["inputs"][0], **change}]}
        r = httpx.post(url, json=body)
        assert r.status_code == 400 and message in r.json()["error"], r.text
    two = {"inputs": [KSERVE_IRIS["inputs"][0], {**KSERVE_IRIS["inputs"][0], "name": "input-1"}]}
    r = httpx.post(url, json=two)
    assert r.status_code == 400 and "unknown input 'input-0'" in r.json()["error"], r.text
