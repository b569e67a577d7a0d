"""MLflow model folders (an `MLmodel` file; `model: {type: mlflow_model, path: ...}` as in
Azure ML, or found from the folder): deployed without a scoring script.

A flavor servegate serves natively runs in its own runtime: `onnx` (onnxruntime),
`sklearn` (scikit-learn, skops or pickle), `xgboost`, `lightgbm`; the file comes from
the flavor's entry in `MLmodel`. Anything else (`python_function` models, `pytorch`'s
pickled modules, custom flavors) is loaded with `mlflow.pyfunc` (the `mlflow` extra) in a
worker process (the deployment's default host) and called with a pandas DataFrame; its
inputs and outputs come from the signature in `MLmodel`, which such a model must have.
The model's `requirements.txt` is compared with what is installed here: each package
missing or at another version is a warning at create (nothing is installed at run time).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from runtimes.base import RuntimeConfig
from runtimes.errors import InferenceFailed, InvalidInput, MissingExtra, ModelLoadError
from runtimes.types import Signature, TensorSpec

MLMODEL = "MLmodel"
#: flavor -> (servegate runtime, the flavor's key that names its file)
NATIVE_FLAVORS = {
    "onnx": ("onnx", "data"),
    "sklearn": ("sklearn", "pickled_model"),
    "xgboost": ("xgboost", "data"),
    "lightgbm": ("lightgbm", "data"),
}
#: MLflow's column and tensor types -> the protocol's datatypes
_COLUMN_TYPES = {
    "double": "FP64",
    "float": "FP32",
    "long": "INT64",
    "integer": "INT32",
    "boolean": "BOOL",
    "string": "BYTES",
    "binary": "BYTES",
}
_TENSOR_TYPES = {
    "float64": "FP64",
    "float32": "FP32",
    "int64": "INT64",
    "int32": "INT32",
    "int8": "INT8",
    "uint8": "UINT8",
    "bool": "BOOL",
    "object": "BYTES",
    "str": "BYTES",
}


@dataclass(frozen=True)
class MLflowModel:
    folder: Path
    flavors: Mapping[str, Any]
    signature: Mapping[str, Any] | None
    #: `saved_input_example_info` (where the input example is, and its orientation)
    example_info: Mapping[str, Any] | None = None
    #: what messages call it (the folder's name as the user gave it)
    name: str = ""

    def input_example(self) -> Any:
        """The saved input example as `input_data` (pandas split orientation), or None."""
        info = self.example_info or {}
        path = info.get("artifact_path")
        if not path or info.get("type") != "dataframe" or info.get("pandas_orient") != "split":
            return None
        try:
            return json.loads((self.folder / str(path)).read_text())
        except (OSError, ValueError):
            return None

    @property
    def native(self) -> tuple[str, Path] | None:
        """(servegate runtime, model file) of a flavor served natively, or None."""
        for flavor, (runtime, key) in NATIVE_FLAVORS.items():
            entry = self.flavors.get(flavor)
            if isinstance(entry, dict) and entry.get(key):
                return runtime, self.folder / str(entry[key])
        return None


def read_model(path: Path) -> MLflowModel:
    file = path / MLMODEL
    if not file.is_file():
        raise ModelLoadError(f"no {MLMODEL} file in '{path.name}': not an MLflow model")
    try:
        doc = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ModelLoadError(f"{path.name}/{MLMODEL} is not YAML: {exc}") from None
    flavors = doc.get("flavors") if isinstance(doc, dict) else None
    if not isinstance(flavors, dict) or not flavors:
        raise ModelLoadError(f"{path.name}/{MLMODEL} lists no flavors")
    return MLflowModel(
        path, flavors, doc.get("signature"), doc.get("saved_input_example_info"), path.name
    )


def _specs(raw: Any, default_name: str) -> tuple[TensorSpec, ...]:
    """MLflow's column specs (one 1-D tensor each) or tensor spec, as tensors."""
    items = json.loads(raw) if isinstance(raw, str) else raw
    specs = []
    for index, item in enumerate(items or []):
        if item.get("type") == "tensor":
            tensor = item["tensor-spec"]
            datatype = _TENSOR_TYPES.get(str(tensor.get("dtype")))
            shape = tuple(int(d) for d in tensor.get("shape", [-1]))
        else:
            datatype = _COLUMN_TYPES.get(str(item.get("type")))
            shape = (-1,)
        if datatype is None:
            raise ModelLoadError(f"MLflow signature: type {item} is not supported")
        name = item.get("name") or (default_name if len(items) == 1 else f"{default_name}_{index}")
        specs.append(TensorSpec(str(name), datatype, shape))
    return tuple(specs)


def _pyfunc_signature(model: MLflowModel) -> Signature:
    if not model.signature or not model.signature.get("inputs"):
        raise ModelLoadError(
            f"{model.name}: a python_function MLflow model needs a signature in "
            f"{MLMODEL} (log it with signature=infer_signature(...))"
        )
    inputs = _specs(model.signature["inputs"], "input")
    outputs = _specs(model.signature.get("outputs"), "predictions") or (
        TensorSpec("predictions", "FP64", (-1,)),
    )
    return Signature(inputs, outputs)


#: Inspecting reads MLmodel; a native flavor's file is inspected by its own runtime,
#: which loads a pickle in a child process (runtimes.registry.inspect_model).
INSPECTS_WITHOUT_LOADING = True


