"""Everything one running gateway holds, built at startup and put on app.state."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any

from deploy.artifacts import ArtifactStore
from deploy.control import ControlPlane
from deploy.credentials import Credentials, read_or_create_secret
from deploy.store import SqliteStore
from gateway.deployments import DeploymentHosts
from gateway.metrics import GatewayMetrics
from gateway.mirror import Mirror
from gateway.settings import GatewaySettings


@dataclass
class GatewayState:
    settings: GatewaySettings
    control: ControlPlane
    hosts: DeploymentHosts
    admin_token: str
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    mirror: Mirror = field(default_factory=Mirror)
    rollouts: Any = None  # gateway.rollouts.RolloutController, set by the app at startup
    rng: random.Random = field(default_factory=random.Random)
    ready: bool = False

    @classmethod
    def open(cls, settings: GatewaySettings) -> GatewayState:
        home = settings.home
        # The home holds the server secret, the admin token and the store: owner only.
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        control = ControlPlane(
            SqliteStore(settings.store_path), ArtifactStore(home), Credentials.from_home(home)
        )
        metrics = GatewayMetrics()
        hosts = DeploymentHosts(control, metrics)
        mirror = Mirror()
        metrics.watch(lambda: hosts.schedulers, lambda: mirror.stats, lambda: hosts.collectors)
        return cls(
            settings=settings,
            control=control,
            hosts=hosts,
            admin_token=read_or_create_secret(settings.admin_token_path),
            metrics=metrics,
            mirror=mirror,
        )

    @property
    def credentials(self) -> Credentials:
        return self.control.credentials
