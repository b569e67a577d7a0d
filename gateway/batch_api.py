"""Management API for batch endpoints, batch deployments and jobs (admin token), and
the job supervisor that resumes jobs whose runner died."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from batch.jobs import BatchJobs
from deploy.errors import NotFound, SpecError
from deploy.jobs import JobOrder
from deploy.roles import Permission
from deploy.specs import BatchDeploymentSpec, BatchEndpointSpec, parse_spec
from gateway.access import authorize_endpoint, in_scope, principal
from gateway.api import Query, operation
from gateway.api_models import (
    BatchDeployment,
    BatchEndpoint,
    BatchEndpointUpdate,
    Job,
    JobDetail,
    JobRequest,
)
from gateway.cluster import every
from gateway.management import (
    MODE,
    STRICT,
    _actor,
    _body,
    _flag,
    _json,
    _mode,
    _spec_from_body,
    _warned,
)
from gateway.state import GatewayState

log = logging.getLogger(__name__)

#: One replica at a time supervises jobs: the holder of this lease.
SUPERVISOR_LEASE = "batch/supervisor"
SUPERVISOR_LEASE_TTL_S = 10.0
SUPERVISE_EVERY_S = 2.0


def _jobs(state: GatewayState) -> BatchJobs:
    return BatchJobs(state.control, state.settings.home)


async def supervise_jobs(state: GatewayState) -> None:
    """Until cancelled: while this replica holds the supervisor lease, resume every job
    whose runner stopped renewing its lease (SIGKILL, its host gone)."""
    store, replica = state.control.store, state.identity.id
    jobs = _jobs(state)

    async def supervise_once() -> None:
        if await asyncio.to_thread(
            store.acquire_lease, SUPERVISOR_LEASE, replica, SUPERVISOR_LEASE_TTL_S
        ):
            resumed = await asyncio.to_thread(
                jobs.resume_orphans, f"batch supervisor (replica {replica})"
            )
            for job_id in resumed:
                log.warning("job %s: its runner stopped; resumed by %s", job_id, replica)

    await every(SUPERVISE_EVERY_S, supervise_once, "supervising batch jobs")


@operation(
    "POST",
    "/batch/endpoints",
    "Create a batch endpoint",
    tag="batch",
    permission=Permission.OPERATE,
    body=BatchEndpointSpec,
    response=BatchEndpoint,
    ok_status=201,
    errors=(409,),
    query=(STRICT,),
)
async def create_batch_endpoint(request: Request, state: GatewayState) -> Response:
    """POST /management/batch/endpoints[?strict=true]"""
    spec = await _spec_from_body(BatchEndpointSpec, request)
    authorize_endpoint(principal(request), spec.name)
    created = await run_in_threadpool(state.control.create_batch_endpoint, spec, _actor(request))
    return _json(_warned(created, spec.warnings()), 201)


@operation(
    "GET",
    "/batch/endpoints",
    "List batch endpoints",
    tag="batch",
    permission=Permission.READ,
    response=list[BatchEndpoint],
)
async def list_batch_endpoints(request: Request, state: GatewayState) -> Response:
    """GET /management/batch/endpoints"""
    found = await run_in_threadpool(state.control.store.list_batch_endpoints)
    return _json(in_scope(request, found, _name))


@operation(
    "POST",
    "/batch/endpoints/{endpoint}/deployments",
    "Create or update a batch deployment",
    tag="batch",
    permission=Permission.OPERATE,
    body=BatchDeploymentSpec,
    response=BatchDeployment,
    ok_status=201,
    errors=(409,),
    query=(
        STRICT,
        MODE,
        Query("set_default", {"type": "boolean"}, "make it the endpoint's default deployment"),
    ),
)
async def create_batch_deployment(request: Request, state: GatewayState) -> Response:
    """POST /management/batch/endpoints/{endpoint}/deployments[?strict=&mode=&set_default=]"""
    spec = await _spec_from_body(
        BatchDeploymentSpec, request, {"endpoint_name": request.path_params["endpoint"]}
    )
    stored = await run_in_threadpool(
        state.control.put_batch_deployment,
        spec,
        _actor(request),
        _mode(request),
        _flag(request, "set_default"),
    )
    return _json(_warned(stored, spec.warnings()), 201)


@operation(
    "GET",
    "/batch/endpoints/{endpoint}",
    "Show a batch endpoint",
    tag="batch",
    permission=Permission.READ,
    response=BatchEndpoint,
)
async def show_batch_endpoint(request: Request, state: GatewayState) -> Response:
    """GET /management/batch/endpoints/{endpoint}"""
    endpoint = request.path_params["endpoint"]
    return _json(await run_in_threadpool(state.control.get_batch_endpoint, endpoint))


@operation(
    "PATCH",
    "/batch/endpoints/{endpoint}",
    "Update a batch endpoint (description, tags, default deployment)",
    tag="batch",
    permission=Permission.OPERATE,
    body=BatchEndpointUpdate,
    response=BatchEndpoint,
)
async def update_batch_endpoint(request: Request, state: GatewayState) -> Response:
    """PATCH /management/batch/endpoints/{endpoint} {description?, tags?, defaults?}"""
    changes = await _body(request)
    allowed = list(BatchEndpointUpdate.model_fields)
    for field in changes:
        if field not in allowed:
            raise SpecError(
                f"request body: field '{field}': cannot be updated; allowed fields: "
                f"{', '.join(allowed)}"
            )
    return _json(
        await run_in_threadpool(
            state.control.update_batch_endpoint,
            request.path_params["endpoint"],
            changes,
            _actor(request),
        )
    )


@operation(
    "DELETE",
    "/batch/endpoints/{endpoint}",
    "Delete a batch endpoint and its deployments",
    tag="batch",
    permission=Permission.OPERATE,
    ok_status=204,
    errors=(409,),
)
async def delete_batch_endpoint(request: Request, state: GatewayState) -> Response:
    """DELETE /management/batch/endpoints/{endpoint} (409 while it has unfinished jobs)"""
    await run_in_threadpool(
        state.control.delete_batch_endpoint, request.path_params["endpoint"], _actor(request)
    )
    return Response(status_code=204)


@operation(
    "GET",
    "/batch/endpoints/{endpoint}/deployments/{deployment}",
    "Show a batch deployment",
    tag="batch",
    permission=Permission.READ,
    response=BatchDeployment,
)
async def show_batch_deployment(request: Request, state: GatewayState) -> Response:
    """GET /management/batch/endpoints/{endpoint}/deployments/{deployment}"""
    params = request.path_params
    return _json(
        await run_in_threadpool(
            state.control.get_batch_deployment, params["endpoint"], params["deployment"]
        )
    )


@operation(
    "DELETE",
    "/batch/endpoints/{endpoint}/deployments/{deployment}",
    "Delete a batch deployment",
    tag="batch",
    permission=Permission.OPERATE,
    ok_status=204,
    errors=(409,),
)
async def delete_batch_deployment(request: Request, state: GatewayState) -> Response:
    """DELETE /management/batch/endpoints/{endpoint}/deployments/{deployment} (409 for the
    default deployment while others remain, or while it has unfinished jobs)"""
    params = request.path_params
    await run_in_threadpool(
        state.control.delete_batch_deployment,
        params["endpoint"],
        params["deployment"],
        _actor(request),
    )
    return Response(status_code=204)


@operation(
    "GET",
    "/batch/endpoints/{endpoint}/deployments",
    "List a batch endpoint's deployments",
    tag="batch",
    permission=Permission.READ,
    response=list[BatchDeployment],
)
async def list_batch_deployments(request: Request, state: GatewayState) -> Response:
    """GET /management/batch/endpoints/{endpoint}/deployments"""
    endpoint = request.path_params["endpoint"]

    def listed() -> list[BatchDeploymentSpec]:
        if state.control.store.get_batch_endpoint(endpoint) is None:
            raise NotFound(f"batch endpoint '{endpoint}' does not exist")
        return state.control.store.list_batch_deployments(endpoint)

    return _json(await run_in_threadpool(listed))


@operation(
    "POST",
    "/batch/jobs",
    "Start a batch job",
    tag="batch",
    permission=Permission.OPERATE,
    body=JobRequest,
    response=Job,
    ok_status=201,
    errors=(404, 409),
)
async def invoke(request: Request, state: GatewayState) -> Response:
    """POST /management/batch/jobs {endpoint, deployment?, input, input_type?, output,
    mini_batch_size?, instance_count?, error_threshold?, output_file_name?}"""
    asked = parse_spec(JobRequest, await _body(request), "request body")
    overrides = {
        k: getattr(asked, k)
        for k in (
            "mini_batch_size",
            "instance_count",
            "error_threshold",
            "output_file_name",
            "max_concurrency_per_instance",
        )
    }
    authorize_endpoint(principal(request), asked.endpoint)
    order = JobOrder(
        asked.endpoint, asked.deployment, asked.input, asked.input_type, asked.output, overrides
    )
    record = await run_in_threadpool(_jobs(state).invoke, order, _actor(request))
    return _json(record, 201)


@operation(
    "GET",
    "/batch/jobs",
    "List batch jobs, newest first",
    tag="batch",
    permission=Permission.READ,
    response=list[Job],
    query=(Query("endpoint", {"type": "string"}),),
)
async def list_jobs(request: Request, state: GatewayState) -> Response:
    """GET /management/batch/jobs[?endpoint=]"""
    found = await run_in_threadpool(state.control.jobs.recent, request.query_params.get("endpoint"))
    return _json(in_scope(request, found, _endpoint))


@operation(
    "GET",
    "/batch/jobs/{job}",
    "A job: state, mini-batches, errors",
    tag="batch",
    permission=Permission.READ,
    response=JobDetail,
)
async def show_job(request: Request, state: GatewayState) -> Response:
    """GET /management/batch/jobs/{job}"""
    await _job_in_scope(request, state)
    return _json(await run_in_threadpool(_jobs(state).get, request.path_params["job"]))


@operation(
    "POST",
    "/batch/jobs/{job}/{action}",
    "cancel, resume (after a crash) or retry (only the failed mini-batches)",
    tag="batch",
    permission=Permission.OPERATE,
    response=JobDetail,
    errors=(400, 409),
)
async def job_action(request: Request, state: GatewayState) -> Response:
    """POST /management/batch/jobs/{job}/{action}: cancel, resume or retry (failed only)"""
    await _job_in_scope(request, state)
    jobs, job, action = _jobs(state), request.path_params["job"], request.path_params["action"]
    handlers = {"cancel": jobs.cancel, "resume": jobs.resume, "retry": jobs.retry}
    if action not in handlers:
        return _json(
            {
                "error": f"unknown action '{action}'; use cancel, resume or retry",
                "code": "not_found",
            },
            404,
        )
    await run_in_threadpool(handlers[action], job, _actor(request))
    # The job as `show` gives it, whichever the action: the declared answer.
    return _json(await run_in_threadpool(jobs.get, job))


@operation(
    "GET",
    "/batch/jobs/{job}/logs",
    "The job's log",
    tag="batch",
    permission=Permission.READ,
    response={"type": "string"},
    media_type="text/plain",
)
async def job_logs(request: Request, state: GatewayState) -> Response:
    """GET /management/batch/jobs/{job}/logs"""
    await _job_in_scope(request, state)
    text = await run_in_threadpool(_jobs(state).logs, request.path_params["job"])
    return Response(text, media_type="text/plain")


def _name(spec: Any) -> str:
    return str(spec.name)


def _endpoint(job: Any) -> str:
    return str(job.endpoint)


async def _job_in_scope(request: Request, state: GatewayState) -> None:
    """Refuse a principal scoped to other endpoints than the job's."""
    if principal(request).endpoints:
        job = await run_in_threadpool(state.control.store.get_job, request.path_params["job"])
        if job is not None:
            authorize_endpoint(principal(request), job.endpoint)
