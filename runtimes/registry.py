"""Runtime kinds: one record per kind with what it can do, and its implementation
imported lazily by name.

Everything that depends on the kind of runtime (does it take the request body as it
came, need a model file, batch, run in the gateway; which host it gets by default; its
Open Inference Protocol platform) reads the kind's record here instead of comparing
names. A runtime whose optional dependency is missing raises MissingExtra naming the
extra to install, instead of an ImportError from deep inside.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtimes.base import Runtime, RuntimeConfig
from runtimes.errors import MissingExtra, ModelLoadError
from runtimes.types import Signature


@dataclass(frozen=True)
class RuntimeKind:
    name: str
    #: "module:Class" of the implementation
    target: str
    #: the pip extra that provides its dependency ("" when none is needed)
    extra: str
    #: the platform reported by model metadata (tritonclient names Triton's backends)
    platform: str
    #: model file suffixes that pick this kind when a deployment does not say
    suffixes: tuple[str, ...] = ()
    needs_model: bool = True
    #: Azure ML's run(raw_data): gets each request body as it came, no tensors
    takes_raw_body: bool = False
    #: several requests can be scored as one batch
    batchable: bool = True
    #: calls another server from the gateway process: no worker processes, no batch jobs
    runs_in_gateway: bool = False
    #: the host a deployment gets when it does not say (user code is isolated)
    default_host: str = "thread"
    #: files (glob patterns) that make a model folder this kind's
    folder_markers: tuple[str, ...] = ()
    #: a table model (KServe's sklearn and xgboost servers' leniency): a request's one
    #: input may carry another name (`input-0`) for the model's one input, numbers that
    #: cast safely (FP32 for FP64), and `output-N` may ask for the N-th output
    tabular: bool = False

    @property
    def module(self) -> str:
        return self.target.split(":")[0]


RUNTIME_KINDS: dict[str, RuntimeKind] = {
    kind.name: kind
    for kind in (
        RuntimeKind(
            "onnx", "runtimes.onnx_impl:OnnxRuntime", "cpu", "onnxruntime_onnx", (".onnx", ".ort")
        ),
        RuntimeKind(
            "torch",
            "runtimes.torch_impl:TorchRuntime",
            "torch",
            "pytorch_libtorch",
            # TorchScript (.pt, .pth) and torch.export (.pt2)
            (".pt", ".pth", ".pt2"),
        ),
        RuntimeKind(
            "sklearn",
            "runtimes.sklearn_impl:SklearnRuntime",
            "sklearn",
            "sklearn",
            (".skops", ".joblib", ".pkl", ".pickle"),
            tabular=True,
        ),
        RuntimeKind(
            "xgboost",
            "runtimes.xgboost_impl:XGBoostRuntime",
            "xgboost",
            "xgboost",
            (".json", ".ubj"),
            tabular=True,
        ),
        RuntimeKind(
            "lightgbm",
            "runtimes.lightgbm_impl:LightGBMRuntime",
            "lightgbm",
            "lightgbm",
            (".txt",),
            tabular=True,
        ),
        RuntimeKind(
            "mlflow",
            "runtimes.mlflow_impl:MLflowRuntime",
            "",
            "mlflow",
            # python_function models run their own code: isolated by default
            default_host="process",
            folder_markers=("MLmodel",),
            tabular=True,
        ),
        RuntimeKind(
            "triton",
            "runtimes.triton_impl:TritonRuntime",
            "triton",
            "onnxruntime_onnx",
            # config.pbtxt is optional, as Triton auto-completes it from the model file
            folder_markers=(
                "config.pbtxt",
                "*/config.pbtxt",
                "[0-9]*/model.onnx",
                "*/[0-9]*/model.onnx",
            ),
        ),
        RuntimeKind(
            "script",
            "runtimes.script_impl:ScriptRuntime",
            "",
            "python",
            needs_model=False,
            takes_raw_body=True,
            batchable=False,
            default_host="process",
        ),
        RuntimeKind(
            "remote",
            "runtimes.remote_impl:RemoteRuntime",
            "",
            "remote",
            needs_model=False,
            runs_in_gateway=True,
        ),
        RuntimeKind("fake", "runtimes.fake:FakeRuntime", "", "servegate_fake"),
    )
}


def runtime_kind(name: str) -> RuntimeKind:
    try:
        return RUNTIME_KINDS[name]
    except KeyError:
        raise ModelLoadError(
            f"unknown runtime '{name}'; known runtimes: {', '.join(sorted(RUNTIME_KINDS))}"
        ) from None


def runtime_for_path(path: str | Path) -> str | None:
    """The runtime that serves a model file by its suffix, or a model folder by the files
    in it; None when none does."""
    if Path(path).is_dir():
        return next(
            (
                k.name
                for k in RUNTIME_KINDS.values()
                if any(any(Path(path).glob(marker)) for marker in k.folder_markers)
            ),
            None,
        )
    suffix = Path(path).suffix.lower()
    return next((k.name for k in RUNTIME_KINDS.values() if suffix in k.suffixes), None)


def _module_of(name: str) -> tuple[Any, str]:
    kind = runtime_kind(name)
    module_name, class_name = kind.target.split(":")
    try:
        return importlib.import_module(module_name), class_name
    except ImportError as exc:
        raise MissingExtra(
            f"runtime '{name}' needs an optional dependency ({exc.name}): "
            f"pip install 'servegate[{kind.extra}]'"
        ) from exc


def load_runtime(name: str, config: RuntimeConfig) -> Runtime:
    """Load one instance of `config.model_path` with the runtime called `name`."""
    module, class_name = _module_of(name)
    runtime: Runtime = getattr(module, class_name)(config)
    return runtime


def deployment_defaults(name: str, path: Path) -> dict[str, Any]:
    """Deployment fields the model itself sets when the deployment does not (a Triton
    config's dynamic batching); {} for most runtimes."""
    module, _ = _module_of(name)
    defaults = getattr(module, "deployment_defaults", None)
    return dict(defaults(path)) if defaults is not None else {}


def describe(name: str, path: Path) -> dict[str, Any] | None:
    """How the model's own format names it (a Triton model's name, version, configuration
    and class labels); None for formats that do not."""
    module, _ = _module_of(name)
    found = getattr(module, "describe", None)
    return dict(found(path)) if found is not None else None


def model_warnings(name: str, path: Path) -> list[str]:
    """What may not work about the model here (an MLflow model's requirements that are
    not installed); [] for most runtimes."""
    module, _ = _module_of(name)
    check = getattr(module, "model_warnings", None)
    return list(check(path)) if check is not None else []


def loads_code(name: str, path: Path, options: Mapping[str, Any]) -> bool:
    """Whether loading the model at `path` can run code of the file's choosing (a pickle):
    such a model is loaded only in worker processes, never in the gateway."""
    module, _ = _module_of(name)
    check = getattr(module, "loads_code", None)
    return bool(check(path, options)) if check is not None else False


def inspect_model(name: str, path: Path, strict: bool = False) -> tuple[Signature, list[str]]:
    """The signature of the model at `path`, read by the runtime called `name`, and what is
    worth a warning about it (a model saved by another version of its framework; refused
    when `strict`). A file whose loading runs code is read in a child process
    (runtimes.isolated)."""
    from runtimes import isolated

    module, _ = _module_of(name)
    # A runtime that reads only a folder's descriptions (MLflow) inspects in place; the
    # files it delegates to come back here.
    reads_in_place = getattr(module, "INSPECTS_WITHOUT_LOADING", False)
    if not reads_in_place and not isolated.IN_CHILD and loads_code(name, path, {}):
        return isolated.inspect(name, path, strict)
    return inspect_here(name, path, strict)


def inspect_here(name: str, path: Path, strict: bool = False) -> tuple[Signature, list[str]]:
    """inspect_model in this process."""
    module, _ = _module_of(name)
    inspect = getattr(module, "inspect", None)
    if inspect is not None:
        signature, notes = inspect(path, strict)
        return signature, list(notes)
    found: Signature = module.read_signature(path)
    return found, []


def read_signature(name: str, path: Path) -> Signature:
    """The signature of the model file at `path`, read by the runtime called `name`."""
    return inspect_model(name, path)[0]
