"""A throwaway one-node Ray cluster on 127.0.0.1, for tests and benchmarks.

Started with `ray start --head` and stopped through the processes it started (`ray stop`
stops every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: What every Ray process of a local test or benchmark cluster needs in its environment:
#: Ray stays on loopback (without it Ray 2.60 picks the machine's other address), and the
#: cluster runs without token authentication.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}


def _children() -> dict[int, list[int]]:
    """parent pid -> its children's pids, for every process."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    return children


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@dataclass
class RayCluster:
    address: str
    temp_dir: Path

    def pids(self) -> list[int]:
        """The processes of this cluster: those whose command line names its temp folder
        (the GCS, the raylet) or its address (the Ray client server, which detaches), and
        all their descendants (workers rename themselves `ray::...`). `ray stop` would
        stop every Ray on the machine."""
        children = _children()
        marks = (str(self.temp_dir).encode(), f"--address={self.address}".encode())
        roots = [
            pid
            for pids in children.values()
            for pid in pids
            if any(mark in _cmdline(pid) for mark in marks)
        ]
        found, todo = set(), list(roots)
        while todo:
            pid = todo.pop()
            if pid not in found:
                found.add(pid)
                todo.extend(children.get(pid, []))
        return sorted(found)

    def processes_named(self, *parts: str) -> list[int]:
        """This cluster's processes whose command line holds every one of `parts`."""
        return [pid for pid in self.pids() if all(part.encode() in _cmdline(pid) for part in parts)]

    def stop(self) -> None:
        for _ in range(5):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_ray_cluster(cpus: int = 2) -> RayCluster:
    """A one-node Ray cluster on 127.0.0.1 (`ray start --head`)."""

    # Short: Ray's socket paths live under it (Unix sockets allow ~107 bytes).
    temp_dir = Path(tempfile.mkdtemp(prefix="sgray", dir="/tmp"))
    port = free_port()
    ray = Path(sys.executable).parent / "ray"
    subprocess.run(
        [
            str(ray),
            "start",
            "--head",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            str(cpus),
            "--temp-dir",
            str(temp_dir),
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        env={**os.environ, **RAY_ENV},
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return RayCluster(f"127.0.0.1:{port}", temp_dir)
