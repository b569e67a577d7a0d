"""Model files that run code when loaded: a .skops file may hold only the types skops and
servegate's reviewed list trust (a function reached by package prefix ran code in the
gateway at registration); a pickle is opened only in another process, never the
gateway's, and its deployment runs in worker processes."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import Gateway, write_yaml


def _register(gateway: Gateway, name: str, path: Path) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/management/models/{name}/versions",
        params={"filename": path.name},
        content=path.read_bytes(),
        headers={"Authorization": f"Bearer {gateway.admin_token}"},
        timeout=120,
    )


def _runstring_skops(path: Path, marker: Path) -> Path:
    """A .skops file whose loading calls numpy.testing._private.utils.runstring (it runs
    a string of Python): the shape of the probe that found the hole."""
    import skops.io._protocol as protocol

    code = f"open({str(marker)!r}, 'w').write(str(__import__('os').getpid()))"
    schema = {
        "__class__": "runstring",
        "__module__": "numpy.testing._private.utils",
        "__loader__": "ConstructorFromReduceNode",
        "__id__": 1,
        "content": {
            "__class__": "tuple",
            "__module__": "builtins",
            "__loader__": "TupleNode",
            "__id__": 2,
            "content": [
                {
                    "__class__": "str",
                    "__module__": "builtins",
                    "__loader__": "JsonNode",
                    "content": json.dumps(code),
                    "is_json": True,
                    "__id__": 3,
                },
                {
                    "__class__": "dict",
                    "__module__": "builtins",
                    "__loader__": "DictNode",
                    "__id__": 4,
                    "content": {},
                    "key_types": {
                        "__class__": "list",
                        "__module__": "builtins",
                        "__loader__": "ListNode",
                        "content": [],
                        "__id__": 5,
                    },
                },
            ],
        },
        "protocol": protocol.PROTOCOL,
    }
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("schema.json", json.dumps(schema))
    return path


def test_a_skops_file_calling_a_numpy_function_is_refused_unrun(
    gateway: Gateway, tmp_path: Path, unique_name: str
) -> None:
    marker = tmp_path / "ran"
    evil = _runstring_skops(tmp_path / "evil.skops", marker)
    r = _register(gateway, unique_name, evil)
    assert r.status_code == 400, r.text
    assert "numpy.testing._private.utils.runstring" in r.json()["error"]
    assert "trusted_types" in r.json()["error"]
    assert not marker.exists()


class _WritesItsPid:
    """A pickle that runs code when loaded: it writes the loading process's id."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        code = f"open({str(self.marker)!r}, 'w').write(str(__import__('os').getpid()))"
        return (exec, (code,))


def test_a_pickle_is_opened_outside_the_gateway(
    gateway: Gateway, tmp_path: Path, unique_name: str
) -> None:
    marker = tmp_path / "loaded-by"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_WritesItsPid(marker)))
    r = _register(gateway, unique_name, evil)
    assert r.status_code == 400 and "not an estimator" in r.json()["error"], r.text
    loader = int(marker.read_text())
    assert loader != gateway.process.pid
    assert not os.path.exists(f"/proc/{loader}")  # the child is gone
    # Nothing of it was registered.
    listed = httpx.get(
        f"{gateway.url}/management/models",
        params={"name": unique_name},
        headers={"Authorization": f"Bearer {gateway.admin_token}"},
    )
    assert listed.json() == []


@pytest.fixture(scope="module")
def forest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """A random forest saved with skops and with joblib, and rows to score."""
    import joblib
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier

    folder = tmp_path_factory.mktemp("forest")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(80, 3))
    model = RandomForestClassifier(n_estimators=4, random_state=0).fit(x, x[:, 0] > 0)
    sio.dump(model, folder / "forest.skops")
    joblib.dump(model, folder / "forest.joblib")
    return folder / "forest.skops", folder / "forest.joblib", x[:5]


def test_a_forest_in_skops_loads_without_trusting_anything(
    gateway: Gateway, tmp_path: Path, unique_name: str, forest: tuple[Path, Path, np.ndarray]
) -> None:
    """sklearn.tree._tree.Tree, which skops does not trust by itself, is reviewed."""
    skops_file, _, rows = forest
    gateway.create_endpoint(tmp_path, unique_name)
    gateway.deploy(tmp_path, unique_name, "blue", skops_file)
    r = httpx.post(
        f"{gateway.url}/endpoints/{unique_name}/score",
        json={"input_data": rows.tolist()},
        headers=gateway.auth(unique_name),
    )
    assert r.status_code == 200, r.text
    _, out = gateway.cli("deployment", "show", "-n", "blue", "-e", unique_name)
    assert json.loads(out)["host"] == "thread"  # a safe format stays in the gateway


def test_a_pickled_model_runs_in_worker_processes_only(
    gateway: Gateway, tmp_path: Path, unique_name: str, forest: tuple[Path, Path, np.ndarray]
) -> None:
    _, joblib_file, rows = forest
    gateway.create_endpoint(tmp_path, unique_name)
    local = tmp_path / "forest.joblib"
    local.write_bytes(joblib_file.read_bytes())
    spec = write_yaml(
        tmp_path / "thread.yml",
        f"name: blue\nendpoint_name: {unique_name}\nmodel: {{path: forest.joblib}}\nhost: thread\n",
    )
    code, out = gateway.cli("deployment", "create", "-f", str(spec), ok=False)
    assert code != 0 and "field 'host'" in out and "worker processes" in out, out
    gateway.deploy(tmp_path, unique_name, "blue", joblib_file)
    _, out = gateway.cli("deployment", "show", "-n", "blue", "-e", unique_name)
    assert json.loads(out)["host"] == "process"
    r = httpx.post(
        f"{gateway.url}/endpoints/{unique_name}/score",
        json={"input_data": rows.tolist()},
        headers=gateway.auth(unique_name),
    )
    assert r.status_code == 200, r.text
