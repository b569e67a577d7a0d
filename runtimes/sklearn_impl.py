"""The scikit-learn runtime: a fitted estimator or Pipeline saved with skops (`.skops`,
the safe format: only the types skops trusts, the scikit-learn internals reviewed in
REVIEWED_TYPES and those listed in `runtime_options.trusted_types` load), joblib or
pickle (`.joblib`, `.pkl`: a pickle runs code when loaded, so servegate opens one only in
a worker process, never in the gateway).

Outputs: `label` (predict) and, when the estimator has it, `probabilities`
(predict_proba) for a classifier; `prediction` (predict) for anything else;
`runtime_options: {outputs: [...]}` keeps some. A model saved by another scikit-learn
version loads with a warning, as Azure ML loads it (its answers may differ); registering
it with `strict` refuses it.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.base import RuntimeConfig
from runtimes.errors import InferenceFailed, InvalidInput, ModelLoadError
from runtimes.tabular import Columns, TabularRuntime, chosen_outputs, label_array, label_spec
from runtimes.types import Signature, TensorSpec

log = logging.getLogger("servegate.runtime")


#: Files whose loading is unpickling: it runs whatever code the file names, so they are
#: opened only in worker processes (runtimes.isolated), never in the gateway.
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")

#: Types a .skops file may hold beyond skops's own defaults: scikit-learn's fitted
#: internals, each reviewed here to be a data holder whose loading calls nothing the file
#: chooses. An explicit list of types, never a package prefix and never a function: a
#: prefix let `numpy.testing._private.utils.runstring` through (it runs a string).
REVIEWED_TYPES = frozenset(
    {
        "builtins.slice",
        "numpy.dtype",
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.isotonic.IsotonicRegression",
        "sklearn.metrics._dist_metrics.EuclideanDistance64",
        "sklearn.metrics._dist_metrics.ManhattanDistance64",
        "sklearn.metrics._dist_metrics.MinkowskiDistance64",
        "sklearn.neighbors._ball_tree.BallTree",
        "sklearn.neighbors._kd_tree.KDTree",
        "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
        "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
        "sklearn.tree._tree.Tree",
        "sklearn.utils._bunch.Bunch",
    }
)


def loads_code(path: Path, options: Mapping[str, Any]) -> bool:
    """Whether loading the file can run code of the file's choosing: a pickle, or a .skops
    file whose deployment trusts types beyond the reviewed ones."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    listed = options.get("trusted_types") or []
    return any(str(t) not in REVIEWED_TYPES for t in listed)


def _version_warning_class() -> type[Warning] | None:
    try:  # scikit-learn >= 1.3
        from sklearn.exceptions import InconsistentVersionWarning
    except ImportError:  # older ones warn with a plain UserWarning
        return None
    return InconsistentVersionWarning


def _version_note(path: Path, warning: Warning | str) -> str | None:
    """What a scikit-learn version warning means for this file, or None for others."""
    original = getattr(warning, "original_sklearn_version", None)
    current = getattr(warning, "current_sklearn_version", None)
    if original is None:  # scikit-learn < 1.3: only the message says it
        match = re.search(r"from version (\S+) when using version (\S+?)\.?\s", str(warning))
        if match is None:
            return None
        original, current = match[1], match[2]
    return (
        f"{path.name} was saved with scikit-learn {original}; this is {current}, whose "
        f"answers may differ: save it again with {current} or serve it where {original} is "
        "installed"
    )


def load_estimator(path: Path, options: Mapping[str, Any], strict: bool) -> tuple[Any, list[str]]:
    """The estimator in the file and what is worth a warning about it (a model saved by
    another scikit-learn version: loaded, as Azure ML loads it; refused when `strict`)."""
    version_warning = _version_warning_class()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", version_warning or UserWarning)
        try:
            if path.suffix.lower() == ".skops":
                estimator = _load_skops(path, options)
            else:
                import joblib

                estimator = joblib.load(path)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"{path.name} is not a scikit-learn model that loads here: "
                f"{type(exc).__name__}: {exc}"
            ) from None
    notes = list(
        dict.fromkeys(
            note
            for w in caught
            if version_warning is None or isinstance(w.message, version_warning)
            if (note := _version_note(path, w.message)) is not None
        )
    )
    if strict and notes:
        raise ModelLoadError(notes[0])
    return estimator, notes


def _load_skops(path: Path, options: Mapping[str, Any]) -> Any:
    import skops.io as sio

    listed = {str(t) for t in options.get("trusted_types") or []}
    untrusted = sio.get_untrusted_types(file=path)
    unknown = [t for t in untrusted if t not in listed and t not in REVIEWED_TYPES]
    if unknown:
        raise ModelLoadError(
            f"{path.name} holds types that neither skops nor servegate trusts: "
            f"{', '.join(unknown)}; list the ones you trust in runtime_options.trusted_types "
            "(the model is then loaded only in worker processes)"
        )
    return sio.load(path, trusted=untrusted)


