"""What the rollout scenarios share: a gateway process, its admin API, open-loop
load from `servegate loadtest`, a sampler of the traffic split, and the plot."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from loadtests.gateway_process import GatewayProcess


class Scenario(GatewayProcess):
    """A gateway in a temporary home, driven through its HTTP APIs only."""

    def __init__(self, name: str, out_dir: Path) -> None:
        self.name = name
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix=f"sg-{name}-"))
        super().__init__(self.work / "home")
        self.__enter__()

    def register(self, name: str, data: bytes, filename: str) -> None:
        self.call(
            "POST",
            f"/management/models/{name}/versions",
            params={"filename": filename},
            content=data,
        )

    def load(
        self, path: str, body: bytes, rate: float, duration_s: float, headers: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        """Open-loop load from `servegate loadtest` in a process of its own."""
        payload = self.work / "payload.json"
        payload.write_bytes(body)
        command = [
            sys.executable,
            "-m",
            "servegate",
            "loadtest",
            "--url",
            self.url + path,
            "--rate",
            str(rate),
            "--duration",
            f"{duration_s}s",
            "--payload",
            str(payload),
            "--report",
            str(self.out_dir / f"{self.name}-load.json"),
            "--plot",
            str(self.out_dir / f"{self.name}-latency.png"),
        ]
        for key, value in headers.items():
            command += ["-H", f"{key}: {value}"]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def rollout_under_load(
        self, endpoint: str, plan: dict[str, Any], body: bytes, rate: float, duration_s: float
    ) -> RolloutRun:
        """Steady open-loop load on the endpoint; after 2 s, start the rollout; wait for the
        load to end. Returns what happened."""
        key = self.call("POST", f"/management/endpoints/{endpoint}/listKeys")["primaryKey"]
        started_wall = time.time()
        with SplitSampler(self.url, endpoint) as sampler:
            load = self.load(
                f"/endpoints/{endpoint}/score",
                body,
                rate,
                duration_s,
                {"Authorization": f"Bearer {key}"},
            )
            time.sleep(2)
            rollout_started = time.time()
            self.call("POST", f"/management/endpoints/{endpoint}/rollouts", json=plan)
            output = load.communicate(timeout=duration_s + 120)[0].decode()
        record = self.call("GET", f"/management/endpoints/{endpoint}/rollouts/status")
        report = json.loads((self.out_dir / f"{self.name}-load.json").read_text())["results"]
        return RolloutRun(record, report, sampler, started_wall, rollout_started, output)

    def close(self) -> None:
        self.__exit__(None, None, None)


@dataclass
class RolloutRun:
    record: dict[str, Any]  # the rollout's final status
    report: dict[str, Any]  # the load generator's results
    sampler: SplitSampler
    started_wall: float  # when the load started (unix s)
    rollout_started: float  # when the rollout was asked for (unix s)
    output: str  # what the load generator printed


class SplitSampler:
    """Samples each deployment's answered requests from /metrics every `every_s`."""

    def __init__(self, url: str, endpoint: str, every_s: float = 0.25) -> None:
        self.url, self.endpoint, self.every_s = url, endpoint, every_s
        self.samples: list[tuple[float, dict[str, dict[str, float]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.monotonic()

    def _run(self) -> None:
        with httpx.Client() as client:
            while not self._stop.is_set():
                text = client.get(f"{self.url}/metrics").text
                counts: dict[str, dict[str, float]] = {}
                for line in text.splitlines():
                    if (
                        line.startswith("servegate_requests_total{")
                        and f'endpoint="{self.endpoint}"' in line
                    ):
                        labels, value = line.rsplit(" ", 1)
                        deployment = labels.split('deployment="')[1].split('"')[0]
                        status = labels.split('status="')[1].split('"')[0]
                        per = counts.setdefault(deployment, {})
                        per[status] = per.get(status, 0.0) + float(value)
                self.samples.append((time.monotonic() - self.started, counts))
                self._stop.wait(self.every_s)

    def __enter__(self) -> SplitSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def shares(self) -> tuple[list[float], dict[str, list[float]]]:
        """Per interval: each deployment's share of the requests answered in it."""
        times, shares = [], {}
        deployments = sorted({d for _, c in self.samples for d in c if d})
        for (_, before), (t1, after) in zip(self.samples, self.samples[1:], strict=False):
            delta = {
                d: sum(after.get(d, {}).values()) - sum(before.get(d, {}).values())
                for d in deployments
            }
            total = sum(delta.values())
            if total <= 0:
                continue
            times.append(t1)
            for d in deployments:
                shares.setdefault(d, []).append(100 * delta[d] / total)
        return times, shares


def plot_split(
    path: Path, sampler: SplitSampler, events: list[tuple[float, str]], title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times, shares = sampler.shares()
    figure, axis = plt.subplots(figsize=(10, 4.5))
    if times:
        axis.stackplot(times, *shares.values(), labels=list(shares), alpha=0.8)
    for at, label in events:
        axis.axvline(at, color="black", linewidth=0.6, linestyle=":")
        axis.text(at + 0.1, 50, label, rotation=90, fontsize=8, va="center")
    axis.set_ylim(0, 100)
    axis.set_xlabel("time since load started (s)")
    axis.set_ylabel("share of answered requests (%)")
    axis.set_title(title)
    axis.legend(loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def rollout_events(record: dict[str, Any], started_wall: float) -> list[tuple[float, str]]:
    """The rollout's traffic steps and its outcome, as (seconds since load start, label)."""
    from datetime import datetime

    out = []
    for event in record["events"]:
        message = event["message"]
        at = datetime.fromisoformat(event["at"]).timestamp() - started_wall
        if message.startswith("step ") and "passed" not in message:
            out.append((at, message.split(": ", 1)[1]))  # e.g. "green 25%"
        elif message.startswith(("succeeded", "rolled_back", "aborted")):
            out.append((at, message.split(":")[0]))
    return out


def write(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=2))
