"""What this process is really given: CPUs and shared memory.

A container with `--cpus 1`, a Kubernetes CPU limit or `taskset` leave
`os.cpu_count()` at the host's count; sizing thread pools from it oversubscribes
the cores the process may use (measured: 0.40x the request rate of a correctly
sized onnxruntime session on one core). Every default that depends on CPUs reads
`usable_cpus()` instead: the smaller of the affinity mask and the cgroup CPU
quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us / cpu.cfs_period_us`), rounded down,
at least 1. `SERVEGATE_CPUS` (`servegate serve --cpus`) overrides the detection.

Docker's default `/dev/shm` is 64 MiB: `shm_bytes()` is its real size, so the
worker processes' shared-memory segments fit it.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

CPUS_ENV = "SERVEGATE_CPUS"
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CpuReading:
    """How many CPUs this process may use, and where each figure came from."""

    usable: int
    affinity: int
    quota: float | None
    override: int | None

    def describe(self) -> str:
        quota = f"{self.quota:g}" if self.quota is not None else "none"
        source = f"{CPUS_ENV}={self.override}" if self.override else "detected"
        return f"{self.usable} ({source}; affinity {self.affinity}, cgroup quota {quota})"


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _quota_v2(folder: Path) -> float | None:
    try:
        limit, period = (folder / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if limit == "max":
        return None
    return int(limit) / int(period)


def _quota_v1(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _cgroup_folders(root: Path, proc_cgroup: str) -> list[tuple[Path, bool]]:
    """(folder, is_v2) for this process's CPU cgroup and each of its parents. Inside a
    container the cgroup namespace makes the path `/`, so the root itself counts."""
    found: list[tuple[Path, bool]] = []
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            mounts = [root] if (root / "cgroup.controllers").exists() else [root / "unified"]
            v2 = True
        elif "cpu" in controllers.split(","):
            mounts = [root / controllers, root / "cpu", root / "cpu,cpuacct"]
            v2 = False
        else:
            continue
        for mount in dict.fromkeys(mounts):
            relative = Path(path.lstrip("/"))
            for depth in range(len(relative.parts), -1, -1):
                folder = mount.joinpath(*relative.parts[:depth])
                if folder.is_dir():
                    found.append((folder, v2))
    return found


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> float | None:
    """The tightest CPU quota on this process's cgroup path, in CPUs; None if unlimited."""
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    quotas = [
        quota
        for folder, v2 in _cgroup_folders(root, proc_cgroup)
        if (quota := (_quota_v2(folder) if v2 else _quota_v1(folder))) is not None
    ]
    return min(quotas) if quotas else None


def _override() -> int | None:
    value = os.environ.get(CPUS_ENV, "").strip()
    if not value:
        return None
    try:
        cpus = int(value)
    except ValueError:
        raise ValueError(f"{CPUS_ENV}={value!r}: must be a whole number of CPUs >= 1") from None
    if cpus < 1:
        raise ValueError(f"{CPUS_ENV}={value!r}: must be a whole number of CPUs >= 1")
    return cpus


@functools.lru_cache(maxsize=1)
def cpu_reading() -> CpuReading:
    """Read once per process: neither the affinity nor the quota changes under a server."""
    affinity = _affinity()
    quota = cgroup_cpu_quota()
    override = _override()
    detected = min(affinity, max(1, math.floor(quota))) if quota is not None else affinity
    return CpuReading(override or detected, affinity, quota, override)


def usable_cpus() -> int:
    """The CPUs this process may use (see the module docstring)."""
    return cpu_reading().usable


def shm_bytes(path: str = "/dev/shm") -> int:
    """The size of the shared-memory filesystem (Docker's default is 64 MiB)."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return 0
    return stat.f_frsize * stat.f_blocks
