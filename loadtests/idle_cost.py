"""What an idle gateway costs its core: the CPU time a `servegate serve --demo` process
uses over a quiet interval, with no requests (its background work: on this version the
replica heartbeat, the change feed, the rollout and job supervisors).

    python -m loadtests.idle_cost [--seconds 60] [--cwd DIR --module deploy.cli]

`--cwd` and `--module` run another checkout's gateway the same way (an older version
started as `python -m deploy.cli`), to compare.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtests.gateway_process import free_port, wait_ready

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def measure(seconds: float, cwd: Path, module: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {**os.environ, "SERVEGATE_HOME": str(Path(tmp) / "home")}
        env.pop("SERVEGATE_STORE", None)
        process = subprocess.Popen(
            [sys.executable, "-m", module, "serve", "--demo", "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}/v2/health/ready")
            time.sleep(5)  # start-up work done
            before = cpu_seconds(process.pid)
            time.sleep(seconds)
            return (cpu_seconds(process.pid) - before) / seconds
        finally:
            process.terminate()
            process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--cwd", type=Path, default=Path.cwd())
    parser.add_argument("--module", default="servegate")
    args = parser.parse_args()
    share = measure(args.seconds, args.cwd, args.module)
    print(f"idle gateway: {share * 100:.2f}% of one core over {args.seconds:g} s")


if __name__ == "__main__":
    main()
