"""CPU and shared-memory detection: cgroup quotas read from real cgroup file layouts
(v1 and v2, written by the test), the affinity mask and the override, and a real
gateway pinned with taskset sizing its onnxruntime threads from what it may use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtimes import resources
from tests.conftest import Gateway, start_gateway, wait_for

# Runs once, on the SQLite pass: what it checks does not depend on the store.
pytestmark = pytest.mark.store_independent


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_the_tightest_on_the_path(tmp_path: Path) -> None:
    _write(tmp_path / "cgroup.controllers", "cpu memory\n")
    _write(tmp_path / "kubepods" / "cpu.max", "400000 100000\n")
    _write(tmp_path / "kubepods" / "pod1" / "cpu.max", "150000 100000\n")
    _write(tmp_path / "kubepods" / "pod1" / "c1" / "cpu.max", "max 100000\n")
    quota = resources.cgroup_cpu_quota(tmp_path, "0::/kubepods/pod1/c1\n")
    assert quota == 1.5


def test_cgroup_v2_unlimited_and_container_root(tmp_path: Path) -> None:
    _write(tmp_path / "cgroup.controllers", "cpu\n")
    _write(tmp_path / "cpu.max", "max 100000\n")
    assert resources.cgroup_cpu_quota(tmp_path, "0::/\n") is None
    # Inside a container the cgroup namespace shows `/`: the mount's root is the limit.
    _write(tmp_path / "cpu.max", "100000 100000\n")
    assert resources.cgroup_cpu_quota(tmp_path, "0::/\n") == 1.0


def test_cgroup_v1_cfs_quota(tmp_path: Path) -> None:
    folder = tmp_path / "cpu,cpuacct" / "docker" / "abc"
    _write(folder / "cpu.cfs_quota_us", "50000\n")
    _write(folder / "cpu.cfs_period_us", "100000\n")
    _write(tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    _write(tmp_path / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    cgroup = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n"
    assert resources.cgroup_cpu_quota(tmp_path, cgroup) == 0.5


def _reading(env: dict[str, str], *prefix: str) -> str:
    """`cpu_reading().describe()` in a fresh process (the reading is cached per process)."""
    code = "from runtimes.resources import cpu_reading; print(cpu_reading().describe())"
    result = subprocess.run(
        [*prefix, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    )
    return result.stdout.strip()


def test_affinity_mask_and_override() -> None:
    assert _reading({}, "taskset", "-c", "0").startswith("1 (detected; affinity 1")
    assert _reading({"SERVEGATE_CPUS": "3"}, "taskset", "-c", "0").startswith("3 (SERVEGATE_CPUS=3")
    code = "from runtimes.resources import usable_cpus; usable_cpus()"
    bad = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "SERVEGATE_CPUS": "two"},
    )
    assert bad.returncode != 0 and "SERVEGATE_CPUS='two'" in bad.stderr


def test_shm_size_is_read() -> None:
    assert resources.shm_bytes() > 0
    assert resources.shm_bytes("/no/such/folder") == 0


def _threads_line(gw: Gateway, endpoint: str) -> str:
    return wait_for(
        lambda: next(
            (
                line
                for line in gw.log.read_text().splitlines()
                if f"deployment {endpoint}/blue:" in line
            ),
            None,
        ),
        10,
    )


def test_pinned_gateway_sizes_threads_for_one_core(
    tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    """As `taskset -c 0 servegate serve` (or a container with one CPU): one onnxruntime
    thread per instance, not one per host core."""
    gw = start_gateway(tmp_path / "home", prefix=("taskset", "-c", "0"))
    try:
        assert "usable CPUs: 1 (detected; affinity 1" in gw.log.read_text()
        gw.create_endpoint(tmp_path, unique_name)
        gw.deploy(tmp_path, unique_name, "blue", model_dir / "classifier.onnx")
        assert "1 instance(s), 1 compute thread(s) each" in _threads_line(gw, unique_name)
    finally:
        gw.stop()


def test_cpus_flag_overrides_detection(tmp_path: Path, model_dir: Path, unique_name: str) -> None:
    gw = start_gateway(tmp_path / "home", "--cpus", "4")
    try:
        gw.create_endpoint(tmp_path, unique_name)
        gw.deploy(
            tmp_path,
            unique_name,
            "blue",
            model_dir / "classifier.onnx",
            extra_yaml="instance_count: 2\n",
        )
        line = _threads_line(gw, unique_name)
        assert "2 instance(s), 2 compute thread(s) each (usable CPUs: 4 (SERVEGATE_CPUS=4" in line
    finally:
        gw.stop()
