"""The rows a monitor judges: what the data collector logged for a deployment (its
Parquet files, Azure's layout: `<endpoint>/<deployment>/<time>/` for request and
response payloads, `<endpoint>/<deployment>/<collection>/<time>/` for a script's
collections; or its Kafka topic's records), as a table with a column per feature and
prediction; and the baseline."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq

from batch.sources import locate
from deploy.specs import CollectorDestination, MonitorSpec
from monitoring.topics import TopicUnreadable, of_deployment, read_topic


class MonitorDataError(Exception):
    """The collected data or the baseline cannot be read as the monitor says."""


def collected(
    spec: MonitorSpec, destination: CollectorDestination, since: float | None
) -> pa.Table:
    """Every row the collector logged to `destination` for the monitor's deployment and
    collection, with its `time` (epoch seconds). From a Kafka topic, only the records
    sent from `since` on (None: all) are read."""
    if destination.kafka is not None:
        try:
            records = read_topic(destination.kafka, since)
        except TopicUnreadable as exc:
            raise MonitorDataError(str(exc)) from None
        return of_deployment(records, spec.endpoint_name, spec.deployment_name, spec.collection)
    assert destination.path is not None
    return _from_files(spec, destination.path)


def _from_files(spec: MonitorSpec, root: str) -> pa.Table:
    location = locate(f"{root.rstrip('/')}/{spec.endpoint_name}/{spec.deployment_name}")
    fs = location.filesystem
    if fs.get_file_info(location.path).type != pafs.FileType.Directory:
        return pa.table({"time": pa.array([], pa.float64())})
    payloads = spec.collection in ("request", "response")
    tables = []
    for info in fs.get_file_info(pafs.FileSelector(location.path, recursive=True)):
        if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
            continue
        first = info.path[len(location.path) :].strip("/").split("/")[0]
        # Payload files sit under the time folders (digits); a collection's under its name.
        if first.isdigit() if payloads else first == spec.collection:
            tables.append(pq.read_table(info.path, filesystem=fs))
    if not tables:
        return pa.table({"time": pa.array([], pa.float64())})
    return pa.concat_tables(tables, promote_options="permissive")


def between(table: pa.Table, start: float, end: float) -> pa.Table:
    times = pc.cast(table.column("time"), pa.float64())
    return table.filter(pc.and_(pc.greater(times, start), pc.less_equal(times, end)))


def first_rows(table: pa.Table, count: int) -> pa.Table:
    if table.num_rows == 0:
        return table
    order = pc.sort_indices(table, sort_keys=[("time", "ascending")])
    return table.take(order[:count])


def _json_column(column: pa.ChunkedArray, what: str) -> pa.Table:
    """Payload strings (one JSON document each) as a table, parsed by pyarrow."""
    texts = pc.drop_null(column)
    if len(texts) == 0:
        return pa.table({})
    # One document per line, without a Python loop: each text with "\n" after it, then
    # the string array's data buffer is the whole file.
    lines = pc.binary_join_element_wise(
        pc.replace_substring(texts, "\n", " "), pa.scalar(""), "\n"
    ).combine_chunks()
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset :]
    data = lines.buffers()[2].to_pybytes()[offsets[0] : offsets[len(lines)]]
    try:
        return pajson.read_json(io.BytesIO(data))
    except pa.ArrowInvalid as exc:
        raise MonitorDataError(
            f"the collected {what} payloads are not JSON documents: {exc}"
        ) from None


def features_of(spec: MonitorSpec, rows: pa.Table, names: list[str]) -> pa.Table:
    """A column per feature (and prediction). A custom collection's columns are named
    already; `request` payloads (`input_data` rows, or V2 `inputs` with one tensor of
    rows) become columns in order, named by `names`."""
    if spec.collection != "request":
        wanted = [n for n in [*names, *spec.predictions] if n in rows.column_names]
        return rows.select(wanted)
    logged = rows.filter(pc.is_valid(rows.column("request"))) if rows.num_rows else rows
    if logged.num_rows == 0:
        return pa.table({n: pa.array([], pa.float64()) for n in names})
    requests = _json_column(logged.column("request"), "request")
    matrix = _rows_of(requests)
    if matrix.shape[1] != len(names):
        raise MonitorDataError(
            f"the requests hold {matrix.shape[1]} values per row; the monitor names "
            f"{len(names)} features ({', '.join(names)})"
        )
    columns = {name: matrix[:, i] for i, name in enumerate(names)}
    if spec.predictions:
        answers = _json_column(logged.column("response"), "response")
        for name in spec.predictions:
            if name in answers.column_names:
                values = answers.column(name)
                while pa.types.is_list(values.type):
                    values = pc.list_flatten(values)
                if len(values) == matrix.shape[0]:
                    columns[name] = values.to_numpy(zero_copy_only=False)
    return pa.table(columns)


def _rows_of(requests: pa.Table) -> np.ndarray:
    """The request rows as one matrix (rows x features): `input_data` rows, or V2
    `inputs` (one tensor of rows per request, nested or flat with its shape)."""
    if "input_data" in requests.column_names:
        data = requests.column("input_data")
    elif "inputs" in requests.column_names:
        tensors = pc.list_flatten(requests.column("inputs"))
        data = pc.struct_field(tensors, "data")
        if not pa.types.is_list(data.type.value_type):  # flat values: rows by the shape
            width = int(pc.struct_field(tensors, "shape")[0].values[-1].as_py())
            values = pc.cast(pc.list_flatten(data), pa.float64()).to_numpy(zero_copy_only=False)
            if width <= 0 or len(values) % width:
                raise MonitorDataError("the requests' tensors do not hold whole rows")
            return values.reshape(-1, width)
    else:
        raise MonitorDataError("the requests hold neither input_data nor inputs")
    rows = pc.list_flatten(data)  # one entry per row: its values
    if not pa.types.is_list(rows.type):
        raise MonitorDataError("the requests' rows are not lists of values")
    lengths = pc.list_value_length(rows).to_numpy(zero_copy_only=False)
    if len(lengths) == 0:
        return np.zeros((0, 0))
    if not np.all(lengths == lengths[0]):
        raise MonitorDataError("the requests' rows differ in length")
    values = pc.cast(pc.list_flatten(rows), pa.float64()).to_numpy(zero_copy_only=False)
    return values.reshape(len(lengths), int(lengths[0]))


def read_baseline(path: str) -> pa.Table:
    location = locate(path)
    try:
        if path.endswith(".csv"):
            with location.filesystem.open_input_stream(location.path) as stream:
                return pacsv.read_csv(stream)
        return pq.read_table(location.path, filesystem=location.filesystem)
    except (OSError, pa.ArrowInvalid) as exc:
        raise MonitorDataError(f"baseline.path: cannot read '{path}': {exc}") from None
