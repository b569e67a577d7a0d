"""Batch throughput: a job over a generated 1M-row Parquet file with the MLP,
against onnxruntime in-process at the same batch size, in one run.

    python -m loadtests.batch_benchmark [--rows 1000000] [--mini-batch-size 10000] [--workers 2]

The in-process figure is one thread scoring the same rows in batches of
`mini_batch_size`; the target compares the job's rows/s with that figure times
the workers the job used. Reported: the whole job (planning, scoring, writing the
output) and its scoring phase alone.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq

from loadtests import models
from loadtests.gateway_process import GatewayProcess


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--mini-batch-size", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--report", type=Path, default=Path("reports/batch-benchmark.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sg-batch-bench-"))
    mlp = models.mlp()
    (work / "mlp.onnx").write_bytes(mlp)
    x = write_input(work / "rows.parquet", args.rows)
    raw = in_process(mlp, x, args.mini_batch_size)

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
        started = time.perf_counter()
        job = gateway.call(
            "POST",
            "/management/batch/jobs",
            json={
                "endpoint": "bench",
                "input": str(work / "rows.parquet"),
                "output": str(work / "out"),
            },
        )
        while job["state"] not in ("completed", "failed", "cancelled"):
            time.sleep(0.05)
            job = gateway.call("GET", f"/management/batch/jobs/{job['id']}")
        wall = time.perf_counter() - started
        assert job["state"] == "completed", job
        output_rows = pq.ParquetFile(work / "out" / "predictions.parquet").metadata.num_rows
        result = {
            "rows": args.rows,
            "mini_batch_size": args.mini_batch_size,
            "workers": args.workers,
            "in_process_rows_per_s_one_thread": raw,
            "job_wall_s": wall,
            "job_rows_per_s": args.rows / wall,
            "job_runner_summary": job["summary"],
            "ratio_job_vs_in_process_x_workers": args.rows / wall / (raw * args.workers),
            "output_rows": output_rows,
        }
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
