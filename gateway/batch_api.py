"""Management API for batch endpoints, batch deployments and jobs (admin token), and
the job supervisor that resumes jobs whose runner died."""

from __future__ import annotations

import asyncio
import logging

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from batch.jobs import BatchJobs
from deploy.specs import BatchDeploymentSpec, BatchEndpointSpec, parse_spec
from gateway.cluster import every
from gateway.management import PREFIX, _actor, _body, _json, admin
from gateway.state import GatewayState

log = logging.getLogger(__name__)

#: One replica at a time supervises jobs: the holder of this lease.
SUPERVISOR_LEASE = "batch/supervisor"
SUPERVISOR_LEASE_TTL_S = 5.0
SUPERVISE_EVERY_S = 1.0


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


@admin
async def create_batch_endpoint(request: Request, state: GatewayState) -> Response:
    """POST /management/batch/endpoints"""
    spec = parse_spec(BatchEndpointSpec, await _body(request), "request body")
    return _json(await run_in_threadpool(_jobs(state).create_endpoint, spec, _actor(request)), 201)


@admin
async def list_batch_endpoints(request: Request, state: GatewayState) -> Response:
    """GET /management/batch/endpoints"""
    return _json(await run_in_threadpool(state.control.store.list_batch_endpoints))


@admin
async def create_batch_deployment(request: Request, state: GatewayState) -> Response:
    """POST /management/batch/endpoints/{endpoint}/deployments"""
    spec = parse_spec(
        BatchDeploymentSpec,
        await _body(request),
        "request body",
        {"endpoint_name": request.path_params["endpoint"]},
    )
    return _json(await run_in_threadpool(_jobs(state).put_deployment, spec, _actor(request)), 201)


@admin
async def list_batch_deployments(request: Request, state: GatewayState) -> Response:
    """GET /management/batch/endpoints/{endpoint}/deployments"""
    return _json(
        await run_in_threadpool(
            state.control.store.list_batch_deployments, request.path_params["endpoint"]
        )
    )


@admin
async def invoke(request: Request, state: GatewayState) -> Response:
    """POST /management/batch/jobs {endpoint, deployment?, input, input_type?, output,
    mini_batch_size?, instance_count?, error_threshold?, output_file_name?}"""
    body = await _body(request)
    overrides = {
        k: body.get(k)
        for k in (
            "mini_batch_size",
            "instance_count",
            "error_threshold",
            "output_file_name",
            "max_concurrency_per_instance",
        )
    }
    record = await run_in_threadpool(
        _jobs(state).invoke,
        str(body.get("endpoint", "")),
        body.get("deployment"),
        str(body.get("input", "")),
        body.get("input_type"),
        str(body.get("output", "")),
        overrides,
        _actor(request),
    )
    return _json(record, 201)


@admin
async def list_jobs(request: Request, state: GatewayState) -> Response:
    """GET /management/batch/jobs[?endpoint=]"""
    return _json(
        await run_in_threadpool(state.control.store.list_jobs, request.query_params.get("endpoint"))
    )


@admin
async def show_job(request: Request, state: GatewayState) -> Response:
    """GET /management/batch/jobs/{job}"""
    return _json(await run_in_threadpool(_jobs(state).get, request.path_params["job"]))


@admin
async def job_action(request: Request, state: GatewayState) -> Response:
    """POST /management/batch/jobs/{job}/{action}: cancel, resume or retry (failed only)"""
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
    return _json(await run_in_threadpool(handlers[action], job, _actor(request)))


@admin
async def job_logs(request: Request, state: GatewayState) -> Response:
    """GET /management/batch/jobs/{job}/logs"""
    text = await run_in_threadpool(_jobs(state).logs, request.path_params["job"])
    return Response(text, media_type="text/plain")


ROUTES = [
    Route(f"{PREFIX}/batch/endpoints", list_batch_endpoints, methods=["GET"]),
    Route(f"{PREFIX}/batch/endpoints", create_batch_endpoint, methods=["POST"]),
    Route(
        f"{PREFIX}/batch/endpoints/{{endpoint}}/deployments",
        list_batch_deployments,
        methods=["GET"],
    ),
    Route(
        f"{PREFIX}/batch/endpoints/{{endpoint}}/deployments",
        create_batch_deployment,
        methods=["POST"],
    ),
    Route(f"{PREFIX}/batch/jobs", list_jobs, methods=["GET"]),
    Route(f"{PREFIX}/batch/jobs", invoke, methods=["POST"]),
    Route(f"{PREFIX}/batch/jobs/{{job}}", show_job, methods=["GET"]),
    Route(f"{PREFIX}/batch/jobs/{{job}}/logs", job_logs, methods=["GET"]),
    Route(f"{PREFIX}/batch/jobs/{{job}}/{{action}}", job_action, methods=["POST"]),
]
