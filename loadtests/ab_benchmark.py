"""This checkout's hot path against another checkout's, in one interleaved run.

Both gateways run with their defaults, pinned to core 0, each serving the benchmark's
MLP; `wrk` on core 1 loads one at a time in alternating slices (medians), so the
machine's drift hits both alike. Each checkout runs as several gateway processes
(`--instances`, default 3): two processes of the same checkout differ by up to 6% in
requests/s on this machine (memory layout, hash seeds), more than most changes, so one
process of each measures the processes. Reports requests/s and p50 for 32 connections
and for one per process, and the ratio this/other of the processes' means. Use it to
check that a change did not slow scoring:

    git worktree add /tmp/before <commit>
    python -m loadtests.ab_benchmark --other /tmp/before [--other-module deploy.cli]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from loadtests import models
from loadtests.benchmark import deploy, interleaved, process, v2_json, wrk
from loadtests.gateway_process import free_port, wait_ready


class _Admin:
    """Just enough of GatewayProcess for `benchmark.deploy`."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self._http = httpx.Client(
            base_url=url, timeout=120, headers={"Authorization": f"Bearer {token}"}
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None


@contextmanager
def gateway(checkout: Path, module: str, work: Path, name: str) -> Iterator[_Admin]:
    home, port = work / name / "home", free_port()
    home.parent.mkdir(parents=True)
    command = [sys.executable, "-m", module, "--home", str(home), "serve", "--port", str(port)]
    command += ["--log-level", "warning"]
    with process(["env", "-C", str(checkout), *command], work / f"{name}.log"):
        url = f"http://127.0.0.1:{port}"
        wait_ready(f"{url}/v2/health/ready")
        yield _Admin(url, (home / "admin_token").read_text().strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", type=Path, required=True, help="the other checkout")
    parser.add_argument("--other-module", default="servegate")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--instances", type=int, default=3, help="gateway processes per checkout")
    parser.add_argument("--slice", type=float, default=2.0)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="sg-ab-"))
    mlp_path, cnn_path = models.write(work / "models")
    body = v2_json("input", np.random.default_rng(0).normal(size=(1, 64)).astype(np.float32))
    cases = {}
    checkouts = (
        ("this", Path.cwd(), "servegate"),
        ("other", args.other.resolve(), args.other_module),
    )
    with ExitStack() as stack:
        for instance in range(args.instances):  # alternating, so start order favours neither
            for name, checkout, module in checkouts:
                process_name = f"{name}{instance}"
                admin = stack.enter_context(gateway(checkout, module, work, process_name))
                auth = {"Authorization": f"Bearer {deploy(admin, mlp_path, cnn_path)}"}  # type: ignore[arg-type]
                url = f"{admin.url}/v2/models/bench/versions/mlp/infer"
                for connections in (32, 1):
                    cases[f"{process_name}_{connections}conn"] = (
                        lambda seconds, url=url, auth=auth, c=connections: wrk(
                            url, body, auth, c, seconds, work
                        )
                    )
        results = interleaved(cases, args.rounds, args.slice)
    for name, r in results.items():
        print(
            f"{name:<14} {r['rps']:>9.0f} req/s  p50 {r['p50_ms']:.3f} ms  non-2xx {r['non_2xx']}"
        )
    for c in (32, 1):
        means = {
            name: statistics.mean(
                results[f"{name}{i}_{c}conn"]["rps"] for i in range(args.instances)
            )
            for name, _, _ in checkouts
        }
        print(f"{c} connection(s): this/other = {means['this'] / means['other']:.3f}")


if __name__ == "__main__":
    main()
