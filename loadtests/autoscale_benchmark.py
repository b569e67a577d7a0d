"""Autoscaling under a step load: idle -> 3x one instance's capacity -> idle.

One gateway pinned to one core (defaults otherwise), one deployment whose instance takes
one request at a time for 20 ms (the `fake` runtime's `delay_s`: an instance bound by
its accelerator, not by the gateway's CPU, which is what adding instances helps). One
instance serves 50 req/s; the step offers 150 req/s open loop (latency counted from each
request's intended send time). The deployment is autoscaled as a user would write it:

    scale_settings: {type: target_utilization, min_instances: 1, max_instances: 5,
                     polling_interval: 1, target_utilization_percentage: 70,
                     scale_down_delay: 10}

Reported: instances over time (from the gateway's `servegate_instances` gauge), p99 per
second, failed requests, how long the step took to reach its steady instance count, and
the steady p99 against the same step on a deployment fixed at max_instances (what a user
pays for starting small). A plot of both series goes to reports/autoscale.png.

    python -m loadtests.autoscale_benchmark [--step 30] [--report reports/autoscale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from loadtests.benchmark import LOAD_CORE, SERVER_CORE
from loadtests.gateway_process import GatewayProcess
from loadtests.generator import Results, Target, run

CALL_S = 0.02
CAPACITY_RPS = 1 / CALL_S  # one instance, one call at a time
SCALE = {
    "type": "target_utilization",
    "min_instances": 1,
    "max_instances": 5,
    "polling_interval": 1,
    "target_utilization_percentage": 70,
    "scale_down_delay": 10,
}
BODY = json.dumps({"input_data": [[1.0, 2.0]]}).encode()


def deploy(gateway: GatewayProcess, name: str, scale: dict[str, Any] | None) -> None:
    gateway.call(
        "POST",
        f"/management/endpoints/{name}/deployments",
        json={
            "name": "model",
            "model": "slow:1",
            "runtime_options": {"delay_s": CALL_S},
            "request_settings": {"request_timeout_ms": 10_000},
            **({"scale_settings": scale} if scale else {"instance_count": SCALE["max_instances"]}),
        },
    )
    gateway.call("PATCH", f"/management/endpoints/{name}", json={"traffic": {"model": 100}})


class InstanceGauge(threading.Thread):
    """Reads `servegate_instances` for an endpoint every `every_s` until stopped."""

    def __init__(self, url: str, endpoint: str, every_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        self._url, self._every_s = f"{url}/metrics", every_s
        self._pattern = re.compile(
            rf'^servegate_instances\{{[^}}]*endpoint="{endpoint}"[^}}]*\}} (\S+)$', re.M
        )
        self.readings: list[tuple[float, float]] = []  # (perf_counter, instances)
        self._halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._halt.is_set():
                match = self._pattern.search(client.get(self._url).text)
                if match:
                    self.readings.append((time.perf_counter(), float(match.group(1))))
                self._halt.wait(self._every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def p99_per_second(results: Results) -> tuple[np.ndarray, np.ndarray]:
    samples = np.array([s for s in results.samples if s[2] == 200])
    seconds = np.floor(samples[:, 0]).astype(int)
    bins = np.arange(seconds.max() + 1)
    p99 = np.array(
        [
            np.percentile(samples[seconds == b, 1], 99) * 1000 if (seconds == b).any() else np.nan
            for b in bins
        ]
    )
    return bins + 0.5, p99


def step(gateway: GatewayProcess, endpoint: str, key: str, args: argparse.Namespace) -> dict:
    target = Target.build(
        f"{gateway.url}/endpoints/{endpoint}/score",
        BODY,
        {"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    gauge = InstanceGauge(gateway.url, endpoint)
    gauge.start()
    began = time.perf_counter()
    time.sleep(args.idle)
    results = run(target, args.step, rate=CAPACITY_RPS * 3)
    loaded_at = results.started - began
    time.sleep(args.after)
    gauge.stop()
    ok = [s for s in results.samples if s[2] == 200]
    failed = len(results.samples) - len(ok) + sum(results.errors.values())
    readings = [(t - began, n) for t, n in gauge.readings]
    peak = max(n for _, n in readings)
    grew = readings[0][1] < peak
    reached = next(t for t, n in readings if n == peak) - loaded_at if grew else None
    steady = np.array([lat for at, lat, _ in ok if at > args.step / 2]) * 1000
    first = np.array([lat for at, lat, _ in ok if at < 2.0]) * 1000
    return {
        "failed": failed,
        "statuses": dict(results.summary()["statuses"]),  # type: ignore[call-overload]
        "peak_instances": peak,
        "seconds_to_peak": round(reached, 2) if reached is not None else None,
        "first_2s_p99_ms": round(float(np.percentile(first, 99)), 2),
        "instances_at_end": readings[-1][1],
        "steady_p99_ms": round(float(np.percentile(steady, 99)), 2),
        "steady_p50_ms": round(float(np.percentile(steady, 50)), 2),
        "_results": results,
        "_readings": readings,
        "_loaded_at": loaded_at,
    }


def plot(path: Path, scaled: dict, fixed: dict, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for run_, label in ((scaled, "autoscaled 1-5"), (fixed, "fixed at 5")):
        times, instances = zip(*run_["_readings"], strict=True)
        top.step(times, instances, where="post", label=label)
        seconds, p99 = p99_per_second(run_["_results"])
        bottom.plot(seconds + run_["_loaded_at"], p99, label=label)
    start = scaled["_loaded_at"]
    for axis in (top, bottom):
        axis.axvspan(start, start + args.step, color="grey", alpha=0.15)
    top.set_ylabel("instances")
    top.set_title(
        f"step load: idle -> {CAPACITY_RPS * 3:.0f} req/s (3x one instance) -> idle (shaded: load)"
    )
    top.legend()
    bottom.set_yscale("log")
    bottom.set_ylabel("p99 latency per second (ms, log)")
    bottom.set_xlabel("time since start (s)")
    bottom.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=5.0, help="seconds idle before the step")
    parser.add_argument("--step", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--after", type=float, default=20.0, help="seconds idle after it")
    parser.add_argument("--report", type=Path, default=Path("reports/autoscale.json"))
    args = parser.parse_args()
    args.report.parent.mkdir(parents=True, exist_ok=True)
    os.sched_setaffinity(0, {int(LOAD_CORE)})  # the load off the server's core
    with (
        tempfile.TemporaryDirectory() as tmp,
        GatewayProcess(Path(tmp) / "home", core=SERVER_CORE) as gateway,
    ):
        model = Path(tmp) / "slow.bin"
        model.write_bytes(b"fake runtime: no weights")
        gateway.call(
            "POST",
            "/management/models/slow/versions",
            params={"filename": model.name, "runtime": "fake"},
            content=model.read_bytes(),
        )
        keys = {}
        for endpoint, scale in (("scaled", SCALE), ("fixed", None)):
            gateway.call("POST", "/management/endpoints", json={"name": endpoint})
            deploy(gateway, endpoint, scale)
            keys[endpoint] = gateway.call("POST", f"/management/endpoints/{endpoint}/listKeys")[
                "primaryKey"
            ]
        scaled = step(gateway, "scaled", keys["scaled"], args)
        fixed = step(gateway, "fixed", keys["fixed"], args)
        audit = gateway.call(
            "GET",
            "/management/audit",
            params={"target": "endpoints/scaled/deployments/model"},
        )
    changes = [
        f"{e['before']['instances']}->{e['after']['instances']}"
        for e in reversed(audit)
        if e["action"] == "deployment.scale"
    ]
    plot(args.report.with_suffix(".png"), scaled, fixed, args)
    report = {
        "settings": {**SCALE, "call_ms": CALL_S * 1000, "rate_rps": CAPACITY_RPS * 3, **vars(args)},
        "autoscaled": {k: v for k, v in scaled.items() if not k.startswith("_")},
        "fixed_at_max": {k: v for k, v in fixed.items() if not k.startswith("_")},
        "scaling_changes": changes,
        "steady_p99_ratio": round(scaled["steady_p99_ms"] / fixed["steady_p99_ms"], 2),
    }
    args.report.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
