"""The management API's answers and the bodies it takes that are not spec files, as
models. The server declares them per route (`gateway.api`), the OpenAPI document is
generated from them, and `servegate.client` parses answers with them.

Answers that carry a spec (endpoints, deployments, jobs) allow the spec's other fields:
the spec models (`deploy.specs`) define those.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from deploy.records import LeaseRecord as Lease
from deploy.records import ReplicaIdentity, RolloutRecord
from deploy.specs import Spec


class Answer(BaseModel):
    """An answer whose listed fields are always there; others may be too."""

    model_config = ConfigDict(extra="allow")


class EndpointView(Answer):
    name: str
    auth_mode: str
    traffic: dict[str, int]
    mirror_traffic: dict[str, int]
    scoring_uri: str
    openapi_uri: str
    #: deployments loaded on the replica that answered
    deployments: list[str]
    #: deployments that failed to load there, with the reason
    unavailable_deployments: dict[str, str]
    #: on create: the Azure ML fields given that servegate does not use
    warnings: list[str] = []
    provisioning_state: str = "Succeeded"


class EndpointUpdate(BaseModel):
    """PATCH body: any of these; `reason` goes to the audit log."""

    model_config = ConfigDict(extra="forbid")

    traffic: dict[str, int] | None = None
    mirror_traffic: dict[str, int] | None = None
    description: str | None = None
    tags: dict[str, str] | None = None
    auth_mode: Literal["key", "aml_token", "token"] | None = None
    reason: str = ""


class Deployment(Answer):
    name: str
    endpoint_name: str
    runtime: str
    #: thread, process or ray; before a no_wait create has read its model (202), absent
    #: when the model decides it (a pickle loads only in worker processes)
    host: str | None = None
    instance_count: int
    #: on create: Azure ML fields given that servegate does not use, and what may not
    #: work about the model here (missing requirements)
    warnings: list[str] = []
    #: on the replica that answered: Succeeded (loaded, routed to), Failed (it could not
    #: load here, or its last create or update failed; `error` says why), Creating or
    #: Updating (`no_wait`: under way)
    provisioning_state: Literal["Creating", "Updating", "Succeeded", "Failed"]
    #: instances ready to serve on the replica that answered
    instances_ready: int


class DeploymentPatch(BaseModel):
    """Fields of a deployment's spec to change (a JSON merge patch: objects merge, null
    removes a field), e.g. `{"instance_count": 2}`."""

    model_config = ConfigDict(extra="allow")


class LogLine(BaseModel):
    """A line of a deployment's log."""

    id: int
    at: str
    #: the gateway replica whose worker wrote it
    replica: str
    line: str


class ModelVersion(Answer):
    name: str
    version: int
    runtime: str
    sha256: str
    filename: str
    size_bytes: int
    signature: dict[str, Any]
    description: str
    tags: dict[str, str]
    created_at: str
    #: at registration: what is worth knowing (a model saved by another framework version)
    warnings: list[str] = []


class DataUpload(BaseModel):
    #: the folder on the gateway's host holding the uploaded files
    path: str


class CodeUpload(BaseModel):
    #: the folder to give as code_configuration.code
    code: str


class Keys(BaseModel):
    primaryKey: str
    secondaryKey: str


class KeyRegenerated(BaseModel):
    """What a principal that may not read keys gets back from regenerateKeys."""

    #: the key type that was regenerated
    regenerated: str
    note: str


class Token(BaseModel):
    accessToken: str
    tokenType: str
    expiryTimeUtc: str


class RegenerateKeys(BaseModel):
    keyType: Literal["primary", "secondary"]


#: A rollout is answered as the store keeps it.
Rollout = RolloutRecord


class RolloutStatus(RolloutRecord):
    traffic: dict[str, int]
    mirror_traffic: dict[str, int]
    #: the latest verdict of the replica answering, when it drives the rollout
    judgement: dict[str, Any] | None


class AuditRecord(BaseModel):
    id: int
    at: str
    actor: str
    action: str
    target: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    reason: str


class BatchEndpoint(Answer):
    name: str
    defaults: dict[str, Any]
    #: on create: the Azure ML fields given that servegate does not use
    warnings: list[str] = []


class BatchEndpointUpdate(BaseModel):
    """PATCH body of a batch endpoint: any of these."""

    model_config = ConfigDict(extra="forbid")

    description: str | None = None
    tags: dict[str, str] | None = None
    defaults: dict[Literal["deployment_name"], str] | None = None


class BatchDeployment(Answer):
    name: str
    endpoint_name: str
    #: on create: the Azure ML fields given that servegate does not use
    warnings: list[str] = []


class JobRequest(Spec):
    """POST /management/batch/jobs: a job on a batch endpoint or an online endpoint's
    deployment; the settings override the deployment's for this job."""

    endpoint: str
    deployment: str | None = None
    input: str
    input_type: Literal["uri_file", "uri_folder"] | None = None
    output: str
    mini_batch_size: int | None = None
    instance_count: int | None = None
    max_concurrency_per_instance: int | None = None
    error_threshold: int | None = None
    output_file_name: str | None = None


class Job(Answer):
    id: str
    endpoint: str
    deployment: str
    state: str
    input: str
    output: str


class JobDetail(Job):
    mini_batch_states: dict[str, int]
    #: seconds the workers spent on the mini-batches (read, score, write)
    worker_seconds: float
    runner_alive: bool
    #: the lease holder running it now (None when no runner holds the job)
    runner: str | None
    errors: list[dict[str, Any]]


class Replica(ReplicaIdentity):
    #: the newest control-plane change its routing snapshot has applied
    applied_change: int
    heartbeat_age_s: float


class ClusterStatus(BaseModel):
    store: str
    this_replica: str
    latest_change: int
    replicas: list[Replica]
    leases: list[Lease]


class PrincipalView(BaseModel):
    """Who a request acts as (`access whoami`)."""

    name: str
    kind: Literal["user", "service", "system"]
    actor: str
    roles: list[str]
    endpoints: str
    permissions: list[str]


class AdminTokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    role: Literal["owner", "operator", "scorer-key-reader", "reader"]
    #: a name pattern (`fraud-*`); empty: every endpoint
    endpoints: str = ""
    #: a duration: 30d, 12h, 90m, 3600s; none: it does not expire
    expires: str | None = None


class AdminTokenView(BaseModel):
    name: str
    role: str
    endpoints: str
    #: ISO-8601 UTC; null: it does not expire
    expires_at: str | None
    created_by: str
    created_at: str


class AdminTokenCreated(AdminTokenView):
    #: shown this once; the store keeps only its hash
    token: str


class SecretValue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: str


class SecretView(BaseModel):
    name: str
    updated_at: str


class MonitorRunView(BaseModel):
    id: int
    monitor: str
    at: str
    #: the window of logged rows it judged (ISO-8601 UTC)
    window_start: str
    window_end: str
    #: ok, breach, no_data, too_few_rows, no_baseline, failed
    state: str
    #: per feature and prediction: psi, js_distance, null_rate, out_of_range_rate, breaches
    result: dict[str, Any]


class MonitorView(Answer):
    name: str
    endpoint_name: str
    deployment_name: str
    last_run: MonitorRunView | None = None
