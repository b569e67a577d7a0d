"""Typed models of the YAML files, with Azure ML's field names.

Every spec rejects unknown fields, wrong types and out-of-range values with a
`SpecError` that names the source file, the field and what is allowed.
"""

from __future__ import annotations

import math
import re
import reprlib
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from deploy.errors import SpecError
from deploy.masking import looks_secret
from deploy.vault import references
from runtimes.registry import RUNTIME_KINDS, runtime_for_path

# fullmatch everywhere: `$` in re.match also matches before a trailing newline.
_AZURE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")


def _azure_name(value: str) -> str:
    # Azure ML's rule for endpoint and deployment names.
    if not _AZURE_NAME.fullmatch(value):
        raise ValueError(
            f"'{value}' is not a valid name: use 3-32 letters, digits or dashes, "
            "starting with a letter and not ending with a dash"
        )
    return value


def _model_name(value: str) -> str:
    if not _MODEL_NAME.fullmatch(value):
        raise ValueError(
            f"'{value}' is not a valid model name: use letters, digits, '.', '_' or '-' "
            "(at most 255), starting with a letter or digit"
        )
    return value


def _device(value: str) -> str:
    if not _DEVICE.fullmatch(value):
        raise ValueError(f"'{value}' is not a device: use cpu, cuda or cuda:N")
    return value


EndpointName = Annotated[str, AfterValidator(_azure_name)]
DeploymentName = EndpointName
ModelName = Annotated[str, AfterValidator(_model_name)]
Percent = Annotated[int, Field(ge=0, le=100)]

#: `name:version`, `name@latest` or `name`, each optionally after `azureml:` (Azure ML's
#: registered-asset form); a missing version means the latest
_SHORT_MODEL = re.compile(
    r"(?:azureml:)?(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?::(?P<version>[0-9]+)|@latest)?"
)


