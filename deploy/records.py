"""Typed records of the control plane's moving parts: the states a job, a mini-batch
and a rollout go through, as enums, and the rollout record.

The states are `StrEnum`s: stored and shown as their plain values ("running"), compared
equal to them, so records written before these enums read back unchanged.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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


class RolloutEvent(BaseModel):
    model_config = ConfigDict(frozen=True)

    at: str
    message: str


class RolloutRecord(BaseModel):
    """A rollout as the store keeps it and the management API answers it (Azure-like
    `from`/`to`). Frozen: a change makes a new record (`noted`)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    id: str
    endpoint: str
    source: str = Field(alias="from")
    target: str = Field(alias="to")
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
        """This record with `changes` (field names) and one more event."""
        at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        events = (*self.events, RolloutEvent(at=at, message=message))
        return self.model_copy(update={**changes, "events": events})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)
