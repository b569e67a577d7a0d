"""A `servegate serve` process in a temporary home, for benchmarks and scenarios."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


class GatewayProcess:
    """Start on enter (optionally under `taskset -c CORE`), admin client, stop on exit."""

    def __init__(
        self, home: Path, *extra: str, core: str | None = None, source: Path | None = None
    ) -> None:
        """`source`: run the gateway from this checkout instead (a baseline to compare)."""
        self.home = home
        self._source = source
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-m",
            "servegate",
            "--home",
            str(home),
            "serve",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            *extra,
        ]
        self._command = ["taskset", "-c", core, *command] if core else command
        self.admin: httpx.Client | None = None

    def __enter__(self) -> GatewayProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        self._log = (self.home.parent / f"gateway-{self.port}.log").open("wb")
        self.process = subprocess.Popen(
            self._command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                **({"PYTHONPATH": str(self._source)} if self._source else {}),
            },
            cwd=self._source,
        )
        wait_ready(f"{self.url}/v2/health/ready")
        token = (self.home / "admin_token").read_text().strip()
        self.admin = httpx.Client(
            base_url=self.url,
            timeout=120,
            headers={"Authorization": f"Bearer {token}"},
        )
        return self

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        assert self.admin is not None
        response = self.admin.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else None

    def __exit__(self, *exc: object) -> None:
        if self.admin is not None:
            self.admin.close()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()
