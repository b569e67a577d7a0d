"""Instances on a Ray cluster (`host: ray`): each deployment is a Ray Serve application
with `instance_count` replicas, called through its deployment handle.

servegate stays the front door (auth, routing, traffic, admission, deadlines, metrics);
Ray runs the compute. Tensors cross as numpy arrays in Ray's own serialisation, never
as JSON. The application's name carries a hash of what it runs, so a changed
deployment is a new application that is healthy before the gateway routes to it, and
the old one is deleted once drained: an update fails no request. Gateway replicas that
share a Ray cluster share the application of one deployment version.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtimes import telemetry
from runtimes.base import RuntimeConfig
from runtimes.errors import (
    InferenceError,
    InferenceFailed,
    InstanceFailed,
    MissingExtra,
    ModelLoadError,
)
from runtimes.types import Signature

log = logging.getLogger(__name__)

RAY_ADDRESS_ENV = "SERVEGATE_RAY_ADDRESS"
#: Ray Serve's application names are cluster-wide: ours start with this.
APP_PREFIX = "servegate-"
#: What a replica asks the cluster for when the deployment says nothing (Serve's default).
DEFAULT_ASK = {"num_cpus": 1}
#: How long a new application may take to have its replicas running (scheduled, model
#: loaded) before its deployment fails; SERVEGATE_RAY_START_TIMEOUT_S overrides it.
START_TIMEOUT_S = 120.0
START_TIMEOUT_ENV = "SERVEGATE_RAY_START_TIMEOUT_S"
#: How long a replaced application keeps serving after the gateway stopped routing to
#: it: other gateway replicas see the change within a second and must not lose requests.
DELETE_AFTER_S = 10.0

_connect_lock = threading.Lock()
_connected: str | None = None
#: How often the cluster's reachability is checked, once connected.
WATCH_S = 1.0


class ClusterWatch:
    """Whether the cluster this process drives still answers, checked every WATCH_S in a
    daemon thread by connecting to its GCS port. A call through a deployment handle to a
    cluster that went away waits for replicas that will never come (a 408 after the
    request's deadline, then 429s as the queue fills); with the watch, calls fail at once
    with a 503 that names the cluster, and readiness reports it."""

    def __init__(self, address: str, gcs: str) -> None:
        self.address = address
        self.problem: str | None = None
        host, _, port = gcs.rpartition(":")
        self._gcs = (host, int(port))
        thread = threading.Thread(target=self._loop, name="servegate-ray-watch", daemon=True)
        thread.start()

    def _loop(self) -> None:
        while True:
            try:
                socket.create_connection(self._gcs, REACH_TIMEOUT_S).close()
                problem = None
            except OSError as exc:
                problem = (
                    f"the Ray cluster at '{self.address}' is unreachable "
                    f"(its GCS at {self._gcs[0]}:{self._gcs[1]}: {exc.strerror or exc})"
                )
            if problem != self.problem:
                (log.error if problem else log.warning)(
                    "%s", problem or f"the Ray cluster at '{self.address}' is reachable again"
                )
                self.problem = problem
            time.sleep(WATCH_S)


_watch: ClusterWatch | None = None


def cluster_problem() -> str | None:
    """Why the connected Ray cluster cannot serve now (None: it answers, or none is used)."""
    return _watch.problem if _watch is not None else None


@dataclass(frozen=True)
class RayAutoscaling:
    """`scale_settings: target_utilization` for Ray Serve's own autoscaler."""

    min_replicas: int
    max_replicas: int
    initial_replicas: int
    #: in-flight requests per replica Ray Serve aims at, as a share of what it takes
    target_utilization: float
    polling_interval_s: float
    scale_down_delay_s: float

    def config(self, ongoing: int) -> dict[str, Any]:
        """Ray Serve's `autoscaling_config` for replicas taking `ongoing` requests each."""
        return {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "initial_replicas": self.initial_replicas,
            "target_ongoing_requests": max(0.1, ongoing * self.target_utilization),
            "metrics_interval_s": self.polling_interval_s,
            # Averaged over one polling interval and acted on at the next, as the
            # gateway's own autoscaler does.
            "look_back_period_s": self.polling_interval_s,
            "upscale_delay_s": self.polling_interval_s,
            "downscale_delay_s": self.scale_down_delay_s,
            "downscale_to_zero_delay_s": self.scale_down_delay_s,
        }


@dataclass(frozen=True)
class RayOptions:
    """The Ray side of a `host: ray` deployment."""

    address: str | None = None
    #: Ray Serve's `ray_actor_options` (num_cpus, num_gpus, memory, resources)
    actor_options: Mapping[str, Any] = field(default_factory=dict)
    #: requests coalesced in each replica (1: no batching) and how long one waits
    max_batch_size: int = 1
    batch_wait_s: float = 0.0
    #: replicas added and removed by Ray Serve (None: `instance_count`, fixed)
    autoscaling: RayAutoscaling | None = None


def cluster_address(options: RayOptions) -> str:
    return options.address or os.environ.get(RAY_ADDRESS_ENV) or "auto"


def connect(address: str) -> None:
    """Join the Ray cluster at `address` as a driver (once per process). A process can
    be a driver of one cluster only: a deployment naming another is refused."""
    global _connected, _watch
    try:
        import ray
    except ImportError as exc:
        raise MissingExtra("host 'ray' needs Ray: pip install 'servegate[ray]'") from exc
    with _connect_lock:
        if _connected is not None:
            if _connected != address and ray.is_initialized():
                raise ModelLoadError(
                    f"this gateway is connected to the Ray cluster at '{_connected}'; "
                    f"a deployment cannot use another one ('{address}')"
                )
            if ray.is_initialized():
                return
        _check_reachable(address)
        try:
            ray.init(
                address=address,
                namespace="servegate",
                logging_level=logging.WARNING,
                log_to_driver=False,
                configure_logging=False,
            )
        except Exception as exc:  # ConnectionError, or Ray's own on a bad address
            raise ModelLoadError(
                f"cannot reach the Ray cluster at '{address}' (ray_address or "
                f"{RAY_ADDRESS_ENV}): {exc}"
            ) from None
        _connected = address
        _watch = ClusterWatch(address, ray.get_runtime_context().gcs_address)


#: How long a cluster's address may take to accept a connection before it counts as down.
REACH_TIMEOUT_S = 5.0


def _check_reachable(address: str) -> None:
    """Fail fast when nothing listens at a `host:port` address: `ray.init` would retry
    for ever. (`auto` and `ray://` addresses are left to Ray, which fails fast on them.)"""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ModelLoadError(f"ray_address '{address}' is not host:port, auto or ray://host:port")
    try:
        socket.create_connection((host, int(port)), REACH_TIMEOUT_S).close()
    except OSError as exc:
        raise ModelLoadError(
            f"cannot reach the Ray cluster at '{address}' (ray_address or {RAY_ADDRESS_ENV}): "
            f"{exc.strerror or exc}"
        ) from None


def _application_name(name: str, fingerprint: bytes) -> str:
    digest = hashlib.sha256(fingerprint).hexdigest()[:10]
    safe = "".join(c if c.isalnum() or c == "-" else "-" for c in name)
    return f"{APP_PREFIX}{safe}-{digest}"


class RayServeHost:
    """`InstanceHost` over one Ray Serve application."""

    def __init__(
        self,
        name: str,
        app: str,
        handle: Any,
        signature: Signature,
        slots: int,
        batched: bool,
        replicas: int,
    ) -> None:
        self.name = name
        self.app = app
        self._handle = handle
        self._signature = signature
        self._slots = list(range(slots))
        self._batched = batched
        self._replicas = replicas

    @classmethod
    def deploy(
        cls,
        name: str,
        runtime: str,
        config: RuntimeConfig,
        instance_count: int,
        calls_per_instance: int,
        options: RayOptions,
        fingerprint: bytes,
    ) -> RayServeHost:
        """Deploy (or find, when another gateway replica deployed it) the application and
        wait until its replicas are healthy (blocking)."""
        address = cluster_address(options)
        connect(address)
        from ray import serve

        from runtimes.ray_replica import ServegateReplica, pack

        app = _application_name(name, fingerprint)
        model_files, code_files = pack(config)
        batched = options.max_batch_size > 1
        # Each replica takes what the scheduler sends it: its calls, or enough requests
        # to fill a batch.
        ongoing = options.max_batch_size * 2 if batched else calls_per_instance
        scale = options.autoscaling
        replicas: dict[str, Any] = (
            {"autoscaling_config": scale.config(ongoing)}
            if scale
            else {"num_replicas": instance_count}
        )
        deployment = serve.deployment(ServegateReplica).options(  # type: ignore[attr-defined]
            name="model",
            **replicas,
            max_ongoing_requests=ongoing,
            ray_actor_options=dict(options.actor_options) or DEFAULT_ASK,
        )
        bound = deployment.bind(
            runtime,
            config,
            model_files,
            code_files,
            options.max_batch_size,
            options.batch_wait_s,
            telemetry.otel_environment(),
        )
        try:
            # Serve's HTTP proxies are not used (the gateway calls handles) and would take
            # port 8000 on every node; a cluster whose Serve runs already keeps its own.
            serve.start(proxy_location="Disabled")
            (handle,) = serve.run_many(
                [serve.RunTarget(bound, name=app, route_prefix=None)],
                wait_for_applications_running=False,
            )
            _wait_running(app, start_timeout_s(), dict(options.actor_options) or DEFAULT_ASK)
            signature = Signature.from_dict(handle.signature.remote().result())
        except Exception as exc:
            _delete_later(app, 0.0)
            raise ModelLoadError(
                f"deployment {name} did not start on the Ray cluster at '{address}': {_cause(exc)}"
            ) from None
        slots = (scale.max_replicas if scale else instance_count) * ongoing
        log.info(
            "deployment %s: Ray Serve application %s, %d replica(s)%s",
            name,
            app,
            instance_count,
            f", autoscaled {scale.min_replicas}-{scale.max_replicas}" if scale else "",
        )
        return cls(name, app, handle, signature, slots, batched, instance_count)

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def slots(self) -> Sequence[int]:
        return self._slots

    @property
    def instance_count(self) -> int:
        """The application's replicas, as last seen (Ray replaces one that dies; with
        autoscaling, Ray Serve adds and removes them)."""
        return self._replicas

    def running_replicas(self) -> int:
        """Ask Ray Serve how many of the application's replicas run now (blocking)."""
        from ray import serve
        from ray.serve._private.common import ReplicaState

        status = serve.status().applications.get(self.app)
        if status is not None:
            self._replicas = sum(
                deployment.replica_states.get(ReplicaState.RUNNING, 0)
                for deployment in status.deployments.values()
            )
        return self._replicas

    @property
    def problem(self) -> str | None:
        """Why this deployment cannot serve now (its cluster is unreachable), or None."""
        return cluster_problem()

    def _check_cluster(self) -> None:
        problem = cluster_problem()
        if problem is not None:
            raise InstanceFailed(problem)

    async def run(
        self, instance: int, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        self._check_cluster()
        names = list(output_names) if output_names else None
        serving = telemetry.current_call()
        if self._batched:
            call = self._handle.infer_batched.remote((dict(inputs), names, serving))
        else:
            call = self._handle.infer.remote(dict(inputs), names, serving)
        result = await self._await(call)
        if isinstance(result, Exception):  # one request of a batch failed on its own
            raise _as_runtime_error(result)
        outputs: dict[str, np.ndarray] = result
        return outputs

    async def run_raw(self, instance: int, body: bytes) -> bytes:
        self._check_cluster()
        call = self._handle.score.remote(body, telemetry.current_call())
        result: bytes = await self._await(call)
        return result

    async def _await(self, call: Any) -> Any:
        try:
            return await call
        except asyncio.CancelledError:
            call.cancel()
            raise
        except Exception as exc:
            raise _as_runtime_error(exc) from None

    async def close(self) -> None:
        """Delete the application after DELETE_AFTER_S (other gateway replicas may
        still route to it for a moment)."""
        _delete_later(self.app, DELETE_AFTER_S)


def start_timeout_s() -> float:
    return float(os.environ.get(START_TIMEOUT_ENV) or START_TIMEOUT_S)


def _wait_running(app: str, timeout_s: float, asks: Mapping[str, Any]) -> None:
    """Until the application runs; raise when it failed or is still deploying after
    `timeout_s` (its replicas did not fit the cluster, or their model did not load)."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications.get(app)
        state = str(status.status.value) if status else "NOT_STARTED"
        if state == "RUNNING":
            return
        message = (status.message if status else "") or ""
        if state in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise ModelLoadError(f"Ray Serve reports {state}: {message}")
        if time.monotonic() > deadline:
            raise ModelLoadError(
                f"its replicas were not running after {timeout_s:g} s ({START_TIMEOUT_ENV}); "
                f"each asks the cluster for {dict(asks)}. {message}".strip()
            )
        time.sleep(0.2)


def _delete_later(app: str, delay_s: float) -> None:
    def delete() -> None:
        try:
            from ray import serve

            serve.delete(app, _blocking=False)
        except Exception as exc:
            log.warning("could not delete Ray Serve application %s: %s", app, exc)

    timer = threading.Timer(delay_s, delete)
    timer.daemon = True
    timer.start()


def _cause(exc: BaseException) -> str:
    """What went wrong, in one line: a Ray error's cause (its last line: Ray prefixes a
    traceback), or our own message whole."""
    cause = getattr(exc, "cause", None)
    target = cause if isinstance(cause, BaseException) else exc
    text = " ".join(str(target).split()) if isinstance(target, InferenceError) else ""
    lines = str(target).strip().splitlines()
    return text or (lines[-1] if lines else type(target).__name__)


def _as_runtime_error(exc: BaseException) -> InferenceError:
    """A replica's error as the gateway's: the model's own errors keep their kind; a
    replica that died or could not be reached is a 503 naming Ray."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, InferenceError):
        return cause
    if isinstance(exc, InferenceError):
        return exc
    import ray.exceptions

    if isinstance(exc, ray.exceptions.RayTaskError):
        return InferenceFailed(_cause(exc))
    return InstanceFailed(f"Ray replica unavailable ({type(exc).__name__}: {_cause(exc)})")
