"""Everything one running gateway holds, built at startup and put on app.state."""

from __future__ import annotations

import functools
import logging
import os
import random
from dataclasses import dataclass, field
from typing import Any

from deploy.artifacts import sweep_stale
from deploy.changes import ChangeFeed
from deploy.control import ControlPlane
from deploy.credentials import Credentials
from deploy.home import ControlPlaneSettings, open_control_plane
from deploy.records import ReplicaIdentity
from gateway.auth import admit
from gateway.cluster import Heartbeat, published_counters, replica_here
from gateway.deployments import DeploymentHosts
from gateway.metrics import GatewayMetrics
from gateway.mirror import Mirror
from gateway.rate_limit import RateLimiter
from gateway.routing import EndpointRoute
from gateway.settings import GatewaySettings

log = logging.getLogger("servegate")


@dataclass
class GatewayState:
    settings: GatewaySettings
    control: ControlPlane
    hosts: DeploymentHosts
    identity: ReplicaIdentity
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    mirror: Mirror = field(default_factory=Mirror)
    rollouts: Any = None  # gateway.rollouts.RolloutController, set by the app at startup
    batch_supervisor: Any = None  # gateway.batch_api.JobSupervisor, set at startup
    rng: random.Random = field(default_factory=random.Random)
    ready: bool = False
    #: an identity provider whose tokens the management API (and `auth_mode: aad_token`
    #: endpoints) accept; gateway.oidc.OidcVerifier, set at startup when configured
    oidc: Any = None
    #: endpoint -> its callers' buckets (kept across routing snapshots)
    rate_limiters: dict[str, RateLimiter] = field(default_factory=dict)
    #: the management API's, per principal (`--management-rate-limit`)
    management_limiter: RateLimiter | None = None

    async def admit(self, endpoint: EndpointRoute, authorization: str | None, address: str) -> None:
        """Authenticate a scoring request (any protocol) and count it against its caller's
        rate-limit bucket (gateway.auth.admit)."""
        limit = functools.partial(self.limit_rate, endpoint) if endpoint.rate_limit else None
        await admit(endpoint, authorization, self.credentials, self.oidc, address, limit)

    def limit_rate(self, endpoint: EndpointRoute, caller: str) -> None:
        """Count a scoring request against its caller's bucket (429 when empty)."""
        assert endpoint.rate_limit is not None
        limiter = self.rate_limiters.get(endpoint.name)
        if limiter is None or (limiter.rate, limiter.burst) != endpoint.rate_limit:
            limiter = RateLimiter(*endpoint.rate_limit, f"endpoint '{endpoint.name}'")
            self.rate_limiters[endpoint.name] = limiter
        limiter.take(caller)

    @classmethod
    def open(cls, settings: GatewaySettings) -> GatewayState:
        home = settings.home
        # The home holds the server secret, the admin token and the store: owner only.
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        control = open_control_plane(ControlPlaneSettings.resolve(home))
        control.ensure_owner_token(settings.admin_token_path)
        # What uploads cut short by a crash left behind (they are never finished).
        swept = sweep_stale(home / "incoming") + control.artifacts.sweep_stale()
        if swept:
            log.info("removed %d temporary upload files left by an earlier run", swept)
        metrics = GatewayMetrics()
        identity = replica_here(settings.host, settings.port)
        hosts = DeploymentHosts(control, metrics, identity.id)
        mirror = Mirror()
        metrics.watch(lambda: hosts.schedulers, lambda: mirror.stats, lambda: hosts.collectors)
        oidc = None
        if settings.oidc is not None:
            from gateway.oidc import OidcVerifier

            oidc = OidcVerifier(settings.oidc)
        return cls(
            settings=settings,
            control=control,
            hosts=hosts,
            identity=identity,
            metrics=metrics,
            mirror=mirror,
            oidc=oidc,
            management_limiter=(
                RateLimiter(*settings.management_rate_limit, "the management API")
                if settings.management_rate_limit
                else None
            ),
        )

    @property
    def credentials(self) -> Credentials:
        return self.control.credentials

    def heartbeat(self) -> Heartbeat:
        return Heartbeat(
            self.control.store,
            self.identity,
            lambda: self.hosts.snapshot.change_id,
            lambda: published_counters(self.metrics, self.mirror.stats),
        )

    async def apply_changes(self, change_id: int) -> None:
        """The change feed's subscriber: rebuild the routing snapshot (loading and warming
        new deployments first)."""
        async with self.hosts.lock:
            if self.hosts.snapshot.change_id == change_id:
                return  # this replica made the change and already swapped
            await self.hosts.sync()

    def change_feed(self) -> ChangeFeed:
        return ChangeFeed(self.control.store)
