"""Batch on Ray: the same 1M-row Parquet job with the local executor, with `executor: ray`,
and as a Ray Data script, on the same local Ray cluster, in one run.

    pip install "ray[data]"   # Ray Data (pandas) for the third case; not in servegate's extras
    python -m loadtests.ray_batch_benchmark [--rows 1000000] [--mini-batch-size 10000]
        [--workers 2] [--rounds 2]

The Ray Data script is what a Ray user writes for the job:
`read_parquet().map_batches(<onnxruntime class>, N actors).write_parquet()`, with N
the job's workers and the same batch size. The three run in turn, `--rounds` times each
(the machine's drift hits all), and the medians are reported, as rows/s end to end
(start of the job or script to its output written).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from loadtests import models
from loadtests.batch_benchmark import run_job, write_input
from loadtests.gateway_process import GatewayProcess
from loadtests.ray_cluster import RAY_ENV, start_ray_cluster

#: what each worker (our actor, or Ray Data's) asks the cluster for
ASK = {"num_cpus": 1}


class OnnxBatchPredictor:
    """Ray Data's `map_batches` class: the MLP on a batch of 64 float columns."""

    def __init__(self, model: bytes) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.stack([batch[f"f{i}"] for i in range(64)], axis=1).astype(np.float32)
        (y,) = self.session.run(None, {"input": x})
        return {"output": y}


def run_ray_data(model: bytes, source: Path, output: Path, workers: int, batch: int) -> float:
    import ray

    started = time.perf_counter()
    (
        ray.data.read_parquet(str(source))
        .map_batches(
            OnnxBatchPredictor,
            fn_constructor_args=(model,),
            compute=ray.data.ActorPoolStrategy(size=workers),
            batch_size=batch,
            batch_format="numpy",
            **ASK,
        )
        .write_parquet(str(output))
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--mini-batch-size", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--report", type=Path, default=Path("reports/ray-batch-benchmark.json"))
    args = parser.parse_args()
    os.environ.update(RAY_ENV)
    # Logical CPUs (the machine may have fewer cores): the workers' and as many again for
    # Ray Data's read and write tasks.
    cluster = start_ray_cluster(cpus=2 * args.workers)
    os.environ["SERVEGATE_RAY_ADDRESS"] = cluster.address
    work = Path(tempfile.mkdtemp(prefix="sg-ray-batch-"))
    walls: dict[str, list[float]] = {"local": [], "ray": [], "ray_data": []}
    try:
        import ray

        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        mlp = models.mlp()
        (work / "mlp.onnx").write_bytes(mlp)
        write_input(work / "rows.parquet", args.rows)
        with GatewayProcess(work / "home") as gateway:
            gateway.call(
                "POST",
                "/management/models/mlp/versions",
                params={"filename": "mlp.onnx"},
                content=mlp,
            )
            for executor in ("local", "ray"):
                compute: dict[str, Any] = {"instance_count": args.workers, "executor": executor}
                if executor == "ray":
                    compute["ray_actor_options"] = ASK
                gateway.call("POST", "/management/batch/endpoints", json={"name": executor})
                gateway.call(
                    "POST",
                    f"/management/batch/endpoints/{executor}/deployments",
                    json={
                        "name": "mlp",
                        "model": "mlp:1",
                        "compute": compute,
                        "settings": {
                            "mini_batch_size": args.mini_batch_size,
                            "output_file_name": "predictions.parquet",
                        },
                    },
                )
            for i in range(args.rounds):
                for executor in ("local", "ray"):
                    wall, _ = run_job(gateway, work, str(work / f"{executor}-{i}"), executor)
                    walls[executor].append(wall)
                walls["ray_data"].append(
                    run_ray_data(
                        mlp,
                        work / "rows.parquet",
                        work / f"ray-data-{i}",
                        args.workers,
                        args.mini_batch_size,
                    )
                )
        rows = {
            name: sum(
                pq.ParquetFile(f).metadata.num_rows for f in (work / folder).glob("*.parquet")
            )
            for name, folder in (("local", "local-0"), ("ray", "ray-0"), ("ray_data", "ray-data-0"))
        }
    finally:
        import ray

        ray.shutdown()  # before its cluster goes: a driver left connected aborts the process
        cluster.stop()
    rate = {name: args.rows / statistics.median(w) for name, w in walls.items()}
    result = {
        "rows": args.rows,
        "mini_batch_size": args.mini_batch_size,
        "workers": args.workers,
        "rounds": args.rounds,
        "cluster": f"one local Ray node, {2 * args.workers} logical CPUs, {os.cpu_count()} cores",
        "wall_s": {name: [round(w, 3) for w in ws] for name, ws in walls.items()},
        "rows_per_s": {name: round(r) for name, r in rate.items()},
        "output_rows": rows,
        "ratio_ray_executor_vs_ray_data (>= 1.0)": round(rate["ray"] / rate["ray_data"], 3),
        "ratio_ray_executor_vs_local": round(rate["ray"] / rate["local"], 3),
    }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
