"""A batch job's worker processes: each loads the model once (`init`), then scores
mini-batches (`score`), writing each one's output part atomically."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from batch.planner import SOURCE_FILE, SOURCE_ROW, stage_path, with_origin
from batch.sinks import write_part
from batch.sources import locate
from batch.tensors import table_from_outputs, table_from_result, tensors_from_table
from runtimes.base import RuntimeConfig
from runtimes.registry import load_runtime

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
    _state["runtime"] = load_runtime(runtime_name, config)
    _state["script"] = runtime_name == "script"
    _state["input"] = locate(input_uri)


def score(job_dir: str, index: int, mode: str) -> tuple[int, float]:
    """Score mini-batch `index`; return (items scored, seconds)."""
    started = time.perf_counter()
    folder = Path(job_dir)
    runtime = _state["runtime"]
    if mode in ("tabular", "parquet"):
        if mode == "parquet":
            table = _parquet_rows(json.loads(stage_path(folder, index, ".json").read_text()))
        else:
            with pa.memory_map(str(stage_path(folder, index, ".arrow"))) as source:
                table = pa.ipc.open_file(source).read_all()
        origin = table.select([SOURCE_FILE, SOURCE_ROW])
        data = table.drop_columns([SOURCE_FILE, SOURCE_ROW])
        if _state["script"]:
            result = table_from_result(runtime.run_batch(data))
        else:
            result = table_from_outputs(runtime.infer(tensors_from_table(data, runtime.signature)))
        if result.num_rows == origin.num_rows:
            for name, column in zip(origin.column_names, origin.columns, strict=True):
                result = result.append_column(name, column)
        items = table.num_rows
    else:
        paths = json.loads(stage_path(folder, index, ".json").read_text())
        with tempfile.TemporaryDirectory() as tmp:
            local = _local_copies(paths, tmp)
            result = table_from_result(runtime.run_batch(local))
        if result.num_rows == len(paths):  # one answer per file: say which
            result = result.append_column(SOURCE_FILE, pa.array(paths, pa.string()))
        items = len(paths)
    write_part(folder, index, result)
    return items, time.perf_counter() - started


def _parquet_rows(descriptor: dict[str, Any]) -> pa.Table:
    """The mini-batch's rows, read from its row group (the last group read is kept:
    consecutive mini-batches usually share one)."""
    key = (descriptor["file"], descriptor["row_group"])
    cached = _state.get("row_group")
    if cached is None or cached[0] != key:
        with _state["input"].filesystem.open_input_file(descriptor["file"]) as source:
            group = pq.ParquetFile(source).read_row_group(descriptor["row_group"])
        cached = _state["row_group"] = (key, group)
    rows = cached[1].slice(descriptor["offset"], descriptor["rows"])
    return with_origin(rows, descriptor["file"], descriptor["first_row"])


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
