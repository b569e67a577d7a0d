"""Control-plane operations: each validates, writes the store and its audit entry.

The one writer of the store: models, online and batch endpoints and deployments, keys,
admin tokens, rollouts, and (through `jobs`, a `JobLedger`) batch jobs, used by the
gateway's management API, the batch runner, `stream run` and `stream jobs` (and at
startup for the demo). Knows no HTTP. Every change is one store transaction with the
audit entry that records who made it, when, and the spec before and after. It speaks
records: spec models for endpoints and deployments, `deploy.records` for the rest.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from deploy.artifacts import ArtifactStore, tar_folder
from deploy.credentials import (
    KEY_TYPES,
    Credentials,
    expiry_text,
    hash_key,
    key_generation,
    read_or_create_secret,
)
from deploy.errors import Conflict, NotFound, SpecError, StoreUnavailable
from deploy.jobs import JobLedger
from deploy.records import AdminTokenRecord, DeploymentIntent, RolloutRecord
from deploy.roles import SYSTEM, check_endpoint_pattern, check_role, check_token_name
from deploy.specs import (
    BatchDeploymentSpec,
    BatchEndpointSpec,
    CollectorDestination,
    DataCollectorSpec,
    EndpointSpec,
    ModelRef,
    MonitorSpec,
    OnlineDeploymentSpec,
    SpecT,
    parse_spec,
)
from deploy.store import AuditEntry, KeyRecord, ModelRecord, Store, utc_now
from deploy.vault import SecretBox, check_secret_name, references, resolve
from runtimes import isolated
from runtimes.base import RuntimeConfig
from runtimes.convert import to_onnx
from runtimes.registry import (
    deployment_defaults,
    inspect_model,
    loads_code,
    model_warnings,
    runtime_for_path,
    runtime_kind,
)
from runtimes.types import Signature

if TYPE_CHECKING:
    from deploy.home import ControlPlaneSettings


def _link_or_copy(source: Path, target: Path) -> Path:
    try:
        os.link(source, target)
    except OSError:  # another filesystem: a copy does as well
        shutil.copyfile(source, target)
    return target


class Registered(NamedTuple):
    """A model version as registered, and what is worth a warning about it."""

    record: ModelRecord
    warnings: list[str]


class ControlPlane:
    def __init__(
        self,
        store: Store,
        artifacts: ArtifactStore,
        credentials: Credentials,
        settings: ControlPlaneSettings | None = None,
    ) -> None:
        self.store = store
        self.jobs = JobLedger(store)
        self.artifacts = artifacts
        self.credentials = credentials
        #: How this plane was opened (None in tests that build one by hand).
        self.settings = settings

    # -- models ------------------------------------------------------------
    def register_model(
        self,
        name: str,
        filename: str,
        source: Path,
        actor: str,
        version: int | None = None,
        runtime: str | None = None,
        description: str = "",
        tags: dict[str, str] | None = None,
        reuse_identical: bool = False,
        strict: bool = False,
    ) -> Registered:
        """Copy the file at `source` into the store, read its signature, register
        it as `name:version` (the next version when None); with what is worth a warning
        about it (a model saved by another version of its framework), which `strict`
        refuses instead. `filename` is the
        model's own file name, which picks the runtime by its suffix. A `filename`
        ending in "/" is a folder (an MLflow model, a Triton repository): `source` is
        its tar.gz, and the runtime comes from the files in it. With `reuse_identical`
        (a deployment's `model.path`), the same content as the version asked for (or the
        latest) is that version, not a new one."""
        ref = parse_spec(ModelRef, {"name": name, "version": version}, "model")
        is_folder = filename.endswith("/")
        try:
            model_path = self.artifacts.check_folder(source) if is_folder else source
        except ValueError as exc:
            raise SpecError(f"model '{name}': {exc}") from None
        runtime = runtime or runtime_for_path(model_path if is_folder else filename)
        if runtime is None:
            found = "the files in the folder" if is_folder else f"the file name '{filename}'"
            raise SpecError(
                f"model '{name}': cannot infer the runtime from {found}; give --runtime"
            )
        # Read the signature first: a file that is no model never enters the store. (Under
        # its own name: messages about it name the user's file, not an upload's.)
        with tempfile.TemporaryDirectory(prefix="servegate-model-") as folder:
            named = Path(folder) / Path(filename.rstrip("/")).name
            if is_folder:  # its unpacked copy is named by its hash: link it by its name
                os.symlink(model_path, named, target_is_directory=True)
                model_path = named
            else:
                model_path = _link_or_copy(source, named)
            signature, notes = inspect_model(runtime, model_path, strict)
        suffix = ".tar.gz" if is_folder else Path(filename).suffix
        artifact = self.artifacts.put_file(source, suffix)
        assert ref.name is not None
        with self.store.transaction():
            existing = self.store.get_model(ref.name, ref.version)
            if reuse_identical and existing is not None and existing.sha256 == artifact.sha256:
                return Registered(existing, notes)
            if ref.version is not None and existing is not None:
                raise Conflict(
                    f"model '{ref.name}' version {ref.version} already exists"
                    + (" with other content" if reuse_identical else "")
                )
            version = ref.version or self.store.latest_model_version(ref.name) + 1
            record = ModelRecord(
                name=ref.name,
                version=version,
                runtime=runtime,
                sha256=artifact.sha256,
                artifact=artifact.relative_path,
                filename=Path(filename).name + ("/" if is_folder else ""),
                size_bytes=artifact.size_bytes,
                signature=signature.to_dict(),
                description=description,
                tags=tags or {},
                created_at=utc_now(),
            )
            self.store.add_model(
                record,
                AuditEntry(
                    actor, "model.register", f"models/{ref.name}/{version}", None, record.to_dict()
                ),
            )
        return Registered(record, notes)

    def get_model(self, name: str, version: int | None = None) -> ModelRecord:
        record = self.store.get_model(name, version)
        if record is None:
            which = f"version {version}" if version else "any version"
            raise NotFound(f"model '{name}' ({which}) is not registered")
        return record

    def model_dir(self, record: ModelRecord) -> Path:
        """A folder holding the model's file under its original name (what scoring
        scripts see as SERVEGATE_MODEL_DIR / AZUREML_MODEL_DIR)."""
        folder = self.artifacts.home / "models" / record.name / str(record.version)
        target = folder / record.filename.rstrip("/")
        if not target.exists():
            folder.mkdir(parents=True, exist_ok=True)
            if record.is_folder:
                unpacked = self.artifacts.folder_of(record.artifact)
                with contextlib.suppress(FileExistsError):  # another thread linked it first
                    os.symlink(unpacked, target, target_is_directory=True)
            else:
                _link_or_copy(self.artifacts.path_of(record.artifact), target)
        return folder

    def model_path(self, record: ModelRecord) -> Path:
        """The model's file, or its folder, where a runtime loads it from."""
        return self.model_dir(record) / record.filename.rstrip("/")

    def runtime_config(
        self, spec: OnlineDeploymentSpec | BatchDeploymentSpec, threads: int
    ) -> RuntimeConfig:
        """What a process needs to load one instance of a deployment's runtime (an online
        or a batch deployment's resolved spec). `threads` is the default compute threads
        per instance, unless the deployment's runtime_options say otherwise."""
        model_path: Path | None = None
        options = dict(spec.runtime_options)
        if options.get("converted_model"):  # convert: onnx, done at create
            model_path = self.artifacts.path_of(options["converted_model"])
        elif spec.model is not None and spec.model.name is not None:
            record = self.get_model(spec.model.name, spec.model.version)
            model_path = self.model_path(record)
        options.setdefault("intra_op_num_threads", threads)
        # Sequential execution uses no inter-op pool; 1 keeps onnxruntime from sizing
        # one from the host's core count anyway.
        options.setdefault("inter_op_num_threads", 1)
        options.setdefault("num_threads", threads)
        code = spec.code_configuration
        if isinstance(spec, BatchDeploymentSpec):
            environment, url = spec.settings.environment_variables, None
        else:
            environment, url = spec.environment_variables, spec.url
        # Secrets are resolved here, where the runtime gets them, and nowhere else.
        environment = {
            name: self._with_secrets(value, f"environment_variables.{name}")
            for name, value in environment.items()
        }
        if isinstance(options.get("headers"), dict):
            options["headers"] = {
                name: self._with_secrets(str(value), f"runtime_options.headers.{name}")
                for name, value in options["headers"].items()
            }
        return RuntimeConfig(
            model_path=model_path,
            device=spec.device,
            options=options,
            signature=Signature.from_dict(spec.signature.to_dict()) if spec.signature else None,
            code_dir=self.artifacts.code_dir(code.code) if code else None,
            scoring_script=code.scoring_script if code else None,
            url=url,
            environment=environment,
        )

    def store_code(self, archive: Path) -> Path:
        """Unpack a scoring-script folder (tar.gz) into a content-addressed folder."""
        try:
            return self.artifacts.put_code(archive)
        except ValueError as exc:
            raise SpecError(f"code_configuration.code: {exc}") from None

    def store_data(self, archive: Path) -> Path:
        """Unpack batch inputs (tar.gz) uploaded for a job into a content-addressed folder."""
        try:
            return self.artifacts.put_data(archive)
        except ValueError as exc:
            raise SpecError(f"input: {exc}") from None

    # -- endpoints ---------------------------------------------------------
    def get_endpoint(self, name: str) -> EndpointSpec:
        spec = self.store.get_endpoint(name)
        if spec is None:
            raise NotFound(f"endpoint '{name}' does not exist")
        return spec

    def create_endpoint(self, spec: EndpointSpec, actor: str) -> EndpointSpec:
        spec = spec.model_copy(update={"schema_url": None})
        with self.store.transaction():
            if self.store.get_endpoint(spec.name) is not None:
                raise Conflict(f"endpoint '{spec.name}' already exists")
            # No deployment exists yet, so traffic may name none (Azure ML sets it later).
            self._check_known(spec.name, {**spec.traffic, **spec.mirror_traffic}, set())
            self.store.put_endpoint(
                spec,
                AuditEntry(
                    actor, "endpoint.create", f"endpoints/{spec.name}", None, spec.to_dict()
                ),
            )
            for key_type in KEY_TYPES:
                self._new_key(spec.name, key_type, None)
        return spec

    def update_endpoint(
        self, name: str, changes: dict[str, Any], actor: str, reason: str = ""
    ) -> EndpointSpec:
        """Apply `changes` (traffic, mirror_traffic, description, tags, auth_mode)."""
        with self.store.transaction():
            before = self.get_endpoint(name).to_dict()
            after = parse_spec(EndpointSpec, {**before, **changes}, "endpoint update")
            deployments = {d.name for d in self.store.list_deployments(name)}
            self._check_known(name, {**after.traffic, **after.mirror_traffic}, deployments)
            self.store.put_endpoint(
                after,
                AuditEntry(
                    actor, "endpoint.update", f"endpoints/{name}", before, after.to_dict(), reason
                ),
            )
        return after

    def delete_endpoint(self, name: str, actor: str) -> None:
        with self.store.transaction():
            before = {
                **self.get_endpoint(name).to_dict(),
                "deployments": [d.to_dict() for d in self.store.list_deployments(name)],
            }
            self.store.delete_endpoint(
                name, AuditEntry(actor, "endpoint.delete", f"endpoints/{name}", before, None)
            )
            self.store.delete_deployment_intent(name)

    @staticmethod
    def _check_known(endpoint: str, named: dict[str, int], deployments: set[str]) -> None:
        """traffic and mirror_traffic may name existing deployments only."""
        for deployment in named:
            if deployment not in deployments:
                raise SpecError(
                    f"endpoint '{endpoint}': traffic names deployment '{deployment}', "
                    "which does not exist"
                )

    # -- keys and tokens -----------------------------------------------------
    def _new_key(self, endpoint: str, key_type: str, audit: AuditEntry | None) -> None:
        nonce = self.credentials.new_nonce()
        key = self.credentials.derive_key(endpoint, key_type, nonce)
        self.store.put_key(KeyRecord(endpoint, key_type, hash_key(key), nonce, utc_now()), audit)

    def list_keys(self, endpoint: str) -> dict[str, str]:
        """Azure's `get-credentials` shape for key auth."""
        self.get_endpoint(endpoint)
        keys = self.store.get_keys(endpoint)
        return {
            f"{key_type}Key": self.credentials.derive_key(endpoint, key_type, keys[key_type].nonce)
            for key_type in KEY_TYPES
        }

    def regenerate_key(self, endpoint: str, key_type: str, actor: str) -> dict[str, str]:
        if key_type not in KEY_TYPES:
            raise SpecError(f"field 'keyType': must be primary or secondary, got '{key_type}'")
        with self.store.transaction():
            self.get_endpoint(endpoint)
            before = {
                "key_type": key_type,
                "key_hash": self.store.get_keys(endpoint)[key_type].key_hash,
            }
            nonce = self.credentials.new_nonce()
            key = self.credentials.derive_key(endpoint, key_type, nonce)
            after = {"key_type": key_type, "key_hash": hash_key(key)}
            self.store.put_key(
                KeyRecord(endpoint, key_type, after["key_hash"], nonce, utc_now()),
                AuditEntry(
                    actor, "endpoint.regenerate_key", f"endpoints/{endpoint}", before, after
                ),
            )
        return self.list_keys(endpoint)

    def issue_token(self, endpoint: str) -> dict[str, Any]:
        """Azure's `get-credentials` shape for token auth."""
        spec = self.get_endpoint(endpoint)
        if spec.auth_mode != "token":
            raise SpecError(f"endpoint '{endpoint}' uses auth_mode '{spec.auth_mode}', not token")
        generation = key_generation(k.key_hash for k in self.store.get_keys(endpoint).values())
        token, expiry = self.credentials.issue_token(endpoint, generation)
        return {"accessToken": token, "tokenType": "Bearer", "expiryTimeUtc": expiry_text(expiry)}

    def credentials_of(self, endpoint: str) -> dict[str, Any]:
        spec = self.get_endpoint(endpoint)
        return self.issue_token(endpoint) if spec.auth_mode == "token" else self.list_keys(endpoint)

    # -- deployments -------------------------------------------------------
    def get_deployment(self, endpoint: str, name: str) -> OnlineDeploymentSpec:
        spec = self.store.get_deployment(endpoint, name)
        if spec is None:
            raise NotFound(f"deployment '{name}' does not exist in endpoint '{endpoint}'")
        return spec

    def _pin_model(
        self, spec: OnlineDeploymentSpec | BatchDeploymentSpec, actor: str
    ) -> ModelRecord | None:
        """The registered model a deployment names. A `model.path` (a file or folder on
        the gateway's host) is registered first, as Azure ML registers inline models:
        under `model.name` when given, else as `<endpoint>-<deployment>`; the same
        content again is the same version."""
        ref = spec.model
        if ref is None:
            return None
        if ref.path is None:
            assert ref.name is not None
            return self.get_model(ref.name, ref.version)
        path = Path(ref.path)
        register = functools.partial(
            self.register_model,
            ref.name or f"{spec.endpoint_name}-{spec.name}",
            actor=actor,
            version=ref.version,
            runtime=spec.runtime,
            description=ref.description or "",
            tags=ref.tags,
            reuse_identical=True,
        )
        if path.is_dir():  # an MLflow model, a Triton repository
            with tempfile.TemporaryDirectory(prefix="servegate-model-") as folder:
                return register(
                    f"{path.name}/", tar_folder(path, Path(folder) / "model.tar.gz")
                ).record
        if not path.is_file():
            raise SpecError(f"field 'model.path': no model file at '{path}' on the gateway host")
        return register(path.name, path).record

    def _pinned(self, spec: SpecT, actor: str) -> SpecT:
        """`spec` with its model pinned to a registered `name:version` and the runtime
        that model has, validated again with it."""
        record = self._pin_model(spec, actor)  # type: ignore[arg-type]
        if record is None:
            return spec.model_copy(update={"schema_url": None})
        pinned = {
            **spec.to_dict(),
            "model": {"name": record.name, "version": record.version},
            "runtime": getattr(spec, "runtime", None) or record.runtime,
        }
        model_path = self.model_path(record)
        for field, value in deployment_defaults(pinned["runtime"], model_path).items():
            if pinned.get(field) is None and field in type(spec).model_fields:
                pinned[field] = value
        if "host" in type(spec).model_fields:
            pinned["host"] = self._host_for(record, pinned)
        if pinned.get("runtime_options", {}).get("convert") is not None:
            pinned.update(self._converted(record, pinned["runtime"], pinned["runtime_options"]))
        return parse_spec(type(spec), pinned, "deployment")

    def _host_for(self, record: ModelRecord, pinned: dict[str, Any]) -> str:
        """Where an online deployment's instances run: as it says, else its runtime's
        default; a model whose loading runs code (a pickle) only in worker processes,
        never in the gateway."""
        runtime, host = pinned["runtime"], pinned.get("host")
        options = pinned.get("runtime_options") or {}
        if options.get("convert") is not None or runtime_kind(runtime).runs_in_gateway:
            # converted to ONNX (in a child process) before anything loads it
            return host or runtime_kind(runtime).default_host
        if not loads_code(runtime, self.model_path(record), options):
            return host or runtime_kind(runtime).default_host
        if host == "thread":
            raise SpecError(
                f"field 'host': model '{record.name}' version {record.version} "
                f"({record.filename}) runs code when it is loaded (a pickle, or trusted_types "
                "beyond the reviewed ones), so servegate loads it only in worker processes: "
                "use host: process (the default for it) or ray, or save it with skops"
            )
        return host or "process"

    def _converted(
        self, record: ModelRecord, runtime: str, options: dict[str, Any]
    ) -> dict[str, Any]:
        """`runtime_options: {convert: onnx}`: the model converted once, checked against
        itself, and stored as an artifact; the deployment then runs it with onnxruntime
        (the runtime and options it gets here say so)."""
        if options.get("converted_from"):  # stored before: already converted
            return {}
        if options["convert"] != "onnx":
            raise SpecError(f"runtime_options.convert: '{options['convert']}'; allowed: onnx")
        model_path = self.model_path(record)
        if loads_code(runtime, model_path, options):  # a pickle: converted in a child
            data = isolated.convert(runtime, model_path, options)
        else:
            data = to_onnx(runtime, model_path, options)
        with tempfile.TemporaryDirectory(prefix="servegate-convert-") as folder:
            path = Path(folder) / "converted.onnx"
            path.write_bytes(data)
            artifact = self.artifacts.put_file(path, ".onnx")
        return {
            "runtime": "onnx",
            "runtime_options": {
                **options,
                "converted_from": runtime,
                "converted_model": artifact.relative_path,
            },
        }

    def resolve_deployment(self, spec: OnlineDeploymentSpec, actor: str) -> OnlineDeploymentSpec:
        """The deployment as it is stored: its scoring script checked, its model pinned."""
        self.get_endpoint(spec.endpoint_name)
        self.check_secret_references(spec)
        if spec.code_configuration is not None:
            code = Path(spec.code_configuration.code)
            script = code / spec.code_configuration.scoring_script
            if not script.is_file():
                raise SpecError(
                    f"field 'code_configuration': no scoring script '{script.name}' in "
                    f"'{code}' on the gateway host"
                )
        return self._pinned(spec, actor)

    def model_warnings(self, resolved: OnlineDeploymentSpec | BatchDeploymentSpec) -> list[str]:
        """What may not work about a resolved deployment's model here (an MLflow model's
        requirements that are not installed)."""
        if resolved.model is None or resolved.model.name is None:
            return []
        record = self.get_model(resolved.model.name, resolved.model.version)
        return model_warnings(record.runtime, self.model_path(record))

    def put_deployment(
        self, resolved: OnlineDeploymentSpec, actor: str, all_traffic: bool = False
    ) -> OnlineDeploymentSpec:
        """Store a resolved deployment; with `all_traffic`, send it 100% of live traffic."""
        endpoint, name = resolved.endpoint_name, resolved.name
        with self.store.transaction():
            # Stored now: whatever was asked with no_wait for it is done.
            self.store.delete_deployment_intent(resolved.endpoint_name, resolved.name)
            before = self.store.get_deployment(endpoint, name)
            action = "deployment.create" if before is None else "deployment.update"
            self.store.put_deployment(
                resolved,
                AuditEntry(
                    actor,
                    action,
                    f"endpoints/{endpoint}/deployments/{name}",
                    before.to_dict() if before else None,
                    resolved.to_dict(),
                ),
            )
            # As in Azure ML, the traffic map lists every deployment; a new one starts at 0.
            traffic = self.get_endpoint(endpoint).traffic
            wanted = (
                ({d: 0 for d in traffic} | {name: 100}) if all_traffic else ({name: 0} | traffic)
            )
            if wanted != traffic:
                reason = "--all-traffic" if all_traffic else f"deployment {name} created"
                self.update_endpoint(endpoint, {"traffic": wanted}, actor, reason=reason)
        return resolved

    def delete_deployment(self, endpoint: str, name: str, actor: str) -> None:
        with self.store.transaction():
            intent = self.deployment_intent(endpoint, name)
            if intent is not None:
                self.store.delete_deployment_intent(endpoint, name)
            if intent is not None and self.store.get_deployment(endpoint, name) is None:
                return  # only an intent (a no_wait create that failed): now gone
            before = self.get_deployment(endpoint, name)
            spec = self.get_endpoint(endpoint)
            live, mirrored = spec.traffic.get(name, 0), spec.mirror_traffic.get(name, 0)
            if live or mirrored:
                raise Conflict(
                    f"deployment '{name}' still takes {live}% of traffic and {mirrored}% of "
                    f"mirror traffic of endpoint '{endpoint}'; move its traffic to 0 first "
                    "(servegate endpoint update --traffic ...)"
                )
            self.store.delete_deployment(
                endpoint,
                name,
                AuditEntry(
                    actor,
                    "deployment.delete",
                    f"endpoints/{endpoint}/deployments/{name}",
                    before.to_dict(),
                    None,
                ),
            )
            # Drop zero entries so the endpoint no longer names the deployment.
            cleaned = {
                "traffic": {d: p for d, p in spec.traffic.items() if d != name},
                "mirror_traffic": {d: p for d, p in spec.mirror_traffic.items() if d != name},
            }
            if cleaned != {"traffic": spec.traffic, "mirror_traffic": spec.mirror_traffic}:
                self.update_endpoint(endpoint, cleaned, actor, reason=f"deployment {name} deleted")

    # -- deployments answered 202 (no_wait) until done ---------------------------------
    def record_intent(
        self, spec: OnlineDeploymentSpec, state: str, actor: str, all_traffic: bool, replica: str
    ) -> DeploymentIntent:
        """A create or update accepted to be done in the background, by `replica`."""
        intent = DeploymentIntent(
            endpoint=spec.endpoint_name,
            name=spec.name,
            state=state,
            spec=spec.to_dict(),
            actor=actor,
            all_traffic=all_traffic,
            replica=replica,
        )
        self.store.put_deployment_intent(intent)
        return intent

    def finish_intent(self, intent: DeploymentIntent, error: str | None = None) -> None:
        """Done (gone from the store) or, with `error`, failed (kept, to be shown)."""
        if error is None:
            self.store.delete_deployment_intent(intent.endpoint, intent.name)
        else:
            self.store.put_deployment_intent(
                intent.model_copy(update={"state": "Failed", "error": error})
            )

    def deployment_intent(self, endpoint: str, name: str) -> DeploymentIntent | None:
        return next(
            (
                i
                for i in self.store.list_deployment_intents()
                if (i.endpoint, i.name) == (endpoint, name)
            ),
            None,
        )

    def deployment_intents(self) -> list[DeploymentIntent]:
        return self.store.list_deployment_intents()

    # -- batch endpoints and deployments ---------------------------------------------
    def create_batch_endpoint(self, spec: BatchEndpointSpec, actor: str) -> BatchEndpointSpec:
        spec = spec.model_copy(update={"schema_url": None})
        with self.store.transaction():
            if self.store.get_batch_endpoint(spec.name) is not None:
                raise Conflict(f"batch endpoint '{spec.name}' already exists")
            self.store.put_batch_endpoint(
                spec,
                AuditEntry(
                    actor,
                    "batch_endpoint.create",
                    f"batch-endpoints/{spec.name}",
                    None,
                    spec.to_dict(),
                ),
            )
        return spec

    def get_batch_endpoint(self, name: str) -> BatchEndpointSpec:
        spec = self.store.get_batch_endpoint(name)
        if spec is None:
            raise NotFound(f"batch endpoint '{name}' does not exist")
        return spec

    def get_batch_deployment(self, endpoint: str, name: str) -> BatchDeploymentSpec:
        self.get_batch_endpoint(endpoint)
        spec = self.store.get_batch_deployment(endpoint, name)
        if spec is None:
            raise NotFound(
                f"batch deployment '{name}' does not exist in batch endpoint '{endpoint}'"
            )
        return spec

    def update_batch_endpoint(
        self, name: str, changes: dict[str, Any], actor: str
    ) -> BatchEndpointSpec:
        """Change `description`, `tags` or `defaults` (the default deployment, which must
        exist)."""
        with self.store.transaction():
            before = self.get_batch_endpoint(name)
            after = parse_spec(BatchEndpointSpec, {**before.to_dict(), **changes}, "request body")
            default = after.defaults.get("deployment_name")
            if default and self.store.get_batch_deployment(name, default) is None:
                raise SpecError(
                    f"field 'defaults.deployment_name': batch endpoint '{name}' has no "
                    f"deployment '{default}'"
                )
            self.store.put_batch_endpoint(
                after,
                AuditEntry(
                    actor,
                    "batch_endpoint.update",
                    f"batch-endpoints/{name}",
                    before.to_dict(),
                    after.to_dict(),
                ),
            )
        return after

    def _refuse_while_jobs_run(self, endpoint: str, deployment: str | None, what: str) -> None:
        running = [
            job.id
            for job in self.store.list_unfinished_jobs()
            if job.kind == "batch"
            and job.endpoint == endpoint
            and (deployment is None or job.deployment == deployment)
        ]
        if running:
            raise Conflict(
                f"{what} has unfinished jobs ({', '.join(running[:5])}); cancel them first"
            )

    def delete_batch_endpoint(self, name: str, actor: str) -> None:
        """Delete a batch endpoint and its deployments (its jobs' records stay)."""
        with self.store.transaction():
            before = self.get_batch_endpoint(name)
            self._refuse_while_jobs_run(name, None, f"batch endpoint '{name}'")
            self.store.delete_batch_endpoint(
                name,
                AuditEntry(
                    actor,
                    "batch_endpoint.delete",
                    f"batch-endpoints/{name}",
                    before.to_dict(),
                    None,
                ),
            )

    def delete_batch_deployment(self, endpoint: str, name: str, actor: str) -> None:
        """Delete a batch deployment; not the endpoint's default while others remain (as
        Azure ML refuses), nor one with unfinished jobs."""
        with self.store.transaction():
            before = self.get_batch_deployment(endpoint, name)
            spec = self.get_batch_endpoint(endpoint)
            others = [d.name for d in self.store.list_batch_deployments(endpoint) if d.name != name]
            if spec.defaults.get("deployment_name") == name and others:
                raise Conflict(
                    f"'{name}' is batch endpoint '{endpoint}''s default deployment; make another "
                    f"the default first (servegate batch deployment update --set-default, or "
                    f"batch endpoint update --set defaults.deployment_name={others[0]})"
                )
            self._refuse_while_jobs_run(endpoint, name, f"batch deployment '{name}'")
            target = f"batch-endpoints/{endpoint}"
            self.store.delete_batch_deployment(
                endpoint,
                name,
                AuditEntry(
                    actor,
                    "batch_deployment.delete",
                    f"{target}/deployments/{name}",
                    before.to_dict(),
                    None,
                ),
            )
            if not others and spec.defaults.get("deployment_name") == name:
                updated = spec.model_copy(update={"defaults": {}})
                self.store.put_batch_endpoint(
                    updated,
                    AuditEntry(
                        actor,
                        "batch_endpoint.update",
                        target,
                        spec.to_dict(),
                        updated.to_dict(),
                        f"deployment {name} deleted",
                    ),
                )

    def put_batch_deployment(
        self,
        spec: BatchDeploymentSpec,
        actor: str,
        mode: str | None = None,
        set_default: bool = False,
    ) -> BatchDeploymentSpec:
        """Create or update a batch deployment (`mode`: "create" refuses an existing one,
        "update" a missing one); `set_default` makes it the endpoint's default."""
        if self.store.get_batch_endpoint(spec.endpoint_name) is None:
            raise NotFound(f"batch endpoint '{spec.endpoint_name}' does not exist")
        self.check_secret_references(spec)
        check_mode(
            mode,
            self.store.get_batch_deployment(spec.endpoint_name, spec.name) is not None,
            f"batch deployment '{spec.name}'",
            "servegate batch deployment update",
        )
        spec = self._pinned(spec, actor)
        target = f"batch-endpoints/{spec.endpoint_name}"
        with self.store.transaction():
            endpoint = self.store.get_batch_endpoint(spec.endpoint_name)
            if endpoint is None:
                raise NotFound(f"batch endpoint '{spec.endpoint_name}' does not exist")
            before = self.store.get_batch_deployment(spec.endpoint_name, spec.name)
            self.store.put_batch_deployment(
                spec,
                AuditEntry(
                    actor,
                    "batch_deployment.create" if before is None else "batch_deployment.update",
                    f"{target}/deployments/{spec.name}",
                    before.to_dict() if before else None,
                    spec.to_dict(),
                ),
            )
            default = endpoint.defaults.get("deployment_name")
            if (set_default and default != spec.name) or not default:
                # The first deployment becomes the default, as in Azure ML.
                updated = endpoint.model_copy(update={"defaults": {"deployment_name": spec.name}})
                self.store.put_batch_endpoint(
                    updated,
                    AuditEntry(
                        actor,
                        "batch_endpoint.update",
                        target,
                        endpoint.to_dict(),
                        updated.to_dict(),
                        f"default deployment {spec.name}",
                    ),
                )
        return spec

    def record_deployment_logs(
        self, endpoint: str, name: str, replica: str, lines: list[tuple[str, str]], keep: int
    ) -> None:
        """Append a deployment's log lines ((time, text) pairs) written on `replica`;
        only its newest `keep` lines stay."""
        self.store.add_deployment_logs(endpoint, name, replica, lines, keep)

    def record_scaling(
        self, endpoint: str, name: str, before: int, after: int, reason: str, actor: str
    ) -> None:
        """Audit a change of a deployment's running instances (made by the autoscaler,
        outside the store)."""
        self.store.add_audit(
            AuditEntry(
                actor,
                "deployment.scale",
                f"endpoints/{endpoint}/deployments/{name}",
                {"instances": before},
                {"instances": after},
                reason,
            )
        )

    # -- rollouts (their controller lives in the gateway; the records here) ------------
    def save_rollout(self, record: RolloutRecord, audit: AuditEntry | None = None) -> None:
        self.store.put_rollout(record, audit)

    def advance_rollout(
        self, record: RolloutRecord, traffic: dict[str, Any] | None, reason: str
    ) -> bool:
        """Write a rollout's next record (and its traffic change) in one transaction, only
        while the stored rollout is still active: once it was finished anywhere (abort, or
        another replica's rollback) no driver can move traffic again. False when refused."""
        with self.store.transaction():
            stored = self.store.get_rollout(record.id)
            if stored is None or not stored.active:
                return False
            if traffic is not None:
                current = self.get_endpoint(record.endpoint)
                if any(getattr(current, k) != v for k, v in traffic.items()):
                    self.update_endpoint(record.endpoint, traffic, f"rollout {record.id}", reason)
            self.store.put_rollout(record)
        return True

    # -- admin tokens ----------------------------------------------------------------
    def ensure_owner_token(self, token_path: Path) -> None:
        """The first gateway on a store creates its `owner` admin token: the one already
        in `token_path` (a store from before tokens lived in the store) or a new one
        written there (0600). The store keeps only its hash, so every replica accepts it.
        Replicas starting later find it and create nothing."""
        with self.store.transaction():
            if self.store.list_admin_tokens():
                return
            token = read_or_create_secret(token_path)
            record = AdminTokenRecord(name="owner", role="owner", created_by=SYSTEM)
            self.store.put_admin_token(
                record,
                hash_key(token),
                AuditEntry(
                    SYSTEM, "admin_token.create", "admin-tokens/owner", None, _shown(record)
                ),
            )

    def create_admin_token(
        self, name: str, role: str, endpoints: str, expires_in_s: float | None, actor: str
    ) -> tuple[AdminTokenRecord, str]:
        """A new admin token (its record, and the token, which is not kept)."""
        record = AdminTokenRecord(
            name=check_token_name(name),
            role=check_role(role),
            endpoints=check_endpoint_pattern(endpoints),
            expires_at=time.time() + expires_in_s if expires_in_s else None,
            created_by=actor,
            created_at=utc_now(),
        )
        token = secrets.token_urlsafe(32)
        with self.store.transaction():
            if any(t.name == name for t in self.store.list_admin_tokens()):
                raise Conflict(f"admin token '{name}' already exists; revoke it first")
            self.store.put_admin_token(
                record,
                hash_key(token),
                AuditEntry(
                    actor, "admin_token.create", f"admin-tokens/{name}", None, _shown(record)
                ),
            )
        return record, token

    def revoke_admin_token(self, name: str, actor: str) -> None:
        """Delete a token: every replica refuses it from the next request on (they look
        tokens up in the store on each management request). The last owner token stays."""
        with self.store.transaction():
            tokens = self.store.list_admin_tokens()
            found = next((t for t in tokens if t.name == name), None)
            if found is None:
                raise NotFound(f"admin token '{name}' does not exist")
            if found.role == "owner" and not found.endpoints:
                owners = [t for t in tokens if t.role == "owner" and not t.endpoints]
                if len(owners) == 1:
                    raise Conflict(
                        f"admin token '{name}' is the last owner token; create another owner "
                        "token first, so access can still be managed"
                    )
            self.store.delete_admin_token(
                name,
                AuditEntry(
                    actor, "admin_token.revoke", f"admin-tokens/{name}", _shown(found), None
                ),
            )

    def admin_token(self, token: str) -> AdminTokenRecord | None:
        """The record of a presented token (by its hash), expired or not; None if unknown."""
        return self.store.admin_token(hash_key(token))

    # -- model monitors ----------------------------------------------------------------
    def put_monitor(self, spec: MonitorSpec, actor: str, mode: str | None = None) -> MonitorSpec:
        """Create or update a monitor of a deployment whose data collector logs what the
        monitor reads."""
        deployment = self.get_deployment(spec.endpoint_name, spec.deployment_name)
        collector = deployment.data_collector
        collecting = collector is not None and any(
            name == spec.collection and c.enabled for name, c in collector.collections.items()
        )
        if not collecting:
            raise SpecError(
                f"collection: deployment '{spec.deployment_name}' does not collect "
                f"'{spec.collection}'; enable data_collector.collections.{spec.collection}"
            )
        assert collector is not None
        if (
            spec.predictions
            and spec.collection == "request"
            and not any(
                name == "response" and c.enabled for name, c in collector.collections.items()
            )
        ):
            raise SpecError("predictions: the deployment does not collect 'response'")
        existing = self.store.get_monitor(spec.name)
        check_mode(mode, existing is not None, f"monitor '{spec.name}'", "servegate monitor update")
        action = "monitor.update" if existing else "monitor.create"
        before = existing.to_dict() if existing else None
        self.store.put_monitor(
            spec, AuditEntry(actor, action, f"monitors/{spec.name}", before, spec.to_dict())
        )
        return spec

    def get_monitor(self, name: str) -> MonitorSpec:
        spec = self.store.get_monitor(name)
        if spec is None:
            raise NotFound(f"monitor '{name}' does not exist")
        return spec

    def delete_monitor(self, name: str, actor: str) -> None:
        before = self.get_monitor(name).to_dict()
        self.store.delete_monitor(
            name, AuditEntry(actor, "monitor.delete", f"monitors/{name}", before, None)
        )

    def record_monitor_run(
        self, name: str, start: float, end: float, state: str, result: dict[str, Any]
    ) -> int:
        """Keep a run's window, state and measures; its id."""
        return self.store.add_monitor_run(name, start, end, state, result)

    def record_monitor_breach(self, spec: MonitorSpec, event: dict[str, Any], reason: str) -> None:
        """The audit log's entry for a breach (the actor is the monitor)."""
        self.store.add_audit(
            AuditEntry("monitor", "monitor.breach", f"monitors/{spec.name}", None, event, reason)
        )

    def collected_destination(self, spec: MonitorSpec) -> CollectorDestination:
        """Where the monitored deployment's data collector writes: its Kafka topic, or
        the folder of its Parquet files."""
        deployment = self.get_deployment(spec.endpoint_name, spec.deployment_name)
        # (No collector any more: where it wrote by default, which says no data.)
        collector = deployment.data_collector or DataCollectorSpec()
        artifacts = self.settings.artifacts if self.settings else str(self.artifacts.home)
        return collector.destination_under(artifacts)

    # -- secrets -----------------------------------------------------------------------
    @functools.cached_property
    def vault(self) -> SecretBox:
        if self.settings is None:
            raise StoreUnavailable("secrets need the control plane's home (its key)")
        return SecretBox.load(self.settings.home)

    def set_secret(self, name: str, value: str, actor: str) -> None:
        """Store a secret, encrypted; the audit log records that it changed, not its value."""
        check_secret_name(name)
        if not value:
            raise SpecError("value: a secret cannot be empty")
        exists = self.store.get_secret(name) is not None
        self.store.put_secret(
            name,
            self.vault.encrypt(value),
            AuditEntry(
                actor, "secret.update" if exists else "secret.create", f"secrets/{name}", None, None
            ),
        )

    def delete_secret(self, name: str, actor: str) -> None:
        audit = AuditEntry(actor, "secret.delete", f"secrets/{name}", None, None)
        if not self.store.delete_secret(name, audit):
            raise NotFound(f"secret '{name}' does not exist")

    def list_secrets(self) -> list[dict[str, str]]:
        return self.store.list_secrets()

    def rotate_secrets(self, actor: str) -> int:
        """Re-encrypt every secret with the newest key; how many."""
        names = [s["name"] for s in self.store.list_secrets()]
        with self.store.transaction():
            for name in names:
                ciphertext = self.store.get_secret(name)
                if ciphertext is not None:
                    self.store.put_secret(
                        name,
                        self.vault.rotate(ciphertext),
                        AuditEntry(actor, "secret.rotate", f"secrets/{name}", None, None),
                    )
        return len(names)

    def _with_secrets(self, value: str, field: str) -> str:
        def lookup(name: str) -> str:
            ciphertext = self.store.get_secret(name)
            if ciphertext is None:
                raise SpecError(
                    f"{field}: secret '{name}' does not exist; set it with "
                    f"`servegate secret set {name}`"
                )
            return self.vault.decrypt(ciphertext, name)

        return resolve(value, lookup)

    def check_secret_references(self, spec: OnlineDeploymentSpec | BatchDeploymentSpec) -> None:
        """Every `${secret:NAME}` the spec holds names a stored secret."""
        if isinstance(spec, BatchDeploymentSpec):
            environment = spec.settings.environment_variables
        else:
            environment = spec.environment_variables
        headers = spec.runtime_options.get("headers")
        places = [(f"environment_variables.{k}", v) for k, v in environment.items()]
        if isinstance(headers, dict):
            places += [(f"runtime_options.headers.{k}", str(v)) for k, v in headers.items()]
        known = {s["name"] for s in self.store.list_secrets()} if places else set()
        for field, value in places:
            for name in references(value):
                if name not in known:
                    raise SpecError(
                        f"{field}: secret '{name}' does not exist; set it with "
                        f"`servegate secret set {name}`"
                    )


def _shown(record: AdminTokenRecord) -> dict[str, Any]:
    return record.model_dump(exclude={"created_at"})


def check_mode(mode: str | None, exists: bool, what: str, update_command: str) -> None:
    """Azure's create/update semantics: create refuses an existing name (pointing at
    update), update refuses a missing one; no mode creates or replaces."""
    if mode == "create" and exists:
        raise Conflict(f"{what} already exists; change it with `{update_command}`")
    if mode == "update" and not exists:
        raise NotFound(f"{what} does not exist; create it first")
