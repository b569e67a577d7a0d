"""Model files whose loading runs code (pickles, joblib files, a .skops file trusting
types beyond the reviewed ones) are opened here in a fresh Python process, never in the
process that asks: reading such a file's signature at registration, or converting it to
ONNX at deployment create, happens in a child that exits afterwards. The child gets no
secret from its parent's environment (only what Python and the thread pools need), runs
in an empty temporary folder and is killed after `TIMEOUT_S`.

The parent sends one JSON request on the child's stdin (`runtimes.isolated_child`) and
reads one JSON answer from its stdout; a failure comes back as the error it was
(ModelLoadError, MissingExtra).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runtimes.errors import MissingExtra, ModelLoadError
from runtimes.types import Signature

#: A model file that takes longer than this to load is refused (a pickle can loop).
TIMEOUT_S = 300.0
#: What the child keeps of the parent's environment: nothing that can hold a secret.
_KEPT = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "TZ", "VIRTUAL_ENV", "SYSTEMROOT")
#: True in the child: what it loads, it loads itself (no child of its own)
IN_CHILD = False
_ERRORS: dict[str, type[ModelLoadError]] = {
    "ModelLoadError": ModelLoadError,
    "MissingExtra": MissingExtra,
}


def _child_environment() -> dict[str, str]:
    env = {name: os.environ[name] for name in _KEPT if name in os.environ}
    # Where this package is imported from, so the child imports the same code.
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    # One thread each: a registration is not worth the machine's cores.
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _call(request: Mapping[str, Any], what: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="servegate-isolated-") as folder:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "runtimes.isolated_child"],
                input=json.dumps(request).encode(),
                capture_output=True,
                cwd=folder,
                env=_child_environment(),
                timeout=TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ModelLoadError(f"{what} took longer than {TIMEOUT_S:g} s") from None
    try:
        answer: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise ModelLoadError(
            f"{what} ended the process that loaded it (exit status {done.returncode}): "
            f"{tail[0][:500]}"
        ) from None
    if "error" in answer:
        raise _ERRORS.get(answer.get("type", ""), ModelLoadError)(answer["error"])
    return answer


def inspect(runtime: str, path: Path, strict: bool) -> tuple[Signature, list[str]]:
    """registry.inspect_model of `path`, in a child process."""
    answer = _call(
        {"op": "inspect", "runtime": runtime, "path": str(path), "strict": strict},
        f"loading {path.name}",
    )
    return Signature.from_dict(answer["signature"]), list(answer["warnings"])


def convert(runtime: str, path: Path, options: Mapping[str, Any]) -> bytes:
    """runtimes.convert.to_onnx of `path`, in a child process."""
    with tempfile.TemporaryDirectory(prefix="servegate-convert-") as folder:
        output = Path(folder) / "converted.onnx"
        _call(
            {
                "op": "convert",
                "runtime": runtime,
                "path": str(path),
                "options": dict(options),
                "output": str(output),
            },
            f"converting {path.name}",
        )
        return output.read_bytes()
