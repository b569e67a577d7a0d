"""Planning a job: cutting its inputs into mini-batches, once, into the job's
folder, so every later step (workers, retries, a resume) reads small immutable
pieces and the input is never loaded whole.

- tabular inputs (Parquet, CSV, JSON lines) are streamed record batch by record
  batch and staged as Arrow IPC files of exactly `mini_batch_size` rows (the
  last one shorter), each row carrying its source file and row number;
- folders of other files become lists of `mini_batch_size` file paths.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from batch.errors import BatchInputError

SOURCE_FILE, SOURCE_ROW = "source_file", "row"
STAGE_BATCH_ROWS = 65_536


def stage_path(job_dir: Path, index: int, suffix: str) -> Path:
    return job_dir / "inputs" / f"{index:08d}{suffix}"


def _write_ipc(path: Path, table: pa.Table) -> None:
    tmp = path.with_suffix(".tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, path)


def _describe_mismatch(first: pa.Schema, other: pa.Schema) -> str:
    for field in first:
        index = other.get_field_index(field.name)
        if index < 0:
            return f"column '{field.name}' is missing"
        if other.field(index).type != field.type:
            return f"column '{field.name}' is {other.field(index).type}, expected {field.type}"
    extra = [f.name for f in other if first.get_field_index(f.name) < 0]
    return f"unexpected column '{extra[0]}'" if extra else "schemas differ"


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
        table = pa.concat_tables(pending) if pending else None
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
            raise BatchInputError(f"input file '{path}' cannot be read as {fmt}: {exc}") from None
        if schema is None:
            schema = file_schema
        elif not file_schema.equals(schema):
            raise BatchInputError(
                f"input file '{path}': {_describe_mismatch(schema, file_schema)} "
                f"(as in the first file)"
            )
        row = 0
        try:
            for batch in dataset.to_batches(batch_size=STAGE_BATCH_ROWS):
                if not batch.num_rows:
                    continue
                table = (
                    pa.Table.from_batches([batch])
                    .append_column(SOURCE_FILE, pa.array([path] * batch.num_rows, pa.string()))
                    .append_column(
                        SOURCE_ROW, pa.array(range(row, row + batch.num_rows), pa.int64())
                    )
                )
                row += batch.num_rows
                pending.append(table)
                pending_rows += table.num_rows
                if pending_rows >= mini_batch_size:
                    flush(final=False)
        except (pa.ArrowInvalid, OSError) as exc:
            raise BatchInputError(f"input file '{path}' cannot be read as {fmt}: {exc}") from None
    flush(final=True)
    return counts


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
