"""Scenario: steady open-loop load while a full blue -> green rollout runs and
blue is deleted at the end. Reports requests sent and failed (must be 0) and
plots the traffic split over time.

    python -m loadtests.scenarios.rollout_under_load [--rate 300] [--step-interval 3]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gateway.demo import build_classifier
from loadtests.scenarios.common import Scenario, plot_split, rollout_events, write

ENDPOINT = "shop"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--step-interval", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=Path("reports"))
    args = parser.parse_args()
    steps = [10, 25, 50, 100]
    duration = args.step_interval * (len(steps) + 2) + 4

    scenario = Scenario("rollout-under-load", args.out)
    try:
        scenario.register("shop-model", build_classifier(0), "v1.onnx")
        scenario.register("shop-model", build_classifier(1), "v2.onnx")
        scenario.call("POST", "/management/endpoints", json={"name": ENDPOINT})
        for name, version in (("blue", 1), ("green", 2)):
            scenario.call(
                "POST",
                f"/management/endpoints/{ENDPOINT}/deployments",
                params={"all_traffic": str(name == "blue").lower()},
                json={
                    "name": name,
                    "model": f"shop-model:{version}",
                    "batching": {"max_batch_size": 32},
                },
            )
        body = json.dumps({"input_data": [[5.1, 3.5, 1.4, 0.2]]}).encode()
        plan = {
            "to": "green",
            "steps": steps,
            "step_interval_s": args.step_interval,
            "max_error_rate": 0.01,
            "max_p99_latency_ms": 250,
            "min_requests": 100,
            "delete_old": True,
        }
        run = scenario.rollout_under_load(ENDPOINT, plan, body, args.rate, duration)
        record, report, sampler, started_wall, output = (
            run.record,
            run.report,
            run.sampler,
            run.started_wall,
            run.output,
        )
        failed = report["requests"] - report["ok"]
        plot = args.out / "rollout-under-load-split.png"
        plot_split(
            plot,
            sampler,
            rollout_events(record, started_wall),
            f"rollout blue -> green under {args.rate:g} req/s: {report['requests']} sent, "
            f"{failed} failed",
        )
        summary = {
            "requests_sent": report["requests"],
            "failed": failed,
            "statuses": report["statuses"],
            "errors": report["errors"],
            "latency_ms": report["latency_ms"],
            "rollout_state": record["state"],
            "rollout_reason": record["reason"],
            "final_traffic": record["traffic"],
            "events": record["events"],
            "plot": str(plot),
        }
        write(args.out / "rollout-under-load.json", summary)
        print(output)
        print(json.dumps({k: v for k, v in summary.items() if k != "events"}, indent=2))
    finally:
        scenario.close()


if __name__ == "__main__":
    main()
