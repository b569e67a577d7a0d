"""The gateway's log: text or JSON lines (`--log-format`), each with the request id of
the request it is about, and the access log (`--access-log`: off by default; every
request, or a sampled fraction)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from typing import Any

import orjson

from gateway.request_ids import current

#: one record per request when the access log is on
ACCESS = logging.getLogger("servegate.access")
#: what a record may carry beyond the message (the access log's fields)
FIELDS = ("endpoint", "deployment", "status", "latency_ms", "method", "path")


class RequestIdFilter(logging.Filter):
    """Every record gets the id of the request being served when it was logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request id, the request's fields
    where the record has them, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                doc[name] = value
        doc["message"] = record.getMessage()
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


def configure(level: str, log_format: str) -> None:
    """The root logger (uvicorn's loggers propagate to it) writes to stderr in the
    chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    ACCESS_LOG.json = log_format == "json"
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True


class AccessLog:
    """The access log's lines, formatted and written here rather than through `logging`:
    a `logging` record per request cost 27% of the MLP's requests/s on one core
    (measured with loadtests.logging_cost), most of it the record, its handler's lock
    and a write per line. Lines are buffered and written whole, at most every
    `FLUSH_S` or every `BATCH` lines, in the log's format."""

    BATCH = 256
    FLUSH_S = 0.5

    def __init__(self, log_format: str = "text", fd: int = 2) -> None:
        self.json = log_format == "json"
        self._fd = fd
        self._lines: list[bytes] = []
        self._second = -1
        self._stamp = ""

    def record(
        self,
        request_id: str,
        method: str,
        path: str,
        status: int,
        latency_s: float,
        endpoint: str | None,
        deployment: str | None,
    ) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:  # formatting a time costs more than the rest
            self._second = second
            pattern = "%Y-%m-%dT%H:%M:%S" if self.json else "%Y-%m-%d %H:%M:%S"
            convert = time.gmtime if self.json else time.localtime
            self._stamp = time.strftime(pattern, convert(second))
        millis = int((now - second) * 1000)
        latency_ms = round(latency_s * 1000, 3)
        message = f"{method} {path} {status} {latency_ms:.1f} ms"
        if self.json:
            doc: dict[str, Any] = {
                "time": f"{self._stamp}.{millis:03d}Z",
                "level": "INFO",
                "logger": ACCESS.name,
                "request_id": request_id,
                "method": method,
                "path": path,
                "status": status,
                "latency_ms": latency_ms,
            }
            if endpoint is not None:
                doc["endpoint"] = endpoint
            if deployment is not None:
                doc["deployment"] = deployment
            doc["message"] = message
            self._lines.append(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE))
        else:
            line = f"{self._stamp},{millis:03d} INFO {ACCESS.name} [{request_id}]: {message}\n"
            self._lines.append(line.encode("utf-8", "replace"))
        if len(self._lines) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        if self._lines:
            data = b"".join(self._lines)
            self._lines.clear()
            with contextlib.suppress(OSError):
                os.write(self._fd, data)

    async def flush_every(self) -> None:
        """Write what is buffered every FLUSH_S until cancelled (then once more)."""
        try:
            while True:
                await asyncio.sleep(self.FLUSH_S)
                self.flush()
        finally:
            self.flush()


#: the gateway's access log (its format set by `configure`)
ACCESS_LOG = AccessLog()


def access(
    request_id: str,
    method: str,
    path: str,
    status: int,
    latency_s: float,
    endpoint: str | None = None,
    deployment: str | None = None,
) -> None:
    ACCESS_LOG.record(request_id, method, path, status, latency_s, endpoint, deployment)