class Spec(BaseModel):
    """A validated, frozen spec. Specs are the control plane's records too: the store
    keeps `to_dict()` and reads back the same model (validated again)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    #: Whether `to_dict` leaves out unset optional fields (deployments) or shows them
    #: as null (endpoints), as the management API always answered.
    omit_none: ClassVar[bool] = True
    #: Azure ML fields that mean nothing here, and why: a file written for Azure is
    #: accepted as it is, each of these dropped with one warning (refused when strict).
    azure_only: ClassVar[dict[str, str]] = {}
    #: the Azure-only fields this spec was given (dropped)
    _ignored: tuple[str, ...] = PrivateAttr(default=())

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # Editors validating a file against the published schema accept Azure ML's fields
        # too, and show why servegate ignores them.
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        properties = target.setdefault("properties", {})
        for name, why in cls.azure_only.items():
            if "." in name:
                continue
            azure = {"description": f"Azure ML's field; ignored here: {why}"}
            if name in properties:  # a field of ours too, in another shape (`compute`)
                properties[name] = {"anyOf": [properties[name], {"type": "string", **azure}]}
            else:
                properties[name] = azure
        return schema

    def to_dict(self) -> dict[str, Any]:
        """The spec as stored, audited and answered (the `$schema` hint left out)."""
        return self.model_dump(mode="json", exclude={"schema_url"}, exclude_none=self.omit_none)

    @classmethod
    def _split_azure_only(cls, value: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
        """`value` without its Azure-only fields, and their names."""
        dropped = tuple(name for name in value if name in cls.azure_only)
        if not dropped:
            return value, ()
        return {k: v for k, v in value.items() if k not in cls.azure_only}, dropped

    @model_validator(mode="wrap")
    @classmethod
    def _drop_azure_only(cls, value: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        dropped: tuple[str, ...] = ()
        if isinstance(value, dict):
            value, dropped = cls._split_azure_only(value)
        spec = handler(value)
        if dropped:
            spec._ignored = dropped
        return spec

    def ignored_fields(self, prefix: str = "") -> list[tuple[str, str]]:
        """(field, why) per Azure-only field given here or in a nested spec, the field
        named as in the file (`model.stage`)."""
        found = [(f"{prefix}{name}", self.azure_only[name]) for name in self._ignored]
        for name in type(self).model_fields:
            value = getattr(self, name)
            nested = value.items() if isinstance(value, dict) else [(None, value)]
            for key, item in nested:
                if isinstance(item, Spec):
                    where = f"{prefix}{name}." + (f"{key}." if key is not None else "")
                    found += item.ignored_fields(where)
        return found

    def warnings(self) -> list[str]:
        """One warning per Azure-only field given ("environment: ignored; ..."), and per
        credential written out where a secret reference belongs."""
        return [f"{field}: ignored; {why}" for field, why in self.ignored_fields()] + [
            f"{field}: a literal value where a credential goes; store it with `servegate "
            f"secret set NAME` and write '${{secret:NAME}}' here, so no answer, file or "
            "log holds it"
            for field in self.literal_credentials()
        ]

    def literal_credentials(self) -> list[str]:
        """Fields that hold a credential as it is instead of a `${secret:NAME}`."""
        found = []
        environment = getattr(self, "environment_variables", None)
        settings = getattr(self, "settings", None)
        if environment is None and settings is not None:
            environment = getattr(settings, "environment_variables", None)
        for name, value in (environment or {}).items():
            if looks_secret(name) and value and not references(str(value)):
                found.append(f"environment_variables.{name}")
        headers = (getattr(self, "runtime_options", None) or {}).get("headers")
        if isinstance(headers, dict):
            for name, value in headers.items():
                if looks_secret(str(name)) and value and not references(str(value)):
                    found.append(f"runtime_options.headers.{name}")
        return found

    def check_strict(self, source: str) -> None:
        """Strict mode: refuse the Azure-only fields, all at once."""
        ignored = self.ignored_fields()
        if ignored:
            raise SpecError(
                "\n".join(
                    f"{source}: field '{field}': not used by servegate ({why}); "
                    "refused in strict mode"
                    for field, why in ignored
                )
            )


#: Azure ML's `model.type` -> the runtime that serves it
MODEL_TYPE_RUNTIMES = {"mlflow_model": "mlflow", "triton_model": "triton"}


class ModelRef(Spec):
    """`model:` of a deployment: a registered `name` (and `version`, else the latest), or a
    file or folder (`path`), registered when the deployment is created: under `name`
    when one is given (as Azure ML registers an inline model asset), else as model
    `<endpoint>-<deployment>`.

    Azure ML's short forms are accepted: `fraud:3`, `fraud@latest`, `azureml:fraud:3`,
    `azureml:fraud@latest`, and `local_path` for `path` (its older name).
    """

    azure_only: ClassVar[dict[str, str]] = {
        "$schema": "a model file's schema hint",
        "properties": "Azure's registry keeps them; here the model's tags do",
        "stage": "Azure's registry keeps it; here the model's tags do",
        "datastore": "the path is read from the gateway's filesystem or uploaded by the CLI",
    }

    path: str | None = None
    name: ModelName | None = None
    version: Annotated[int, Field(ge=1, le=2**62)] | None = None
    #: Azure ML's model type: a folder `path` of an MLflow model or a Triton model
    #: repository says which (else it is found from the folder's files)
    type: Literal["custom_model", "mlflow_model", "triton_model"] | None = None
    #: kept with the version registered from `path`
    description: str | None = None
    tags: dict[str, str] | None = None

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = super().__get_pydantic_json_schema__(core_schema, handler)
        handler.resolve_ref_schema(schema)["properties"]["local_path"] = {
            "type": "string",
            "description": "Azure ML's older name of `path`",
        }
        short = {
            "type": "string",
            "description": "name:version, name@latest or name, optionally after azureml:",
        }
        return {"anyOf": [schema, short]}

    @property
    def runtime(self) -> str | None:
        """The runtime the model's `type` or file names (None: not known from the spec)."""
        if self.type in MODEL_TYPE_RUNTIMES:
            return MODEL_TYPE_RUNTIMES[self.type]
        return runtime_for_path(self.path) if self.path is not None else None

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.startswith("azureml://"):
                raise ValueError(
                    f"'{value}' is a model in an Azure ML registry or datastore, which "
                    "servegate cannot reach; download it and give its 'path'"
                )
            match = _SHORT_MODEL.fullmatch(value)
            if not match:
                raise ValueError(
                    f"'{value}' is not a model reference; use 'name:version', 'name@latest', "
                    "or a mapping with 'path' or 'name' and 'version'"
                )
            version = match["version"]
            return {"name": match["name"], "version": int(version) if version else None}
        if isinstance(value, dict) and "local_path" in value:
            if "path" in value:
                raise ValueError("give 'path' or its older name 'local_path', not both")
            value = {("path" if k == "local_path" else k): v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ModelRef:
        if self.path is None and self.name is None:
            raise ValueError("give 'path' (a file or folder) or 'name' (and 'version')")
        if self.path is not None and self.version is not None and self.name is None:
            raise ValueError("'version' with 'path' needs 'name': the version to register")
        if self.path is None and (self.description is not None or self.tags is not None):
            raise ValueError("'description' and 'tags' go with a 'path' to register")
        return self


class RequestSettings(Spec):
    """Azure ML's `request_settings`, with its defaults and limits."""

    request_timeout_ms: Annotated[int, Field(ge=1, le=180_000)] = 5000
    max_concurrent_requests_per_instance: Annotated[int, Field(ge=1, le=10_000)] = 1
    max_queue_wait_ms: Annotated[int, Field(ge=0, le=180_000)] = 500


class Batching(Spec):
    """Dynamic batching (like Triton's `max_queue_delay`): concurrent requests to one
    instance are concatenated along axis 0 up to `max_batch_size` rows; an idle
    instance waits at most `max_batch_delay_ms` for a batch to fill (0: run what
    is queued at once, so batches form only while instances are busy)."""

    max_batch_size: Annotated[int, Field(ge=1, le=65_536)] = 32
    max_batch_delay_ms: Annotated[float, Field(ge=0, le=10_000)] = 0.0


class ScaleSettings(Spec):
    """Azure ML's `scale_settings` (the Kubernetes online deployment's, with its
    defaults). `default`: `instance_count` instances, always. `target_utilization`: the
    gateway (or, for `host: ray`, Ray Serve) adds instances while the requests in flight
    pass `target_utilization_percentage` of capacity (`instance_count` x
    `max_concurrent_requests_per_instance`), looking every `polling_interval` seconds,
    and removes them, drained, once fewer would have been enough for `scale_down_delay`
    seconds (down to 0 with `min_instances: 0`; the next request waits for one to load)."""

    type: Literal["default", "target_utilization"] = "default"
    min_instances: Annotated[int, Field(ge=0, le=64)] = 1
    max_instances: Annotated[int, Field(ge=1, le=64)] = 1
    polling_interval: Annotated[int, Field(ge=1, le=3600)] = 1
    target_utilization_percentage: Annotated[int, Field(ge=1, le=100)] = 70
    #: not in Azure ML: how long fewer instances must have been enough before some are
    #: removed (Kubernetes' HPA waits 300 s by default, as here)
    scale_down_delay: Annotated[int, Field(ge=0, le=86_400)] = 300

    @model_validator(mode="after")
    def _consistent(self) -> ScaleSettings:
        if self.type == "default":
            # (A stored spec spells the defaults out: only other values are a mistake.)
            extra = sorted(
                name
                for name in self.model_fields_set - {"type"}
                if getattr(self, name) != type(self).model_fields[name].default
            )
            if extra:
                raise ValueError(
                    f"{', '.join(extra)} go with 'type: target_utilization'; "
                    "'type: default' keeps instance_count instances"
                )
        elif self.min_instances > self.max_instances:
            raise ValueError(
                f"min_instances ({self.min_instances}) is above max_instances "
                f"({self.max_instances})"
            )
        return self

    @property
    def autoscaled(self) -> bool:
        return self.type == "target_utilization"


class Probe(Spec):
    """Azure ML's `liveness_probe` (and `readiness_probe`) fields, with its defaults
    (seconds)."""

    initial_delay: Annotated[int, Field(ge=0, le=3600)] = 10
    period: Annotated[int, Field(ge=1, le=3600)] = 10
    timeout: Annotated[int, Field(ge=1, le=3600)] = 2
    success_threshold: Annotated[int, Field(ge=1, le=100)] = 1
    failure_threshold: Annotated[int, Field(ge=1, le=1000)] = 30


class CodeConfiguration(Spec):
    """Azure ML's `code_configuration`: a folder and the scoring script in it."""

    code: Annotated[
        str,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string"},
                    {
                        "type": "object",
                        "properties": {"local_path": {"type": "string"}},
                        "required": ["local_path"],
                        "additionalProperties": False,
                    },
                ]
            }
        ),
    ]
    scoring_script: str

    @field_validator("code", mode="before")
    @classmethod
    def _local_path(cls, value: Any) -> Any:
        # Azure ML's older form: `code: {local_path: ./src}`.
        if isinstance(value, dict) and set(value) == {"local_path"}:
            return value["local_path"]
        if isinstance(value, str) and value.startswith("azureml:"):
            raise ValueError(
                f"'{value}' is a code asset in Azure ML, which servegate cannot reach; "
                "give the folder's path"
            )
        return value


