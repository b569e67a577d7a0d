"""The routing table: an immutable snapshot, rebuilt and swapped on every
control-plane change, so the hot path reads it without locks or a database.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from gateway.errors import AmbiguousModel, DeploymentUnavailable, EndpointNotFound
from runtimes.registry import RUNTIME_KINDS, RuntimeKind
from runtimes.scheduler import Scheduler

if TYPE_CHECKING:
    from gateway.collector import PayloadCollector
    from gateway.metrics import DeploymentMetrics
from runtimes.types import Signature


@dataclass(frozen=True)
class ServedModel:
    """A model as its own format names it (a Triton repository's model): the name and
    version clients ask for, its configuration, its outputs' class labels."""

    name: str
    version: int
    config: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class DeploymentRoute:
    endpoint: str
    name: str
    metrics: DeploymentMetrics
    scheduler: Scheduler
    model_name: str
    model_version: int
    runtime: str
    request_timeout_s: float
    collector: PayloadCollector | None = None
    #: the model's own name and version (a Triton model's), None for other formats
    served: ServedModel | None = None
    #: the runtime's kind, looked up once here rather than on every request
    kind: RuntimeKind = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", RUNTIME_KINDS[self.runtime])

    @property
    def signature(self) -> Signature:
        return self.scheduler.signature

    def names(self) -> tuple[str, ...]:
        """The model names it answers to besides its endpoint's: its own (Triton's)."""
        return (self.served.name,) if self.served is not None else ()

    def has_version(self, version: str) -> bool:
        """A version the Open Inference Protocol may ask for: the deployment's name, or the
        version its model is served at."""
        if version == self.name:
            return True
        return self.served is not None and version == str(self.served.version)


def unknown_model(name: str, version: str | None = None, detail: str = "") -> EndpointNotFound:
    """Triton's wording, which clients look for ("Request for unknown model"), and ours."""
    at = f" version {version}" if version else ""
    return EndpointNotFound(
        f"Request for unknown model: '{name}'{at} is not found" + (f": {detail}" if detail else "")
    )


@dataclass(frozen=True)
class EndpointRoute:
    name: str
    auth_mode: str
    #: SHA-256 hex digests of the primary and secondary keys.
    key_hashes: tuple[str, ...]
    deployments: Mapping[str, DeploymentRoute]
    #: Deployments that exist but failed to load: name -> reason.
    unavailable: Mapping[str, str]
    #: Live traffic as parallel tuples: names and cumulative percentages.
    traffic_names: tuple[str, ...] = ()
    traffic_cumulative: tuple[int, ...] = ()
    #: (deployment, percent) that receives copies of live requests, if any.
    mirror: tuple[str, int] | None = None
    #: lower-cased request header whose hash picks the deployment (sticky routing)
    sticky_header: str | None = None
    #: `auth_mode: aad_token`: the audiences accepted (empty: the gateway's own)
    token_audiences: tuple[str, ...] = ()
    #: per-caller rate limit: (requests per second, burst), or None
    rate_limit: tuple[float, int] | None = None

    @classmethod
    def build(
        cls,
        name: str,
        auth_mode: str,
        key_hashes: tuple[str, ...],
        traffic: Mapping[str, int],
        deployments: Mapping[str, DeploymentRoute],
        unavailable: Mapping[str, str],
        mirror_traffic: Mapping[str, int] | None = None,
        sticky_header: str | None = None,
        token_audiences: tuple[str, ...] = (),
        rate_limit: tuple[float, int] | None = None,
    ) -> EndpointRoute:
        names, cumulative, total = [], [], 0
        for deployment, percent in sorted(traffic.items()):
            if percent > 0:
                total += percent
                names.append(deployment)
                cumulative.append(total)
        return cls(
            name,
            auth_mode,
            key_hashes,
            MappingProxyType(dict(deployments)),
            MappingProxyType(dict(unavailable)),
            tuple(names),
            tuple(cumulative),
            next(((d, p) for d, p in (mirror_traffic or {}).items() if p > 0), None),
            sticky_header.lower() if sticky_header else None,
            token_audiences,
            rate_limit,
        )

    def deployment(self, name: str) -> DeploymentRoute:
        """The named deployment (header override or versions path), any traffic share."""
        route = self.deployments.get(name)
        if route is not None:
            return route
        if name in self.unavailable:
            raise DeploymentUnavailable(
                f"deployment '{name}' of endpoint '{self.name}' is not available: "
                f"{self.unavailable[name]}"
            )
        raise EndpointNotFound(f"deployment '{name}' does not exist in endpoint '{self.name}'")

    def pick(self, rng: random.Random, sticky_value: str | None = None) -> DeploymentRoute:
        """A deployment drawn by the traffic weights; with `sticky_value` (the sticky
        header's value) the draw is its hash, so one value keeps one deployment while
        the weights stay the same."""
        if not self.traffic_names:
            # Azure ML's wording for the same case.
            raise EndpointNotFound(
                f"endpoint '{self.name}' doesn't have any valid deployment with positive weight"
            )
        if sticky_value is not None:
            digest = hashlib.blake2b(sticky_value.encode(), digest_size=8).digest()
            fraction = int.from_bytes(digest, "big") / 2**64
        else:
            fraction = rng.random()
        draw = fraction * self.traffic_cumulative[-1]
        return self.deployment(
            self.traffic_names[bisect.bisect_right(self.traffic_cumulative, draw)]
        )

    def default(self) -> DeploymentRoute | None:
        """The deployment with the largest traffic share (for metadata), else any loaded one."""
        shares = {
            name: total - (self.traffic_cumulative[i - 1] if i else 0)
            for i, (name, total) in enumerate(
                zip(self.traffic_names, self.traffic_cumulative, strict=True)
            )
            if name in self.deployments
        }
        if shares:
            return self.deployments[max(shares, key=lambda name: shares[name])]
        return next(iter(self.deployments.values()), None)


@dataclass(frozen=True)
class RoutingSnapshot:
    endpoints: Mapping[str, EndpointRoute] = field(default_factory=dict)
    #: The store's change id this snapshot reflects.
    change_id: int = 0
    #: a model's own name (a Triton model's: `densenet_onnx`, `model_1`, which no endpoint
    #: name can be) -> the endpoints with a deployment serving it
    models: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, endpoints: Mapping[str, EndpointRoute], change_id: int) -> RoutingSnapshot:
        models: dict[str, list[str]] = {}
        for name, endpoint in endpoints.items():
            for route in endpoint.deployments.values():
                for model in route.names():
                    if name not in models.setdefault(model, []):
                        models[model].append(name)
        return cls(
            MappingProxyType(dict(endpoints)),
            change_id,
            MappingProxyType({m: tuple(sorted(e)) for m, e in models.items()}),
        )

    def endpoint(self, name: str) -> EndpointRoute:
        route = self.endpoints.get(name)
        if route is None:
            raise EndpointNotFound(f"endpoint '{name}' does not exist")
        return route

    def model(
        self, name: str, version: str | None, within: str | None = None
    ) -> tuple[EndpointRoute, str | None]:
        """What an Open Inference Protocol model name means: the endpoint, and the
        deployment the request is pinned to (None: the endpoint's traffic picks).

        `name` is an endpoint's name, or the name a deployment's model has (a Triton
        model's); under `/endpoints/{within}/v2/` it is looked up in that endpoint only.
        `version` names a deployment, or the version its model is served at."""
        if within is None:
            found = self.endpoints.get(name)
            if found is not None and version is None:
                return found, None  # the common case, first: an endpoint by its name
            endpoint = found if found is not None else self._holder(name, version)
        else:
            endpoint = self.endpoint(within)
        if name == endpoint.name:
            if version is None or version in endpoint.deployments:
                return endpoint, version
            matching = [d for d in endpoint.deployments.values() if d.has_version(version)]
        else:
            serving = [d for d in endpoint.deployments.values() if name in d.names()]
            if not serving:
                raise unknown_model(name, version)
            matching = [d for d in serving if version is None or d.has_version(version)]
            if version is None and len(matching) > 1:
                # Several deployments serve it (blue and green): the one with most traffic.
                default = endpoint.default()
                if default is not None and default in matching:
                    return endpoint, default.name
        if not matching:
            if version is not None and version in endpoint.unavailable:
                return endpoint, version  # `deployment()` says why it is unavailable
            known = ", ".join(sorted(endpoint.deployments)) or "none"
            raise unknown_model(
                name,
                version,
                f"deployment '{version}' does not exist in endpoint '{endpoint.name}' (its "
                f"deployments: {known})",
            )
        return endpoint, matching[0].name

    def _holder(self, name: str, version: str | None) -> EndpointRoute:
        """The endpoint named `name`, else the one endpoint serving a model of that name."""
        found = self.endpoints.get(name)
        if found is not None:
            return found
        holders = self.models.get(name, ())
        if not holders:
            raise unknown_model(
                name,
                version,
                f"no endpoint '{name}', and no deployment serves a model of that name",
            )
        if len(holders) > 1:
            raise AmbiguousModel(
                f"model '{name}' is served by the endpoints {', '.join(holders)}: ask one of "
                f"them at /endpoints/<endpoint>/v2/models/{name}"
            )
        return self.endpoints[holders[0]]
