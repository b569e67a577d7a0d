"""Gateway overhead: the demo classifier through the gateway vs onnxruntime in-process.

Starts a gateway (`servegate serve --demo`) on a free loopback port, then in
one run measures (1) the raw runtime: `InferenceSession.run` on one row,
sequentially, and (2) closed-loop HTTP clients scoring one row per request
through `/score` (JSON) and `/v2/.../infer` (binary tensors). Prints
requests/s, p50/p99 latency and the ratios. Bounded: `--requests` per case.

    python -m loadtests.gateway_overhead --requests 3000 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

from gateway.demo import DEMO_INPUT, build_classifier
from loadtests.gateway_process import GatewayProcess


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def raw_runtime(requests: int) -> dict[str, float]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(build_classifier(0), options, providers=["CPUExecutionProvider"])
    x = np.array(DEMO_INPUT[:1], dtype=np.float32)
    for _ in range(200):
        session.run(None, {"input": x})
    latencies = []
    started = time.perf_counter()
    for _ in range(requests):
        t0 = time.perf_counter()
        session.run(None, {"input": x})
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    return {
        "rps": requests / elapsed,
        "p50_ms": _percentile(latencies, 50) * 1e3,
        "p99_ms": _percentile(latencies, 99) * 1e3,
    }


async def http_case(
    url: str, headers: dict[str, str], body: bytes, requests: int, concurrency: int
) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    remaining = requests
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        for _ in range(100):  # warm-up
            await client.post(url, content=body, headers=headers)

        async def worker() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                response = await client.post(url, content=body, headers=headers)
                latencies.append(time.perf_counter() - t0)
                errors += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": _percentile(latencies, 50) * 1e3,
        "p99_ms": _percentile(latencies, 99) * 1e3,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="sg-bench-")) / "home"
    with GatewayProcess(home, "--demo") as gateway:
        base = gateway.url
        keys = gateway.call("POST", "/management/endpoints/demo/listKeys")
        auth = {"Authorization": f"Bearer {keys['primaryKey']}"}

        raw = raw_runtime(args.requests)
        score_body = json.dumps({"input_data": DEMO_INPUT[:1]}).encode()
        tensor = np.array(DEMO_INPUT[:1], dtype="<f4").tobytes()
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 4],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": len(tensor)},
                    }
                ],
                "parameters": {"binary_data_output": True},
            }
        ).encode()
        cases = {
            "score_json": (f"{base}/endpoints/demo/score", auth, score_body),
            "v2_binary": (
                f"{base}/v2/models/demo/infer",
                {**auth, "Inference-Header-Content-Length": str(len(header))},
                header + tensor,
            ),
        }
        results = {"raw_runtime_in_process": raw}
        for name, (url, headers, body) in cases.items():
            results[name] = asyncio.run(
                http_case(url, headers, body, args.requests, args.concurrency)
            )
            results[name]["throughput_vs_raw"] = results[name]["rps"] / raw["rps"]
            results[name]["p50_overhead_ms"] = results[name]["p50_ms"] - raw["p50_ms"]
        print(
            json.dumps(
                {
                    "cpu_count": os.cpu_count(),
                    "requests": args.requests,
                    "concurrency": args.concurrency,
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
