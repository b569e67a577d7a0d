"""The rows a monitor judges when the data collector sends them to a Kafka topic: the
topic's records (JSON documents, one per payload or collected row) as one table, with
the same columns the Parquet files have.

The topic is read from the first record at or after `since` (Kafka's offsets by
timestamp: a record is sent after it is made, so no record of the window comes before
that offset) up to its end as it was when the read began, on every partition, without
a consumer group: a monitor run commits nothing and disturbs no other reader."""

from __future__ import annotations

import asyncio
import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from deploy.specs import KafkaDestination

#: how long one read may take (connecting, fetching a window's records)
READ_TIMEOUT_S = 60.0
#: records per fetch
FETCH_RECORDS = 10_000


class TopicUnreadable(Exception):
    """The broker could not be reached, or the topic not read."""


def read_topic(destination: KafkaDestination, since: float | None) -> pa.Table:
    """Every record of the topic from `since` (epoch seconds; None: from the start), as
    a table; an empty one when the topic has none (or does not exist yet)."""
    try:
        values = asyncio.run(asyncio.wait_for(_values(destination, since), READ_TIMEOUT_S))
    except ImportError:
        raise TopicUnreadable("reading a Kafka topic needs the kafka extra (aiokafka)") from None
    except Exception as exc:
        raise TopicUnreadable(
            f"cannot read topic '{destination.topic}' at '{destination.bootstrap_servers}': {exc!r}"
        ) from None
    if not values:
        return pa.table({})
    # orjson writes no newline inside a document: the records are JSON lines as they come.
    try:
        return pajson.read_json(io.BytesIO(b"\n".join(values)))
    except pa.ArrowInvalid as exc:
        raise TopicUnreadable(
            f"topic '{destination.topic}' holds records that are not JSON: {exc}"
        ) from None


async def _values(destination: KafkaDestination, since: float | None) -> list[bytes]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=destination.bootstrap_servers,
        enable_auto_commit=False,
        request_timeout_ms=int(READ_TIMEOUT_S * 1000),
    )
    await consumer.start()
    try:
        topics = await consumer.topics()
        if destination.topic not in topics:
            return []
        partitions = consumer.partitions_for_topic(destination.topic) or set()
        assigned = [TopicPartition(destination.topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        ends = await consumer.end_offsets(assigned)
        if since is None:
            await consumer.seek_to_beginning(*assigned)
        else:
            starts = await consumer.offsets_for_times({tp: int(since * 1000) for tp in assigned})
            for tp in assigned:
                found = starts.get(tp)
                consumer.seek(tp, found.offset if found is not None else ends[tp])
        values: list[bytes] = []
        pending = {tp for tp in assigned if await consumer.position(tp) < ends[tp]}
        while pending:
            fetched = await consumer.getmany(*pending, timeout_ms=1000, max_records=FETCH_RECORDS)
            for tp, records in fetched.items():
                values.extend(r.value for r in records if r.offset < ends[tp] and r.value)
            pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
        return values
    finally:
        await consumer.stop()


def of_deployment(table: pa.Table, endpoint: str, deployment: str, collection: str) -> pa.Table:
    """The records one deployment logged to a topic it may share with others, for one
    collection (`request`/`response`: the payload records, which name no collection)."""
    if table.num_rows == 0 or "endpoint" not in table.column_names:
        return pa.table({"time": pa.array([], pa.float64())})
    mask = pc.and_(
        pc.equal(table.column("endpoint"), endpoint),
        pc.equal(table.column("deployment"), deployment),
    )
    names = table.column("collection") if "collection" in table.column_names else None
    if collection in ("request", "response"):
        if names is not None:
            mask = pc.and_(mask, pc.is_null(names))
    else:
        if names is None:
            return pa.table({"time": pa.array([], pa.float64())})
        mask = pc.and_(mask, pc.fill_null(pc.equal(names, collection), False))
    return table.filter(pc.fill_null(mask, False))
