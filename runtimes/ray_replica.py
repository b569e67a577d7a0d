"""What runs inside each Ray Serve replica of a `host: ray` deployment.

A replica loads the same runtime a thread or worker process would (onnxruntime, torch,
a scoring script). The model file and the scoring script's folder travel with the
deployment (as bytes in its init arguments), so a replica on any node of the cluster
has them; only servegate itself must be installed there.

With `batching`, requests are coalesced here, where the model runs (`serve.batch`):
each request crosses the network alone, and concurrent ones are scored as one call.

Each call carries its request's id and W3C `traceparent`: the replica's runtime (a
scoring script, a `remote` runtime) sees them as it would in the gateway, and with the
gateway's OTEL_* settings the replica's span joins the request's trace.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from runtimes.base import RuntimeConfig
from runtimes.errors import InferenceFailed
from runtimes.registry import load_runtime
from runtimes.telemetry import CallContext, CallTracer

#: a call that names no request (the gateway's own: signature, health)
NO_CALL: CallContext = ("-", "")

#: folder name (relative path -> bytes) as shipped by the gateway
Files = dict[str, bytes]


def pack_folder(folder: Path) -> Files:
    """Every file under `folder`, by relative path."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _unpack(files: Files, into: Path) -> Path:
    for relative, data in files.items():
        target = into / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return into


def pack(config: RuntimeConfig) -> tuple[Files, Files]:
    """The model file and the scoring script's folder of `config`, as bytes: what a
    process on another node needs to load the same runtime."""
    model = (
        {config.model_path.name: config.model_path.read_bytes()}
        if config.model_path is not None
        else {}
    )
    code = pack_folder(config.code_dir) if config.code_dir is not None else {}
    return model, code


def unpack(
    config: RuntimeConfig, model_files: Files, code_files: Files, into: Path
) -> RuntimeConfig:
    """`config` with its model file and code folder written under `into` (on this node)."""
    if config.model_path is not None:
        model_dir = _unpack(model_files, into / "model")
        config = replace(config, model_path=model_dir / config.model_path.name)
    if config.code_dir is not None:
        config = replace(config, code_dir=_unpack(code_files, into / "code"))
    return config


class ServegateReplica:
    """One replica: one loaded runtime instance. Wrapped by `serve.deployment` when the
    gateway deploys it (the options come from the deployment's spec)."""

    def __init__(
        self,
        runtime: str,
        config: RuntimeConfig,
        model_files: Files,
        code_files: Files,
        max_batch_size: int,
        batch_wait_s: float,
        telemetry_environment: Mapping[str, str],
    ) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="servegate-replica-")
        config = unpack(config, model_files, code_files, Path(self._folder.name))
        os.environ.update(config.environment)  # each replica is a process of its own
        # The gateway's OTEL_* settings: a call's span joins the trace of its request.
        self._calls = CallTracer(telemetry_environment)
        self.runtime = load_runtime(runtime, config)
        if max_batch_size > 1:
            batched: Any = self.infer_batched
            batched.set_max_batch_size(max_batch_size)
            batched.set_batch_wait_timeout_s(batch_wait_s)

    def signature(self) -> dict[str, Any]:
        return self.runtime.signature.to_dict()

    async def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None,
        call: CallContext = NO_CALL,
    ) -> dict[str, np.ndarray]:
        with self._calls.serving("replica inference", call):
            # A thread: the replica's event loop keeps taking requests while the model runs.
            return await asyncio.to_thread(self.runtime.infer, inputs, output_names)

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0)
    async def infer_batched(
        self, requests: list[tuple[Mapping[str, np.ndarray], Sequence[str] | None, CallContext]]
    ) -> list[dict[str, np.ndarray] | Exception]:
        """Concurrent requests with the same input shapes (but the first axis) as one
        call, split back by rows; one that does not fit, or a failing batch, runs alone
        so that one bad request fails alone."""
        if len(requests) == 1:
            return [await self._one(*requests[0])]
        first_inputs, output_names, _ = requests[0]
        compatible = all(
            names == output_names
            and inputs.keys() == first_inputs.keys()
            and all(
                a.ndim
                and a.dtype == first_inputs[n].dtype
                and a.shape[1:] == first_inputs[n].shape[1:]
                for n, a in inputs.items()
            )
            for inputs, names, _ in requests
        )
        if compatible:
            rows = [next(iter(inputs.values())).shape[0] for inputs, _, _ in requests]
            merged = {
                n: np.concatenate([inputs[n] for inputs, _, _ in requests]) for n in first_inputs
            }
            # One call for the batch: its log lines name every request, its span joins
            # the first request's trace (as the gateway's scheduler does).
            batch_call = (",".join(c[0] for _, _, c in requests), requests[0][2][1])
            try:
                with self._calls.serving(
                    "replica inference", batch_call, batch_requests=len(requests)
                ):
                    outputs = await asyncio.to_thread(self.runtime.infer, merged, output_names)
            except InferenceFailed:
                outputs = {}
            total = sum(rows)
            if outputs and all(a.ndim and a.shape[0] == total for a in outputs.values()):
                parts: list[dict[str, np.ndarray] | Exception] = []
                offset = 0
                for count in rows:
                    parts.append({n: a[offset : offset + count] for n, a in outputs.items()})
                    offset += count
                return parts
        return [await self._one(inputs, names, call) for inputs, names, call in requests]

    async def _one(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None,
        call: CallContext,
    ) -> dict[str, np.ndarray] | Exception:
        try:
            return await self.infer(inputs, output_names, call)
        except Exception as exc:  # this request's error, not its neighbours'
            return exc

    async def score(self, body: bytes, call: CallContext = NO_CALL) -> bytes:
        """A scoring script's `run(raw_data)`; its answer as JSON bytes."""
        score = self.runtime.score  # type: ignore[attr-defined]  # scoring scripts only
        with self._calls.serving("replica scoring", call):
            result: bytes = await asyncio.to_thread(score, body)
        return result

    def __del__(self) -> None:
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            runtime.close()
