"""The child of runtimes.isolated: `python -m runtimes.isolated_child` reads one request
(JSON) on stdin, loads the model it names, and writes one answer (JSON) on stdout."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from runtimes import isolated
from runtimes.errors import ModelLoadError


def _serve(request: dict[str, Any]) -> dict[str, Any]:
    path = Path(request["path"])
    if request["op"] == "inspect":
        from runtimes.registry import inspect_here

        signature, notes = inspect_here(request["runtime"], path, bool(request["strict"]))
        return {"signature": signature.to_dict(), "warnings": notes}
    from runtimes.convert import to_onnx

    Path(request["output"]).write_bytes(to_onnx(request["runtime"], path, request["options"]))
    return {}


def main() -> None:
    isolated.IN_CHILD = True  # what it loads, it loads itself
    # What the model prints goes to stderr: stdout carries the answer alone.
    answer_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        answer = _serve(json.loads(sys.stdin.read()))
    except ModelLoadError as exc:
        answer = {"error": str(exc), "type": type(exc).__name__}
    except Exception as exc:
        answer = {"error": f"{type(exc).__name__}: {exc}", "type": "ModelLoadError"}
    answer_out.write("\n" + json.dumps(answer) + "\n")
    answer_out.flush()


if __name__ == "__main__":
    main()
