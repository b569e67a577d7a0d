"""Fuzzing, bounded to fit CI: schemathesis over the gateway's own OpenAPI document
(the management API with an owner and with a reader token, the data plane with an
endpoint key) and a hypothesis property over scoring bodies (JSON and binary framing).
Never a 5xx, every status documented for its route, every error JSON with `error`, and
the event loop never stalls: a health probe running beside the fuzz (in a process of its
own) answers within 8x its slowest answer before the fuzz (and at least 200 ms)."""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Gateway, start_gateway

#: examples per operation: enough to reach every route's validation, small enough for CI
EXAMPLES = 12
ENDPOINT = "fuzzed"


@pytest.fixture(scope="module")
def fuzz_gateway(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Gateway]:
    """A gateway of its own: the fuzz may create, change and delete anything."""
    tmp = tmp_path_factory.mktemp("fuzz")
    gw = start_gateway(tmp / "home")
    gw.create_endpoint(tmp, ENDPOINT)
    gw.deploy(tmp, ENDPOINT, "blue", model_dir / "classifier.onnx")
    yield gw
    gw.stop()


#: A stall is an answer this many times slower than the slowest of the same probes before
#: the fuzz (and at least STALL_FLOOR_S): a loaded machine slows both alike.
STALL_RATIO = 8.0
STALL_FLOOR_S = 0.2
BASELINE_S = 1.0


def _probe(url: str, stop: Any, slowest: Any, probes: Any, started: Any, baseline: Any) -> None:
    with httpx.Client(timeout=5) as client:
        client.get(url)  # connect first: the probe measures answers, not connects

        def answer_s() -> float:
            began = time.perf_counter()
            assert client.get(url).status_code == 200
            return time.perf_counter() - began

        # The same probes with nothing else going on: this machine's slowest answer now.
        until = time.perf_counter() + BASELINE_S
        while time.perf_counter() < until and not stop.wait(0.02):
            baseline.value = max(baseline.value, answer_s())
        started.set()
        while not stop.wait(0.02):
            slowest.value = max(slowest.value, answer_s())
            probes.value += 1


