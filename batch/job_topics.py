"""Batch jobs over Kafka: submissions on a jobs topic, state changes published on a
job-events topic, so other systems can start jobs and react when they end.

A submission is JSON with the fields of `batch invoke` (`endpoint`, `input`,
`output`, optional `deployment`, `input_type`, `mini_batch_size`, ...) and an
optional `job_id` (else the record's key). The same job id twice creates one
job. A submission that cannot become a job is answered by a `rejected` event
with the reason; its offset is committed either way, so it never blocks the topic.

Events are JSON `{"job_id", "endpoint", "state", "reason", "at", ...}`, keyed by job
id, one per state change (after a restart the current states are published again).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from batch.errors import BatchError
from batch.jobs import BatchJobs
from deploy.errors import Conflict, ControlPlaneError
from deploy.jobs import JobOrder
from deploy.store import utc_now

log = logging.getLogger("servegate.jobs")
OVERRIDES = (
    "mini_batch_size",
    "instance_count",
    "error_threshold",
    "output_file_name",
    "max_concurrency_per_instance",
)


class JobTopics:
    def __init__(
        self,
        jobs: BatchJobs,
        bootstrap_servers: str,
        jobs_topic: str,
        events_topic: str,
        group_id: str,
    ) -> None:
        self.jobs = jobs
        self.bootstrap_servers, self.jobs_topic, self.events_topic = (
            bootstrap_servers,
            jobs_topic,
            events_topic,
        )
        self.group_id = group_id
        self._published: dict[str, tuple[str, int]] = {}
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            self.jobs_topic,
            bootstrap_servers=self.bootstrap_servers,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers, acks="all")
        await consumer.start()
        await producer.start()
        watcher = asyncio.get_running_loop().create_task(self._watch(producer))
        try:
            while not self._stop.is_set():
                polled = await consumer.getmany(timeout_ms=200)
                for batch in polled.values():
                    for record in batch:
                        await self._submit(record, producer)
                if polled:
                    await consumer.commit()
        finally:
            watcher.cancel()
            await consumer.stop()
            await producer.stop()

    async def _submit(self, record: Any, producer: AIOKafkaProducer) -> None:
        job_id = None
        try:
            message = orjson.loads(record.value or b"")
            if not isinstance(message, dict):
                raise ControlPlaneError("a job submission must be a JSON object")
            job_id = str(message.get("job_id") or (record.key or b"").decode() or "") or None
            if job_id is None:
                raise ControlPlaneError("a job submission needs a 'job_id' (or a record key)")
            if self.jobs.control.store.get_job(job_id) is not None:
                log.info("job %s already exists: submission ignored", job_id)
                return

            def text(key: str) -> str:
                return str(message.get(key) or "")

            order = JobOrder(
                text("endpoint"),
                text("deployment") or None,
                text("input"),
                text("input_type") or None,
                text("output"),
                {k: message.get(k) for k in OVERRIDES},
                job_id,
            )
            await asyncio.to_thread(self.jobs.invoke, order, f"kafka:{self.jobs_topic}")
        except Conflict:
            return  # created a moment ago by another submission with the same id
        except (ControlPlaneError, BatchError, orjson.JSONDecodeError, ValueError) as exc:
            log.warning("rejected job submission %s: %s", job_id, exc)
            event = {
                "job_id": job_id,
                "state": "rejected",
                "reason": str(exc),
                "at": utc_now(),
                "source_offset": record.offset,
            }
            await producer.send_and_wait(
                self.events_topic, orjson.dumps(event), key=(job_id or "").encode()
            )

    async def _watch(self, producer: AIOKafkaProducer) -> None:
        while True:
            for job in await asyncio.to_thread(self.jobs.ledger.recent, None, 500):
                mark = (job.state, job.done)
                if self._published.get(job.id) == mark:
                    continue
                self._published[job.id] = mark
                event = {
                    "job_id": job.id,
                    "endpoint": job.endpoint,
                    "state": job.state,
                    "reason": job.reason,
                    "mini_batches_done": job.done,
                    "mini_batches": job.mini_batches,
                    "output": job.output,
                    "at": utc_now(),
                }
                if job.final:
                    event["summary"] = job.summary
                await producer.send_and_wait(
                    self.events_topic, orjson.dumps(event), key=job.id.encode()
                )
            await asyncio.sleep(0.5)


def run_job_topics(
    home: Path, bootstrap_servers: str, jobs_topic: str, events_topic: str, group_id: str
) -> None:
    from deploy.home import ControlPlaneSettings, open_control_plane

    control = open_control_plane(ControlPlaneSettings.resolve(home))
    bridge = JobTopics(
        BatchJobs(control, home), bootstrap_servers, jobs_topic, events_topic, group_id
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, bridge.stop)
        await bridge.run()

    asyncio.run(main())
