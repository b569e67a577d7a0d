"""The data collector: request and response payloads of a deployment, logged from
the gateway through a bounded buffer, to a Kafka topic or to Parquet files.

It never delays or fails a scoring request: `offer` is a non-blocking put. The
buffer is bounded in bytes (`BUFFER_BYTES`) as well as in records; when it is full
(a slow or absent broker) the oldest records are dropped first and counted, so
memory stays bounded and the newest payloads are kept. One payload is stored up to
`MAX_PAYLOAD_BYTES`; a longer one is cut, and its record says so
(`request_truncated`, `request_bytes`). Answers other than 2xx are logged without
bodies: anyone can send a malformed body, and it is no model input. A sender task
drains the buffer; when the broker is down its sends fail and are counted as drops,
and logging resumes by itself when the broker is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import Any

from deploy.specs import (
    PAYLOAD_COLLECTIONS,
    CollectionSpec,
    DataCollectorSpec,
)

log = logging.getLogger(__name__)

BUFFER = 10_000
BUFFER_BYTES = 64 * 1024 * 1024
MAX_PAYLOAD_BYTES = 256 * 1024
SEND_TIMEOUT_S = 2.0
FLUSH_EVERY_S = 1.0
ROLL_FORMATS = {
    "Minute": "%Y/%m/%d/%H/%M",
    "Hour": "%Y/%m/%d/%H",
    "Day": "%Y/%m/%d",
    "Month": "%Y/%m",
    "Year": "%Y",
}


class PayloadCollector:
    def __init__(
        self, endpoint: str, deployment: str, spec: DataCollectorSpec, artifacts: str
    ) -> None:
        self.endpoint, self.deployment = endpoint, deployment
        self.sampling_rate = spec.sampling_rate
        off = CollectionSpec()
        self.requests = spec.collections.get("request", off).enabled
        self.responses = spec.collections.get("response", off).enabled
        #: collections scoring scripts fill with Azure's Collector(name=...).collect()
        self.custom = {
            name
            for name, collection in spec.collections.items()
            if collection.enabled and name not in PAYLOAD_COLLECTIONS
        }
        self.destination = spec.destination_under(artifacts)
        self.rolling_rate = spec.rolling_rate
        self.collected = 0
        self.dropped = 0
        self._buffer: deque[dict[str, Any]] = deque()
        self._waiting = asyncio.Event()
        self._buffered_bytes = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        sender = self._kafka if self.destination.kafka is not None else self._files
        self._task = asyncio.get_running_loop().create_task(sender())

    def offer(
        self,
        request_id: str,
        status: int,
        latency_s: float,
        request: bytes,
        response: bytes,
        rng: Any,
    ) -> None:
        """Hand a payload over; never waits. Sampled by `sampling_rate`."""
        if not (self.requests or self.responses) or rng.random() >= self.sampling_rate:
            return
        with_bodies = 200 <= status < 300
        record: dict[str, Any] = {
            "request_id": request_id,
            "endpoint": self.endpoint,
            "deployment": self.deployment,
            "time": time.time(),
            "status": status,
            "latency_ms": round(latency_s * 1000, 3),
        }
        size = 256
        for name, payload, enabled in (
            ("request", request, self.requests),
            ("response", response, self.responses),
        ):
            text = None
            if enabled and with_bodies:
                text = payload[:MAX_PAYLOAD_BYTES].decode("utf-8", "replace")
                size += len(text)
            record[name] = text
            record[f"{name}_bytes"] = len(payload)
            record[f"{name}_truncated"] = text is not None and len(payload) > MAX_PAYLOAD_BYTES
        self._buffered(record, size)

    def offer_rows(self, collection: str, rows: list[dict[str, Any]], correlation_id: str) -> None:
        """Rows a scoring script collected (Azure's custom logging), for an enabled
        collection; sampled by `sampling_rate` per call, as payloads are per request."""
        if collection not in self.custom or random.random() >= self.sampling_rate:
            return
        now = time.time()
        for row in rows:
            record = {
                "collection": collection,
                "correlation_id": correlation_id,
                "endpoint": self.endpoint,
                "deployment": self.deployment,
                "time": now,
                **{str(k): _plain(v) for k, v in row.items()},
            }
            self._buffered(record, 64 + len(repr(row)))

    def _buffered(self, record: dict[str, Any], size: int) -> None:
        record["_size"] = size
        # Oldest first out: keep the buffer under both bounds.
        while self._buffer and (
            len(self._buffer) >= BUFFER or self._buffered_bytes + size > BUFFER_BYTES
        ):
            self._take()
            self.dropped += 1
        self._buffer.append(record)
        self._buffered_bytes += size
        self._waiting.set()

    def _take(self) -> dict[str, Any]:
        record = self._buffer.popleft()
        self._buffered_bytes -= record.pop("_size")
        return record

    async def _next(self) -> dict[str, Any]:
        """The oldest buffered record, waiting for one."""
        while not self._buffer:
            self._waiting.clear()
            await self._waiting.wait()
        return self._take()

    async def _kafka(self) -> None:
        import orjson
        from aiokafka import AIOKafkaProducer

        settings = self.destination.kafka
        assert settings is not None
        producer: AIOKafkaProducer | None = None
        while True:
            record = await self._next()
            try:
                if producer is None:
                    producer = AIOKafkaProducer(
                        bootstrap_servers=settings.bootstrap_servers,
                        request_timeout_ms=int(SEND_TIMEOUT_S * 1000),
                    )
                    await asyncio.wait_for(producer.start(), SEND_TIMEOUT_S)
                await asyncio.wait_for(
                    producer.send_and_wait(
                        settings.topic,
                        orjson.dumps(record),
                        key=(record.get("request_id") or record["correlation_id"]).encode(),
                    ),
                    SEND_TIMEOUT_S,
                )
                self.collected += 1
            except Exception as exc:  # broker slow or down: count, keep serving, retry later
                self.dropped += 1
                log.debug("data collector send failed: %r", exc)
                if producer is not None:
                    with contextlib.suppress(Exception):
                        await producer.stop()
                    producer = None

    async def _files(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from batch.sources import locate

        assert self.destination.path is not None
        target = locate(self.destination.path)
        rows: list[dict[str, Any]] = []
        deadline = time.monotonic() + FLUSH_EVERY_S
        while True:
            with contextlib.suppress(TimeoutError):
                rows.append(
                    await asyncio.wait_for(self._next(), max(0.01, deadline - time.monotonic()))
                )
            if rows and (len(rows) >= 1000 or time.monotonic() >= deadline):
                batch, rows = rows, []
                roll = datetime.now(UTC).strftime(ROLL_FORMATS[self.rolling_rate])
                # Payloads under <deployment>/<time>/, a script's collection under
                # <deployment>/<collection>/<time>/ (Azure's layout), a file each.
                by_collection: dict[str, list[dict[str, Any]]] = {}
                for record in batch:
                    by_collection.setdefault(record.get("collection", ""), []).append(record)
                for collection, records in by_collection.items():
                    parts = [target.path, self.endpoint, self.deployment, collection, roll]
                    folder = "/".join(p for p in parts if p)
                    name = f"{folder}/{uuid.uuid4().hex}.parquet"
                    try:
                        await asyncio.to_thread(
                            _write_parquet,
                            target.filesystem,
                            folder,
                            name,
                            pa.Table.from_pylist(records),
                            pq,
                        )
                        self.collected += len(records)
                    except (OSError, pa.ArrowException) as exc:
                        self.dropped += len(records)
                        log.warning("data collector cannot write %s: %s", name, exc)
            if time.monotonic() >= deadline:
                deadline = time.monotonic() + FLUSH_EVERY_S

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _write_parquet(fs: Any, folder: str, name: str, table: Any, pq: Any) -> None:
    fs.create_dir(folder, recursive=True)
    tmp = name + ".incomplete"
    with fs.open_output_stream(tmp) as sink:
        pq.write_table(table, sink)
    fs.move(tmp, name)


def _plain(value: Any) -> Any:
    """A collected value as Parquet and JSON take it (numpy scalars as Python ones)."""
    item = getattr(value, "item", None)
    return item() if callable(item) and getattr(value, "shape", None) == () else value
