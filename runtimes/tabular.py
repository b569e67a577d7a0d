"""What the tabular runtimes (scikit-learn, XGBoost, LightGBM) share: the signature of
a model trained on a table, and the table a request becomes.

A model trained on named columns (a DataFrame) takes one input per column, each a 1-D
tensor of that column's values: FP64 for numbers, BYTES for text (a column an encoder
learned strings for). So a request can send one tensor per column (the Open Inference
Protocol, as MLServer's pandas codec does), name its columns in `input_data` (pandas'
split orientation, `{"columns": [...], "data": [[...]]}`, as Azure ML's MLflow
deployments accept), or list rows in the model's column order; and a batch job's
Parquet or CSV columns map to the model's by name. A model trained on a plain array
takes one input, `input` [-1, n_features] FP64.

Outputs are named as Azure ML's MLflow deployments and Triton's FIL backend users
expect them: `label` (predict: the class) and `probabilities` (predict_proba) for a
classifier, `prediction` for anything else.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtimes.errors import InferenceFailed, InvalidInput, ModelLoadError
from runtimes.types import Signature, TensorSpec

#: The input of a model trained on a plain array.
ARRAY_INPUT = "input"
#: Names frameworks give features they were not told the names of.
_GENERATED_NAMES = re.compile(r"(Column_|f)\d+")


@dataclass(frozen=True)
class Columns:
    """A model's input table: its feature names (None: a plain array) and count, and
    which columns hold text."""

    names: tuple[str, ...] | None
    count: int
    text: frozenset[str] = frozenset()

    @classmethod
    def of(cls, names: Sequence[str] | None, count: int, text: Sequence[str] = ()) -> Columns:
        """`names` as the framework reports them; generated ones (`f0`, `Column_0`) mean
        the model was trained on a plain array."""
        listed = tuple(str(n) for n in names) if names is not None and len(names) else None
        if listed is not None and all(_GENERATED_NAMES.fullmatch(n) for n in listed):
            listed = None
        if listed is not None and len(listed) != count:
            raise ModelLoadError(
                f"the model names {len(listed)} features but takes {count}; it cannot be served"
            )
        return cls(listed, count, frozenset(text))

    def inputs(self) -> tuple[TensorSpec, ...]:
        if self.names is None:
            return (TensorSpec(ARRAY_INPUT, "FP64", (-1, self.count)),)
        return tuple(
            TensorSpec(name, "BYTES" if name in self.text else "FP64", (-1,)) for name in self.names
        )

    def matrix(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The request as a 2-D float array in the model's column order (numeric models)."""
        if self.names is None:
            return inputs[ARRAY_INPUT]
        # Stacked as rows, then transposed: one sequential copy, a column-major matrix the
        # boosters read as fast (measured: 0.24 ms against column_stack's 1.9 ms for 10,000
        # rows of 32 columns).
        return np.vstack([inputs[name] for name in self.names]).T

    def frame(self, inputs: Mapping[str, np.ndarray]) -> Any:
        """The request as a pandas DataFrame with the model's columns (text as str)."""
        import pandas as pd

        if self.names is None:
            return inputs[ARRAY_INPUT]
        if not self.text:
            # One float block from the column-major matrix, not a frame of 32 columns
            # consolidated by pandas (0.11 ms against 0.27 ms for 10,000 rows of 32).
            return pd.DataFrame(self.matrix(inputs), columns=list(self.names), copy=False)
        return pd.DataFrame(
            {
                name: _text(name, inputs[name]) if name in self.text else inputs[name]
                for name in self.names
            },
            columns=list(self.names),
        )


def _text(name: str, values: np.ndarray) -> np.ndarray:
    try:
        return np.array([v.decode("utf-8") for v in values], dtype=object)
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"input '{name}': not UTF-8 text: {exc}") from None


def label_spec(classes: np.ndarray | None) -> TensorSpec:
    """`label` of a classifier whose labels are `classes` (None: class indices)."""
    if classes is None or classes.dtype.kind in ("i", "u", "b"):
        return TensorSpec("label", "INT64", (-1,))
    if classes.dtype.kind == "f":
        return TensorSpec("label", "FP64", (-1,))
    return TensorSpec("label", "BYTES", (-1,))


def label_array(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.datatype == "BYTES":
        return np.array([str(v).encode("utf-8") for v in values], dtype=object)
    return values.astype(np.int64 if spec.datatype == "INT64" else np.float64, copy=False)


def chosen_outputs(
    available: Sequence[TensorSpec], options: Mapping[str, Any]
) -> tuple[TensorSpec, ...]:
    """The outputs `runtime_options: {outputs: [...]}` keeps (all by default)."""
    wanted = options.get("outputs")
    if wanted is None:
        return tuple(available)
    names = [t.name for t in available]
    if isinstance(wanted, str):
        wanted = [wanted]
    unknown = [w for w in wanted if w not in names]
    if unknown or not wanted:
        raise ModelLoadError(
            f"runtime_options.outputs: {unknown or wanted} not among this model's outputs "
            f"({', '.join(names)})"
        )
    return tuple(t for t in available if t.name in wanted)


def threads(options: Mapping[str, Any]) -> int:
    """Compute threads for one instance: the gateway's share of the usable CPUs."""
    return max(1, int(options.get("num_threads") or 1))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class TabularRuntime:
    """What the tabular runtimes share: a signature, the input table, the loaded model."""

    _signature: Signature
    _columns: Columns
    _model: Any

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def columns(self) -> Columns:
        return self._columns

    @property
    def model(self) -> Any:
        """The framework's own loaded model (an estimator, a Booster)."""
        return self._model

    def close(self) -> None:
        pass


class BoosterRuntime(TabularRuntime, ABC):
    """XGBoost and LightGBM: the booster's answer per row (a probability, probabilities,
    a class or a value, by objective) as the runtime's outputs."""

    #: one probability (of class 1) per row
    _binary: bool = False
    #: the answer is the class itself
    _label_only: bool = False

    @abstractmethod
    def _predict(self, matrix: np.ndarray) -> Any:
        """The booster's own predict on a float matrix in the model's column order."""

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        self._signature.validate(inputs)
        try:
            raw = np.asarray(self._predict(self._columns.matrix(inputs)), dtype=np.float64)
        except ValueError as exc:
            raise InvalidInput(f"the model refused the input: {first_line(exc)}") from None
        except Exception as exc:
            raise InferenceFailed(f"{type(exc).__name__}: {first_line(exc)}") from None
        wanted = output_names or self._signature.output_names
        if "probabilities" not in wanted and "label" not in wanted:
            return {self._signature.output_names[0]: raw}
        if self._label_only:
            return {"label": raw.astype(np.int64)}
        results: dict[str, np.ndarray] = {}
        if "probabilities" in wanted:
            results["probabilities"] = np.column_stack([1.0 - raw, raw]) if self._binary else raw
        if "label" in wanted:  # the class of highest probability (the first on a tie)
            label = raw > 0.5 if self._binary else raw.argmax(axis=1)
            results["label"] = label.astype(np.int64)
        return results
