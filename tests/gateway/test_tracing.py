"""OpenTelemetry traces, exported over OTLP/HTTP to a receiver the test runs (it decodes
the protobuf export requests with OpenTelemetry's own definitions): a scoring request's
server span continues the client's `traceparent`, with admission, queue and inference
children; a remote runtime's call carries the trace on (the remote, here the same
gateway, makes its span in the same trace), and so does a call to a Ray Serve replica (a
real local Ray cluster; the replica exports its own span); a mirrored copy is a span of
the trace."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from tests.conftest import RAY_ENV, Gateway, RayCluster, start_gateway, wait_for, write_yaml
from tests.gateway.test_ray import RAY

# Runs once, on the SQLite pass: what it checks does not depend on the store.
pytestmark = pytest.mark.store_independent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
ROW = {"input_data": [[1.0, 2.0, 3.0, 4.0]]}


class Receiver:
    """An OTLP/HTTP trace receiver on loopback: the spans it was sent."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        spans = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                export = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                for resource in export.resource_spans:
                    service = {a.key: a.value.string_value for a in resource.resource.attributes}
                    for scope in resource.scope_spans:
                        for span in scope.spans:
                            spans.append(
                                {
                                    "service": service.get("service.name"),
                                    "name": span.name,
                                    "trace": span.trace_id.hex(),
                                    "id": span.span_id.hex(),
                                    "parent": span.parent_span_id.hex(),
                                    "start": span.start_time_unix_nano,
                                    "end": span.end_time_unix_nano,
                                    "attributes": {
                                        a.key: a.value.string_value or a.value.int_value
                                        for a in span.attributes
                                    },
                                }
                            )
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def of_trace(self, trace: str, wanted: int, timeout_s: float = 15) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [s for s in self.spans if s["trace"] == trace]
            if len(found) >= wanted:
                return found
            time.sleep(0.1)
        return [s for s in self.spans if s["trace"] == trace]


