"""servegate in front of Ray Serve replicas against Ray Serve's own HTTP proxy, in one run.

One local Ray cluster (`ray start --head` on 127.0.0.1). The same model and replica count
behind both paths, each with the same JSON body (`{"input_data": ...}`) and the same
batching (concurrent requests coalesced in the replica, up to 32 rows for the MLP and 8 for
the CNN, as `loadtests.benchmark` configures them):
  (a) Ray Serve's own path: its HTTP proxy -> a Serve deployment that parses the JSON,
      runs onnxruntime, answers JSON (what a Ray Serve user writes);
  (b) servegate (pinned to one core, defaults as in the README's examples) -> a `host: ray`
      deployment through its deployment handle.
`wrk` (32 connections) on core 1; the cases alternate in slices and the table has medians.

    python -m loadtests.ray_benchmark [--duration 10] [--report reports/ray_benchmark.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from loadtests import models
from loadtests.benchmark import LOAD_CORE, MAX_BATCH, SERVER_CORE, deploy, interleaved, wrk
from loadtests.gateway_process import GatewayProcess, free_port, wait_ready
from loadtests.ray_cluster import RAY_ENV, start_ray_cluster

REPLICAS = 1
#: what each replica asks the cluster for, on both paths
ASK = {"num_cpus": 1}


def serve_directly(model: bytes, name: str) -> None:
    """Deploy (a) as the Serve application `name` at route `/name`."""
    from ray import serve

    from loadtests.ray_serve_app import OnnxOverHttp

    app = serve.deployment(OnnxOverHttp).options(  # type: ignore[attr-defined]
        num_replicas=REPLICAS, max_ongoing_requests=2 * MAX_BATCH[name], ray_actor_options=ASK
    )
    serve.run(app.bind(model, MAX_BATCH[name]), name=name, route_prefix=f"/{name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per case")
    parser.add_argument("--slice", type=float, default=2.0)
    parser.add_argument("--report", type=Path, default=Path("reports/ray_benchmark.json"))
    args = parser.parse_args()
    os.environ.update(RAY_ENV)
    # Logical CPUs (Ray counts, the machine has 2 cores): four replicas of one CPU each.
    cluster = start_ray_cluster(cpus=4)
    os.environ["SERVEGATE_RAY_ADDRESS"] = cluster.address
    work = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    try:
        import ray
        from ray import serve

        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        proxy_port = free_port()
        serve.start(
            proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": proxy_port}
        )
        mlp_path, cnn_path = models.write(work)
        inputs = {
            "mlp": np.random.default_rng(0).normal(size=(1, 64)).astype(np.float32),
            "cnn": np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32),
        }
        for name, path in (("mlp", mlp_path), ("cnn", cnn_path)):
            serve_directly(path.read_bytes(), name)
        with GatewayProcess(work / "home", core=SERVER_CORE) as gateway:
            ray_host = {"host": "ray", "instance_count": REPLICAS, "ray_actor_options": ASK}
            key = deploy(gateway, mlp_path, cnn_path, ray_host)
            wait_ready(f"http://127.0.0.1:{proxy_port}/-/healthz")
            cases = {}
            json_type = {"Content-Type": "application/json"}
            for name, x in inputs.items():
                body = json.dumps({"input_data": x.tolist()}).encode()
                cases[f"ray_serve_proxy_{name}"] = lambda s, b=body, n=name: wrk(
                    f"http://127.0.0.1:{proxy_port}/{n}", b, json_type, 32, s, work
                )
                cases[f"servegate_{name}"] = lambda s, b=body, n=name: wrk(
                    f"{gateway.url}/endpoints/bench/score",
                    b,
                    {
                        **json_type,
                        "Authorization": f"Bearer {key}",
                        "azureml-model-deployment": n,
                    },
                    32,
                    s,
                    work,
                )
            rounds = max(1, round(args.duration / args.slice))
            results = interleaved(cases, rounds, args.slice)
    finally:
        import ray

        ray.shutdown()  # before its cluster goes: a driver left connected aborts the process
        cluster.stop()
    ratios = {
        f"{name}_servegate_vs_ray_serve_proxy (>= 2)": results[f"servegate_{name}"]["rps"]
        / results[f"ray_serve_proxy_{name}"]["rps"]
        for name in inputs
    }
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "servegate_core": SERVER_CORE,
            "load_core": LOAD_CORE,
            "ray": "one local node, 4 logical CPUs on the 2 cores, not pinned",
            "replicas": REPLICAS,
            "method": f"{rounds} interleaved slices of {args.slice:g} s per case; medians",
        },
        **results,
        "ratios": ratios,
    }
    print(f"{'case':28} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for name, figures in results.items():
        print(
            f"{name:28} {figures['rps']:9.0f} {figures.get('p50_ms', 0):8.2f} "
            f"{figures.get('p99_ms', 0):8.2f} {figures['non_2xx']:8d}"
        )
    for name, ratio in ratios.items():
        print(f"{name}: {ratio:.2f}x")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
