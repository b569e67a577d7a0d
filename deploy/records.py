"""Typed records of the control plane's moving parts: the states a job, a mini-batch
and a rollout go through, as enums, and the rollout record.

They are `StrEnum`s: stored and shown as their plain values ("running"), compared
equal to them, so records written before these enums read back unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    #: cancel asked while a runner works: it stops its workers and finishes as CANCELLED
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: A job in one of these states is over: nothing resumes it.
FINAL_JOB_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})


class MiniBatchState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class RolloutState(StrEnum):
    MIRRORING = "mirroring"
    STEPPING = "stepping"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


#: A rollout in one of these states is driven by a replica (under its lease).
ACTIVE_ROLLOUT_STATES = frozenset({RolloutState.MIRRORING, RolloutState.STEPPING})


@dataclass(frozen=True)
class RolloutEvent:
    at: str
    message: str


@dataclass(frozen=True)
class RolloutRecord:
    """A rollout as the store keeps it. Changes make a new record (`replace`, `noted`)."""

    id: str
    endpoint: str
    source: str
    target: str
    #: the RolloutPlan as asked for (by alias: `from`, not `from_`)
    plan: dict[str, Any]
    state: RolloutState
    step: int
    original_traffic: dict[str, int]
    original_mirror: dict[str, int]
    started_at: str
    started_by: str
    reason: str = ""
    events: tuple[RolloutEvent, ...] = ()
    finished_at: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_ROLLOUT_STATES

    def noted(self, message: str, **changes: Any) -> RolloutRecord:
        """This record with `changes` and one more event."""
        event = RolloutEvent(datetime.now(timezone.utc).isoformat(timespec="milliseconds"), message)
        return replace(self, **changes, events=(*self.events, event))

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape stored and answered (Azure-like `from`/`to`)."""
        doc: dict[str, Any] = {
            "id": self.id,
            "endpoint": self.endpoint,
            "from": self.source,
            "to": self.target,
            "plan": self.plan,
            "state": str(self.state),
            "step": self.step,
            "original_traffic": self.original_traffic,
            "original_mirror": self.original_mirror,
            "started_at": self.started_at,
            "started_by": self.started_by,
            "reason": self.reason,
            "events": [{"at": e.at, "message": e.message} for e in self.events],
        }
        if self.finished_at is not None:
            doc["finished_at"] = self.finished_at
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> RolloutRecord:
        return cls(
            id=doc["id"],
            endpoint=doc["endpoint"],
            source=doc["from"],
            target=doc["to"],
            plan=doc["plan"],
            state=RolloutState(doc["state"]),
            step=int(doc["step"]),
            original_traffic=doc["original_traffic"],
            original_mirror=doc["original_mirror"],
            started_at=doc["started_at"],
            started_by=doc["started_by"],
            reason=doc.get("reason", ""),
            events=tuple(RolloutEvent(e["at"], e["message"]) for e in doc.get("events", ())),
            finished_at=doc.get("finished_at"),
        )
