"""The management REST API (admin bearer token): models, endpoints, deployments,
keys, rollouts, the audit log and the cluster's status. Every change runs under the
hosts' lock, then the routing snapshot is rebuilt and swapped. Each route is declared
with `gateway.api.operation`, which also documents it."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from deploy.control import check_mode
from deploy.errors import Conflict, NotFound, SpecError
from deploy.masking import mask_secrets
from deploy.records import DeploymentIntent
from deploy.roles import Permission
from deploy.rollout import RolloutPlan
from deploy.specs import EndpointSpec, OnlineDeploymentSpec, SpecT, parse_spec
from gateway.access import authorize_endpoint, authorize_model, in_scope, principal
from gateway.api import Query, operation
from gateway.api_models import (
    AuditRecord,
    ClusterStatus,
    CodeUpload,
    DataUpload,
    Deployment,
    DeploymentPatch,
    EndpointUpdate,
    EndpointView,
    KeyRegenerated,
    Keys,
    LogLine,
    ModelVersion,
    RegenerateKeys,
    Rollout,
    RolloutStatus,
    Token,
)
from gateway.cluster import REPLICA_TIMEOUT_S
from gateway.errors import MalformedRequest, PayloadTooLarge
from gateway.state import GatewayState

log = logging.getLogger(__name__)


def _document(doc: Any) -> Any:
    """An answer as JSON-ready values: records (specs, jobs, rollouts, models) as their
    `to_dict()`, in lists too."""
    if isinstance(doc, list):
        return [_document(item) for item in doc]
    shown = getattr(doc, "view", None) or getattr(doc, "to_dict", None)  # view: times as ISO
    return shown() if callable(shown) else doc


def _json(doc: Any, status: int = 200) -> Response:
    """A management answer; secrets (remote runtime headers, secret-looking environment
    variables) are masked in every one."""
    return Response(
        orjson.dumps(mask_secrets(_document(doc))), status, media_type="application/json"
    )


def _name(spec: Any) -> str:
    return str(spec.name)


def _actor(request: Request) -> str:
    """The audit log's actor: the request's principal, never a header."""
    return principal(request).actor


#: Management documents (specs, traffic, plans) are small; model files are uploads.
MAX_JSON_BODY_BYTES = 1024 * 1024


#: The largest integer a query or path value may hold (the stores keep 64-bit integers).
MAX_NUMBER = 2**62


def _number(raw: str, what: str) -> int:
    """A positive decimal integer from a query or path value. ASCII digits only:
    str.isdigit() also accepts '²', which int() refuses."""
    if not (raw.isascii() and raw.isdigit()):
        raise SpecError(f"{what}: must be a positive integer, got '{raw[:40]}'")
    if len(raw) > 19 or int(raw) > MAX_NUMBER:
        raise SpecError(f"{what}: {raw[:40]} is too large (at most {MAX_NUMBER})")
    return int(raw)


async def _body(request: Request) -> dict[str, Any]:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_JSON_BODY_BYTES:
            raise PayloadTooLarge(f"request body exceeds {MAX_JSON_BODY_BYTES} bytes")
        chunks.append(chunk)
    try:
        doc = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MalformedRequest("request body must be a JSON object")
    return doc


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "false").lower() in ("1", "true", "yes")


#: Every create route takes it: Azure ML files are accepted as they are, with a warning
#: per field servegate does not use, unless the caller asks for strictness.
STRICT = Query(
    "strict",
    {"type": "boolean"},
    "refuse Azure ML fields servegate does not use (default: accept each with a warning)",
)


async def _spec_from_body(
    kind: type[SpecT], request: Request, overrides: dict[str, Any] | None = None
) -> SpecT:
    """The request's spec: validated, and refused in strict mode when it holds Azure ML
    fields that mean nothing here (else `spec.warnings()` names them)."""
    spec = parse_spec(kind, await _body(request), "request body", overrides)
    if _flag(request, "strict"):
        spec.check_strict("request body")
    return spec


#: Create and update routes that also replace take it: Azure's create refuses an existing
#: name (409), its update a missing one (404).
MODE = Query(
    "mode",
    {"type": "string", "enum": ["create", "update"]},
    "create: refuse an existing name (409); update: refuse a missing one (404); "
    "default: create or replace",
)


def _mode(request: Request) -> str | None:
    mode = request.query_params.get("mode")
    if mode not in (None, "create", "update"):
        raise SpecError(f"query parameter 'mode': '{mode}'; allowed: create, update")
    return mode


def _warned(doc: Any, warnings: list[str]) -> Any:
    """An answer (a record or a mapping) with its `warnings`, when there are some."""
    doc = _document(doc)
    return {**doc, "warnings": warnings} if warnings else doc


# -- models ---------------------------------------------------------------------
def _tags(raw: str | None) -> dict[str, str] | None:
    if not raw:
        return None
    try:
        tags = orjson.loads(raw)
    except orjson.JSONDecodeError:
        tags = None
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise SpecError("query parameter 'tags': give a JSON object of strings")
    return tags


async def _upload(request: Request, state: GatewayState, suffix: str = "") -> Path:
    """Stream the body into a temporary file under the store's home (named with
    `suffix`, which runtimes use to tell file formats apart)."""
    limit = state.settings.max_model_bytes
    incoming = state.settings.home / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=incoming, suffix=suffix)
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"model file exceeds max_model_bytes={limit}")
                out.write(chunk)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


@operation(
    "POST",
    "/models/{name}/versions",
    "Register a model version (the body is the file)",
    tag="models",
    permission=Permission.OPERATE,
    body="binary",
    response=ModelVersion,
    ok_status=201,
    errors=(400, 409),
    query=(
        Query("filename", {"type": "string"}, "the model file's name (picks the runtime)"),
        Query("version", {"type": "integer", "minimum": 1}),
        Query("runtime", {"type": "string"}),
        Query("description", {"type": "string"}),
        Query("tags", {"type": "string"}, "a JSON object of string tags"),
        Query(
            "reuse_identical",
            {"type": "boolean"},
            "answer the version asked for (or the latest) when it holds the same content, "
            "instead of registering a new one (a deployment's inline model)",
        ),
        Query(
            "strict",
            {"type": "boolean"},
            "refuse a model saved by another version of its framework (default: register "
            "it with a warning, as Azure ML loads it)",
        ),
    ),
)
async def register_model(request: Request, state: GatewayState) -> Response:
    """POST /management/models/{name}/versions?filename=&version=&runtime=&description=
    &tags=&reuse_identical="""
    query = request.query_params
    filename = query.get("filename") or ""
    if not filename:
        raise SpecError("query parameter 'filename' is required (the model file's name)")
    authorize_model(principal(request), request.path_params["name"])
    raw_version = query.get("version")
    version = _number(raw_version, "query parameter 'version'") if raw_version else None
    tags = _tags(query.get("tags"))
    upload = await _upload(request, state, Path(filename).suffix)
    try:
        async with state.hosts.lock:
            registered = await run_in_threadpool(
                state.control.register_model,
                request.path_params["name"],
                filename,
                upload,
                _actor(request),
                version,
                query.get("runtime"),
                query.get("description", ""),
                tags,
                _flag(request, "reuse_identical"),
                _flag(request, "strict"),
            )
    finally:
        upload.unlink(missing_ok=True)
    return _json(_warned(registered.record.to_dict(), registered.warnings), 201)


@operation(
    "GET",
    "/models",
    "List model versions",
    tag="models",
    permission=Permission.READ,
    response=list[ModelVersion],
    query=(Query("name", {"type": "string"}),),
)
async def list_models(request: Request, state: GatewayState) -> Response:
    """GET /management/models[?name=]"""
    records = await run_in_threadpool(
        state.control.store.list_models, request.query_params.get("name")
    )
    return _json([r.to_dict() for r in records])


@operation(
    "GET",
    "/models/{name}/versions/{version}",
    "Show a model version ('latest' for the newest)",
    tag="models",
    permission=Permission.READ,
    response=ModelVersion,
    errors=(400,),
)
async def show_model(request: Request, state: GatewayState) -> Response:
    """GET /management/models/{name}/versions/{version} ('latest' for the newest)"""
    raw = request.path_params["version"]
    version = None if raw == "latest" else _number(raw, "model version ('latest' or a number)")
    record = await run_in_threadpool(state.control.get_model, request.path_params["name"], version)
    return _json(record.to_dict())


@operation(
    "POST",
    "/code",
    "Upload a scoring-script folder (tar.gz)",
    tag="models",
    permission=Permission.OPERATE,
    body="binary",
    response=CodeUpload,
    ok_status=201,
    errors=(400,),
)
async def upload_code(request: Request, state: GatewayState) -> Response:
    """POST /management/code: a tar.gz of a scoring-script folder -> {"code": <folder>}"""
    return _json({"code": await _unpacked(request, state, state.control.store_code)}, 201)


async def _unpacked(request: Request, state: GatewayState, store: Callable[[Path], Path]) -> str:
    """The uploaded tar.gz, unpacked by `store` into a folder on this host: its path."""
    upload = await _upload(request, state)
    try:
        return str(await run_in_threadpool(store, upload))
    finally:
        upload.unlink(missing_ok=True)


@operation(
    "POST",
    "/data",
    "Upload batch inputs (a tar.gz of files) for a job on this gateway's host",
    tag="batch",
    permission=Permission.OPERATE,
    body="binary",
    response=DataUpload,
    ok_status=201,
    errors=(400,),
)
async def upload_data(request: Request, state: GatewayState) -> Response:
    """POST /management/data: a tar.gz of input files -> {"path": <folder>}, what a
    `batch invoke --input` from another host names"""
    return _json({"path": await _unpacked(request, state, state.control.store_data)}, 201)


# -- endpoints ------------------------------------------------------------------
async def _apply(state: GatewayState, change: Callable[[], Any]) -> Any:
    """Run a control-plane change under the lock, then publish a new snapshot."""
    async with state.hosts.lock:
        result = await run_in_threadpool(change)
        await state.hosts.sync()
    return result


def _endpoint_view(state: GatewayState, spec: EndpointSpec) -> dict[str, Any]:
    route = state.hosts.snapshot.endpoints.get(spec.name)
    settings = state.settings
    return {
        **spec.to_dict(),
        "scoring_uri": f"{settings.scheme}://{settings.host}:{settings.port}/endpoints/"
        f"{spec.name}/score",
        "openapi_uri": f"{settings.scheme}://{settings.host}:{settings.port}/openapi.json",
        "deployments": sorted(route.deployments) if route else [],
        "unavailable_deployments": dict(route.unavailable) if route else {},
        # Azure ML's state of an endpoint: Succeeded once it exists here (its
        # deployments have their own, in `deployment show`).
        "provisioning_state": "Succeeded",
    }


@operation(
    "POST",
    "/endpoints",
    "Create an endpoint",
    tag="endpoints",
    permission=Permission.OPERATE,
    body=EndpointSpec,
    response=EndpointView,
    ok_status=201,
    errors=(409,),
    query=(STRICT,),
)
async def create_endpoint(request: Request, state: GatewayState) -> Response:
    """POST /management/endpoints[?strict=true]"""
    spec = await _spec_from_body(EndpointSpec, request)
    authorize_endpoint(principal(request), spec.name)
    data = await _apply(state, lambda: state.control.create_endpoint(spec, _actor(request)))
    return _json(_warned(_endpoint_view(state, data), spec.warnings()), 201)


@operation(
    "GET",
    "/endpoints",
    "List endpoints",
    tag="endpoints",
    permission=Permission.READ,
    response=list[EndpointView],
)
async def list_endpoints(request: Request, state: GatewayState) -> Response:
    """GET /management/endpoints"""
    specs = await run_in_threadpool(state.control.store.list_endpoints)
    return _json([_endpoint_view(state, s) for s in in_scope(request, specs, _name)])


@operation(
    "GET",
    "/endpoints/{endpoint}",
    "Show an endpoint",
    tag="endpoints",
    permission=Permission.READ,
    response=EndpointView,
)
async def show_endpoint(request: Request, state: GatewayState) -> Response:
    """GET /management/endpoints/{endpoint}"""
    spec = await run_in_threadpool(state.control.get_endpoint, request.path_params["endpoint"])
    return _json(_endpoint_view(state, spec))


@operation(
    "PATCH",
    "/endpoints/{endpoint}",
    "Update traffic, mirror traffic, description, tags or auth mode",
    tag="endpoints",
    permission=Permission.OPERATE,
    body=EndpointUpdate,
    response=EndpointView,
    errors=(409,),
)
async def update_endpoint(request: Request, state: GatewayState) -> Response:
    """PATCH /management/endpoints/{endpoint} with any of traffic, mirror_traffic,
    description, tags, auth_mode; `reason` goes to the audit log."""
    changes = await _body(request)
    reason = str(changes.pop("reason", ""))
    name = request.path_params["endpoint"]
    if "name" in changes and changes["name"] != name:
        raise SpecError("field 'name': an endpoint cannot be renamed")
    if "traffic" in changes or "mirror_traffic" in changes:
        await _refuse_during_rollout(state, name, "change traffic")
    data = await _apply(
        state, lambda: state.control.update_endpoint(name, changes, _actor(request), reason)
    )
    return _json(_endpoint_view(state, data))


@operation(
    "DELETE",
    "/endpoints/{endpoint}",
    "Delete an endpoint and its deployments",
    tag="endpoints",
    permission=Permission.OPERATE,
    ok_status=204,
)
async def delete_endpoint(request: Request, state: GatewayState) -> Response:
    """DELETE /management/endpoints/{endpoint} (with its deployments)"""
    name = request.path_params["endpoint"]
    await _apply(state, lambda: state.control.delete_endpoint(name, _actor(request)))
    return Response(status_code=204)


@operation(
    "POST",
    "/endpoints/{endpoint}/listKeys",
    "The endpoint's keys, or a token (get-credentials)",
    tag="endpoints",
    permission=Permission.READ_KEYS,
    response=Keys | Token,
    errors=(400,),
)
async def list_keys(request: Request, state: GatewayState) -> Response:
    """POST /management/endpoints/{endpoint}/listKeys (Azure's name): keys or a token"""
    creds = await run_in_threadpool(state.control.credentials_of, request.path_params["endpoint"])
    return _json(creds)


@operation(
    "POST",
    "/endpoints/{endpoint}/regenerateKeys",
    "Regenerate a key (the old one is refused at once)",
    tag="endpoints",
    permission=Permission.OPERATE,
    body=RegenerateKeys,
    response=Keys | KeyRegenerated,
)
async def regenerate_keys(request: Request, state: GatewayState) -> Response:
    """POST /management/endpoints/{endpoint}/regenerateKeys {"keyType": "primary"|"secondary"}:
    the new keys, to a principal that may read keys (else only which one changed)"""
    key_type = str((await _body(request)).get("keyType", "")).lower()
    name = request.path_params["endpoint"]
    creds = await _apply(
        state, lambda: state.control.regenerate_key(name, key_type, _actor(request))
    )
    if not principal(request).can(Permission.READ_KEYS):
        return _json(
            {
                "regenerated": key_type,
                "note": "the keys are not shown: reading them needs permission 'read_keys' "
                "(servegate endpoint get-credentials as an owner or scorer-key-reader)",
            }
        )
    return _json(creds)


# -- deployments ----------------------------------------------------------------
@operation(
    "POST",
    "/endpoints/{endpoint}/deployments",
    "Create or update a deployment (loaded and warmed before it is stored)",
    tag="deployments",
    permission=Permission.OPERATE,
    body=OnlineDeploymentSpec,
    response=Deployment,
    ok_status=201,
    accepted_status=202,
    errors=(409, 424),
    query=(
        Query("all_traffic", {"type": "boolean"}, "send it 100% of live traffic"),
        STRICT,
        MODE,
        Query(
            "no_wait",
            {"type": "boolean"},
            "answer 202 at once (provisioning_state Creating or Updating) and load in the "
            "background; `GET` the deployment for its outcome",
        ),
    ),
)
async def create_deployment(request: Request, state: GatewayState) -> Response:
    """POST /management/endpoints/{endpoint}/deployments[?all_traffic=&mode=&no_wait=]

    Creates or updates: the model is loaded and warmed before the deployment
    is stored, so one that cannot load is never stored or routed to.
    """
    endpoint = request.path_params["endpoint"]
    spec = await _spec_from_body(OnlineDeploymentSpec, request, {"endpoint_name": endpoint})
    actor, all_traffic = _actor(request), _flag(request, "all_traffic")
    exists = await run_in_threadpool(state.control.store.get_deployment, endpoint, spec.name)
    check_mode(
        _mode(request),
        exists is not None,
        f"deployment '{spec.name}' of endpoint '{endpoint}'",
        "servegate deployment update",
    )
    if _flag(request, "no_wait"):
        await run_in_threadpool(state.control.get_endpoint, endpoint)
        # In the store before the 202: a gateway that dies under it finishes it on restart.
        intent = await run_in_threadpool(
            state.control.record_intent,
            spec,
            "Updating" if exists else "Creating",
            actor,
            all_traffic,
            state.identity.id,
        )
        provisioning = state.hosts.provisioning(intent, _put(state, spec, actor, all_traffic))
        return _json(_warned({**spec.to_dict(), **provisioning}, spec.warnings()), 202)
    resolved, warnings = await _put(state, spec, actor, all_traffic)
    shown = {**resolved.to_dict(), **state.hosts.health(endpoint, resolved.name)}
    return _json(_warned(shown, warnings), 201)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: `patch`'s fields replace `target`'s, objects merge
    field by field, null removes a field."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


@operation(
    "PATCH",
    "/endpoints/{endpoint}/deployments/{deployment}",
    "Change some fields of a deployment (a JSON merge patch of its spec, as "
    "`az ml online-deployment update --set`); it is then updated as by create",
    tag="deployments",
    permission=Permission.OPERATE,
    body=DeploymentPatch,
    response=Deployment,
    accepted_status=202,
    errors=(404, 409, 424),
    query=(
        Query(
            "no_wait",
            {"type": "boolean"},
            "answer 202 at once (provisioning_state Updating) and load in the background",
        ),
    ),
)
async def patch_deployment(request: Request, state: GatewayState) -> Response:
    """PATCH /management/endpoints/{endpoint}/deployments/{deployment} {field: value, ...}

    Applied to the stored spec (with its real secrets, which answers mask), so a change
    of instance_count leaves environment variables and headers as they are."""
    endpoint, name = request.path_params["endpoint"], request.path_params["deployment"]
    patch = await _body(request)
    for fixed in ("name", "endpoint_name"):
        if fixed in patch and patch[fixed] != {"name": name, "endpoint_name": endpoint}[fixed]:
            raise SpecError(f"field '{fixed}': a deployment's {fixed} cannot change")
    stored = await run_in_threadpool(state.control.get_deployment, endpoint, name)
    spec = parse_spec(
        OnlineDeploymentSpec, merge_patch(stored.to_dict(), patch), "the patched deployment"
    )
    actor = _actor(request)
    if _flag(request, "no_wait"):
        intent = await run_in_threadpool(
            state.control.record_intent, spec, "Updating", actor, False, state.identity.id
        )
        provisioning = state.hosts.provisioning(intent, _put(state, spec, actor, False))
        return _json({**spec.to_dict(), **provisioning}, 202)
    resolved, warnings = await _put(state, spec, actor, False)
    shown = {**resolved.to_dict(), **state.hosts.health(endpoint, resolved.name)}
    return _json(_warned(shown, warnings))


#: How often a replica looks for no_wait creates and updates whose replica died.
INTENT_CHECK_S = 2.0


async def finish_orphaned_intents(state: GatewayState) -> None:
    """Finish the no_wait creates and updates that a replica accepted (202) and did not
    live to finish (this one before a restart, or another one): each is taken by one
    replica (a lease) and run again; its outcome is stored as if it had run then."""
    while True:
        try:
            intents = await run_in_threadpool(state.control.deployment_intents)
            if any(i.under_way for i in intents):
                live = {
                    r.id
                    for r in await run_in_threadpool(
                        state.control.store.list_replicas, REPLICA_TIMEOUT_S
                    )
                }
                for intent in intents:
                    if (
                        intent.under_way
                        and intent.replica not in live | {state.identity.id}
                        and not state.hosts.working_on(intent.endpoint, intent.name)
                    ):
                        await _take_over(state, intent)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("checking unfinished deployment creates failed; trying again")
        await asyncio.sleep(INTENT_CHECK_S)


async def _take_over(state: GatewayState, intent: DeploymentIntent) -> None:
    lease = f"deployment-intent/{intent.endpoint}/{intent.name}"
    if not await run_in_threadpool(
        state.control.store.acquire_lease, lease, state.identity.id, 60.0
    ):
        return  # another replica took it
    spec = OnlineDeploymentSpec.model_validate(intent.spec)
    mine = await run_in_threadpool(
        state.control.record_intent,
        spec,
        intent.state,
        intent.actor,
        intent.all_traffic,
        state.identity.id,
    )
    log.warning(
        "deployment %s/%s: finishing the %s its replica (%s) did not live to finish",
        intent.endpoint,
        intent.name,
        "create" if intent.state == "Creating" else "update",
        intent.replica,
    )
    state.hosts.provisioning(mine, _put(state, spec, intent.actor, intent.all_traffic))


async def _put(
    state: GatewayState, spec: OnlineDeploymentSpec, actor: str, all_traffic: bool
) -> tuple[OnlineDeploymentSpec, list[str]]:
    """Resolve, load and warm, store, route: a deployment created or updated."""
    async with state.hosts.lock:
        resolved = await run_in_threadpool(state.control.resolve_deployment, spec, actor)
        scheduler = await state.hosts.load(resolved)
        try:
            await run_in_threadpool(state.control.put_deployment, resolved, actor, all_traffic)
        except BaseException:
            await scheduler.close()
            raise
        state.hosts.adopt(resolved, scheduler)
        await state.hosts.sync()
    warnings = spec.warnings() + await run_in_threadpool(state.control.model_warnings, resolved)
    for warning in warnings:
        log.warning("deployment %s/%s: %s", spec.endpoint_name, resolved.name, warning)
    return resolved, warnings


@operation(
    "GET",
    "/endpoints/{endpoint}/deployments",
    "List an endpoint's deployments",
    tag="deployments",
    permission=Permission.READ,
    response=list[Deployment],
)
async def list_deployments(request: Request, state: GatewayState) -> Response:
    """GET /management/endpoints/{endpoint}/deployments"""
    endpoint = request.path_params["endpoint"]
    await run_in_threadpool(state.control.get_endpoint, endpoint)
    specs = await run_in_threadpool(state.control.store.list_deployments, endpoint)
    return _json([{**s.to_dict(), **state.hosts.health(endpoint, s.name)} for s in specs])


@operation(
    "GET",
    "/endpoints/{endpoint}/deployments/{deployment}",
    "Show a deployment",
    tag="deployments",
    permission=Permission.READ,
    response=Deployment,
)
async def show_deployment(request: Request, state: GatewayState) -> Response:
    """GET /management/endpoints/{endpoint}/deployments/{deployment}"""
    endpoint, name = request.path_params["endpoint"], request.path_params["deployment"]
    try:
        spec = await run_in_threadpool(state.control.get_deployment, endpoint, name)
    except NotFound:
        # Being created with no_wait, or failed to be: what this replica knows of it.
        pending = state.hosts.pending(endpoint, name)
        if pending is None:
            raise
        return _json(pending)
    return _json({**spec.to_dict(), **state.hosts.health(endpoint, name)})


@operation(
    "GET",
    "/endpoints/{endpoint}/deployments/{deployment}/logs",
    "A deployment's own log: its scoring script's prints and logging, worker starts and "
    "exits, load errors (from every replica, oldest first)",
    tag="deployments",
    permission=Permission.READ,
    response=list[LogLine],
    query=(
        Query("lines", {"type": "integer", "minimum": 1, "maximum": 10000}, "default 100"),
        Query("after", {"type": "integer", "minimum": 0}, "only lines after this id (--follow)"),
    ),
)
async def deployment_logs(request: Request, state: GatewayState) -> Response:
    """GET /management/endpoints/{endpoint}/deployments/{deployment}/logs?lines=&after="""
    endpoint, name = request.path_params["endpoint"], request.path_params["deployment"]
    query = request.query_params
    lines = _number(query["lines"], "query parameter 'lines'") if "lines" in query else 100
    after = _number(query["after"], "query parameter 'after'") if "after" in query else 0
    if not 1 <= lines <= 10_000:
        raise SpecError("query parameter 'lines': between 1 and 10000")
    await run_in_threadpool(state.control.get_deployment, endpoint, name)
    await run_in_threadpool(state.hosts.logs.flush)  # this replica's newest lines too
    return _json(
        await run_in_threadpool(
            state.control.store.list_deployment_logs, endpoint, name, lines, after
        )
    )


@operation(
    "DELETE",
    "/endpoints/{endpoint}/deployments/{deployment}",
    "Delete a deployment (refused while it takes traffic)",
    tag="deployments",
    permission=Permission.OPERATE,
    ok_status=204,
    errors=(409,),
)
async def delete_deployment(request: Request, state: GatewayState) -> Response:
    """DELETE /management/endpoints/{endpoint}/deployments/{deployment}; refused while it
    takes traffic; in-flight requests finish before its instances close."""
    endpoint, name = request.path_params["endpoint"], request.path_params["deployment"]
    await _refuse_during_rollout(state, endpoint, "delete deployments")
    await _apply(state, lambda: state.control.delete_deployment(endpoint, name, _actor(request)))
    state.hosts.forget_failure(endpoint, name)
    return Response(status_code=204)


# -- rollouts ---------------------------------------------------------------------
@operation(
    "POST",
    "/endpoints/{endpoint}/rollouts",
    "Start a rollout",
    tag="rollouts",
    permission=Permission.OPERATE,
    body=RolloutPlan,
    response=Rollout,
    ok_status=201,
    errors=(409,),
)
async def start_rollout(request: Request, state: GatewayState) -> Response:
    """POST /management/endpoints/{endpoint}/rollouts: start a blue/green rollout"""
    plan = parse_spec(RolloutPlan, await _body(request), "request body")
    record = await state.rollouts.start(request.path_params["endpoint"], plan, _actor(request))
    return _json(record.to_dict(), 201)


@operation(
    "GET",
    "/endpoints/{endpoint}/rollouts",
    "Rollout history, newest first",
    tag="rollouts",
    permission=Permission.READ,
    response=list[Rollout],
)
async def list_rollouts(request: Request, state: GatewayState) -> Response:
    """GET /management/endpoints/{endpoint}/rollouts: history, newest first"""
    endpoint = request.path_params["endpoint"]
    await run_in_threadpool(state.control.get_endpoint, endpoint)
    records = await run_in_threadpool(state.control.store.list_rollouts, endpoint)
    return _json([r.to_dict() for r in records])


@operation(
    "GET",
    "/endpoints/{endpoint}/rollouts/status",
    "The latest rollout, live",
    tag="rollouts",
    permission=Permission.READ,
    response=RolloutStatus,
)
async def rollout_status(request: Request, state: GatewayState) -> Response:
    """GET /management/endpoints/{endpoint}/rollouts/status: the latest rollout, live"""
    return _json(await run_in_threadpool(state.rollouts.status, request.path_params["endpoint"]))


@operation(
    "POST",
    "/endpoints/{endpoint}/rollouts/abort",
    "Abort the rollout in progress: roll back now",
    tag="rollouts",
    permission=Permission.OPERATE,
    response=Rollout,
)
async def abort_rollout(request: Request, state: GatewayState) -> Response:
    """POST /management/endpoints/{endpoint}/rollouts/abort: roll back now"""
    record = await state.rollouts.abort(request.path_params["endpoint"], _actor(request))
    return _json(record.to_dict())


async def _refuse_during_rollout(state: GatewayState, endpoint: str, what: str) -> None:
    active = await run_in_threadpool(state.rollouts.active, endpoint)
    if active is not None:
        raise Conflict(
            f"rollout {active.id} is moving traffic on endpoint '{endpoint}'; {what} after it "
            "ends, or abort it first (servegate rollout abort)"
        )


# -- audit ------------------------------------------------------------------------
@operation(
    "GET",
    "/audit",
    "The audit log, newest first",
    tag="audit",
    permission=Permission.READ,
    response=list[AuditRecord],
    query=(
        Query("target", {"type": "string"}, "e.g. endpoints/demo (its deployments included)"),
        Query("limit", {"type": "integer", "minimum": 1, "maximum": 10000}),
    ),
)
async def list_audit(request: Request, state: GatewayState) -> Response:
    """GET /management/audit[?target=endpoints/e&limit=100]"""
    raw_limit = request.query_params.get("limit", "100")
    limit = _number(raw_limit, "query parameter 'limit'")
    if not 1 <= limit <= 10_000:
        raise SpecError(f"query parameter 'limit': must be 1-10000, got '{raw_limit}'")
    entries = await run_in_threadpool(
        state.control.store.list_audit, request.query_params.get("target"), limit
    )
    # A principal scoped to endpoints sees what happened to those only.
    entries = in_scope(request, entries, lambda e: _audited_endpoint(e.target))
    return _json([e.to_dict() for e in entries])


def _audited_endpoint(target: str) -> str:
    """The endpoint an audit target is about ("" for models, tokens, secrets)."""
    kind, _, rest = target.partition("/")
    if kind == "batch-endpoints" or kind == "endpoints":
        return rest.partition("/")[0]
    return ""


# -- live counters ----------------------------------------------------------------------
@operation(
    "GET",
    "/stats",
    "Every deployment's counters as they stand on this replica (the studio's live view)",
    tag="cluster",
    permission=Permission.READ,
    response={"type": "array", "items": {"type": "object"}},
)
async def live_stats(request: Request, state: GatewayState) -> Response:
    """Requests and errors so far, in flight, queued, instances, latency buckets: a
    client takes rates and quantiles from two of these a second or two apart."""

    def in_flight(endpoint: str, deployment: str) -> tuple[int, int, int]:
        route = state.hosts.snapshot.endpoints.get(endpoint)
        found = route.deployments.get(deployment) if route else None
        if found is None:
            return 0, 0, 0
        scheduler = found.scheduler
        return scheduler.in_flight, scheduler.queued, scheduler.instances_ready

    stats = state.metrics.snapshot(in_flight)
    return _json(in_scope(request, stats, lambda s: s["endpoint"]))


# -- the cluster ----------------------------------------------------------------------
@operation(
    "GET",
    "/status",
    "The cluster: live replicas, lease holders, the store",
    tag="cluster",
    permission=Permission.READ,
    response=ClusterStatus,
)
async def cluster_status(request: Request, state: GatewayState) -> Response:
    """GET /management/status: the live replicas (heartbeat), their versions and the last
    change each applied, and who holds which lease."""
    store = state.control.store
    replicas = await run_in_threadpool(store.list_replicas, REPLICA_TIMEOUT_S)
    leases = await run_in_threadpool(store.list_leases)
    latest = await run_in_threadpool(store.last_change_id)
    return _json(
        {
            "store": store.url,
            "this_replica": state.identity.id,
            "latest_change": latest,
            "replicas": [
                r.model_dump(exclude={"stats"}) | {"heartbeat_age_s": round(r.heartbeat_age_s, 3)}
                for r in replicas
            ],
            "leases": [
                lease.model_dump() | {"expires_in_s": round(lease.expires_in_s, 3)}
                for lease in leases
            ],
        }
    )
