"""`compute: {executor: ray}`: a batch job's mini-batches as Ray actors on a real local
Ray cluster; the runner keeps planning, state, retries and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from tests.batch.test_jobs import (
    batch_endpoint,
    check_predictions,
    features,
    invoke,
    sigkill_runner_midway,
    write_input,
)
from tests.conftest import (
    RAY_ENV,
    Gateway,
    RayCluster,
    assert_clean_exit,
    s3_bucket,
    start_gateway,
    wait_for,
)

RAY_COMPUTE = "{executor: ray, instance_count: 2, ray_actor_options: {num_cpus: 0.25}}"


def workers_on(cluster: RayCluster) -> list[int]:
    """The processes of the cluster's batch worker actors."""
    return cluster.processes_named("BatchWorker")


def test_a_ray_job_gives_the_local_executors_output(
    ray_gateway: Gateway,
    ray_cluster: RayCluster,
    tmp_path: Path,
    model_dir: Path,
    unique_name: str,
) -> None:
    gw = ray_gateway
    x = features(3, rows=5000)
    write_input(tmp_path / "in", "parquet", x)
    batch_endpoint(gw, tmp_path, model_dir, f"{unique_name}l")
    batch_endpoint(gw, tmp_path, model_dir, f"{unique_name}r", compute=RAY_COMPUTE)
    invoke(gw, f"{unique_name}l", str(tmp_path / "in"), str(tmp_path / "local"))
    invoke(gw, f"{unique_name}r", str(tmp_path / "in"), str(tmp_path / "ray"))
    on_ray = pq.read_table(tmp_path / "ray" / "predictions.parquet")
    assert on_ray.equals(pq.read_table(tmp_path / "local" / "predictions.parquet"))
    check_predictions(on_ray, model_dir, {"data.parquet": x})
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert summary["state"] == "completed" and summary["mini_batches"]["failed"] == 0
    # The job's actors are gone with its runner.
    wait_for(lambda: not workers_on(ray_cluster), 30)


def test_a_sigkilled_ray_runner_is_resumed_with_the_uninterrupted_output(
    ray_gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gw = ray_gateway
    batch_endpoint(gw, tmp_path, model_dir, unique_name, compute=RAY_COMPUTE)
    x = features(5, rows=40_000)
    write_input(tmp_path / "in", "parquet", x, "big")
    sizes = ("--mini-batch-size", "200")
    invoke(gw, unique_name, str(tmp_path / "in"), str(tmp_path / "whole"), *sizes)
    _, out = gw.cli(
        "batch",
        "invoke",
        "-e",
        unique_name,
        "--input",
        str(tmp_path / "in"),
        "--output-path",
        str(tmp_path / "resumed"),
        *sizes,
    )
    job_id = json.loads(out)["id"]
    again = sigkill_runner_midway(gw, job_id, before=150, wait_s=120, restart_s=60)
    wait_for(lambda: json.loads(gw.cli("batch", "show", job_id)[1])["state"] == "completed", 180)
    assert again["mini_batch_states"].get("done", 0) >= 10  # resumed, not restarted
    resumed = pq.read_table(tmp_path / "resumed" / "predictions.parquet")
    assert resumed.num_rows == 40_000
    assert resumed.equals(pq.read_table(tmp_path / "whole" / "predictions.parquet"))


def test_ray_actors_read_s3_inputs_with_the_runners_settings(
    ray_cluster: RayCluster, s3: dict[str, str], tmp_path: Path, model_dir: Path
) -> None:
    """The cluster was started without S3 settings: its actors reach the S3 server (moto)
    with the ones the gateway's runner has."""
    gw = start_gateway(
        tmp_path / "home",
        env_extra={**RAY_ENV, "SERVEGATE_RAY_ADDRESS": ray_cluster.address},
    )
    try:
        fs = s3_bucket(s3, "data")
        x = features(6, rows=3000)
        local = write_input(tmp_path / "in", "parquet", x, "s3rows")
        with fs.open_output_stream("data/in/s3rows.parquet") as out:
            out.write(local.read_bytes())
        batch_endpoint(gw, tmp_path, model_dir, "s3-on-ray", compute=RAY_COMPUTE)
        invoke(gw, "s3-on-ray", "s3://data/in/", "s3://data/out", "--mini-batch-size", "500")
        with fs.open_input_file("data/out/predictions.parquet") as f:
            table = pq.read_table(f)
        check_predictions(table, model_dir, {"s3rows.parquet": x})
    finally:
        assert_clean_exit(gw)
