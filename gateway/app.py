"""The ASGI app: wiring only. `create_app(settings)` for tests and `serve` for the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from batch.errors import BatchError
from batch.roots import ROOTS_ENV
from deploy.errors import ControlPlaneError
from deploy.home import ControlPlaneSettings, open_control_plane
from gateway import (  # noqa: F401 - they declare routes
    access_api,
    api,
    batch_api,
    demo,
    logs,
    management,
    metadata,
    monitors,
    scoring,
    tracing,
)
from gateway.connections import ConnectionLimits, guarded_protocol, raise_fd_limit
from gateway.errors import GatewayError, error_response
from gateway.openapi import openapi_document
from gateway.rollouts import RolloutController
from gateway.settings import GatewaySettings
from gateway.state import GatewayState
from runtimes.errors import InferenceError, Overloaded
from runtimes.resources import cpu_reading

log = logging.getLogger("servegate")
LOOPBACK = ("127.0.0.1", "::1", "localhost")
STUDIO = Path(__file__).parent / "studio"


async def _known_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, Overloaded):
        return error_response(exc, {"Retry-After": str(exc.retry_after_s)})
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    body = {
        "error": f"{exc.detail}: {request.method} {request.url.path}",
        "code": codes.get(exc.status_code, "http_error"),
    }
    return Response(
        orjson.dumps(body), exc.status_code, headers=exc.headers, media_type="application/json"
    )


async def _openapi(request: Request) -> Response:
    return Response(orjson.dumps(openapi_document()), media_type="application/json")


async def _studio_sign_in(request: Request) -> Response:
    """Public: what the studio's sign-in page offers (no secret in it)."""
    state: GatewayState = request.app.state.gateway
    oidc = await state.oidc.browser_sign_in() if state.oidc is not None else None
    return Response(orjson.dumps({"oidc": oidc}), media_type="application/json")


def create_app(settings: GatewaySettings) -> scoring.FastScoring:
    """The gateway as an ASGI app: the scoring fast path in front of starlette."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state = GatewayState.open(settings)
        app.state.gateway = state
        opened[:] = [state]
        if settings.demo:
            await run_in_threadpool(demo.ensure_demo, state.control)
        await state.hosts.sync()
        # Move everything loaded so far (modules, models, specs) out of the garbage
        # collector's sight: full collections then walk only request-time objects
        # instead of stalling every request for milliseconds.
        gc.collect()
        gc.freeze()
        state.rollouts = RolloutController(state)
        heartbeat = state.heartbeat()
        await heartbeat.beat()  # listed in `servegate status` before it takes traffic
        background = [
            asyncio.create_task(heartbeat.run(), name="heartbeat"),
            asyncio.create_task(
                state.change_feed().run(
                    lambda: state.hosts.snapshot.change_id, state.apply_changes
                ),
                name="change-feed",
            ),
            asyncio.create_task(state.rollouts.supervise(), name="rollout-leases"),
            asyncio.create_task(batch_api.supervise_jobs(state), name="job-supervisor"),
            asyncio.create_task(state.hosts.logs.run(), name="deployment-logs"),
            asyncio.create_task(logs.ACCESS_LOG.flush_every(), name="access-log"),
            asyncio.create_task(state.metrics.refresh_jobs(state.control.jobs), name="job-metrics"),
            asyncio.create_task(monitors.supervise(state), name="monitors"),
            asyncio.create_task(
                management.finish_orphaned_intents(state), name="deployment-intents"
            ),
        ]
        grpc_server = None
        if settings.grpc_port:
            from gateway import grpc_service

            grpc_server = await grpc_service.start(state, settings.host, settings.grpc_port)
        state.ready = True
        log.info(
            "servegate is ready at %s; the studio: %s/studio/; the owner's admin token is in "
            "%s (the CLI reads it from there)",
            settings.url,
            settings.url,
            settings.admin_token_path,
        )
        if settings.demo:
            keys = await run_in_threadpool(state.control.list_keys, demo.DEMO_ENDPOINT)
            print(
                "servegate demo endpoint is ready. Score it with:\n\n  "
                + demo.curl_command(settings.host, settings.port, keys["primaryKey"])
                + f"\n\nThe studio: {settings.url}/studio/ (sign in with the admin token in "
                f"{settings.admin_token_path})\n",
                flush=True,
            )
        try:
            yield
        finally:
            state.ready = False
            if grpc_server is not None:  # in-flight calls get the HTTP side's grace
                await grpc_server.stop(settings.graceful_shutdown_s)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await state.rollouts.close()
            with contextlib.suppress(Exception):  # a store that is down: nothing to release
                await heartbeat.leave()
            await state.mirror.close()
            tracing.shutdown()
            await state.hosts.close()
            state.control.store.close()

    # The scoring path's reference to the state: starlette's `app.state.gateway` is a
    # Python-level __getattr__, measurable on every request.
    opened: list[GatewayState] = []

    def state() -> GatewayState:
        return opened[0]

    score, infer = scoring.endpoints(state)
    app = Starlette(
        routes=[
            *scoring.routes(score, infer),
            *metadata.ROUTES,
            *api.routes(),
            Route("/openapi.json", _openapi),
            Route("/studio/sign-in", _studio_sign_in),
            # The studio: static files; it reads and acts through the management API.
            Mount("/studio", app=StaticFiles(directory=STUDIO, html=True), name="studio"),
        ],
        exception_handlers={
            HTTPException: _http_error,
            GatewayError: _known_error,
            InferenceError: _known_error,
            ControlPlaneError: _known_error,
            BatchError: _known_error,
            Exception: _known_error,
        },
        lifespan=lifespan,
    )

    def provider_origins() -> tuple[str, ...]:
        oidc = getattr(app.state, "gateway", None) and app.state.gateway.oidc
        return oidc.browser_origins() if oidc is not None else ()

    return scoring.FastScoring(app, score, infer, settings.access_log, provider_origins)


class PortInUse(Exception):
    """The gateway's port is taken (another gateway runs there?)."""


