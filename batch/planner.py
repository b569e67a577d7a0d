"""Planning a job: cutting its inputs into mini-batches, once, into the job's
folder, so every later step (workers, retries, a resume) reads small immutable
pieces and the input is never loaded whole.

- Parquet is planned from its metadata alone: a mini-batch is up to
  `mini_batch_size` rows of one row group, and workers read those rows straight
  from the file (staging 1M rows x 64 floats cost 1.4 s of a 3.3 s job);
- CSV and JSON lines are streamed record batch by record batch and staged as
  Arrow IPC files of exactly `mini_batch_size` rows (the last one shorter);
- every row carries its source file and row number;
- folders of other files become lists of `mini_batch_size` file paths.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batch.errors import BatchInputError, without_content

SOURCE_FILE, SOURCE_ROW = "source_file", "row"
STAGE_BATCH_ROWS = 65_536


def stage_path(job_dir: Path, index: int, suffix: str) -> Path:
    return job_dir / "inputs" / f"{index:08d}{suffix}"


def _write_ipc(path: Path, table: pa.Table) -> None:
    tmp = path.with_suffix(".tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, path)


def _unreadable(path: str, fmt: str, exc: Exception) -> str:
    return f"input file '{path}' cannot be read as {fmt}: {without_content(str(exc), path)}"


def _describe_mismatch(first: pa.Schema, other: pa.Schema) -> str:
    """How a file's columns differ from the first file's, by position and type: column
    names are the files' content, which errors never repeat (see without_content)."""
    if len(first) != len(other):
        return f"it has {len(other)} columns, the first file {len(first)}"
    for position, (mine, theirs) in enumerate(zip(first, other, strict=True), 1):
        if mine.name != theirs.name:
            return f"its column #{position} is named differently"
        if mine.type != theirs.type:
            return f"its column #{position} is {theirs.type}, expected {mine.type}"
    return "schemas differ"


def _same_schema(first: pa.Schema | None, schema: pa.Schema, path: str) -> pa.Schema:
    """Every input file must have the first file's columns and types."""
    if first is not None and not schema.equals(first):
        raise BatchInputError(
            f"input file '{path}': {_describe_mismatch(first, schema)} (every file needs the "
            "first one's columns)"
        )
    return first or schema


def read_schema(fs: pafs.FileSystem, path: str, fmt: str) -> pa.Schema:
    """A tabular file's schema, from its metadata (Parquet) or its first block."""
    try:
        if fmt == "parquet":
            with fs.open_input_file(path) as source:
                return pq.ParquetFile(source).metadata.schema.to_arrow_schema()
        return ds.dataset(path, filesystem=fs, format=fmt).schema
    except (pa.ArrowInvalid, OSError) as exc:
        raise BatchInputError(_unreadable(path, fmt, exc)) from None


def stage_tabular(
    fs: pafs.FileSystem, files: list[str], fmt: str, mini_batch_size: int, job_dir: Path
) -> list[int]:
    """Stage the rows of `files` as mini-batches; return each mini-batch's row count."""
    (job_dir / "inputs").mkdir(parents=True, exist_ok=True)
    counts: list[int] = []
    pending: list[pa.Table] = []
    pending_rows = 0
    schema: pa.Schema | None = None

    def flush(final: bool) -> None:
        nonlocal pending, pending_rows
        # Rows from several files carry several source-file dictionaries: unify them, as
        # an IPC file holds one dictionary per column.
        table = pa.concat_tables(pending).unify_dictionaries() if pending else None
        while table is not None and (
            table.num_rows >= mini_batch_size or (final and table.num_rows)
        ):
            take = min(mini_batch_size, table.num_rows)
            _write_ipc(stage_path(job_dir, len(counts), ".arrow"), table.slice(0, take))
            counts.append(take)
            table = table.slice(take)
        pending = [table] if table is not None and table.num_rows else []
        pending_rows = table.num_rows if table is not None else 0

    for path in files:
        try:
            dataset = ds.dataset(path, filesystem=fs, format=fmt)
            file_schema = dataset.schema
        except (pa.ArrowInvalid, OSError) as exc:
            raise BatchInputError(_unreadable(path, fmt, exc)) from None
        schema = _same_schema(schema, file_schema, path)
        row = 0
        try:
            for batch in dataset.to_batches(batch_size=STAGE_BATCH_ROWS):
                if not batch.num_rows:
                    continue
                table = with_origin(pa.Table.from_batches([batch]), path, row)
                row += batch.num_rows
                pending.append(table)
                pending_rows += table.num_rows
                if pending_rows >= mini_batch_size:
                    flush(final=False)
        except (pa.ArrowInvalid, OSError) as exc:
            raise BatchInputError(_unreadable(path, fmt, exc)) from None
    flush(final=True)
    return counts


def plan_parquet(
    fs: pafs.FileSystem, files: list[str], mini_batch_size: int, job_dir: Path
) -> list[int]:
    """Mini-batches as (file, row group, offset, rows) descriptors; no data is copied."""
    (job_dir / "inputs").mkdir(parents=True, exist_ok=True)
    counts: list[int] = []
    schema: pa.Schema | None = None
    for path in files:
        try:
            with fs.open_input_file(path) as source:
                metadata = pq.ParquetFile(source).metadata
                file_schema = metadata.schema.to_arrow_schema()
        except (pa.ArrowInvalid, OSError) as exc:
            raise BatchInputError(_unreadable(path, "parquet", exc)) from None
        schema = _same_schema(schema, file_schema, path)
        first_row = 0
        for group in range(metadata.num_row_groups):
            group_rows = metadata.row_group(group).num_rows
            for offset in range(0, group_rows, mini_batch_size):
                rows = min(mini_batch_size, group_rows - offset)
                descriptor = {
                    "file": path,
                    "row_group": group,
                    "offset": offset,
                    "rows": rows,
                    "first_row": first_row + offset,
                }
                target = stage_path(job_dir, len(counts), ".json")
                target.with_suffix(".tmp").write_text(json.dumps(descriptor))
                os.replace(target.with_suffix(".tmp"), target)
                counts.append(rows)
            first_row += group_rows
    return counts


def with_origin(table: pa.Table, path: str, first_row: int) -> pa.Table:
    """Append the source file (dictionary-encoded: once, not per row) and row numbers."""
    n = table.num_rows
    source = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(n, np.int32)), pa.array([path], pa.string())
    )
    rows = pa.array(np.arange(first_row, first_row + n, dtype=np.int64))
    return table.append_column(SOURCE_FILE, source).append_column(SOURCE_ROW, rows)


def plan_files(files: list[str], mini_batch_size: int, job_dir: Path) -> list[int]:
    """Group files into mini-batches (lists of paths); return each one's file count."""
    (job_dir / "inputs").mkdir(parents=True, exist_ok=True)
    counts: list[int] = []
    for start in range(0, len(files), mini_batch_size):
        group = files[start : start + mini_batch_size]
        path = stage_path(job_dir, len(counts), ".json")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(group))
        os.replace(tmp, path)
        counts.append(len(group))
    return counts
