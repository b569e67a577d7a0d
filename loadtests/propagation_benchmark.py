"""Control-plane change propagation across gateway replicas.

Three `servegate serve` processes share one store (PostgreSQL, then one SQLite file);
one endpoint has two deployments. Each round flips the endpoint's traffic (all to one
deployment, then all to the other) through replica 1's management API, and two
threads score replicas 2 and 3 back to back until each answers from the new
deployment. The latency is from the write's answer on replica 1 to the first answer
from the new deployment on the other replica: it includes one scoring round trip (about
a millisecond here), so it is an upper bound of the snapshot swap.

    python -m loadtests.propagation_benchmark [--rounds 40] [--report reports/propagation.json]

Needs the `postgres` extra and a PostgreSQL server (SERVEGATE_BENCH_POSTGRES, default
postgresql://postgres@127.0.0.1:5432/postgres), where it creates and drops a database.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from loadtests import models
from loadtests.gateway_process import GatewayProcess

POSTGRES = os.environ.get(
    "SERVEGATE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def answered_by(client: httpx.Client, url: str, key: str) -> str:
    r = client.post(url, json=BODY, headers={"Authorization": f"Bearer {key}"})
    return r.headers.get("azureml-model-deployment", f"status {r.status_code}")


def measure(store: str, root: Path, rounds: int) -> dict[str, Any]:
    mlp = root / "mlp.onnx"
    mlp.write_bytes(models.mlp())
    os.environ.update(
        SERVEGATE_STORE=store,
        SERVEGATE_SECRET_KEY=secrets.token_urlsafe(32),
        SERVEGATE_ARTIFACTS=str(root / "artifacts"),
    )
    with ExitStack() as stack:
        first = stack.enter_context(GatewayProcess(root / "r1" / "home"))
        first.call("POST", "/management/endpoints", json={"name": "flip"})
        first.call(
            "POST",
            "/management/models/mlp/versions",
            params={"filename": mlp.name},
            content=mlp.read_bytes(),
        )
        for name in ("blue", "green"):
            first.call(
                "POST",
                "/management/endpoints/flip/deployments",
                json={"name": name, "model": "mlp:1"},
            )
        first.call(
            "PATCH", "/management/endpoints/flip", json={"traffic": {"blue": 100, "green": 0}}
        )
        key = first.call("POST", "/management/endpoints/flip/listKeys")["primaryKey"]
        others = []
        for i in (2, 3):
            home = root / f"r{i}" / "home"
            home.mkdir(parents=True)
            (home / "admin_token").write_text((first.home / "admin_token").read_text())
            others.append(stack.enter_context(GatewayProcess(home)))
        latencies: list[float] = []
        with httpx.Client(timeout=10) as client:
            for replica in others:
                url = f"{replica.url}/v2/models/flip/infer"
                deadline = time.monotonic() + 30
                while answered_by(client, url, key) != "blue" and time.monotonic() < deadline:
                    time.sleep(0.05)
        for n in range(rounds):
            target = "green" if n % 2 == 0 else "blue"
            seen: dict[int, float] = {}

            def watch(
                i: int, url: str, target: str = target, seen: dict[int, float] = seen
            ) -> None:
                with httpx.Client(timeout=10) as client:
                    deadline = time.monotonic() + 10
                    while time.monotonic() < deadline:
                        if answered_by(client, url, key) == target:
                            seen[i] = time.perf_counter()
                            return

            traffic = {"blue": 0, "green": 0, target: 100}
            first.call("PATCH", "/management/endpoints/flip", json={"traffic": traffic})
            written = time.perf_counter()
            watchers = [
                threading.Thread(target=watch, args=(i, f"{r.url}/v2/models/flip/infer"))
                for i, r in enumerate(others)
            ]
            for t in watchers:
                t.start()
            for t in watchers:
                t.join()
            if len(seen) != len(others):
                raise RuntimeError(f"round {n}: a replica never routed to {target}")
            latencies.extend((t - written) * 1000 for t in seen.values())
            time.sleep(0.3)
    return {
        "store": store.split("://")[0],
        "changes": rounds,
        "observations": len(latencies),
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "max_ms": round(max(latencies), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--report", type=Path, default=Path("reports/propagation.json"))
    args = parser.parse_args()
    import psycopg

    database = f"sg_propagation_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            pg_url = POSTGRES.rsplit("/", 1)[0] + f"/{database}"
            (root / "pg").mkdir()
            results.append(measure(pg_url, root / "pg", args.rounds))
            (root / "sqlite").mkdir()
            sqlite_url = f"sqlite:///{root / 'sqlite' / 'shared-store.db'}"
            results.append(measure(sqlite_url, root / "sqlite", args.rounds))
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    print(f"{'store':<12}{'changes':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for r in results:
        print(f"{r['store']:<12}{r['changes']:>8}{r['p50_ms']:>9}{r['p99_ms']:>9}{r['max_ms']:>9}")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
