"""The seam every model runtime implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from runtimes.errors import ModelLoadError
from runtimes.types import Signature


@dataclass(frozen=True)
class RuntimeConfig:
    """What a runtime needs to load one instance of a model. Picklable: worker
    processes receive it.

    `device` is `cpu`, `cuda` or `cuda:N`. `options` are runtime-specific
    (onnxruntime: `intra_op_num_threads`, `inter_op_num_threads`,
    `graph_optimization_level`, `tensorrt`, `cuda_options`, `io_binding`;
    torch: `compile`, `num_threads`; remote: `headers`, `timeout_s`).
    `signature` comes from the deployment for files that carry none.
    """

    model_path: Path | None = None
    device: str = "cpu"
    options: Mapping[str, Any] = field(default_factory=dict)
    signature: Signature | None = None
    code_dir: Path | None = None
    scoring_script: str | None = None
    url: str | None = None
    environment: Mapping[str, str] = field(default_factory=dict)

    def require_model(self) -> Path:
        if self.model_path is None:
            raise ModelLoadError("this runtime needs a model file")
        return self.model_path


class Runtime(Protocol):
    """One loaded model instance.

    `infer` is blocking and thread-safe to call from one thread at a time per
    instance; the gateway calls it off the event loop.
    """

    @property
    def signature(self) -> Signature: ...

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the model. Raises InvalidInput or InferenceFailed."""
        ...

    def close(self) -> None: ...