class TensorSpecModel(Spec):
    name: Annotated[str, Field(min_length=1)]
    datatype: Literal[
        "BOOL",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
        "BYTES",
    ]
    shape: list[Annotated[int, Field(ge=-1)]]


class SignatureSpec(Spec):
    """A model signature for files that carry none (TorchScript)."""

    inputs: Annotated[list[TensorSpecModel], Field(min_length=1)]
    outputs: Annotated[list[TensorSpecModel], Field(min_length=1)]


class CollectionSpec(Spec):
    azure_only: ClassVar[dict[str, str]] = {
        "data": "collected rows go to data_collector.destination "
        "(default: the artifacts folder's modelDataCollector/)",
    }

    #: Azure's samples quote it ('True'), which reads as the boolean
    enabled: Annotated[
        bool,
        WithJsonSchema(
            {"anyOf": [{"type": "boolean"}, {"enum": ["True", "False", "true", "false"]}]}
        ),
    ] = False


class KafkaDestination(Spec):
    bootstrap_servers: Annotated[str, Field(min_length=1)]
    topic: Annotated[str, Field(min_length=1)]


class CollectorDestination(Spec):
    """Where collected payloads go: a Kafka topic, or Parquet files under a URI."""

    kafka: KafkaDestination | None = None
    path: str | None = None

    @model_validator(mode="after")
    def _one(self) -> CollectorDestination:
        if (self.kafka is None) == (self.path is None):
            raise ValueError("give either 'kafka' (bootstrap_servers, topic) or 'path'")
        return self


#: The collections the gateway fills itself (Azure ML's payload logging).
PAYLOAD_COLLECTIONS = ("request", "response")
#: the folder under the artifacts where collected rows go by default
DEFAULT_COLLECTOR_FOLDER = "modelDataCollector"


