"""The states a job, a mini-batch and a rollout go through, as enums.

They are `StrEnum`s: stored and shown as their plain values ("running"), compared
equal to them, so records written before these enums read back unchanged.
"""

from __future__ import annotations

from enum import StrEnum


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