def exporting_to(receiver: Receiver, service: str) -> dict[str, str]:
    """The OTEL_* variables that send a gateway's spans to `receiver`, promptly."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": service,
    }


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Receiver]]:
    receiver = Receiver()
    gw = start_gateway(
        tmp_path_factory.mktemp("traced") / "home",
        env_extra=exporting_to(receiver, "servegate-test"),
    )
    yield gw, receiver
    gw.stop()
    receiver.close()


def test_a_request_span_with_its_phases_continues_the_client_trace(
    traced: tuple[Gateway, Receiver], tmp_path: Path, model_dir: Path
) -> None:
    gw, receiver = traced
    gw.create_endpoint(tmp_path, "inner", "auth_mode: none\n")
    gw.deploy(tmp_path, "inner", "blue", model_dir / "classifier.onnx")
    gw.create_endpoint(tmp_path, "front", "auth_mode: none\n")
    spec = write_yaml(
        tmp_path / "proxy.yml",
        f"name: proxy\nendpoint_name: front\nurl: {gw.url}/v2/models/inner/versions/blue\n",
    )
    gw.cli("deployment", "create", "-f", str(spec), "--all-traffic")
    r = httpx.post(
        f"{gw.url}/endpoints/front/score",
        json=ROW,
        headers={"traceparent": f"00-{TRACE}-{PARENT}-01", "x-request-id": "traced-1"},
    )
    assert r.status_code == 200, r.text
    spans = receiver.of_trace(TRACE, 8)
    by_name = {s["name"]: s for s in spans}
    front = by_name["POST /endpoints/{endpoint}/score"]
    assert front["parent"] == PARENT and front["service"] == "servegate-test"
    assert front["attributes"]["servegate.endpoint"] == "front"
    assert front["attributes"]["servegate.deployment"] == "proxy"
    assert front["attributes"]["servegate.request_id"] == "traced-1"
    assert front["attributes"]["http.response.status_code"] == 200
    phases = [
        s
        for s in spans
        if s["parent"] == front["id"] and s["name"] in ("admission", "queue", "inference")
    ]
    assert sorted(s["name"] for s in phases) == ["admission", "inference", "queue"]
    # The phases follow each other inside the request.
    order = sorted(phases, key=lambda s: s["start"])
    assert [s["name"] for s in order] == ["admission", "queue", "inference"]
    assert all(front["start"] <= s["start"] <= s["end"] <= front["end"] for s in phases)
    inference = by_name["inference"]
    assert inference["attributes"]["servegate.batch.requests"] >= 1
    # The remote runtime (this same gateway, endpoint `inner`) joined the trace.
    inner = next(s for s in spans if s["name"] == "POST /v2/models/{endpoint}/infer")
    assert inner["parent"] == front["id"]
    assert inner["attributes"]["servegate.endpoint"] == "inner"
    assert inner["attributes"]["servegate.request_id"] == "traced-1"


def test_a_mirrored_copy_is_a_span_of_the_trace(
    traced: tuple[Gateway, Receiver], tmp_path: Path, model_dir: Path
) -> None:
    gw, receiver = traced
    gw.create_endpoint(tmp_path, "mirrored", "auth_mode: none\n")
    gw.deploy(tmp_path, "mirrored", "blue", model_dir / "classifier.onnx")
    gw.deploy(tmp_path, "mirrored", "green", model_dir / "classifier-v2.onnx", all_traffic=False)
    gw.cli("endpoint", "update", "-n", "mirrored", "--mirror-traffic", "green=50")
    traces = [f"{i:032x}" for i in range(1, 21)]
    for trace in traces:
        r = httpx.post(
            f"{gw.url}/endpoints/mirrored/score",
            json=ROW,
            headers={"traceparent": f"00-{trace}-{PARENT}-01"},
        )
        assert r.status_code == 200
    time.sleep(1.0)
    mirrors = [s for s in receiver.spans if s["name"] == "mirror" and s["trace"] in traces]
    assert mirrors, "no mirror span in 20 requests at 50%"
    for mirror in mirrors:
        request = next(
            s
            for s in receiver.spans
            if s["trace"] == mirror["trace"] and s["name"].startswith("POST ")
        )
        assert mirror["parent"] == request["id"]
        assert mirror["attributes"]["servegate.deployment"] == "green"


def test_a_ray_replica_joins_the_request_trace(
    ray_cluster: RayCluster, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    receiver = Receiver()
    gw = start_gateway(
        tmp_path / "home",
        env_extra={
            **RAY_ENV,
            "SERVEGATE_RAY_ADDRESS": ray_cluster.address,
            **exporting_to(receiver, "servegate-ray-test"),
        },
    )
    trace = "5bf92f3577b34da6a3ce929d0e0e4737"
    try:
        gw.create_endpoint(tmp_path, unique_name, "auth_mode: none\n")
        # Batching in the replica: the call goes through Serve's batch method.
        batching = "batching: {max_batch_size: 4, max_batch_delay_ms: 5}\n"
        gw.deploy(
            tmp_path, unique_name, "blue", model_dir / "classifier.onnx", extra_yaml=RAY + batching
        )
        r = httpx.post(
            f"{gw.url}/endpoints/{unique_name}/score",
            json=ROW,
            headers={"traceparent": f"00-{trace}-{PARENT}-01", "x-request-id": "ray-traced"},
        )
        assert r.status_code == 200, r.text
        spans = receiver.of_trace(trace, 5, timeout_s=30)
        front = next(s for s in spans if s["name"] == "POST /endpoints/{endpoint}/score")
        replica = next(s for s in spans if s["name"] == "replica inference")
        # Made in the replica's process, exported there with the gateway's settings.
        assert replica["parent"] == front["id"] and replica["service"] == "servegate-ray-test"
        assert replica["attributes"]["servegate.request_id"] == "ray-traced"
        assert front["start"] <= replica["start"] <= replica["end"] <= front["end"]
    finally:
        gw.cli("endpoint", "delete", "--name", unique_name, "--yes", ok=False)
        # The application goes a few seconds after the delete; its replica would hold
        # the shared cluster's CPU.
        wait_for(lambda: not ray_cluster.processes_named("ServeReplica", unique_name), 60)
        gw.stop()
        receiver.close()
