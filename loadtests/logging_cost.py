"""What request ids and logging cost on the hot path: MLP requests/s through gateways
pinned to one core, each serving the README's MLP deployment, in one run:

- `default`: what a user gets (request ids on every answer, text logs, no access log);
- `json`: `--log-format json`;
- `access`: `--log-format json --access-log full` (a JSON line per request);
- `baseline` (with `--baseline-src DIR`): a checkout from before request ids, the same
  way; `default / baseline` is what request ids cost.

All gateways stay up on the same core; only the one under load works. wrk on the other
core, 32 connections, V2 JSON bodies; cases alternate in slices (medians).

    python -m loadtests.logging_cost [--baseline-src /tmp/before] [--duration 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from loadtests import models
from loadtests.benchmark import SERVER_CORE, deploy, interleaved, v2_json, wrk
from loadtests.gateway_process import GatewayProcess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per case")
    parser.add_argument("--slice", type=float, default=2.0)
    parser.add_argument("--baseline-src", type=Path, default=None)
    parser.add_argument("--report", type=Path, default=Path("reports/logging_cost.json"))
    parser.add_argument(
        "--cases", default="default,json,access,baseline", help="which configurations to run"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="sg-logcost-"))
    mlp_path, cnn_path = models.write(work / "models")
    body = v2_json("input", np.random.default_rng(0).normal(size=(1, 64)).astype(np.float32))
    configurations: dict[str, tuple[tuple[str, ...], Path | None]] = {
        "default": ((), None),
        # at INFO, as `serve` logs by default (the benchmark's gateways otherwise log
        # warnings only, which would drop the access log's lines unwritten)
        "json": (("--log-format", "json", "--log-level", "info"), None),
        "access": (("--log-format", "json", "--access-log", "full", "--log-level", "info"), None),
    }
    if args.baseline_src is not None:
        configurations["baseline"] = ((), args.baseline_src.resolve())
    wanted = args.cases.split(",")
    configurations = {k: v for k, v in configurations.items() if k in wanted}
    rounds = max(3, round(args.duration / args.slice))
    with contextlib.ExitStack() as stack:
        cases: dict[str, Any] = {}
        for name, (flags, source) in configurations.items():
            gateway = stack.enter_context(
                GatewayProcess(work / name / "home", *flags, core=SERVER_CORE, source=source)
            )
            key = deploy(gateway, mlp_path, cnn_path)
            url = f"{gateway.url}/v2/models/bench/versions/mlp/infer"
            headers = {"Authorization": f"Bearer {key}"}
            cases[name] = lambda seconds, url=url, headers=headers: wrk(
                url, body, headers, 32, seconds, work
            )
        results: dict[str, Any] = interleaved(cases, rounds, args.slice)
    for case, against in (
        ("json", "default"),
        ("access", "default"),
        ("default", "baseline"),
        ("access", "baseline"),
    ):
        if case in results and against in results:
            results[f"{case}_vs_{against}"] = results[case]["rps"] / results[against]["rps"]
    results["method"] = (
        f"MLP, V2 JSON, wrk 32 connections; {rounds} interleaved slices of {args.slice:g} s; "
        "medians; every gateway pinned to one core"
    )
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
