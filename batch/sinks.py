"""Outputs: one part per mini-batch, written atomically (a temporary name, then a
rename), and the final file assembled only from completed parts, in input order.
A crash can leave a stray temporary part, never a half-written or duplicated row."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pyarrow.types as pat

from batch.planner import SOURCE_FILE, SOURCE_ROW
from batch.sources import Location


def part_path(job_dir: Path, index: int) -> Path:
    return job_dir / "parts" / f"{index:08d}.arrow"


def write_part(job_dir: Path, index: int, table: pa.Table) -> None:
    final = part_path(job_dir, index)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    # Uncompressed Arrow IPC: cheap to write here, memory-mapped at assembly, so the
    # rows are encoded once, into the final file.
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, final)


def read_part(job_dir: Path, index: int) -> pa.Table:
    with pa.memory_map(str(part_path(job_dir, index))) as source:
        return pa.ipc.open_file(source).read_all()


def _for_csv(table: pa.Table) -> pa.Table:
    """CSV has no list cells: a list column `p` becomes `p_0`, `p_1`, ..."""
    columns, names = [], []
    for name, column in zip(table.column_names, table.columns, strict=True):
        if pat.is_dictionary(column.type):
            columns.append(column.cast(column.type.value_type))
            names.append(name)
        elif pat.is_fixed_size_list(column.type):
            width = column.type.list_size
            flat = column.combine_chunks().flatten()
            for i in range(width):
                columns.append(flat.take(pa.array(range(i, len(flat), width))))
                names.append(f"{name}_{i}")
        else:
            columns.append(column)
            names.append(name)
    return pa.table(columns, names=names)


def assemble(
    job_dir: Path,
    indexes: list[int],
    output: Location,
    file_name: str,
    azure_layout: bool = False,
) -> int:
    """Concatenate the parts of `indexes` (in order) into `output/file_name`; return rows.
    With `azure_layout`, a CSV is written as Azure ML's append_row writes it: no header,
    and without the source file and row columns.

    The file is written under a temporary name next to its final one, then moved, so
    readers never see a partial file. With no completed part there is no schema to
    write, so there is no file: an output file is always a valid one."""
    if not indexes:
        return 0
    fs = output.filesystem
    fs.create_dir(output.path, recursive=True)
    final = f"{output.path}/{file_name}"
    tmp, stream = _temporary(output, file_name)
    rows = 0
    writer: Any = None
    with stream as sink:
        try:
            for index in indexes:
                table = read_part(job_dir, index)
                rows += table.num_rows
                if file_name.endswith(".parquet"):
                    if writer is None:
                        writer = pq.ParquetWriter(sink, table.schema)
                    writer.write_table(table)
                else:
                    if azure_layout:
                        table = table.drop_columns(
                            [c for c in (SOURCE_FILE, SOURCE_ROW) if c in table.column_names]
                        )
                    table = _for_csv(table)
                    if writer is None:
                        writer = pacsv.CSVWriter(
                            sink,
                            table.schema,
                            write_options=pacsv.WriteOptions(include_header=not azure_layout),
                        )
                    writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()
    fs.move(tmp, final)
    return rows


def write_summary(output: Location, summary: dict[str, Any]) -> None:
    fs = output.filesystem
    fs.create_dir(output.path, recursive=True)
    (tmp, stream), final = _temporary(output, "summary.json"), f"{output.path}/summary.json"
    with stream as sink:
        sink.write(json.dumps(summary, indent=2).encode())
    fs.move(tmp, final)


def _temporary(output: Location, file_name: str) -> tuple[str, Any]:
    """A new file beside `file_name` in the output folder and a stream writing it, to be
    renamed when whole: on local disk made with O_EXCL under a random name and written
    through the descriptor that made it (a link planted at a fixed temporary name had the
    job overwrite what it pointed at); the rename then replaces a link at the final name
    instead of writing through it. On an object store, a random key."""
    if isinstance(output.filesystem, pafs.LocalFileSystem):
        fd, path = tempfile.mkstemp(dir=output.path, prefix=f".{file_name}.", suffix=".incomplete")
        return path, os.fdopen(fd, "wb")
    path = f"{output.path}/.{file_name}.{secrets.token_hex(8)}.incomplete"
    return path, output.filesystem.open_output_stream(path)