class DataCollectorSpec(Spec):
    """Azure ML's `data_collector`, plus where the rows go (`destination`; default:
    Parquet files under the artifacts folder's `modelDataCollector/`, Azure's layout)."""

    sampling_rate: Annotated[float, Field(gt=0, le=1)] = 1.0
    rolling_rate: Literal["Minute", "Hour", "Day", "Month", "Year"] = "Hour"
    collections: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")], CollectionSpec] = (
        Field(default_factory=dict)
    )
    destination: CollectorDestination | None = None

    def destination_under(self, artifacts: str) -> CollectorDestination:
        """Where its rows go: `destination`, else Parquet files under `artifacts` (so every
        gateway replica writes beside the others), Azure ML's layout:
        modelDataCollector/<endpoint>/<deployment>/<time>/."""
        return self.destination or CollectorDestination(
            path=f"{artifacts.rstrip('/')}/{DEFAULT_COLLECTOR_FOLDER}"
        )


#: The kind a deployment gets from its other fields when it names none.
_RAW_BODY_KIND = next(k.name for k in RUNTIME_KINDS.values() if k.takes_raw_body)
_IN_GATEWAY_KIND = next(k.name for k in RUNTIME_KINDS.values() if k.runs_in_gateway)
_KNOWN = ", ".join(sorted(RUNTIME_KINDS))


#: Why Azure ML's network and identity fields mean nothing here.
_NETWORK = "servegate listens where it is started (--host, --port); no Azure network settings"
_IDENTITY = "servegate reaches storage with its own credentials (S3 settings)"


class RateLimitSpec(Spec):
    """Requests each caller (a key or token; a client address without auth) may send:
    `requests_per_second` on average, in bursts of up to `burst`."""

    requests_per_second: Annotated[float, Field(gt=0, le=1_000_000)]
    burst: Annotated[int, Field(ge=1, le=1_000_000)] | None = None

    @property
    def bucket(self) -> tuple[float, int]:
        return self.requests_per_second, self.burst or max(1, math.ceil(self.requests_per_second))


class EndpointSpec(Spec):
    """An online endpoint (`endpoint.yml`)."""

    omit_none: ClassVar[bool] = False
    azure_only: ClassVar[dict[str, str]] = {
        "compute": "for Azure Arc Kubernetes endpoints; servegate runs where it is started",
        "identity": _IDENTITY,
        "public_network_access": _NETWORK,
    }

    schema_url: str | None = Field(default=None, alias="$schema")
    name: EndpointName
    description: str = ""
    auth_mode: Literal["key", "token", "aad_token", "none"] = "key"
    #: `auth_mode: aad_token`: the audiences a caller's identity-provider token may be
    #: issued for (default: the gateway's --oidc-audience)
    token_audiences: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list, max_length=16
    )
    traffic: dict[DeploymentName, Percent] = Field(default_factory=dict)
    mirror_traffic: dict[DeploymentName, Annotated[int, Field(ge=0, le=50)]] = Field(
        default_factory=dict
    )
    tags: dict[str, str] = Field(default_factory=dict)
    #: per-caller scoring rate limit (not in Azure ML; off by default): 429 past it
    rate_limit: RateLimitSpec | None = None
    #: Sticky routing (not in Azure ML): a request header (a user or session id) whose
    #: hash picks the deployment within the traffic weights, so one user sees one model.
    sticky_routing_header: Annotated[str, Field(pattern=r"^[A-Za-z0-9-]{1,64}$")] | None = None

    @field_validator("auth_mode", mode="before")
    @classmethod
    def _azure_auth_names(cls, value: Any) -> Any:
        # Azure ML spells token auth `aml_token`; identity-provider tokens `aad_token`
        # (`oidc` is the name outside Azure).
        if not isinstance(value, str):
            return value  # refused below, naming the field
        return {"aml_token": "token", "oidc": "aad_token"}.get(value, value)

    @field_validator("traffic")
    @classmethod
    def _traffic_sum(cls, value: dict[str, int]) -> dict[str, int]:
        check_traffic_sum(value)
        return value

    @field_validator("mirror_traffic")
    @classmethod
    def _one_mirror(cls, value: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        check_mirror(info.data.get("traffic", {}), value)
        return value


def check_traffic_sum(traffic: dict[str, int]) -> None:
    """Azure ML's rule: the traffic percentages sum to 0 or 100."""
    total = sum(traffic.values())
    if total not in (0, 100):
        raise ValueError(f"the percentages must sum to 0 or 100, they sum to {total}")


def check_mirror(traffic: dict[str, int], mirror_traffic: dict[str, int]) -> None:
    """Azure ML's rule: one mirror target, at most 50%, that takes no live traffic."""
    mirrored = [name for name, pct in mirror_traffic.items() if pct]
    if len(mirrored) > 1:
        raise ValueError("may name one deployment only")
    for name in mirrored:
        if traffic.get(name, 0) > 0:
            raise ValueError(f"deployment '{name}' already takes live traffic")


class RayActorOptions(Spec):
    """Ray Serve's `ray_actor_options` for each replica of a `host: ray` deployment."""

    num_cpus: Annotated[float, Field(ge=0, le=1024)] | None = None
    num_gpus: Annotated[float, Field(ge=0, le=64)] | None = None
    #: bytes of memory to reserve for each replica
    memory: Annotated[int, Field(ge=0, le=2**62)] | None = None
    #: custom resources, e.g. {"accelerator_type_a100": 1}
    resources: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)

    def for_ray(self) -> dict[str, Any]:
        """Ray's `ray_actor_options`: only what was given (Ray's defaults stand)."""
        return self.model_dump(exclude_none=True, exclude_defaults=True)

    @staticmethod
    def threads(options: RayActorOptions | None) -> int:
        """Compute threads per runtime instance: the CPUs each replica asks for (1 when
        it asks for none or a fraction)."""
        return max(1, int(options.num_cpus or 1)) if options else 1