def check_port(host: str, port: int, option: str) -> None:
    """Refuse at once a port another process listens on, before any deployment is loaded
    (uvicorn binds only after the app has started)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror}") from None
            raise PortInUse(
                f"port {port} on {host} is in use (a gateway already runs on {port}?): give "
                f"another with {option}"
            ) from None


def serve(settings: GatewaySettings, log_level: str = "info") -> None:
    """Run the gateway under uvicorn until SIGINT/SIGTERM, then drain in-flight requests.
    Raises PortInUse or StoreUnavailable (before anything starts) when its port is taken
    or the store cannot be opened."""
    check_port(settings.host, settings.port, "--port")
    if settings.grpc_port:
        check_port(settings.host, settings.grpc_port, "--grpc-port")
    logs.configure(log_level, settings.log_format)
    tracing.configure()
    # A store that cannot be opened (corrupt, unreachable, no secret): one clear error
    # before anything starts, no traceback.
    open_control_plane(ControlPlaneSettings.resolve(settings.home)).store.close()
    if not os.environ.get(ROOTS_ENV) and settings.host not in LOOPBACK:
        log.warning(
            "batch jobs may read and write any path this gateway can reach, and it listens "
            "on %s: limit them with --batch-roots (SERVEGATE_BATCH_ROOTS)",
            settings.host,
        )
    nofile = raise_fd_limit()
    limits = ConnectionLimits(
        settings.max_header_bytes, settings.header_timeout_s, settings.max_connections
    )
    log.info(
        "usable CPUs: %s; open files limit %d, max connections %d",
        cpu_reading().describe(),
        nofile,
        limits.resolved_max_connections(),
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        log_config=None,  # uvicorn's loggers go through ours (format, request ids)
        timeout_graceful_shutdown=int(settings.graceful_shutdown_s),
        access_log=False,
        # The gateway never uses client addresses; X-Forwarded-* parsing cost 1.5%
        # of a scoring request in the profile.
        proxy_headers=False,
        http=guarded_protocol(limits),
        **tls_options(settings),
    )


def tls_options(settings: GatewaySettings) -> dict[str, Any]:
    """uvicorn's TLS settings: a certificate and key, and with CA certificates, mutual
    TLS (a client without a certificate they signed is refused in the handshake)."""
    if settings.ssl_certfile is None:
        return {}
    options: dict[str, Any] = {
        "ssl_certfile": str(settings.ssl_certfile),
        "ssl_keyfile": str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
    }
    if settings.ssl_ca_certs is not None:
        options["ssl_ca_certs"] = str(settings.ssl_ca_certs)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options
