"""The change feed: tells a replica that the control plane changed, so it rebuilds its
routing snapshot from the store.

Every change writes an audit entry, so the newest audit id is the store's version. The
feed checks it every `poll_s` (the only mechanism on SQLite, where the processes sharing
the file are on one host) and, on PostgreSQL, also wakes at once on the NOTIFY that each
committed change sends; the periodic check stays as the fallback for a notification
lost while the listening connection was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from deploy.store import Store

log = logging.getLogger(__name__)

SQLITE_POLL_S = 0.2
POSTGRESQL_POLL_S = 0.5
#: A lost LISTEN connection is opened again after this long.
RELISTEN_S = 1.0


class ChangeFeed:
    def __init__(self, store: Store, poll_s: float | None = None) -> None:
        self.store = store
        listen = getattr(store, "listen", None)
        self._listen: Callable[[], Any] | None = listen
        self.poll_s = poll_s or (POSTGRESQL_POLL_S if listen else SQLITE_POLL_S)
        self._stop = threading.Event()
        self._wake: asyncio.Event | None = None
        #: SQLite: the files whose change means a commit happened (see `_files_moved`)
        path = getattr(store, "path", None)
        self._files = [str(path), f"{path}-wal"] if path is not None else []
        self._seen: list[tuple[int, int]] = []

    def _files_moved(self) -> bool:
        """Whether the SQLite file or its WAL changed since the last look: a commit
        (from any process) appends to the WAL. Two stat calls on the event loop instead
        of a query on a thread five times a second: under load the thread's hand-offs
        cost the scoring loop more than the query itself."""
        if not self._files:
            return True
        seen = []
        for name in self._files:
            try:
                st = os.stat(name)
                seen.append((st.st_mtime_ns, st.st_size))
            except OSError:
                seen.append((0, 0))
        moved, self._seen = seen != self._seen, seen
        return moved

    async def run(
        self, applied: Callable[[], int], apply: Callable[[int], Awaitable[None]]
    ) -> None:
        """Until cancelled: whenever the store's newest change is past `applied()`, call
        `apply(change_id)`. An error in `apply` is logged and retried at the next wake."""
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        listener = None
        if self._listen is not None:
            listener = threading.Thread(
                target=self._listen_loop, args=(loop, self._wake), name="change-feed", daemon=True
            )
            listener.start()
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
                self._wake.clear()
                if not self._files_moved():
                    continue
                try:
                    latest = await asyncio.to_thread(self.store.last_change_id)
                    if latest != applied():
                        await apply(latest)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("applying control-plane changes failed; retrying")
        finally:
            self._stop.set()

    def _listen_loop(self, loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> None:
        assert self._listen is not None
        while not self._stop.is_set():
            try:
                with self._listen() as conn:
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=RELISTEN_S, stop_after=1):
                            loop.call_soon_threadsafe(wake.set)
            except Exception as exc:  # the periodic check covers the gap
                if self._stop.is_set():
                    return
                log.warning("change feed: LISTEN connection lost (%s); polling meanwhile", exc)
                self._stop.wait(RELISTEN_S)
