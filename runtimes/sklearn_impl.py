"""The scikit-learn runtime: a fitted estimator or Pipeline saved with skops (`.skops`,
the safe format: only scikit-learn's, NumPy's and SciPy's types load, and those listed in
`runtime_options.trusted_types`), joblib or pickle (`.joblib`, `.pkl`: a pickle
runs code when loaded, so only load your own).

Outputs: `label` (predict) and, when the estimator has it, `probabilities`
(predict_proba) for a classifier; `prediction` (predict) for anything else;
`runtime_options: {outputs: [...]}` keeps some. A model saved by another scikit-learn
version is refused at load (scikit-learn only warns, and its answers may be wrong).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.base import RuntimeConfig
from runtimes.errors import InferenceFailed, InvalidInput, ModelLoadError
from runtimes.tabular import Columns, TabularRuntime, chosen_outputs, label_array, label_spec
from runtimes.types import Signature, TensorSpec


def _load(path: Path, options: Mapping[str, Any]) -> Any:
    from sklearn.exceptions import InconsistentVersionWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", InconsistentVersionWarning)
        try:
            if path.suffix.lower() == ".skops":
                return _load_skops(path, options)
            import joblib

            return joblib.load(path)
        except InconsistentVersionWarning as exc:
            raise ModelLoadError(
                f"{path.name} was saved with scikit-learn {exc.original_sklearn_version}; this "
                f"is {exc.current_sklearn_version}, whose answers may differ: save it again "
                f"with {exc.current_sklearn_version} or serve it where "
                f"{exc.original_sklearn_version} is installed"
            ) from None
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"{path.name} is not a scikit-learn model that loads here: "
                f"{type(exc).__name__}: {exc}"
            ) from None


#: Packages whose classes a skops file may hold without being listed: the libraries the
#: model runs on (skops itself trusts only a subset of scikit-learn's estimators).
TRUSTED_PACKAGES = ("sklearn.", "numpy.", "scipy.")


def _load_skops(path: Path, options: Mapping[str, Any]) -> Any:
    import skops.io as sio

    listed = list(options.get("trusted_types") or [])
    untrusted = sio.get_untrusted_types(file=path)
    unknown = [t for t in untrusted if t not in listed and not t.startswith(TRUSTED_PACKAGES)]
    if unknown:
        raise ModelLoadError(
            f"{path.name} holds types that are not scikit-learn's, NumPy's or SciPy's: "
            f"{', '.join(unknown)}; list the ones you trust in runtime_options.trusted_types"
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


def read_signature(path: Path) -> Signature:
    return _describe(_load(path, {}), {})[1]


class SklearnRuntime(TabularRuntime):
    def __init__(self, config: RuntimeConfig) -> None:
        path = config.require_model()
        self._estimator = self._model = _load(path, config.options)
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
