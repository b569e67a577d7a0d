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
from typing import TYPE_CHECKING

from gateway.errors import DeploymentUnavailable, EndpointNotFound
from runtimes.registry import RUNTIME_KINDS, RuntimeKind
from runtimes.scheduler import Scheduler

if TYPE_CHECKING:
    from gateway.collector import PayloadCollector
    from gateway.metrics import DeploymentMetrics
from runtimes.types import Signature


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
    #: the runtime's kind, looked up once here rather than on every request
    kind: RuntimeKind = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", RUNTIME_KINDS[self.runtime])

    @property
    def signature(self) -> Signature:
        return self.scheduler.signature


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

    def endpoint(self, name: str) -> EndpointRoute:
        route = self.endpoints.get(name)
        if route is None:
            raise EndpointNotFound(f"endpoint '{name}' does not exist")
        return route
