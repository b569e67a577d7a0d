"""Python scoring scripts, Azure ML style: `init()` once per instance, then
`run(raw_data)` per request with the request body as text; the return value
is the JSON answer.

`SERVEGATE_MODEL_DIR` (and `AZUREML_MODEL_DIR`, for scripts written for Azure
ML) point at the folder holding the deployment's model file, if it has one.
An exception in `run` becomes `InferenceFailed` (424 with Azure's headers) with
the script's message; it never takes the gateway down. Scripts run in worker
processes by default (`host: process`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import orjson

from runtimes.base import RuntimeConfig
from runtimes.errors import InferenceFailed, InvalidInput, ModelLoadError
from runtimes.types import Signature

EMPTY = Signature((), ())


def read_signature(path: Path) -> Signature:
    return EMPTY


def _load_module(code_dir: Path, script: str) -> ModuleType:
    path = code_dir / script
    if not path.is_file():
        raise ModelLoadError(f"scoring script '{script}' not found in {code_dir}")
    # A unique module name per code folder: two deployments' score.py never clash.
    name = "servegate_score_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import scoring script {path}")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(code_dir))  # let the script import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ModelLoadError(
            f"scoring script {script} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    return module


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class ScriptRuntime:
    def __init__(self, config: RuntimeConfig) -> None:
        if config.code_dir is None or config.scoring_script is None:
            raise ModelLoadError("a scoring script needs code_configuration (code, scoring_script)")
        model_dir = str(config.model_path.parent) if config.model_path else str(config.code_dir)
        os.environ["SERVEGATE_MODEL_DIR"] = model_dir
        os.environ["AZUREML_MODEL_DIR"] = model_dir
        module = _load_module(config.code_dir, config.scoring_script)
        run = getattr(module, "run", None)
        if not callable(run):
            raise ModelLoadError(f"scoring script {config.scoring_script} defines no run(raw_data)")
        init = getattr(module, "init", None)
        if callable(init):
            try:
                init()
            except Exception as exc:
                raise ModelLoadError(
                    f"init() of {config.scoring_script} raised {type(exc).__name__}: {exc}"
                ) from exc
        self._run = run
        self._signature = config.signature or EMPTY

    @property
    def signature(self) -> Signature:
        return self._signature

    def score(self, body: bytes) -> bytes:
        try:
            raw = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"request body is not UTF-8 text: {exc}") from None
        try:
            result = self._run(raw)
        except Exception as exc:
            raise InferenceFailed(f"scoring script raised {type(exc).__name__}: {exc}") from exc
        try:
            return orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY, default=_json_default)
        except TypeError as exc:
            raise InferenceFailed(
                f"scoring script returned a value that is not JSON: {exc}"
            ) from exc

    def run_batch(self, mini_batch: Any) -> Any:
        """A batch scoring script's `run(mini_batch)`: a list of file paths or a table;
        returns what the script returns (a list, a DataFrame or a pyarrow Table)."""
        try:
            return self._run(mini_batch)
        except Exception as exc:
            raise InferenceFailed(f"scoring script raised {type(exc).__name__}: {exc}") from exc

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        raise InvalidInput("a scoring script takes the raw request body; use /score")

    def close(self) -> None:
        pass