class StallWatch:
    """Probes /v2/health/live every 20 ms from a process of its own (a thread here would
    also measure its waits for this process's GIL): first for a second alone (the
    baseline), then while the test runs; the slowest answer it saw."""

    def __init__(self, url: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._slowest = context.Value("d", 0.0)
        self._baseline = context.Value("d", 0.0)
        self._probes = context.Value("i", 0)
        self._started = context.Event()
        self._process = context.Process(
            target=_probe,
            args=(
                url,
                self._stop,
                self._slowest,
                self._probes,
                self._started,
                self._baseline,
            ),
            daemon=True,
        )

    @property
    def slowest(self) -> float:
        """The slowest answer; refuses to answer if the watch saw (next to) nothing."""
        assert self._probes.value >= 5, f"the stall watch probed only {self._probes.value} times"
        return float(self._slowest.value)

    def assert_no_stall(self) -> None:
        """No answer slower than STALL_RATIO x the baseline's slowest (at least STALL_FLOOR_S)."""
        limit = max(STALL_FLOOR_S, STALL_RATIO * float(self._baseline.value))
        assert self.slowest < limit, (
            f"a health probe took {self.slowest:.3f} s; before the test the slowest took "
            f"{self._baseline.value:.3f} s (limit {limit:.3f} s)"
        )

    def __enter__(self) -> StallWatch:
        self._process.start()
        # The fuzz starts once the probe runs (a spawned interpreter takes a moment).
        assert self._started.wait(30), "the stall watch did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join(10)


def _check(label: str, documented: dict[str, Any], response: httpx.Response) -> list[str]:
    problems = []
    status = response.status_code
    if status >= 500:
        problems.append(f"{label}: {status} {response.text[:200]}")
    if str(status) not in documented and "default" not in documented:
        problems.append(f"{label}: status {status} not documented ({sorted(documented)})")
    if status >= 400 and response.headers.get("content-type", "").startswith("application/json"):
        try:
            body = response.json()
        except ValueError:
            body = None
        if not (isinstance(body, dict) and isinstance(body.get("error"), str)):
            problems.append(f"{label}: error body without 'error': {response.text[:200]}")
    return problems


def _fuzz(
    gw: Gateway, token: str, wanted: Callable[[str], bool], path_parameters: dict[str, str]
) -> tuple[int, list[str]]:
    doc = httpx.get(f"{gw.url}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(doc)
    problems: list[str] = []
    calls = 0
    with httpx.Client(base_url=gw.url, timeout=60) as client:
        for result in schema.get_all_operations():
            operation = result.ok()
            if wanted(operation.path):
                calls += _fuzz_operation(client, operation, token, path_parameters, problems)
    return calls, problems


def _fuzz_operation(
    client: httpx.Client,
    operation: Any,
    token: str,
    path_parameters: dict[str, str],
    problems: list[str],
) -> int:
    """Call one operation with EXAMPLES generated requests; how many were sent."""
    fixed = {k: v for k, v in path_parameters.items() if "{" + k + "}" in operation.path}
    documented = operation.definition.raw["responses"]
    sent = 0

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(path_parameters=fixed or None))
    def run(case: Any) -> None:
        nonlocal sent
        kwargs = case.as_transport_kwargs(base_url=str(client.base_url))
        headers = {**(kwargs.get("headers") or {}), "Authorization": f"Bearer {token}"}
        body = kwargs.get("data")
        response = client.request(
            kwargs["method"],
            kwargs["url"],
            headers=headers,
            params=kwargs.get("params"),
            content=body if isinstance(body, (bytes, str)) else None,
            json=kwargs.get("json"),
        )
        sent += 1
        problems.extend(_check(operation.label, documented, response))

    run()
    return sent


def _management(path: str) -> bool:
    # Rotation re-encrypts every secret: harmless, but it would be fuzzed with no body.
    return path.startswith("/management/") and path != "/management/secrets/rotate"


def test_data_plane_fuzzed_with_an_endpoint_key(fuzz_gateway: Gateway) -> None:
    gw = fuzz_gateway
    _, out = gw.cli("endpoint", "get-credentials", "-n", ENDPOINT)
    key = json.loads(out)["primaryKey"]
    with StallWatch(f"{gw.url}/v2/health/live") as watch:
        calls, problems = _fuzz(
            gw,
            key,
            lambda path: not path.startswith("/management/"),
            {
                "endpoint": ENDPOINT,
                "deployment": "blue",
                "model": ENDPOINT,
                "version": "blue",
                "within": ENDPOINT,
            },
        )
    assert calls >= 50, calls
    assert not problems, "\n".join(problems[:20])
    watch.assert_no_stall()


_JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=10), children, max_size=6)
    ),
    max_leaves=40,
)
_INPUTS = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["input", "x", ""]) | st.text(max_size=8),
        "shape": st.lists(st.integers(-2, 2**40), max_size=4),
        "datatype": st.sampled_from(["FP32", "FP64", "INT64", "BYTES", "BOOL", "fp32", "X"]),
        "data": _JSON,
        "parameters": st.dictionaries(st.text(max_size=20), _JSON, max_size=3),
    },
)
_ROWS = st.lists(
    st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=4, max_size=4),
    min_size=1,
    max_size=4,
)
_BODIES = st.one_of(
    # well-formed requests with any values (NaN and infinities too)
    _ROWS.map(lambda rows: ("json", json.dumps({"input_data": rows}).encode(), None)),
    _ROWS.map(
        lambda rows: (
            "json",
            json.dumps(
                {
                    "inputs": [
                        {"name": "input", "shape": [len(rows), 4], "datatype": "FP32", "data": rows}
                    ]
                }
            ).encode(),
            None,
        )
    ),
    st.binary(max_size=512).map(lambda b: ("raw", b, None)),
    _JSON.map(lambda doc: ("json", json.dumps(doc).encode(), None)),
    st.fixed_dictionaries({"input_data": _JSON}).map(
        lambda d: ("json", json.dumps(d).encode(), None)
    ),
    st.fixed_dictionaries({"inputs": st.lists(_INPUTS, max_size=3)}).map(
        lambda d: ("json", json.dumps(d).encode(), None)
    ),
    # the binary tensor extension: a JSON header of the given length, then raw bytes
    st.tuples(
        st.fixed_dictionaries(
            {"inputs": st.lists(_INPUTS, max_size=2)},
            optional={"outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=8)}))},
        ),
        st.binary(max_size=256),
        st.integers(-5, 1024),
    ).map(lambda t: ("binary", json.dumps(t[0]).encode() + t[1], len(json.dumps(t[0])) + t[2] % 7)),
)


def test_scoring_bodies_never_fail_the_server(fuzz_gateway: Gateway) -> None:
    gw = fuzz_gateway
    _, out = gw.cli("endpoint", "get-credentials", "-n", ENDPOINT)
    auth = {"Authorization": f"Bearer {json.loads(out)['primaryKey']}"}
    seen: dict[int, int] = {}
    with (
        httpx.Client(base_url=gw.url, timeout=30) as client,
        StallWatch(f"{gw.url}/v2/health/live") as watch,
    ):

        @settings(max_examples=300, deadline=None, database=None, derandomize=True)
        @given(body=_BODIES, v2=st.booleans())
        def score(body: tuple[str, bytes, int | None], v2: bool) -> None:
            kind, content, header_length = body
            headers = {**auth, "Content-Type": "application/json"}
            if kind == "binary":
                headers["Content-Type"] = "application/octet-stream"
                headers["Inference-Header-Content-Length"] = str(header_length)
            path = f"/v2/models/{ENDPOINT}/infer" if v2 else f"/endpoints/{ENDPOINT}/score"
            response = client.post(path, content=content, headers=headers)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, response.text
            if response.status_code >= 400:
                assert isinstance(response.json()["error"], str)

        score()
    watch.assert_no_stall()
    assert 400 in seen and 200 in seen, seen  # it reached both validation and the model


@pytest.mark.parametrize("role", ["owner", "reader"])
def test_management_api_fuzzed(fuzz_gateway: Gateway, role: str) -> None:
    """Last in this module: it may create, change and delete anything in its gateway."""
    gw = fuzz_gateway
    token = gw.admin_token
    if role != "owner":
        _, out = gw.cli(
            "access", "token", "create", "-n", f"fuzz-{role}", "--role", role, "-o", "json"
        )
        token = json.loads(out)["token"]
    with StallWatch(f"{gw.url}/v2/health/live") as watch:
        calls, problems = _fuzz(gw, token, _management, {})
    assert calls >= 200, calls
    assert not problems, "\n".join(problems[:20])
    watch.assert_no_stall()
