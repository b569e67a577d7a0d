"""A fake runtime for tests: a real `Runtime` with a behaviour chosen by options.

Not a mock: it implements the seam, validates like a real runtime and can be
served by the gateway. Options: `delay_s` (sleep per call), `fail` (raise
InferenceFailed), `load_s` (sleep while loading), `fail_load` (refuse to load). It
doubles its single FP32 input `x` into output `y`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from runtimes.base import RuntimeConfig
from runtimes.errors import InferenceFailed, ModelLoadError
from runtimes.types import Signature, TensorSpec

SIGNATURE = Signature((TensorSpec("x", "FP32", (-1, -1)),), (TensorSpec("y", "FP32", (-1, -1)),))


def read_signature(path: Path) -> Signature:
    return SIGNATURE


class FakeRuntime:
    def __init__(self, config: RuntimeConfig) -> None:
        self._delay_s = float(config.options.get("delay_s", 0.0))
        self._fail = bool(config.options.get("fail", False))
        time.sleep(float(config.options.get("load_s", 0.0)))
        if config.options.get("fail_load"):
            raise ModelLoadError("fake runtime configured not to load")

    @property
    def signature(self) -> Signature:
        return SIGNATURE

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        if self._delay_s:
            time.sleep(self._delay_s)
        if self._fail:
            raise InferenceFailed("fake runtime configured to fail")
        return {"y": inputs["x"] * 2}

    def close(self) -> None:
        pass
