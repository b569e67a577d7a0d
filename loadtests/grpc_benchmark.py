"""The Open Inference Protocol over gRPC against HTTP binary and onnxruntime in-process, in
one run, on the CNN and the MLP of `loadtests.benchmark`.

One gateway with its defaults (the README's batching for these models) pinned to core 0,
serving HTTP and `--grpc-port`; the load on core 1: `wrk` for HTTP (binary tensors, as
tritonclient sends them) and a small grpc.aio client for gRPC (32 calls in flight over 4
channels, each request serialized once, answers read as bytes: the least a Python client
can spend per call). A bare grpc.aio server on core 0 that answers every call with a
canned reply measures that client's own ceiling. Cases alternate in slices (medians).

    python -m loadtests.grpc_benchmark [--duration 10] [--report reports/grpc_benchmark.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from loadtests import models
from loadtests.benchmark import (
    LOAD_CORE,
    SERVER_CORE,
    deploy,
    interleaved,
    process,
    raw_runtime,
    v2_binary,
    wrk,
)
from loadtests.gateway_process import GatewayProcess, free_port

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def infer_request(model: str, version: str, name: str, x: np.ndarray) -> bytes:
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name=name, datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    return bytes(request.SerializeToString())


async def _load(
    target: str, body: bytes, key: str, calls: int, channels: int, seconds: float
) -> dict[str, Any]:
    import grpc

    metadata = (("authorization", f"Bearer {key}"),) if key else None
    opened = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    stubs = [
        c.unary_unary(METHOD, request_serializer=None, response_deserializer=None) for c in opened
    ]
    latencies: list[float] = []
    failed = 0
    stop = time.perf_counter() + seconds

    async def caller(stub: Any) -> None:
        nonlocal failed
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                await stub(body, metadata=metadata)
                latencies.append(time.perf_counter() - started)
            except grpc.aio.AioRpcError:
                failed += 1

    began = time.perf_counter()
    await asyncio.gather(*(caller(stubs[i % channels]) for i in range(calls)))
    elapsed = time.perf_counter() - began
    for channel in opened:
        await channel.close()
    ordered = np.sort(np.array(latencies)) * 1e3 if latencies else np.zeros(1)
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ordered, 50)),
        "p99_ms": float(np.percentile(ordered, 99)),
        "non_2xx": failed,
    }


def grpc_load(target: str, body_file: Path, key: str, seconds: float) -> dict[str, Any]:
    """Run the client on the load core (a process of its own, as wrk is)."""
    out = subprocess.run(
        [
            "taskset",
            "-c",
            LOAD_CORE,
            sys.executable,
            "-m",
            "loadtests.grpc_benchmark",
            "--client",
            target,
            str(body_file),
            str(seconds),
        ],
        # in the environment: a key may start with "-", which argparse takes for an option
        env={**os.environ, "SERVEGATE_BENCH_KEY": key},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


async def _bare_server(port: int) -> None:
    """A gRPC server that answers every ModelInfer with a canned reply: the ceiling of
    the client and of grpc.aio on one core."""
    import grpc
    from tritonclient.grpc import service_pb2

    reply = service_pb2.ModelInferResponse(model_name="bare")
    reply.outputs.add(name="output", datatype="FP32", shape=[1, 10])
    reply.raw_output_contents.append(np.zeros(10, dtype=np.float32).tobytes())
    canned = reply.SerializeToString()

    async def model_infer(request: bytes, context: Any) -> bytes:
        return canned

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer)},
    )
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 1 << 26)])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per case")
    parser.add_argument("--slice", type=float, default=2.0)
    parser.add_argument("--report", type=Path, default=Path("reports/grpc_benchmark.json"))
    parser.add_argument("--models", default="mlp,cnn", help="which of mlp,cnn to measure")
    parser.add_argument("--client", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        target, body_file, seconds = args.client
        key = os.environ.get("SERVEGATE_BENCH_KEY", "")
        result = asyncio.run(
            _load(target, Path(body_file).read_bytes(), key, 32, 4, float(seconds))
        )
        print(json.dumps(result))
        return
    if args.bare_server:
        asyncio.run(_bare_server(args.bare_server))
        return
    work = Path(tempfile.mkdtemp(prefix="sg-grpc-bench-"))
    mlp_path, cnn_path = models.write(work / "models")
    rng = np.random.default_rng(0)
    inputs = {
        "mlp": ("input", rng.normal(size=(1, 64)).astype(np.float32), mlp_path),
        "cnn": ("image", rng.normal(size=(1, 3, 64, 64)).astype(np.float32), cnn_path),
    }
    rounds = max(3, round(args.duration / args.slice))
    report: dict[str, Any] = {
        "configuration": "defaults (the README batching), server on core 0, load on core 1",
        "method": f"{rounds} interleaved slices of {args.slice:g} s per case; medians",
    }
    grpc_port, bare_port = free_port(), free_port()
    bare = [sys.executable, "-m", "loadtests.grpc_benchmark", "--bare-server", str(bare_port)]
    with (
        process(bare, work / "bare-grpc.log"),
        GatewayProcess(work / "home", "--grpc-port", str(grpc_port), core=SERVER_CORE) as gateway,
    ):
        key = deploy(gateway, mlp_path, cnn_path)
        time.sleep(1)
        for model, (name, x, path) in inputs.items():
            if model not in args.models.split(","):
                continue
            body_file = work / f"{model}.grpc"
            body_file.write_bytes(infer_request("bench", model, name, x))
            http_body, http_headers = v2_binary(name, x)
            url = f"{gateway.url}/v2/models/bench/versions/{model}/infer"
            auth = {"Authorization": f"Bearer {key}", **http_headers}
            model_bytes = path.read_bytes()
            print(f"{model}: onnxruntime in-process, HTTP binary, gRPC, bare gRPC", flush=True)
            cases = {
                "raw": lambda s, m=model_bytes, shape=x.shape: raw_runtime(m, shape, s),
                "http_binary": lambda s, u=url, b=http_body, h=auth: wrk(u, b, h, 32, s, work),
                "grpc": lambda s, f=body_file: grpc_load(f"127.0.0.1:{grpc_port}", f, key, s),
                "bare_grpc": lambda s, f=body_file: grpc_load(f"127.0.0.1:{bare_port}", f, "", s),
            }
            measured = interleaved(cases, rounds, args.slice)
            raw = measured["raw"]["calls_per_s"]
            report[model] = {
                **measured,
                "grpc_vs_in_process": measured["grpc"]["rps"] / raw,
                "http_binary_vs_in_process": measured["http_binary"]["rps"] / raw,
                "grpc_vs_http_binary": measured["grpc"]["rps"] / measured["http_binary"]["rps"],
                "grpc_vs_bare_grpc": measured["grpc"]["rps"] / measured["bare_grpc"]["rps"],
            }
            print(json.dumps({model: report[model]}, indent=2), flush=True)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
