"""Runtimes picked by name from a table of import strings, imported lazily.

A runtime whose optional dependency is missing raises MissingExtra naming the
extra to install, instead of an ImportError from deep inside.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from runtimes.base import Runtime, RuntimeConfig
from runtimes.errors import MissingExtra, ModelLoadError
from runtimes.types import Signature

#: runtime name -> ("module:Class", extra that provides its dependency)
RUNTIMES: dict[str, tuple[str, str]] = {
    "onnx": ("runtimes.onnx_impl:OnnxRuntime", "cpu"),
    "torch": ("runtimes.torch_impl:TorchRuntime", "torch"),
    "script": ("runtimes.script_impl:ScriptRuntime", ""),
    "remote": ("runtimes.remote_impl:RemoteRuntime", ""),
    "fake": ("runtimes.fake:FakeRuntime", ""),
}

#: model file suffix -> runtime name, for deployments that do not say.
SUFFIX_TO_RUNTIME: dict[str, str] = {
    ".onnx": "onnx",
    ".ort": "onnx",
    ".pt": "torch",  # TorchScript
    ".pth": "torch",
    ".pt2": "torch",  # torch.export
}


def runtime_for_path(path: str | Path) -> str | None:
    """The runtime that serves a model file by its suffix, or None."""
    return SUFFIX_TO_RUNTIME.get(Path(path).suffix.lower())


def _module_of(name: str) -> tuple[Any, str]:
    try:
        target, extra = RUNTIMES[name]
    except KeyError:
        raise ModelLoadError(
            f"unknown runtime '{name}'; known runtimes: {', '.join(sorted(RUNTIMES))}"
        ) from None
    module_name, class_name = target.split(":")
    try:
        return importlib.import_module(module_name), class_name
    except ImportError as exc:
        raise MissingExtra(
            f"runtime '{name}' needs an optional dependency ({exc.name}): "
            f"pip install 'servegate[{extra}]'"
        ) from exc


def load_runtime(name: str, config: RuntimeConfig) -> Runtime:
    """Load one instance of `config.model_path` with the runtime called `name`."""
    module, class_name = _module_of(name)
    runtime: Runtime = getattr(module, class_name)(config)
    return runtime


def read_signature(name: str, path: Path) -> Signature:
    """The signature of the model file at `path`, read by the runtime called `name`."""
    module, _ = _module_of(name)
    signature: Signature = module.read_signature(path)
    return signature
