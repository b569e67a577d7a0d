"""The XGBoost runtime: a Booster saved with `save_model` (`.json`, `.ubj`), loaded
natively and run with `inplace_predict` (no DMatrix per request).

The outputs follow the objective, as XGBoost's scikit-learn wrappers answer:
`binary:logistic` and `multi:softprob` give `label` and `probabilities`,
`multi:softmax` and `binary:hinge` give `label`, `binary:logitraw` gives `margin`, and
regression, counts, survival and ranking give `prediction`. A booster knows class
indices, not the labels it was trained with: `label` is the index. Threads: the
gateway's share of the usable CPUs (`runtime_options: {num_threads: N}` to change).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.base import RuntimeConfig
from runtimes.errors import ModelLoadError
from runtimes.tabular import (
    BoosterRuntime,
    Columns,
    chosen_outputs,
    first_line,
    label_spec,
    threads,
)
from runtimes.types import Signature, TensorSpec

#: objectives whose answer is one probability (of class 1) per row
_BINARY_PROBABILITY = {"binary:logistic"}
_LABEL_ONLY = {"multi:softmax", "binary:hinge"}


def _load(path: Path) -> Any:
    import xgboost as xgb

    try:
        return xgb.Booster(model_file=str(path))
    except Exception as exc:
        raise ModelLoadError(
            f"{path.name} is not an XGBoost model that loads here ({first_line(exc)})"
        ) from None


def _describe(booster: Any, options: Mapping[str, Any]) -> tuple[Columns, Signature, str, int]:
    config = json.loads(booster.save_config())["learner"]
    objective = config["objective"]["name"]
    params = config["learner_model_param"]
    classes = int(params.get("num_class", "0") or 0)
    targets = int(params.get("num_target", "1") or 1)
    if any(t == "c" for t in booster.feature_types or []):
        raise ModelLoadError(
            "the model has categorical features (enable_categorical); serve it through the "
            "scikit-learn runtime (an XGBClassifier in a Pipeline) or convert: onnx"
        )
    columns = Columns.of(booster.feature_names, booster.num_features())
    outputs: list[TensorSpec]
    if objective in _BINARY_PROBABILITY or objective == "multi:softprob":
        width = 2 if objective in _BINARY_PROBABILITY else classes
        outputs = [label_spec(None), TensorSpec("probabilities", "FP64", (-1, width))]
    elif objective in _LABEL_ONLY:
        outputs = [label_spec(None)]
    elif objective == "binary:logitraw":
        outputs = [TensorSpec("margin", "FP64", (-1,))]
    else:
        outputs = [TensorSpec("prediction", "FP64", (-1,) if targets == 1 else (-1, targets))]
    signature = Signature(columns.inputs(), chosen_outputs(outputs, options))
    return columns, signature, objective, classes


def read_signature(path: Path) -> Signature:
    return _describe(_load(path), {})[1]


class XGBoostRuntime(BoosterRuntime):
    def __init__(self, config: RuntimeConfig) -> None:
        booster = _load(config.require_model())
        self._columns, self._signature, objective, _ = _describe(booster, config.options)
        self._binary = objective in _BINARY_PROBABILITY
        self._label_only = objective in _LABEL_ONLY
        booster.set_param({"nthread": threads(config.options)})
        best = booster.attr("best_iteration")
        # As XGBoost's own predict: a model trained with early stopping answers with the
        # trees up to its best iteration.
        self._iterations = (0, int(best) + 1) if best is not None else (0, 0)
        self._model = booster

    def _predict(self, matrix: np.ndarray) -> Any:
        return self._model.inplace_predict(
            matrix, iteration_range=self._iterations, validate_features=False
        )