def inspect(path: Path, strict: bool = False) -> tuple[Signature, list[str]]:
    from runtimes.registry import inspect_model

    model = read_model(path)
    native = model.native
    if native is not None:
        return inspect_model(native[0], native[1], strict)
    return _pyfunc_signature(model), []


def read_signature(path: Path) -> Signature:
    return inspect(path)[0]


def loads_code(path: Path, options: Mapping[str, Any]) -> bool:
    """A python_function model runs its own code; a native flavor's file loads code when
    its runtime says so (a pickled scikit-learn model)."""
    from runtimes.registry import loads_code as runtime_loads_code

    try:
        native = read_model(path).native
    except ModelLoadError:
        return True  # not readable here: treated as the riskier kind
    return native is None or runtime_loads_code(native[0], native[1], options)


#: distributions that provide the same module as the one a model names
_SAME_MODULE = {"mlflow": ("mlflow-skinny",), "xgboost": ("xgboost-cpu",)}
_REQUIREMENT = re.compile(
    r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(==\s*([^\s;#]+))?"
)


def _installed(package: str) -> str | None:
    for name in (package, *_SAME_MODULE.get(package.lower(), ())):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def model_warnings(path: Path) -> list[str]:
    """Packages the model's requirements.txt lists that are missing here or at another
    version."""
    file = path / "requirements.txt"
    if not file.is_file():
        return []
    found = []
    for line in file.read_text().splitlines():
        match = _REQUIREMENT.match(line)
        if not match or line.lstrip().startswith(("#", "-")):
            continue
        package, pinned = match[1], match[3]
        installed = _installed(package)
        if installed is None:
            wanted = f"{package}=={pinned}" if pinned else package
            found.append(f"{path.name} requires {wanted}, which is not installed here")
            continue
        if pinned and installed.split("+")[0] != pinned.split("+")[0]:
            found.append(f"{path.name} requires {package}=={pinned}; {installed} is installed here")
    return found


def _load_pyfunc(model: MLflowModel) -> Any:
    try:
        import mlflow.pyfunc
    except ImportError as exc:
        raise MissingExtra(
            "python_function MLflow models need mlflow: pip install 'servegate[mlflow]'"
        ) from exc
    try:
        return mlflow.pyfunc.load_model(str(model.folder))
    except Exception as exc:
        raise ModelLoadError(
            f"{model.name}: mlflow.pyfunc could not load it: {type(exc).__name__}: {exc}"
        ) from None


class MLflowRuntime:
    def __init__(self, config: RuntimeConfig) -> None:
        from runtimes.registry import load_runtime

        # The real folder: MLflow refuses paths that resolve outside the one it was given.
        given = config.require_model()
        model = replace(read_model(given.resolve()), name=given.name)
        native = model.native
        self._inner: Any = None
        self._pyfunc: Any = None
        if native is not None:
            options = dict(config.options)
            skops = model.flavors.get("sklearn", {}).get("skops_trusted_types")
            if skops:
                options.setdefault("trusted_types", list(skops))
            self._inner = load_runtime(
                native[0], replace(config, model_path=native[1], options=options)
            )
            self._signature = self._inner.signature
        else:
            self._signature = _pyfunc_signature(model)
            self._pyfunc = _load_pyfunc(model)
        self._try_example(model)

    def _try_example(self, model: MLflowModel) -> None:
        """The model's own input example must score: one that cannot is refused at load
        (so at create), not at its first request."""
        from runtimes.tensor_codec import inputs_from_input_data

        example = model.input_example()
        if example is None:
            return
        try:
            self.infer(inputs_from_input_data(example, self._signature))
        except Exception as exc:
            raise ModelLoadError(
                f"{model.name}: its own input_example does not score: {exc}"
            ) from None

    @property
    def signature(self) -> Signature:
        return self._signature

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        if self._inner is not None:
            result: dict[str, np.ndarray] = self._inner.infer(inputs, output_names)
            return result
        import pandas as pd

        self._signature.validate(inputs)
        specs = self._signature.inputs
        if len(specs) == 1 and len(specs[0].shape) > 1:
            frame: Any = inputs[specs[0].name]
        else:
            frame = pd.DataFrame(
                {
                    t.name: [v.decode() for v in inputs[t.name]]
                    if t.datatype == "BYTES"
                    else inputs[t.name]
                    for t in specs
                },
                columns=[t.name for t in specs],
            )
        try:
            answer = self._pyfunc.predict(frame)
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidInput(f"the model refused the input: {exc}") from None
        except Exception as exc:
            raise InferenceFailed(f"{type(exc).__name__}: {exc}") from None
        return self._outputs(answer)

    def _outputs(self, answer: Any) -> dict[str, np.ndarray]:
        from runtimes.types import DATATYPE_TO_NUMPY

        outputs = self._signature.outputs
        columns = getattr(answer, "columns", None)
        if len(outputs) > 1 and columns is not None:
            values = {t.name: np.asarray(answer[t.name]) for t in outputs}
        else:
            values = {outputs[0].name: np.asarray(answer)}
        results = {}
        for spec in outputs:
            array = values[spec.name]
            if spec.datatype == "BYTES":
                results[spec.name] = np.array(
                    [str(v).encode() for v in array.ravel()], dtype=object
                )
            else:
                results[spec.name] = array.astype(DATATYPE_TO_NUMPY[spec.datatype], copy=False)
        return results

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