def text_columns(estimator: Any) -> dict[str, list[str]]:
    """Columns an encoder inside the model learned strings for (they take BYTES), with
    the strings it knows."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    found: dict[str, list[str]] = {}

    def visit(step: Any, columns: Sequence[Any] | None) -> None:
        if isinstance(step, Pipeline):
            for _, inner in step.steps:
                visit(inner, columns)
                columns = None  # later steps see transformed columns
        elif isinstance(step, ColumnTransformer):
            for _, transformer, selected in getattr(step, "transformers_", []):
                if isinstance(selected, str):
                    selected = [selected]
                if isinstance(transformer, str) or not isinstance(selected, list | tuple):
                    continue
                visit(transformer, [c for c in selected if isinstance(c, str)])
        elif columns is not None and hasattr(step, "categories_"):
            for column, categories in zip(columns, step.categories_, strict=False):
                if np.asarray(categories).dtype.kind in ("O", "U", "S"):
                    found[column] = [str(c) for c in categories]

    visit(estimator, None)
    return found


#: Classifiers whose predict is exactly `classes_[argmax(predict_proba)]` (read in
#: scikit-learn's source): when both outputs are asked for, the model runs once.
_PREDICT_IS_ARGMAX = {
    "LogisticRegression",
    "DecisionTreeClassifier",
    "RandomForestClassifier",
    "ExtraTreesClassifier",
    "GradientBoostingClassifier",
    "HistGradientBoostingClassifier",
}


def _final_step(estimator: Any) -> Any:
    steps = getattr(estimator, "steps", None)
    return _final_step(steps[-1][1]) if steps else estimator


def _describe(estimator: Any, options: Mapping[str, Any]) -> tuple[Columns, Signature]:
    if not hasattr(estimator, "predict"):
        raise ModelLoadError(
            f"the file holds a {type(estimator).__name__}, not an estimator with predict()"
        )
    count = getattr(estimator, "n_features_in_", None)
    if count is None:
        raise ModelLoadError(
            f"the {type(estimator).__name__} is not fitted (it has no n_features_in_)"
        )
    columns = Columns.of(
        getattr(estimator, "feature_names_in_", None), int(count), list(text_columns(estimator))
    )
    classes = getattr(estimator, "classes_", None)
    outputs: list[TensorSpec] = []
    if classes is not None:
        classes = np.asarray(classes)
        outputs.append(label_spec(classes))
        if hasattr(estimator, "predict_proba"):
            outputs.append(TensorSpec("probabilities", "FP64", (-1, len(classes))))
    else:
        targets = int(getattr(estimator, "n_outputs_", 1) or 1)
        outputs.append(TensorSpec("prediction", "FP64", (-1,) if targets == 1 else (-1, targets)))
    return columns, Signature(columns.inputs(), chosen_outputs(outputs, options))


def inspect(path: Path, strict: bool = False) -> tuple[Signature, list[str]]:
    """The file's signature and its warnings (see load_estimator)."""
    estimator, notes = load_estimator(path, {}, strict)
    return _describe(estimator, {})[1], notes


def read_signature(path: Path) -> Signature:
    return inspect(path)[0]


class SklearnRuntime(TabularRuntime):
    def __init__(self, config: RuntimeConfig) -> None:
        path = config.require_model()
        estimator, notes = load_estimator(path, config.options, strict=False)
        for note in notes:
            log.warning("%s", note)
        self._estimator = self._model = estimator
        self._columns, self._signature = _describe(self._estimator, config.options)
        self._label_from_proba = type(_final_step(self._estimator)).__name__ in _PREDICT_IS_ARGMAX

    def categories(self) -> dict[str, list[str]]:
        return text_columns(self._estimator)

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        self._signature.validate(inputs)
        table = self._columns.frame(inputs)
        wanted = output_names or self._signature.output_names
        results: dict[str, np.ndarray] = {}
        try:
            for spec in self._signature.outputs:
                if spec.name not in wanted:
                    continue
                if spec.name == "probabilities":
                    results[spec.name] = np.asarray(
                        self._estimator.predict_proba(table), dtype=np.float64
                    )
                elif spec.name == "label":
                    if self._label_from_proba and "probabilities" in wanted:
                        continue  # below, from the probabilities
                    results[spec.name] = label_array(
                        np.asarray(self._estimator.predict(table)), spec
                    )
                else:
                    results[spec.name] = np.asarray(
                        self._estimator.predict(table), dtype=np.float64
                    )
            if "label" in wanted and "label" not in results:
                classes = np.asarray(self._estimator.classes_)
                label = classes[results["probabilities"].argmax(axis=1)]
                spec = next(t for t in self._signature.outputs if t.name == "label")
                results["label"] = label_array(label, spec)
        except (ValueError, TypeError) as exc:
            # Values the model cannot take (an unknown category, text in a number column).
            raise InvalidInput(f"the model refused the input: {exc}") from None
        except Exception as exc:
            raise InferenceFailed(f"{type(exc).__name__}: {exc}") from None
        return results
