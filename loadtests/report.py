"""Reports of a load test: a printed table, a JSON file and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from loadtests.generator import Results


def text(summary: dict[str, Any]) -> str:
    latency = summary["latency_ms"]
    lines = [
        f"requests   {summary['requests']}  ok {summary['ok']}  "
        f"statuses {summary['statuses']}  errors {summary['errors'] or 0}",
        f"throughput {summary['throughput_rps']:.1f} req/s over {summary['duration_s']:.1f} s",
    ]
    if latency.get("p50") is not None:
        lines.append(
            "latency ms "
            + "  ".join(f"{k} {latency[k]:.3f}" for k in ("p50", "p90", "p99", "p99.9", "max"))
        )
    return "\n".join(lines)


def write_json(path: Path, summary: dict[str, Any], settings: dict[str, Any]) -> None:
    path.write_text(json.dumps({"settings": settings, "results": summary}, indent=2))


def plot(path: Path, results: Results, title: str) -> None:
    """Latency of every request over time, and throughput per second."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - part of the loadtest/test extras
        raise RuntimeError(
            "the PNG plot needs matplotlib: pip install 'servegate[loadtest]'"
        ) from exc
    samples = np.array(results.samples) if results.samples else np.zeros((0, 3))
    ok = samples[samples[:, 2] == 200] if len(samples) else samples
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    top.scatter(ok[:, 0], ok[:, 1] * 1000, s=1, alpha=0.4)
    top.set_yscale("log")
    top.set_ylabel("latency (ms, log)")
    top.set_title(title)
    if len(samples):
        seconds = np.floor(samples[:, 0]).astype(int)
        per_second = np.bincount(seconds[samples[:, 2] == 200], minlength=seconds.max() + 1)
        errors = np.bincount(seconds[samples[:, 2] != 200], minlength=seconds.max() + 1)
        bottom.plot(np.arange(len(per_second)) + 0.5, per_second, label="ok / s")
        bottom.plot(np.arange(len(errors)) + 0.5, errors, label="errors / s")
        bottom.legend()
    bottom.set_xlabel("time since start (s)")
    bottom.set_ylabel("requests / s")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
