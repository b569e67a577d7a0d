"""The LightGBM runtime: a Booster saved in LightGBM's model text format (`.txt`,
`save_model`), loaded natively and run with its own `predict`.

Outputs follow the objective, as LightGBM's scikit-learn wrappers answer: `binary` and
`multiclass` give `label` (the class index: a booster does not keep the labels it was
trained with) and `probabilities`; anything else gives `prediction`. Threads: the
gateway's share of the usable CPUs (`runtime_options: {num_threads: N}` to change).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.base import RuntimeConfig
from runtimes.errors import ModelLoadError
from runtimes.tabular import BoosterRuntime, Columns, chosen_outputs, label_spec, threads
from runtimes.types import Signature, TensorSpec


def _load(path: Path) -> Any:
    import lightgbm as lgb

    try:
        return lgb.Booster(model_file=str(path))
    except Exception as exc:
        raise ModelLoadError(
            f"{path.name} is not a LightGBM model that loads here ({exc})"
        ) from None


def _describe(booster: Any, options: Mapping[str, Any]) -> tuple[Columns, Signature, str]:
    dump = booster.dump_model(num_iteration=0)
    objective = str(dump.get("objective", "")).split()[0] if dump.get("objective") else ""
    classes = int(dump.get("num_class", 1))
    if dump.get("pandas_categorical"):
        raise ModelLoadError(
            "the model has pandas categorical features; serve it through the scikit-learn "
            "runtime (an LGBMClassifier in a Pipeline) or convert: onnx"
        )
    columns = Columns.of(booster.feature_name(), booster.num_feature())
    outputs: list[TensorSpec]
    if objective in ("binary", "multiclass", "multiclassova"):
        width = 2 if objective == "binary" else classes
        outputs = [label_spec(None), TensorSpec("probabilities", "FP64", (-1, width))]
    else:
        outputs = [TensorSpec("prediction", "FP64", (-1,))]
    return columns, Signature(columns.inputs(), chosen_outputs(outputs, options)), objective


def read_signature(path: Path) -> Signature:
    return _describe(_load(path), {})[1]


class LightGBMRuntime(BoosterRuntime):
    def __init__(self, config: RuntimeConfig) -> None:
        self._model = _load(config.require_model())
        self._columns, self._signature, objective = _describe(self._model, config.options)
        self._binary = objective == "binary"
        self._threads = threads(config.options)

    def _predict(self, matrix: np.ndarray) -> Any:
        return self._model.predict(matrix, num_threads=self._threads)
