"""Scenario: a rollout to a deliberately broken candidate (a scoring script that
fails 20% of its requests) under steady open-loop load. Shows the automatic
rollback, when it came, and how many requests the candidate failed before it.

    python -m loadtests.scenarios.broken_candidate [--rate 300]
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

from gateway.demo import build_classifier
from loadtests.scenarios.common import Scenario, plot_split, rollout_events, write

ENDPOINT = "shop"
SCORE_PY = b"""
import json
count = 0

def init():
    pass

def run(raw_data):
    global count
    count += 1
    if count % 5 == 0:  # one request in five fails
        raise RuntimeError("candidate bug: cannot score this request")
    rows = json.loads(raw_data)["input_data"]
    return {"label": [0 for _ in rows]}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--step-interval", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=Path("reports"))
    args = parser.parse_args()
    duration = args.step_interval * 3 + 6

    scenario = Scenario("broken-candidate", args.out)
    try:
        scenario.register("shop-model", build_classifier(0), "v1.onnx")
        scenario.call("POST", "/management/endpoints", json={"name": ENDPOINT})
        scenario.call(
            "POST",
            f"/management/endpoints/{ENDPOINT}/deployments",
            params={"all_traffic": "true"},
            json={"name": "blue", "model": "shop-model:1", "batching": {"max_batch_size": 32}},
        )
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            info = tarfile.TarInfo("score.py")
            info.size = len(SCORE_PY)
            tar.addfile(info, io.BytesIO(SCORE_PY))
        code = scenario.call("POST", "/management/code", content=archive.getvalue())["code"]
        scenario.call(
            "POST",
            f"/management/endpoints/{ENDPOINT}/deployments",
            json={
                "name": "green",
                "code_configuration": {"code": code, "scoring_script": "score.py"},
                "instance_count": 2,
            },
        )
        body = json.dumps({"input_data": [[5.1, 3.5, 1.4, 0.2]]}).encode()
        plan = {
            "to": "green",
            "steps": [10, 25, 50, 100],
            "step_interval_s": args.step_interval,
            "max_error_rate": 0.05,
            "min_requests": 50,
        }
        run = scenario.rollout_under_load(ENDPOINT, plan, body, args.rate, duration)
        record, report, sampler = run.record, run.report, run.sampler
        started_wall, rollout_started, output = run.started_wall, run.rollout_started, run.output
        last = sampler.samples[-1][1]
        green = last.get("green", {})
        from datetime import datetime

        finished = datetime.fromisoformat(record["finished_at"]).timestamp()
        plot = args.out / "broken-candidate-split.png"
        plot_split(
            plot,
            sampler,
            rollout_events(record, started_wall),
            f"rollout to a candidate failing 20%: {record['state']}",
        )
        summary = {
            "requests_sent": report["requests"],
            "failed_total": report["requests"] - report["ok"],
            "candidate_requests": int(sum(green.values())),
            "candidate_failed": int(sum(v for s, v in green.items() if s != "200")),
            "rollback_after_s": round(finished - rollout_started, 2),
            "rollout_state": record["state"],
            "rollout_reason": record["reason"],
            "final_traffic": record["traffic"],
            "plot": str(plot),
        }
        write(args.out / "broken-candidate.json", {**summary, "events": record["events"]})
        print(output)
        print(json.dumps(summary, indent=2))
    finally:
        scenario.close()


if __name__ == "__main__":
    main()
