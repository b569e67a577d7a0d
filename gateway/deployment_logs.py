"""Each deployment's own log (`servegate deployment get-logs`, Azure ML's `get-logs`):
what its scoring script prints and logs in its worker processes, worker starts and
exits, load errors.

Lines are kept in a bounded ring per deployment on this replica, and written to the
store about once a second (the newest `KEEP` lines per deployment stay there), so
`get-logs` on any replica shows every replica's lines. Writing a line never blocks:
lines come from worker I/O threads, and a store that is down only delays them (the ring
and the pending list are bounded).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

from starlette.concurrency import run_in_threadpool

from deploy.control import ControlPlane

log = logging.getLogger(__name__)

#: lines kept per deployment, in the ring and in the store
KEEP = 1000
#: longest line kept (a script printing a whole tensor)
MAX_LINE = 4096
FLUSH_EVERY_S = 1.0

Key = tuple[str, str]


class DeploymentLogs:
    def __init__(self, control: ControlPlane, replica: str) -> None:
        self._control, self._replica = control, replica
        self._rings: dict[Key, deque[tuple[str, str]]] = {}
        self._pending: dict[Key, deque[tuple[str, str]]] = {}
        self._lock = threading.Lock()

    def write(self, endpoint: str, deployment: str, line: str) -> None:
        """Add a line (from any thread)."""
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        entry = (at, line[:MAX_LINE])
        key = (endpoint, deployment)
        with self._lock:
            for table in (self._rings, self._pending):
                table.setdefault(key, deque(maxlen=KEEP)).append(entry)

    def writer(self, endpoint: str, deployment: str) -> Callable[[str], None]:
        return lambda line: self.write(endpoint, deployment, line)

    def recent(self, endpoint: str, deployment: str, lines: int) -> list[tuple[str, str]]:
        """This replica's newest lines of a deployment, oldest first."""
        with self._lock:
            ring = list(self._rings.get((endpoint, deployment), ()))
        return ring[-lines:] if lines > 0 else []

    def forget(self, endpoint: str, deployment: str) -> None:
        with self._lock:
            self._rings.pop((endpoint, deployment), None)

    def flush(self) -> None:
        """Write the pending lines to the store (blocking: from a worker thread)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for (endpoint, deployment), lines in pending.items():
            try:
                self._control.record_deployment_logs(
                    endpoint, deployment, self._replica, list(lines), KEEP
                )
            except Exception as exc:  # the store is down: keep them for the next flush
                log.warning("cannot store the log lines of %s/%s: %s", endpoint, deployment, exc)
                with self._lock:
                    newer = self._pending.get((endpoint, deployment), ())
                    self._pending[(endpoint, deployment)] = deque([*lines, *newer], maxlen=KEEP)

    async def run(self) -> None:
        """Flush about once a second until cancelled (then once more)."""
        try:
            while True:
                await asyncio.sleep(FLUSH_EVERY_S)
                await run_in_threadpool(self.flush)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(run_in_threadpool(self.flush))