_ENVIRONMENT = (
    "the runtime comes from the model (or the scoring script runs in this Python); "
    "install what it needs here"
)


class OnlineDeploymentSpec(Spec):
    """An online deployment (`deployment.yml`)."""

    azure_only: ClassVar[dict[str, str]] = {
        "environment": _ENVIRONMENT,
        "instance_type": "instances run on the gateway's host (or Ray cluster); "
        "see instance_count, device and ray_actor_options",
        "app_insights_enabled": "metrics are served at /metrics (Prometheus)",
        "egress_public_network_access": _NETWORK,
        "private_network_connection": _NETWORK,
        "model_mount_path": "a scoring script finds the model at AZUREML_MODEL_DIR",
    }

    schema_url: str | None = Field(default=None, alias="$schema")
    name: DeploymentName
    endpoint_name: EndpointName
    description: str = ""
    model: ModelRef | None = None
    runtime: str | None = None
    runtime_options: dict[str, Any] = Field(default_factory=dict)
    code_configuration: CodeConfiguration | None = None
    url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    signature: SignatureSpec | None = None
    host: Literal["thread", "process", "ray"] | None = None
    #: `host: ray`: the Ray cluster (default: SERVEGATE_RAY_ADDRESS, else `auto`)
    ray_address: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    #: `host: ray`: what each replica asks the cluster for
    ray_actor_options: RayActorOptions | None = None
    batching: Batching | None = None
    data_collector: DataCollectorSpec | None = None
    #: `host: process`: idle workers are probed; one that stops answering is replaced
    liveness_probe: Probe | None = None
    #: `host: process`: a worker takes calls once it answered this probe, and none while
    #: it fails it
    readiness_probe: Probe | None = None
    instance_count: Annotated[int, Field(ge=1, le=64)] = 1
    scale_settings: ScaleSettings = Field(default_factory=ScaleSettings)
    device: Annotated[str, AfterValidator(_device)] = "cpu"
    request_settings: RequestSettings = Field(default_factory=RequestSettings)
    environment_variables: dict[str, str] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)

    def ignored_fields(self, prefix: str = "") -> list[tuple[str, str]]:
        found = super().ignored_fields(prefix)
        if self.host not in (None, "process"):
            found.extend(
                (
                    f"{prefix}{probe}",
                    f"host: {self.host} runs instances outside worker processes "
                    "(probe the gateway's /v2/health/live and /v2/health/ready)",
                )
                for probe in ("liveness_probe", "readiness_probe")
                if getattr(self, probe) is not None
            )
        return found

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, value: str | None) -> str | None:
        if value is not None and value not in RUNTIME_KINDS:
            raise ValueError(f"unknown runtime '{value}'; allowed: {_KNOWN}")
        return value

    @model_validator(mode="after")
    def _defaults_and_consistency(self) -> OnlineDeploymentSpec:
        update: dict[str, Any] = {}
        runtime = self.runtime
        if runtime is None:
            if self.code_configuration is not None:
                runtime = _RAW_BODY_KIND
            elif self.url is not None:
                runtime = _IN_GATEWAY_KIND
            elif self.model is not None and self.model.path is not None:
                runtime = self.model.runtime
                # A folder's runtime comes from its files, where the folder is read.
                if runtime is None and Path(self.model.path).suffix:
                    raise ValueError(
                        f"'runtime' is not set and cannot be inferred from the model file "
                        f"'{self.model.path}'; set it to one of {_KNOWN}"
                    )
            update["runtime"] = runtime
        kind = RUNTIME_KINDS[runtime or "onnx"]
        if kind.takes_raw_body and self.code_configuration is None:
            raise ValueError(
                f"runtime '{kind.name}' needs 'code_configuration' (code, scoring_script)"
            )
        if self.code_configuration is not None and not kind.takes_raw_body:
            raise ValueError(
                f"'code_configuration' runs a scoring script; it cannot go with runtime '{runtime}'"
            )
        if kind.runs_in_gateway and self.url is None:
            raise ValueError(
                f"runtime '{kind.name}' needs 'url' (an Open Inference Protocol model URL)"
            )
        if self.url is not None and not kind.runs_in_gateway:
            raise ValueError(f"'url' is for runtime '{_IN_GATEWAY_KIND}', not '{runtime}'")
        if self.model is None and kind.needs_model:
            raise ValueError(f"'model' is required for runtime '{kind.name}'")
        if kind.runs_in_gateway and self.host in ("process", "ray"):
            raise ValueError(
                f"runtime '{kind.name}' runs in the gateway; 'host: {self.host}' does not apply"
            )
        if self.host != "ray" and (self.ray_address or self.ray_actor_options):
            raise ValueError("'ray_address' and 'ray_actor_options' go with 'host: ray'")
        if not kind.batchable and self.batching is not None:
            raise ValueError("a scoring script gets one raw request at a time; drop 'batching'")
        scale = self.scale_settings
        if scale.autoscaled and not scale.min_instances <= self.instance_count <= (
            scale.max_instances
        ):
            # instance_count is where an autoscaled deployment starts (Azure ML ignores it).
            update["instance_count"] = min(
                max(self.instance_count, scale.min_instances, 1), scale.max_instances
            )
        if self.host is None and runtime is not None and self.model is None:
            # Scoring scripts run user code: isolated in worker processes by default. (A
            # deployment of a model gets its default where the model's file is known: a
            # pickle is loaded only in worker processes; see ControlPlane._pinned.)
            update["host"] = kind.default_host
        if (
            self.batching is not None
            and "max_concurrent_requests_per_instance" not in self.request_settings.model_fields_set
        ):
            # Azure ML's default of 1 concurrent request per instance would keep every batch at 1.
            update["request_settings"] = self.request_settings.model_copy(
                update={"max_concurrent_requests_per_instance": self.batching.max_batch_size}
            )
        return self.model_copy(update=update) if update else self


