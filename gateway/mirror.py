"""Mirror traffic: a share of live requests is copied to a candidate deployment
after the live answer has been sent. The mirror's answer is compared with the
live one and dropped; its failures and latency show only in metrics labelled
as mirrored. Mirrors are shed first: at most `MAX_CONCURRENT` at once, and none
while the candidate is half full.

Comparison, per mirrored request, over the outputs both answers have:
- same: every output allclose (rtol 1e-5, atol 1e-6) with the same shape;
- max absolute difference over float outputs;
- argmax agreement: for float outputs with a class axis (ndim >= 2) the argmax
  of each row, for integer outputs each element (labels); counted in rows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from gateway import tracing
from gateway.routing import DeploymentRoute
from runtimes.errors import InferenceError
from runtimes.scheduler import Timing

log = logging.getLogger(__name__)

MAX_CONCURRENT = 64


@dataclass
class MirrorStats:
    """Running totals for one mirror target; rollouts read deltas of these."""

    sent: int = 0
    ok: int = 0
    failed: int = 0
    shed: int = 0
    compared: int = 0
    same: int = 0
    argmax_rows: int = 0
    argmax_agree: int = 0
    max_abs_diff: float = 0.0
    seconds: list[float] = field(default_factory=list)  # recent latencies (bounded)

    def snapshot(self) -> dict[str, float]:
        return {
            k: getattr(self, k)
            for k in (
                "sent",
                "ok",
                "failed",
                "shed",
                "compared",
                "same",
                "argmax_rows",
                "argmax_agree",
                "max_abs_diff",
            )
        }


def compare(
    live: Mapping[str, np.ndarray], mirrored: Mapping[str, np.ndarray]
) -> tuple[bool, float, int, int]:
    """(same, max abs diff, argmax rows, argmax rows that agree) of two answers."""
    same, max_diff, rows, agree = True, 0.0, 0, 0
    for name, a in live.items():
        b = mirrored.get(name)
        if b is None or a.shape != b.shape:
            same = False
            continue
        if a.dtype.kind == "f" and b.dtype.kind == "f":
            diff = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
            max_diff = max(max_diff, diff)
            same = same and bool(np.allclose(a, b, rtol=1e-5, atol=1e-6))
            if a.ndim >= 2 and a.shape[-1] > 1:
                rows += int(np.prod(a.shape[:-1]))
                agree += int(np.sum(np.argmax(a, -1) == np.argmax(b, -1)))
        else:
            equal = a == b
            same = same and bool(np.all(equal))
            if a.dtype.kind in "iu":
                rows += a.size
                agree += int(np.sum(equal))
    return same, max_diff, rows, agree


Runner = Callable[[DeploymentRoute, Timing], Awaitable[tuple[int, bytes, Any]]]


class Mirror:
    """Runs mirrored copies in the background and keeps their stats."""

    def __init__(self) -> None:
        self.stats: dict[tuple[str, str], MirrorStats] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def stats_for(self, endpoint: str, deployment: str) -> MirrorStats:
        key = (endpoint, deployment)
        found = self.stats.get(key)
        if found is None:
            found = self.stats[key] = MirrorStats()
        return found

    def copy(self, route: DeploymentRoute, run: Runner, live: Any) -> None:
        """Start a mirrored request unless it should be shed; never waits."""
        stats = self.stats_for(route.endpoint, route.name)
        scheduler = route.scheduler
        if (
            len(self._tasks) >= MAX_CONCURRENT
            or scheduler.in_flight * 2 >= scheduler.settings.max_in_flight
        ):
            stats.shed += 1
            return
        stats.sent += 1
        task = asyncio.get_running_loop().create_task(self._run(route, run, live, stats))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self, route: DeploymentRoute, run: Runner, live: Any, stats: MirrorStats
    ) -> None:
        started = time.perf_counter()
        span = tracing.mirror_span(route.name)
        try:
            status, payload, outputs = await run(route, Timing())
        except Exception as exc:  # a mirror's failure is only counted
            if not isinstance(exc, InferenceError):
                log.warning("mirrored request to %s/%s failed: %r", route.endpoint, route.name, exc)
            stats.failed += 1
            return
        finally:
            stats.seconds.append(time.perf_counter() - started)
            del stats.seconds[:-1000]
            if span is not None:
                span.end()
        if status != 200:
            stats.failed += 1
            return
        stats.ok += 1
        live_outputs, live_payload = live
        if outputs is not None and live_outputs is not None:
            same, diff, rows, agree = compare(live_outputs, outputs)
        else:  # scoring scripts: compare the JSON answers
            same = orjson.loads(payload) == orjson.loads(live_payload)
            diff, rows, agree = 0.0, 1, int(same)
        stats.compared += 1
        stats.same += same
        stats.max_abs_diff = max(stats.max_abs_diff, diff)
        stats.argmax_rows += rows
        stats.argmax_agree += agree

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
