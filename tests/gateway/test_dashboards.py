"""deploy/grafana: the dashboard and the alert rules name only metrics the gateway
exports (as it exposes them, with `_total` and `_bucket`), and are well-formed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import yaml

from tests.conftest import Gateway

GRAFANA = Path(__file__).parents[2] / "deploy" / "grafana"
METRIC = re.compile(r"\bservegate_[a-z_]+\b")
#: the series each TYPE line's name stands for (a counter's TYPE line already says _total)
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count")}


def exported(gateway: Gateway) -> set[str]:
    """Every series name /metrics can show, from its TYPE lines (also for families with
    no series yet)."""
    text = httpx.get(f"{gateway.url}/metrics").text
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        names.update(name + suffix for suffix in SUFFIXES.get(kind, ("",)))
    return names


def test_dashboard_and_alerts_name_exported_metrics(gateway: Gateway) -> None:
    dashboard = json.loads((GRAFANA / "servegate-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((GRAFANA / "alerts.yml").read_text())["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == {
        "ServegateHighErrorRate",
        "ServegateHighP99Latency",
        "ServegateQueueFull",
        "ServegateCollectorDrops",
        "ServegateRolloutRolledBack",
    }
    assert all(r["expr"].strip() and r["annotations"]["summary"] for r in rules)
    named = {m for e in [*exprs, *(r["expr"] for r in rules)] for m in METRIC.findall(e)}
    # What an operator looks at: requests, errors, latency, queue, batch size, instances,
    # mirror agreement, collector drops, batch job progress, rollouts.
    for wanted in (
        "servegate_requests_total",
        "servegate_request_duration_seconds_bucket",
        "servegate_queued_requests",
        "servegate_batch_size_bucket",
        "servegate_instances",
        "servegate_mirror_same_total",
        "servegate_collector_dropped_total",
        "servegate_batch_job_mini_batches",
        "servegate_rollouts_finished_total",
    ):
        assert wanted in named, wanted
    missing = named - exported(gateway)
    assert not missing, f"not exported by /metrics: {sorted(missing)}"
    # Panels have unique ids and a place on the grid.
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and all("gridPos" in p for p in dashboard["panels"])