class BatchEndpointSpec(Spec):
    """A batch endpoint (`batch-endpoint.yml`)."""

    omit_none: ClassVar[bool] = False
    azure_only: ClassVar[dict[str, str]] = {
        "auth_mode": "batch jobs are started through the management API (admin token)",
    }

    schema_url: str | None = Field(default=None, alias="$schema")
    name: EndpointName
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    defaults: dict[Literal["deployment_name"], DeploymentName] = Field(default_factory=dict)


class RetrySettings(Spec):
    max_retries: Annotated[int, Field(ge=0, le=100)] = 3
    timeout: Annotated[float, Field(gt=0, le=86_400)] = 30.0  # seconds per mini-batch


class BatchCompute(Spec):
    """Where mini-batches run: worker processes on the runner's host (`local`) or actors
    on a Ray cluster (`ray`)."""

    executor: Literal["local", "ray"] = "local"
    instance_count: Annotated[int, Field(ge=1, le=64)] = 1
    #: `executor: ray`: the cluster (default: SERVEGATE_RAY_ADDRESS, else `auto`)
    ray_address: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    #: `executor: ray`: what each worker actor asks the cluster for
    ray_actor_options: RayActorOptions | None = None

    @model_validator(mode="after")
    def _ray_settings(self) -> BatchCompute:
        if self.executor != "ray" and (self.ray_address or self.ray_actor_options):
            raise ValueError("'ray_address' and 'ray_actor_options' go with 'executor: ray'")
        return self


class BatchSettings(Spec):
    """The batch knobs; Azure ML accepts them at the root or under `settings:`."""

    #: files per run() for a scoring script (Azure ML's meaning; default 10); rows for a
    #: model scored without one, or a script given `script_input: table` (default sized
    #: for throughput).
    mini_batch_size: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    #: what a scoring script's run(mini_batch) gets: `files`, the list of the mini-batch's
    #: file paths, as Azure ML gives it; `table`, the rows of tabular inputs (Parquet, CSV,
    #: JSON lines) as one pyarrow Table, with each row's source file and row number.
    script_input: Literal["files", "table"] = "files"
    max_concurrency_per_instance: Annotated[int, Field(ge=1, le=64)] = 1
    error_threshold: Annotated[int, Field(ge=-1)] = -1
    retry_settings: RetrySettings = Field(default_factory=RetrySettings)
    output_action: Literal["append_row", "summary_only"] = "append_row"
    output_file_name: Annotated[str, Field(pattern=r"^[^/\\]+\.(csv|parquet)$")] = "predictions.csv"
    #: `servegate`: a CSV with a header row, each row's source file and row number beside
    #: its outputs. `azure`: as Azure ML's append_row writes it: no header, only what the
    #: model or `run()` returned (for scripts and parsers written against Azure's files).
    output_layout: Literal["servegate", "azure"] = "servegate"
    logging_level: Literal["debug", "info", "warning"] = "info"
    environment_variables: dict[str, str] = Field(default_factory=dict)


_SETTINGS_FIELDS = set(BatchSettings.model_fields)


