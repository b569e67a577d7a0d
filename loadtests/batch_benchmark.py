"""Batch throughput: a job over a generated 1M-row Parquet file with the MLP, against
what a user could script instead, in one run.

    python -m loadtests.batch_benchmark [--rows 1000000] [--mini-batch-size 10000]
        [--workers N] [--rounds 2]

The baseline (`baseline_worker`): `workers` processes, each reading its share of the
row groups with pyarrow, scoring them with onnxruntime (one thread) in batches of
`mini_batch_size`, and writing its own Parquet part; process start and model load
count, as they do for the job. The job and the baseline run in turn, `--rounds`
times each (so the machine's drift hits both), and the medians are reported, with
onnxruntime in-process on rows already in memory for reference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq

from loadtests import models
from loadtests.gateway_process import GatewayProcess
from runtimes.resources import usable_cpus


def write_input(path: Path, rows: int) -> np.ndarray:
    """64 float columns, the usual tabular layout (a Parquet list column would decode
    ~10x slower: measured 230 ms vs 17.5 ms per 100k-row group on one core)."""
    x = np.random.default_rng(0).normal(size=(rows, 64)).astype(np.float32)
    pq.write_table(pa.table({f"f{i}": x[:, i] for i in range(64)}), path, row_group_size=100_000)
    return x


def in_process(model: bytes, x: np.ndarray, batch: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    session.run(None, {"input": x[:batch]})
    started = time.perf_counter()
    for start in range(0, len(x), batch):
        session.run(None, {"input": x[start : start + batch]})
    return len(x) / (time.perf_counter() - started)


def baseline_worker(source: str, model: str, output: str, index: int, of: int, batch: int) -> None:
    """One process of the hand-written baseline: row groups index, index + of, ..."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    parquet = pq.ParquetFile(source)
    writer = None
    for group in range(index, parquet.num_row_groups, of):
        table = parquet.read_row_group(group)
        x = np.column_stack([c.to_numpy() for c in table.columns]).astype(np.float32)
        for start in range(0, len(x), batch):
            (y,) = session.run(None, {"input": x[start : start + batch]})
            part = pa.table(
                {"output": pa.FixedSizeListArray.from_arrays(pa.array(y.ravel()), y.shape[1])}
            )
            if writer is None:
                writer = pq.ParquetWriter(output, part.schema)
            writer.write_table(part)
    if writer is not None:
        writer.close()


def run_baseline(work: Path, workers: int, batch: int) -> float:
    """Wall seconds for the baseline's processes, from start to the last one's exit."""
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loadtests.batch_benchmark",
                "--baseline-worker",
                str(work / "rows.parquet"),
                str(work / "mlp.onnx"),
                str(work / f"baseline-{i}.parquet"),
                str(i),
                str(workers),
                str(batch),
            ]
        )
        for i in range(workers)
    ]
    for process in processes:
        if process.wait() != 0:
            raise RuntimeError("a baseline worker failed")
    return time.perf_counter() - started


def run_job(
    gateway: GatewayProcess, work: Path, output: str, endpoint: str = "bench"
) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    job = gateway.call(
        "POST",
        "/management/batch/jobs",
        json={"endpoint": endpoint, "input": str(work / "rows.parquet"), "output": output},
    )
    while job["state"] not in ("completed", "failed", "cancelled"):
        time.sleep(0.05)
        job = gateway.call("GET", f"/management/batch/jobs/{job['id']}")
    wall = time.perf_counter() - started
    assert job["state"] == "completed", job
    return wall, job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--mini-batch-size", type=int, default=10_000)
    parser.add_argument(
        "--workers", type=int, default=usable_cpus(), help="default: the CPUs this process may use"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--report", type=Path, default=Path("reports/batch-benchmark.json"))
    parser.add_argument("--baseline-worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_worker:
        source, model, output, index, of, batch = args.baseline_worker
        baseline_worker(source, model, output, int(index), int(of), int(batch))
        return
    work = Path(tempfile.mkdtemp(prefix="sg-batch-bench-"))
    mlp = models.mlp()
    (work / "mlp.onnx").write_bytes(mlp)
    x = write_input(work / "rows.parquet", args.rows)
    raw = in_process(mlp, x, args.mini_batch_size)
    del x

    walls: dict[str, list[float]] = {"job": [], "baseline": []}
    with GatewayProcess(work / "home") as gateway:
        gateway.call(
            "POST", "/management/models/mlp/versions", params={"filename": "mlp.onnx"}, content=mlp
        )
        gateway.call("POST", "/management/batch/endpoints", json={"name": "bench"})
        gateway.call(
            "POST",
            "/management/batch/endpoints/bench/deployments",
            json={
                "name": "mlp",
                "model": "mlp:1",
                "compute": {"instance_count": args.workers},
                "settings": {
                    "mini_batch_size": args.mini_batch_size,
                    "output_file_name": "predictions.parquet",
                },
            },
        )
        for i in range(args.rounds):
            walls["baseline"].append(run_baseline(work, args.workers, args.mini_batch_size))
            wall, job = run_job(gateway, work, str(work / f"out-{i}"))
            walls["job"].append(wall)
    output_rows = pq.ParquetFile(work / "out-0" / "predictions.parquet").metadata.num_rows
    job_wall, baseline_wall = statistics.median(walls["job"]), statistics.median(walls["baseline"])
    result = {
        "rows": args.rows,
        "mini_batch_size": args.mini_batch_size,
        "workers": args.workers,
        "rounds": args.rounds,
        "job_wall_s": [round(w, 3) for w in walls["job"]],
        "baseline_wall_s": [round(w, 3) for w in walls["baseline"]],
        "job_rows_per_s": round(args.rows / job_wall),
        "baseline_rows_per_s": round(args.rows / baseline_wall),
        "ratio_job_vs_baseline (>= 0.85)": round(baseline_wall / job_wall, 3),
        "in_process_rows_per_s_one_thread_in_memory": round(raw),
        "job_runner_summary": job["summary"],
        "output_rows": output_rows,
    }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
