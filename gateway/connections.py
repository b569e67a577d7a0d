"""Connection limits that uvicorn's httptools protocol does not enforce itself.

- **Header size**: request lines plus headers over `max_header_bytes` get 431 and
  the connection is closed, before the parser buffers more.
- **Header timeout**: a connection must deliver a request's complete headers within
  `header_timeout_s` of opening (or of its first byte, on a kept-alive connection),
  else it gets 408 and is closed: idle and half-open connections cannot pile up.
- **Connection cap**: past `max_connections` open connections a new one gets 503 at
  once and is closed, so the process never runs out of file descriptors for the
  clients it does serve.

Each answer has the gateway's error body, `{"error": ..., "code": ...}`.
"""

from __future__ import annotations

import asyncio
import http
import logging
import resource
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

_HEADERS_END = b"\r\n\r\n"


@dataclass(frozen=True)
class ConnectionLimits:
    """The values of `--max-header-bytes`, `--header-timeout-s`, `--max-connections`
    (0: derived from the file-descriptor limit)."""

    max_header_bytes: int
    header_timeout_s: float
    max_connections: int

    def resolved_max_connections(self) -> int:
        return self.max_connections or default_max_connections()


def raise_fd_limit() -> int:
    """Raise the soft file-descriptor limit to the hard one (as nginx's
    worker_rlimit_nofile does); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def default_max_connections() -> int:
    """Leave room below the fd limit for the store, models, worker pipes and logs."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(32, min(10_000, soft - 256))


def _answer(status: int, code: str, message: str) -> bytes:
    body = orjson.dumps({"error": message, "code": code})
    phrase = http.HTTPStatus(status).phrase
    return (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with `limits` enforced (pass as `Config(http=...)`).

    The header timeout is enforced by one sweep over the open connections a few times
    per timeout, not by arming and cancelling a timer for every request."""
    max_connections = limits.resolved_max_connections()
    sweep_every_s = min(1.0, limits.header_timeout_s / 4)

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _sweeping: asyncio.TimerHandle | None = None
        #: uvicorn's set of open connections (one per server), for the sweep
        _connections: set[Any] = set()

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._awaiting_headers = True
            self._header_bytes = 0
            self._tail = b""
            #: loop time when the awaited headers began (None: not waiting for any)
            self._header_since: float | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.warning(
                    "refused a connection: %d open (max %d)", len(self.connections), max_connections
                )
                self._refuse(
                    503,
                    "too_many_connections",
                    f"the gateway has {max_connections} open connections (its limit, "
                    "--max-connections); retry shortly",
                )
                return
            self._header_since = self.loop.time()
            cls = type(self)
            cls._connections = self.connections
            if cls._sweeping is None:
                cls._sweeping = self.loop.call_later(sweep_every_s, cls._sweep, self.loop)

        @classmethod
        def _sweep(cls, loop: asyncio.AbstractEventLoop) -> None:
            cls._sweeping = None
            now = loop.time()
            for connection in list(cls._connections):
                since = getattr(connection, "_header_since", None)
                if since is not None and now - since > limits.header_timeout_s:
                    connection._refuse(
                        408,
                        "header_timeout",
                        f"request headers not received within {limits.header_timeout_s:g} s "
                        "(--header-timeout-s)",
                    )
            if cls._connections:
                cls._sweeping = loop.call_later(sweep_every_s, cls._sweep, loop)

        def connection_lost(self, exc: Exception | None) -> None:
            self._header_since = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._awaiting_headers:
                end = data.find(_HEADERS_END)
                if end < 0 or self._header_bytes:
                    # Headers arriving in pieces: count them, and time them.
                    if end < 0 and _HEADERS_END in self._tail + data[:3]:
                        end = 0  # the blank line straddles two reads
                    if self._header_since is None:
                        self._header_since = self.loop.time()
                    self._header_bytes += len(data) if end < 0 else end
                    self._tail = data[-3:]
                elif end > limits.max_header_bytes:
                    self._header_bytes = end
                if self._header_bytes > limits.max_header_bytes:
                    self._refuse(
                        431,
                        "headers_too_large",
                        "request line and headers exceed "
                        f"{limits.max_header_bytes} bytes (--max-header-bytes)",
                    )
                    return
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._awaiting_headers = False
            self._header_bytes = 0
            self._tail = b""
            self._header_since = None
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            # What arrives next is the next request's headers: timed from its first byte
            # (an idle kept-alive connection is closed by uvicorn's keep-alive timeout).
            self._awaiting_headers = True

        def _refuse(self, status: int, code: str, message: str) -> None:
            self._header_since = None
            if not self.transport.is_closing():
                self.transport.write(_answer(status, code, message))
                self.transport.close()

    return GuardedHttpToolsProtocol
