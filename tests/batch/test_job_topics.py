"""Batch jobs submitted over a topic (idempotent by job id) and their events."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from tests.batch.test_jobs import batch_endpoint, features, write_input
from tests.batch.test_streaming import consume_all, create_topics, produce
from tests.conftest import Gateway, wait_for


def test_jobs_over_a_topic_are_created_once_and_publish_events(
    gateway: Gateway,
    broker: str,
    tmp_path: Path,
    model_dir: Path,
    unique_name: str,
) -> None:
    batch_endpoint(gateway, tmp_path, model_dir, unique_name)
    write_input(tmp_path / "in", "parquet", features(9), "rows")
    jobs, events = f"jobs-{unique_name}", f"events-{unique_name}"
    create_topics(broker, (jobs, 1), (events, 1))
    with (tmp_path / "bridge.log").open("wb") as log:
        bridge = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "servegate",
                "--home",
                str(gateway.home),
                "stream",
                "jobs",
                *gateway.store_args,
                "--bootstrap-servers",
                broker,
                "--jobs-topic",
                jobs,
                "--events-topic",
                events,
                "--group-id",
                f"jobs-{unique_name}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ},
        )
    try:
        job_id = f"{unique_name}-nightly-1"
        submission = json.dumps(
            {
                "job_id": job_id,
                "endpoint": unique_name,
                "input": str(tmp_path / "in"),
                "output": str(tmp_path / "out"),
            }
        ).encode()
        bad = json.dumps(
            {
                "job_id": "bad-1",
                "endpoint": unique_name,
                "input": str(tmp_path / "missing"),
                "output": str(tmp_path / "x"),
            }
        ).encode()
        # An id that is a path: refused before anything is made of it.
        escaping = "../../../" + f"{unique_name}-escaped"
        traversal = json.dumps(
            {
                "job_id": escaping,
                "endpoint": unique_name,
                "input": str(tmp_path / "in"),
                "output": str(tmp_path / "y"),
            }
        ).encode()
        produce(
            broker,
            jobs,
            [
                (job_id.encode(), submission),
                (job_id.encode(), submission),
                (b"bad-1", bad),
                (b"", traversal),
            ],
        )

        def finished() -> list | None:
            found = [json.loads(r.value) for r in consume_all(broker, events)]
            mine = [e for e in found if e["job_id"] == job_id]
            return found if any(e["state"] == "completed" for e in mine) else None

        found = wait_for(finished, 120, every_s=0.5)
        # The same submission twice: one job.
        listed = json.loads(gateway.cli("batch", "list", "-e", unique_name)[1])
        assert [j["id"] for j in listed].count(job_id) == 1
        # One event per state change, ending with completed (a fast job may skip straight there).
        states = [e["state"] for e in found if e["job_id"] == job_id]
        assert states[-1] == "completed" and states.count("completed") == 1, states
        done = next(e for e in found if e["job_id"] == job_id and e["state"] == "completed")
        assert done["summary"]["items"]["done"] == 2500
        assert pq.read_metadata(tmp_path / "out" / "predictions.parquet").num_rows == 2500
        rejected = [e for e in found if e["job_id"] == "bad-1"]
        assert rejected and rejected[0]["state"] == "rejected"
        assert "no such file or folder" in rejected[0]["reason"]
        refused = [e for e in found if e["job_id"] == escaping]
        assert refused and refused[0]["state"] == "rejected", found
        assert "field 'job_id'" in refused[0]["reason"]
        assert not (gateway.home / "jobs" / escaping).resolve().exists()
        assert not (gateway.home.parent.parent / f"{unique_name}-escaped").exists()
    finally:
        bridge.send_signal(signal.SIGTERM)
        bridge.wait(30)
