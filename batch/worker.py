"""A batch job's worker processes: each loads the model once (`init`), then scores
mini-batches (`score`), writing each one's output part atomically."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from batch.errors import WorkerStartError
from batch.formats import FORMATS
from batch.planner import SOURCE_FILE, SOURCE_ROW
from batch.sinks import write_part
from batch.sources import Location, locate
from batch.tensors import table_from_outputs, table_from_result, tensors_from_table
from runtimes.base import Runtime, RuntimeConfig
from runtimes.errors import ModelLoadError
from runtimes.registry import RuntimeKind, load_runtime, runtime_kind

_state: dict[str, Any] = {}


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def exit_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent (the job runner) dies, even by
    SIGKILL: an orphaned worker would hold its loaded model forever. Linux only; elsewhere
    workers notice the broken pipe when they next take work."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def init(runtime_name: str, config: RuntimeConfig, input_uri: str, parent_pid: int) -> None:
    exit_with_parent(parent_pid)
    os.environ.update(config.environment)
    adopt_or_remember(lambda: load_runtime(runtime_name, config), runtime_name, input_uri)


def adopt_or_remember(load: Callable[[], Runtime], runtime_name: str, input_uri: str) -> None:
    """Load the runtime and become its worker; when loading fails (a scoring script's
    `init()` raised, an import failed) keep the cause, and answer every mini-batch with
    it (WorkerStartError): a pool whose initializer raised would only say that a worker
    died, and the job would retry every mini-batch for nothing."""
    try:
        adopt(load(), runtime_kind(runtime_name), locate(input_uri))
    except Exception as exc:
        cause = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
        print(f"servegate batch worker {os.getpid()}: cannot start: {cause}", file=sys.stderr)
        _state.clear()
        _state["start_error"] = cause


def adopt(runtime: Runtime, kind: RuntimeKind, source: Location) -> None:
    """Make this process a worker of `runtime` reading from `source` (a local worker
    process, or a Ray actor)."""
    _state["runtime"] = runtime
    _state["raw"] = kind.takes_raw_body
    _state["input"] = source


def score(job_dir: str, index: int, format_name: str) -> tuple[int, float]:
    """Score mini-batch `index`; return (items scored, seconds)."""
    started = time.perf_counter()
    if "start_error" in _state:
        raise WorkerStartError(_state["start_error"])
    folder = Path(job_dir)
    runtime = _state["runtime"]
    fmt = FORMATS[format_name]
    batch = fmt.read(folder, index, _state["input"], _state)
    if isinstance(batch, pa.Table):
        origin = batch.select([SOURCE_FILE, SOURCE_ROW])
        data = batch.drop_columns([SOURCE_FILE, SOURCE_ROW])
        if _state["raw"]:
            result = table_from_result(runtime.run_batch(data))
        else:
            result = table_from_outputs(runtime.infer(tensors_from_table(data, runtime.signature)))
        if result.num_rows == origin.num_rows:
            for name, column in zip(origin.column_names, origin.columns, strict=True):
                result = result.append_column(name, column)
        items = batch.num_rows
    else:
        with tempfile.TemporaryDirectory() as tmp:
            local = _local_copies(batch, tmp)
            result = table_from_result(runtime.run_batch(local))
        if result.num_rows == len(batch):  # one answer per file: say which
            result = result.append_column(SOURCE_FILE, pa.array(batch, pa.string()))
        items = len(batch)
    write_part(folder, index, result)
    return items, time.perf_counter() - started


def _local_copies(paths: list[str], tmp: str) -> list[str]:
    """Scripts get local paths, as Azure ML mounts inputs: remote files are downloaded."""
    source = _state["input"]
    if source.uri.startswith("s3://"):
        local = []
        for i, path in enumerate(paths):
            target = Path(tmp) / f"{i:06d}-{os.path.basename(path)}"
            with source.filesystem.open_input_stream(path) as remote:
                target.write_bytes(remote.read())
            local.append(str(target))
        return local
    return list(paths)
