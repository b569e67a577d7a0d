"""A load generator for HTTP scoring endpoints: open loop (a fixed arrival rate)
or closed loop (a fixed number of connections, each sending its next request
when the last one is answered).

Open loop measures each latency from the request's *intended* send time, so a
server stall shows as latency instead of silently lowering the send rate
(coordinated omission). Requests are pre-encoded bytes written on keep-alive
connections (asyncio protocols, responses parsed by httptools), so one core
generates far more requests per second than a Python HTTP client would.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httptools
import numpy as np


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    request: bytes  # one whole HTTP/1.1 request, sent as is

    @classmethod
    def build(cls, url: str, body: bytes, headers: dict[str, str], method: str = "POST") -> Target:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"--url must be http://host:port/path, got {url!r}")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [
            f"{method} {path} HTTP/1.1",
            f"Host: {parts.netloc}",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return cls(parts.hostname, parts.port or 80, head + body)


@dataclass
class Results:
    started: float = 0.0
    finished: float = 0.0
    #: (completion time since start, latency s, status); status 0 = connection error
    samples: list[tuple[float, float, int]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    dropped: int = 0  # open loop: sends that found no connection (counted as errors)

    def summary(self) -> dict[str, object]:
        latencies = np.array([s[1] for s in self.samples if s[2] == 200]) * 1000
        statuses = Counter(str(s[2]) for s in self.samples)
        elapsed = max(self.finished - self.started, 1e-9)
        ok = int(statuses.get("200", 0))
        percentiles = (
            {f"p{q}": float(np.percentile(latencies, q)) for q in (50, 90, 99, 99.9)}
            if len(latencies)
            else {}
        )
        return {
            "requests": len(self.samples),
            "ok": ok,
            "throughput_rps": ok / elapsed,
            "duration_s": elapsed,
            "statuses": dict(statuses),
            "errors": dict(self.errors),
            "dropped": self.dropped,
            "latency_ms": {
                **percentiles,
                "max": float(latencies.max()) if len(latencies) else None,
                "mean": float(latencies.mean()) if len(latencies) else None,
            },
        }


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[int] | None = None
        self.lost = asyncio.get_running_loop().create_future()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(ConnectionError("connection closed"))
        if not self.lost.done():
            self.lost.set_result(None)

    # httptools callbacks
    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.parser.get_status_code())

    def _finish(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    async def send(self, request: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


async def _connect(target: Target) -> _Connection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(_Connection, target.host, target.port)
    return protocol


async def closed_loop(target: Target, concurrency: int, duration_s: float) -> Results:
    results = Results()
    connections = [await _connect(target) for _ in range(concurrency)]
    results.started = time.perf_counter()
    stop_at = results.started + duration_s

    async def worker(connection: _Connection) -> None:
        while time.perf_counter() < stop_at:
            sent = time.perf_counter()
            try:
                status = await connection.send(target.request)
            except (ConnectionError, httptools.HttpParserError) as exc:
                results.errors[type(exc).__name__] += 1
                results.samples.append((time.perf_counter() - results.started, 0.0, 0))
                connection = await _connect(target)
                continue
            now = time.perf_counter()
            results.samples.append((now - results.started, now - sent, status))

    await asyncio.gather(*(worker(c) for c in connections))
    results.finished = time.perf_counter()
    for connection in connections:
        if connection.transport is not None:
            connection.transport.close()
    return results


async def open_loop(
    target: Target, rate: float, duration_s: float, max_connections: int = 1024
) -> Results:
    """Send at `rate` requests/s; latency counts from each request's intended time."""
    results = Results()
    idle: list[_Connection] = []
    opened = 0
    in_flight: set[asyncio.Task[None]] = set()

    async def acquire() -> _Connection | None:
        nonlocal opened
        while idle:
            candidate = idle.pop()
            if candidate.transport is not None and not candidate.transport.is_closing():
                return candidate
            opened -= 1  # the server closed it while idle (keep-alive timeout)
        if opened >= max_connections:
            return None
        opened += 1
        return await _connect(target)

    async def one(intended: float) -> None:
        nonlocal opened
        status = 0
        for attempt in range(2):  # a pooled connection may die just as we use it
            conn = await acquire()
            if conn is None:
                results.dropped += 1
                results.errors["no free connection"] += 1
                return
            sent = time.perf_counter()
            try:
                status = await conn.send(target.request)
                break
            except (ConnectionError, RuntimeError, httptools.HttpParserError) as exc:
                opened -= 1
                if attempt == 1:
                    results.errors[type(exc).__name__] += 1
                    results.samples.append((time.perf_counter() - results.started, 0.0, 0))
                    return
        assert conn is not None
        now = time.perf_counter()
        # Late sends count from their intended time (no coordinated omission); a timer
        # that woke early (millisecond granularity) counts from the actual send.
        results.samples.append((now - results.started, now - min(intended, sent), status))
        idle.append(conn)

    for _ in range(min(64, max_connections)):  # warm connections
        idle.append(await _connect(target))
        opened += 1
    results.started = time.perf_counter()
    interval = 1.0 / rate
    total = int(rate * duration_s)
    for i in range(total):
        intended = results.started + i * interval
        delay = intended - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.get_running_loop().create_task(one(intended))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.wait(in_flight, timeout=60)
    results.finished = time.perf_counter()
    for connection in idle:
        if connection.transport is not None:
            connection.transport.close()
    return results


def run(
    target: Target, duration_s: float, concurrency: int | None = None, rate: float | None = None
) -> Results:
    """Run one load test (closed loop with `concurrency`, or open loop at `rate`)."""
    runner: Callable[[Coroutine[Any, Any, Results]], Results]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop
        runner = asyncio.run
    if rate is not None:
        return runner(open_loop(target, rate, duration_s))
    return runner(closed_loop(target, concurrency or 1, duration_s))
