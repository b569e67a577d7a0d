"""Typed records of the control plane's moving parts: the states a job, a mini-batch
and a rollout go through, as enums, and their records (frozen: a change is a new
record). Endpoints and deployments are their spec models (`deploy.specs`).

The states are `StrEnum`s: stored and shown as their plain values ("running"), compared
equal to them, so records written before these enums read back unchanged.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from deploy.specs import BatchDeploymentSpec, BatchSettings, OnlineDeploymentSpec


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
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        events = (*self.events, RolloutEvent(at=at, message=message))
        return self.model_copy(update={**changes, "events": events})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def iso(epoch: float | None) -> str | None:
    """Seconds since the epoch as an answer shows a time: ISO-8601 UTC with milliseconds,
    as every stored time is written."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


class Record(BaseModel):
    """A stored record: frozen; fields it does not know (written by a newer version)
    are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    #: fields kept as seconds since the epoch, which answers show as ISO-8601 times
    epoch_fields: ClassVar[tuple[str, ...]] = ()

    def changed(self, **changes: Any) -> Self:
        """This record with `changes`, validated (a state given as a string becomes
        its enum)."""
        return type(self).model_validate({**self.model_dump(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """As stored."""
        return self.model_dump(mode="json")

    def view(self) -> dict[str, Any]:
        """As answered: times as ISO-8601 strings."""
        shown = self.to_dict()
        for name in self.epoch_fields:
            shown[name] = iso(shown.get(name))
        return shown


class JobSettings(BatchSettings):
    """A job's settings: its deployment's, with the job's overrides, and how many
    instances run it."""

    instance_count: Annotated[int, Field(ge=1, le=64)] = 1


class JobRecord(Record):
    """A batch job as the store keeps it. The deployment's spec is copied in at
    creation: a job runs what was deployed when it was created."""

    id: str
    endpoint: str
    deployment: str
    #: a batch endpoint's deployment, or an online endpoint's
    kind: Literal["batch", "online"]
    input: str
    input_type: str | None = None
    output: str
    settings: JobSettings
    runtime_name: str
    deployment_spec: OnlineDeploymentSpec | BatchDeploymentSpec
    state: JobState
    created_at: str
    created_by: str
    reason: str = ""
    #: set once the runner has planned the mini-batches (and the input format)
    planned: bool = False
    format: str | None = None
    #: before formats had names, a job kept the planner's mode
    mode: str | None = None
    mini_batches: int | None = None
    items: int | None = None
    #: the runner's process on its host (informational: the lease says who runs it)
    pid: int | None = None
    started_at: str | None = None
    #: when the runner started, seconds since the epoch (answers: ISO-8601)
    runner_started: float | None = None
    done: int = 0
    failed: int = 0
    items_per_s: float | None = None
    retried_mini_batches: tuple[int, ...] = ()
    finished_at: str | None = None
    summary: dict[str, Any] | None = None

    epoch_fields: ClassVar[tuple[str, ...]] = ("runner_started",)

    @property
    def final(self) -> bool:
        return self.state in FINAL_JOB_STATES


class MiniBatchRecord(Record):
    """One mini-batch of a job: `items` rows (or files), its state and attempts."""

    index: int
    state: MiniBatchState = MiniBatchState.PENDING
    items: int
    attempts: int = 0
    failed_items: int = 0
    error: str = ""
    seconds: float = 0.0


class ReplicaIdentity(BaseModel):
    """Who a gateway replica is (what its heartbeat row says)."""

    model_config = ConfigDict(frozen=True)

    id: str
    host: str
    pid: int
    url: str
    version: str
    started_at: str


class ReplicaRecord(ReplicaIdentity):
    """A live replica as its last heartbeat left it."""

    #: the newest control-plane change its routing snapshot has applied
    applied_change: int
    heartbeat_age_s: float
    #: the counters it publishes (per deployment and mirror target) for rollout gates
    stats: dict[str, Any] | None = None


class LeaseRecord(BaseModel):
    """Who holds a lease (a rollout, a job, the job supervisor) and for how long more."""

    model_config = ConfigDict(frozen=True)

    name: str
    holder: str
    acquired_at: str
    expires_in_s: float


class AdminTokenRecord(BaseModel):
    """A management API token, as stored and listed: never the token itself (the store
    keeps its hash; the token is shown once, when created)."""

    model_config = ConfigDict(frozen=True)

    name: str
    role: str
    #: the endpoints it may act on (a name pattern, `fraud-*`); empty: all
    endpoints: str = ""
    #: epoch seconds; None: does not expire
    expires_at: float | None = None
    created_by: str = ""
    created_at: str = ""


class DeploymentIntent(BaseModel):
    """A deployment create or update answered 202 (no_wait) and not done yet, or failed:
    kept in the store so it survives the replica that took it, which finishes it or says
    why it failed."""

    model_config = ConfigDict(frozen=True)

    endpoint: str
    name: str
    #: Creating, Updating (under way) or Failed
    state: str
    #: the deployment's spec, as asked for
    spec: dict[str, Any]
    actor: str
    all_traffic: bool = False
    error: str = ""
    #: the replica working on it
    replica: str = ""
    updated_at: str = ""

    @property
    def under_way(self) -> bool:
        return self.state in ("Creating", "Updating")
