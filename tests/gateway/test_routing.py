"""The routing snapshot: weighted choice (a seeded RNG), header override, errors."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from gateway.errors import DeploymentUnavailable, EndpointNotFound
from gateway.routing import DeploymentRoute, EndpointRoute, RoutingSnapshot


def _route(name: str) -> DeploymentRoute:
    unused: Any = object()  # routing never touches metrics or the scheduler
    return DeploymentRoute("ep", name, unused, unused, "m", 1, "onnx", 5.0)


def _endpoint(traffic: dict[str, int], unavailable: dict[str, str] | None = None) -> EndpointRoute:
    deployments = {n: _route(n) for n in traffic if n not in (unavailable or {})}
    return EndpointRoute.build("ep", "key", (), traffic, deployments, unavailable or {})


def test_weighted_choice_matches_the_traffic_map() -> None:
    endpoint = _endpoint({"blue": 90, "green": 10, "red": 0})
    rng = random.Random(1234)
    n = 20_000
    counts = Counter(endpoint.pick(rng).name for _ in range(n))
    assert set(counts) == {"blue", "green"}
    # Binomial sd for 10% of 20k is ~42; 4 sd tolerance.
    assert abs(counts["green"] - 2000) < 170


def test_no_positive_weight_is_azures_404() -> None:
    with pytest.raises(
        EndpointNotFound, match="doesn't have any valid deployment with positive weight"
    ):
        _endpoint({"blue": 0}).pick(random.Random(0))


def test_named_deployment_any_weight_and_unavailable() -> None:
    endpoint = _endpoint({"blue": 100, "green": 0, "broken": 0}, {"broken": "bad file"})
    assert endpoint.deployment("green").name == "green"
    with pytest.raises(DeploymentUnavailable, match="deployment 'broken'.*bad file"):
        endpoint.deployment("broken")
    with pytest.raises(EndpointNotFound, match="deployment 'nope' does not exist"):
        endpoint.deployment("nope")
    assert endpoint.default().name == "blue"  # type: ignore[union-attr]


def test_snapshot_lookup() -> None:
    snapshot = RoutingSnapshot({"ep": _endpoint({"blue": 100})})
    assert snapshot.endpoint("ep").name == "ep"
    with pytest.raises(EndpointNotFound, match="endpoint 'other' does not exist"):
        snapshot.endpoint("other")