class BatchDeploymentSpec(Spec):
    """A batch deployment (`batch-deployment.yml`, `type: model` / `batch`)."""

    azure_only: ClassVar[dict[str, str]] = {
        "environment": _ENVIRONMENT,
        "compute": "an Azure ML cluster; jobs run on this host's workers (compute: "
        "{executor, instance_count}) or a Ray cluster (executor: ray)",
        "resources.instance_type": "workers run on this host or the Ray cluster",
        "resources.properties": "workers run on this host or the Ray cluster",
    }

    @classmethod
    def _split_azure_only(cls, value: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
        dropped: list[str] = []
        if "environment" in value:
            dropped.append("environment")
        if isinstance(value.get("compute"), str):  # `azureml:cpu-cluster`
            dropped.append("compute")
        resources = value.get("resources")
        if isinstance(resources, dict):
            for key in ("instance_type", "properties"):
                if key in resources:
                    dropped.append(f"resources.{key}")
        if not dropped:
            return value, ()
        kept = {k: v for k, v in value.items() if k not in dropped}
        if isinstance(resources, dict):
            kept["resources"] = {
                k: v for k, v in resources.items() if f"resources.{k}" not in dropped
            }
        return kept, tuple(dropped)

    schema_url: str | None = Field(default=None, alias="$schema")
    name: DeploymentName
    endpoint_name: EndpointName
    type: Literal["model", "batch"] = "model"

    @field_validator("type", mode="before")
    @classmethod
    def _no_pipelines(cls, value: Any) -> Any:
        if value == "pipeline":
            raise ValueError(
                "pipeline component deployments are Azure ML pipelines, which servegate does "
                "not run; use 'type: model' with a model or a scoring script"
            )
        return value

    description: str = ""
    model: ModelRef | None = None
    runtime: str | None = None
    runtime_options: dict[str, Any] = Field(default_factory=dict)
    code_configuration: CodeConfiguration | None = None
    signature: SignatureSpec | None = None
    device: Annotated[str, AfterValidator(_device)] = "cpu"
    compute: BatchCompute = Field(default_factory=BatchCompute)
    resources: dict[Literal["instance_count"], Annotated[int, Field(ge=1, le=64)]] = Field(
        default_factory=dict
    )
    settings: BatchSettings = Field(default_factory=BatchSettings)
    tags: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _root_settings(cls, value: Any) -> Any:
        # Azure ML CLI < 1.7 put the batch settings at the root: accept both.
        if isinstance(value, dict) and _SETTINGS_FIELDS & set(value):
            value = dict(value)
            nested = dict(value.get("settings") or {})
            for key in _SETTINGS_FIELDS & set(value):
                nested[key] = value.pop(key)
            value["settings"] = nested
        return value

    @model_validator(mode="after")
    def _runtime(self) -> BatchDeploymentSpec:
        runtime = self.runtime
        if runtime is None:
            if self.code_configuration is not None:
                runtime = _RAW_BODY_KIND
            elif self.model is not None and self.model.path is not None:
                runtime = self.model.runtime
        if runtime is None and self.model is None:
            raise ValueError("give a 'model' or a 'code_configuration' (scoring script)")
        if runtime is not None and runtime not in RUNTIME_KINDS:
            raise ValueError(f"unknown runtime '{runtime}'; allowed: {_KNOWN}")
        if (
            runtime is not None
            and RUNTIME_KINDS[runtime].takes_raw_body
            and self.code_configuration is None
        ):
            raise ValueError(
                f"runtime '{runtime}' needs 'code_configuration' (code, scoring_script)"
            )
        if (
            self.resources.get("instance_count")
            and "instance_count" not in self.compute.model_fields_set
        ):
            compute = self.compute.model_copy(
                update={"instance_count": self.resources["instance_count"]}
            )
            return self.model_copy(update={"runtime": runtime, "compute": compute})
        return self.model_copy(update={"runtime": runtime}) if runtime != self.runtime else self


SpecT = TypeVar("SpecT", bound=Spec)

#: Bounded rendering of a bad value: a YAML alias bomb expands to billions of elements,
#: and a plain repr() of it never returns.
_ERROR_REPR = reprlib.Repr()
_ERROR_REPR.maxlevel, _ERROR_REPR.maxlist, _ERROR_REPR.maxdict = 2, 4, 4
_ERROR_REPR.maxstring = _ERROR_REPR.maxother = 80


def parse_spec(
    kind: type[SpecT], data: Any, source: str, overrides: dict[str, Any] | None = None
) -> SpecT:
    """Validate `data` as `kind`; `source` (a file name, "request body") prefixes errors."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping of fields, got {type(data).__name__}")
    _check_size(data, source)
    merged = {**data, **(overrides or {})}
    try:
        return kind.model_validate(merged)
    except ValidationError as exc:
        raise SpecError(_describe(exc, kind, source)) from None


#: More values than any spec has; YAML aliases can expand a small file past it.
MAX_SPEC_VALUES = 100_000


#: Deeper than any spec nests (runtime_options included); the store's JSON encoder stops
#: at 255 levels, and a value nested that deep is no setting.
MAX_SPEC_DEPTH = 32


def _check_size(data: Any, source: str) -> None:
    """Refuse documents that expand to more than MAX_SPEC_VALUES values (alias bombs) or
    nest deeper than MAX_SPEC_DEPTH, walking no further than that."""
    stack, seen = [(data, 0)], 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_SPEC_VALUES:
            raise SpecError(
                f"{source}: expands to more than {MAX_SPEC_VALUES} values "
                "(YAML aliases?); a spec is far smaller"
            )
        if depth > MAX_SPEC_DEPTH:
            raise SpecError(f"{source}: nests deeper than {MAX_SPEC_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def load_spec(
    kind: type[SpecT], path: str | Path, overrides: dict[str, Any] | None = None
) -> SpecT:
    """Read and validate a YAML file as `kind`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_spec(kind, read_yaml(text, str(path)), str(path), overrides)


def read_yaml(text: str, source: str) -> Any:
    """A YAML document's value; SpecError naming `source` when it is not YAML or nests
    past what the parser can follow (a 50,000-deep file ran the parser out of stack)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: not valid YAML: {exc}") from None
    except RecursionError:
        raise SpecError(
            f"{source}: nests too deep to read (a spec nests at most {MAX_SPEC_DEPTH} levels)"
        ) from None


def _describe(exc: ValidationError, kind: type[Spec], source: str) -> str:
    lines = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"] if part != "[key]")
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            allowed = _fields_at(kind, error["loc"][:-1])
            message = f"unknown field; allowed fields: {', '.join(allowed)}"
        elif error["type"] == "missing":
            message = "required field is missing"
        elif "input" in error and error["type"] not in ("value_error",):
            message = f"{message} (got {_ERROR_REPR.repr(error['input'])})"
        lines.append(f"{source}: field '{loc}': {message}" if loc else f"{source}: {message}")
    return "\n".join(lines)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class of a field's annotation, also inside `X | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _fields_at(kind: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] | None = kind
    for part in loc:
        if model is None:
            break
        field = model.model_fields.get(part) if isinstance(part, str) else None
        model = _model_in(field.annotation) if field else None
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


#: The YAML kinds, by the names `servegate schema` takes (and their files' names).
class MonitorBaseline(Spec):
    """What a monitor compares with: a reference dataset (Parquet or CSV, a column per
    feature), or the first `first_rows` rows the data collector logged."""

    path: str | None = None
    first_rows: Annotated[int, Field(ge=10, le=10_000_000)] | None = None

    @model_validator(mode="after")
    def _one(self) -> MonitorBaseline:
        if (self.path is None) == (self.first_rows is None):
            raise ValueError("give either 'path' (a Parquet or CSV file) or 'first_rows'")
        return self


class MonitorThresholds(Spec):
    """A feature (or prediction) breaches when any of its measures passes its limit."""

    #: population stability index (0.1: a moderate shift, 0.25: a large one)
    psi: Annotated[float, Field(gt=0)] = 0.2
    #: Jensen-Shannon distance (base 2, 0..1; about 0.09 between two samples of 500 rows
    #: from one distribution, in 10 bins)
    js_distance: Annotated[float, Field(gt=0, le=1)] = 0.2
    #: share of rows with no value
    null_rate: Annotated[float, Field(ge=0, le=1)] = 0.05
    #: share of values outside the baseline's range (numbers) or categories
    out_of_range_rate: Annotated[float, Field(ge=0, le=1)] = 0.05


class MonitorAlert(Spec):
    """Where a breach is announced (besides the audit log and the metrics)."""

    webhook: Annotated[str, Field(pattern=r"^https?://")] | None = None
    kafka: KafkaDestination | None = None


class MonitorSpec(Spec):
    """Model monitoring (Azure ML's data drift, prediction drift and data quality
    signals) over a deployment's collected data (`monitor.yml`)."""

    schema_url: str | None = Field(default=None, alias="$schema")
    name: EndpointName
    endpoint_name: EndpointName
    deployment_name: DeploymentName
    #: the data collector's collection to read: `request` (payloads: `input_data` rows
    #: or V2 tensors, one column per feature in order) or a custom collection
    collection: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "request"
    baseline: MonitorBaseline
    #: the features to watch (default: the baseline's columns); names for `request`
    #: payloads' columns, in order
    features: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, max_length=1000
    )
    #: features compared by category (the others as numbers)
    categorical: list[str] = Field(default_factory=list)
    #: outputs to watch for prediction drift (from `response` payloads), e.g. [label]
    predictions: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, max_length=100
    )
    #: run every this many minutes, over the rows logged since the last run
    every_minutes: Annotated[int, Field(ge=1, le=10_080)] = 60
    #: fewer rows than this in a window: reported as too few, not judged (small samples
    #: of one distribution differ by chance)
    min_rows: Annotated[int, Field(ge=1, le=10**9)] = 100
    thresholds: MonitorThresholds = Field(default_factory=MonitorThresholds)
    alert: MonitorAlert = Field(default_factory=MonitorAlert)

    @model_validator(mode="after")
    def _categorical_are_features(self) -> MonitorSpec:
        unknown = sorted(set(self.categorical) - set(self.features)) if self.features else []
        if unknown:
            raise ValueError(f"categorical: {', '.join(unknown)} not in features")
        return self


SPEC_KINDS: dict[str, type[Spec]] = {
    "online-endpoint": EndpointSpec,
    "online-deployment": OnlineDeploymentSpec,
    "batch-endpoint": BatchEndpointSpec,
    "batch-deployment": BatchDeploymentSpec,
    "monitor": MonitorSpec,
}


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of a YAML kind, generated from its spec model (what editors
    validate servegate's files with)."""
    model = SPEC_KINDS[kind]
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
