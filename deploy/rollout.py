"""Rollouts: the plan a user asks for, the traffic of each step, and the gates
that judge a candidate. Pure logic, no I/O; `gateway.rollouts` drives it.

A rollout moves live traffic from one deployment (`from`) to another (`to`) in
steps (10, 25, 50, 100 %), optionally after a mirror phase in which the
candidate receives copies of live requests. During each phase the candidate's
own numbers over the phase's window are judged against the gates; a breach
rolls back to the traffic the rollout started from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, model_validator

from deploy.specs import DeploymentName, Spec

#: Statuses that count against a candidate: its own failures and its overload.
#: Client errors (400, 401, 404, 413) are the caller's, not the candidate's.
FAILURE_STATUSES = frozenset({"408", "424", "429"})


class RolloutPlan(Spec):
    """What `servegate rollout start` asks for."""

    to: DeploymentName
    from_: DeploymentName | None = Field(default=None, alias="from")
    steps: Annotated[list[Annotated[int, Field(ge=1, le=100)]], Field(min_length=1)] = [
        10,
        25,
        50,
        100,
    ]
    step_interval_s: Annotated[float, Field(gt=0, le=86_400)] = 30.0
    mirror_first_s: Annotated[float, Field(ge=0, le=86_400)] = 0.0
    mirror_percent: Annotated[int, Field(ge=1, le=50)] = 50
    min_agreement: Annotated[float, Field(ge=0, le=1)] = 0.99
    max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.01
    max_p99_latency_ms: Annotated[float, Field(gt=0)] | None = None
    min_requests: Annotated[int, Field(ge=1)] = 100
    delete_old: bool = False

    @model_validator(mode="after")
    def _steps_rise_to_100(self) -> RolloutPlan:
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError("steps must rise, e.g. 10,25,50,100")
        if self.steps[-1] != 100:
            raise ValueError("the last step must be 100 (the candidate takes all traffic)")
        return self


def step_traffic(
    original: Mapping[str, int], source: str, target: str, percent: int
) -> dict[str, int]:
    """Traffic at a step: the target gets `percent`, taken from the source; every other
    deployment keeps its share."""
    traffic = dict(original)
    pool = traffic.get(source, 0) + traffic.get(target, 0)
    traffic[target] = min(percent, pool)
    traffic[source] = pool - traffic[target]
    return traffic


@dataclass(frozen=True)
class Window:
    """The candidate's numbers over a phase: live requests by status, latency buckets."""

    requests: int
    failures: int
    bucket_bounds: tuple[float, ...]
    bucket_counts: tuple[int, ...]  # per bucket, not cumulative; last is +Inf

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def p99_ms(self) -> float | None:
        """Upper bound of the bucket holding the 99th percentile (bucket precision)."""
        total = sum(self.bucket_counts)
        if not total:
            return None
        rank, seen = 0.99 * total, 0
        for bound, count in zip(
            (*self.bucket_bounds, float("inf")), self.bucket_counts, strict=True
        ):
            seen += count
            if seen >= rank:
                return bound * 1000
        return float("inf")  # pragma: no cover


def window(before: Mapping[str, Any], after: Mapping[str, Any]) -> Window:
    """The difference of two readings of a deployment's counters (see `reading`)."""
    statuses = {
        k: after["statuses"].get(k, 0) - before["statuses"].get(k, 0) for k in after["statuses"]
    }
    failures = sum(
        n for status, n in statuses.items() if status.startswith("5") or status in FAILURE_STATUSES
    )
    requests = sum(
        n
        for status, n in statuses.items()
        if not (status.startswith("4") and status not in FAILURE_STATUSES)
    )
    counts = tuple(a - b for a, b in zip(after["buckets"], before["buckets"], strict=True))
    return Window(requests, failures, tuple(after["bounds"]), counts)


@dataclass(frozen=True)
class Verdict:
    """`breach` is the reason to roll back; `ready` says the window can be judged."""

    ready: bool
    breach: str | None
    summary: dict[str, Any]


def judge_step(plan: RolloutPlan, live: Window) -> Verdict:
    p99 = live.p99_ms()
    summary = {
        "requests": live.requests,
        "failures": live.failures,
        "error_rate": round(live.error_rate, 5),
        "p99_ms": p99,
        "max_error_rate": plan.max_error_rate,
        "max_p99_latency_ms": plan.max_p99_latency_ms,
    }
    if live.requests < plan.min_requests:
        return Verdict(False, None, summary)
    if live.error_rate > plan.max_error_rate:
        return Verdict(
            True,
            f"error rate {live.error_rate:.4f} > max {plan.max_error_rate} over "
            f"{live.requests} requests",
            summary,
        )
    if plan.max_p99_latency_ms is not None and p99 is not None and p99 > plan.max_p99_latency_ms:
        return Verdict(
            True,
            f"p99 latency {p99:g} ms > max {plan.max_p99_latency_ms:g} ms over "
            f"{live.requests} requests",
            summary,
        )
    return Verdict(True, None, summary)


def judge_mirror(
    plan: RolloutPlan, before: Mapping[str, float], after: Mapping[str, float]
) -> Verdict:
    """The mirror phase: the candidate's mirrored error rate and its agreement."""
    sent = after["ok"] + after["failed"] - before["ok"] - before["failed"]
    failed = after["failed"] - before["failed"]
    rows = after["argmax_rows"] - before["argmax_rows"]
    agree = after["argmax_agree"] - before["argmax_agree"]
    compared = after["compared"] - before["compared"]
    same = after["same"] - before["same"]
    agreement = agree / rows if rows else (same / compared if compared else 1.0)
    error_rate = failed / sent if sent else 0.0
    summary = {
        "mirrored": sent,
        "failed": failed,
        "error_rate": round(error_rate, 5),
        "agreement": round(agreement, 5),
        "same_answers": same,
        "compared": compared,
        "min_agreement": plan.min_agreement,
        "max_error_rate": plan.max_error_rate,
    }
    if sent < plan.min_requests:
        return Verdict(False, None, summary)
    if error_rate > plan.max_error_rate:
        return Verdict(
            True,
            f"mirrored error rate {error_rate:.4f} > max {plan.max_error_rate} "
            f"over {sent} mirrored requests",
            summary,
        )
    if agreement < plan.min_agreement:
        return Verdict(
            True,
            f"agreement with the live model {agreement:.4f} < min "
            f"{plan.min_agreement} over {sent} mirrored requests",
            summary,
        )
    return Verdict(True, None, summary)
