"""HTTP client of the gateway's management API (what the CLI uses)."""

from __future__ import annotations

import functools
import glob
import os
import ssl
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from pydantic import TypeAdapter, ValidationError

from deploy.artifacts import tar_folder
from gateway.api_models import (
    AdminTokenCreated,
    AdminTokenView,
    AuditRecord,
    BatchDeployment,
    BatchEndpoint,
    ClusterStatus,
    CodeUpload,
    DataUpload,
    Deployment,
    EndpointView,
    Job,
    JobDetail,
    Keys,
    LogLine,
    ModelVersion,
    MonitorRunView,
    MonitorView,
    PrincipalView,
    Rollout,
    RolloutStatus,
    SecretView,
    Token,
)

DEFAULT_URL = "http://127.0.0.1:8000"


@functools.cache
def _adapter(answer: Any) -> TypeAdapter[Any]:
    return TypeAdapter(answer)


class ClientError(Exception):
    """The gateway refused a request; `str()` is its message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def find_admin_token(explicit: str | None, home: Path) -> str:
    """--token, else SERVEGATE_TOKEN, else $SERVEGATE_HOME/admin_token."""
    token = explicit or os.environ.get("SERVEGATE_TOKEN")
    if token:
        return token
    path = home / "admin_token"
    if not path.exists():
        raise ClientError(
            0,
            f"no admin token: pass --token, set SERVEGATE_TOKEN, or start the gateway with "
            f"--home {home} so it creates {path}",
        )
    return path.read_text().strip()


@dataclass(frozen=True)
class TlsClient:
    """How the CLI checks an https:// gateway (CA bundle; default: the system's CAs) and
    the certificate it presents for mutual TLS."""

    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    def httpx_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.ca_bundle or self.client_cert:
            context = ssl.create_default_context(cafile=self.ca_bundle)
            if self.client_cert:
                context.load_cert_chain(self.client_cert, self.client_key)
            options["verify"] = context
        return options


class AdminClient:
    def __init__(
        self,
        url: str,
        token: str,
        timeout_s: float = 300.0,
        trace: Callable[[str], None] | None = None,
        debug: bool = False,
        tls: TlsClient | None = None,
    ) -> None:
        """`trace`, when given, gets a line per call: method, URL, status, request id and
        time taken (the CLI's --verbose); with `debug`, the answer's headers too."""
        self.url = url.rstrip("/")
        self._trace, self._debug = trace, debug
        self._tls = (tls or TlsClient()).httpx_options()
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
            **self._tls,
        )

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, answer: Any = None, **kwargs: Any) -> Any:
        """Call the management API; with `answer` (the route's declared answer type, from
        `gateway.api_models`), check the answer against it, as the OpenAPI document says."""
        started = time.perf_counter()
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(0, f"cannot reach the gateway at {self.url}: {exc}") from None
        if self._trace is not None:
            request_id = response.headers.get("x-request-id") or response.headers.get(
                "x-ms-request-id", "-"
            )
            self._trace(
                f"{method} {response.request.url} -> {response.status_code} "
                f"({(time.perf_counter() - started) * 1000:.1f} ms, request id {request_id})"
            )
            if self._debug:
                for name, value in response.headers.items():
                    self._trace(f"  {name}: {value}")
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise ClientError(response.status_code, f"{response.status_code}: {message}")
        body = response.json() if response.content else None
        if answer is None or body is None:
            return body
        adapter = _adapter(answer)
        try:
            return adapter.dump_python(adapter.validate_python(body), mode="json", by_alias=True)
        except ValidationError as exc:
            raise ClientError(
                response.status_code,
                f"the gateway's answer to {method} {path} does not match the API: {exc}",
            ) from None

    # models
    def register_model(
        self,
        name: str,
        path: Path,
        version: int | None,
        runtime: str | None,
        description: str,
        tags: dict[str, str] | None = None,
        reuse_identical: bool = False,
        strict: bool = False,
    ) -> Any:
        """Upload a model file, or a model folder (an MLflow model, a Triton repository)
        as a tar.gz named with a trailing "/". With `reuse_identical`, the version asked
        for (or the latest) is answered when it holds the same content; with `strict`, a
        model saved by another version of its framework is refused."""
        params: dict[str, Any] = {"filename": path.name, "description": description}
        if version is not None:
            params["version"] = version
        if runtime:
            params["runtime"] = runtime
        if tags:
            params["tags"] = orjson.dumps(tags).decode()
        if reuse_identical:
            params["reuse_identical"] = "true"
        if strict:
            params["strict"] = "true"
        with tempfile.TemporaryDirectory() as tmp:
            if path.is_dir():
                params["filename"] = f"{path.name}/"
                path = tar_folder(path, Path(tmp) / "model.tar.gz")
            with path.open("rb") as f:
                return self.request(
                    "POST",
                    f"/management/models/{name}/versions",
                    ModelVersion,
                    params=params,
                    content=f,
                )

    def upload_data(self, local: str, progress: Callable[[int, int], None] | None = None) -> str:
        """Upload local batch inputs (a file, a folder or a glob) for a gateway on another
        host; the path the gateway reads them from. `progress(sent, total)` per chunk."""
        matches = [Path(p) for p in sorted(glob.glob(local))] if glob.has_magic(local) else []
        source = Path(local)
        if not matches and not source.exists():
            raise ClientError(0, f"--input: no file or folder at {local}")
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "data.tar.gz"
            if source.is_dir():
                tar_folder(source, archive)
            else:
                with tarfile.open(archive, "w:gz") as tar:
                    for path in matches or [source]:
                        tar.add(path, arcname=path.name)
            total = archive.stat().st_size

            def chunks() -> Iterator[bytes]:
                sent = 0
                with archive.open("rb") as f:
                    while chunk := f.read(1 << 20):
                        sent += len(chunk)
                        if progress is not None:
                            progress(sent, total)
                        yield chunk

            folder = str(
                self.request("POST", "/management/data", DataUpload, content=chunks())["path"]
            )
        # A single file is read from its folder by name; a folder or glob, as the folder.
        return f"{folder}/{source.name}" if source.is_file() else folder

    def upload_code(self, folder: Path) -> str:
        """Pack a scoring-script folder as tar.gz and upload it; the gateway's folder."""
        with tempfile.TemporaryDirectory() as tmp:
            archive = tar_folder(folder, Path(tmp) / "code.tar.gz")
            with archive.open("rb") as f:
                reply = self.request("POST", "/management/code", CodeUpload, content=f)
        return str(reply["code"])

    def list_models(self, name: str | None = None) -> Any:
        return self.request(
            "GET", "/management/models", list[ModelVersion], params={"name": name} if name else None
        )

    def show_model(self, name: str, version: int | None) -> Any:
        return self.request(
            "GET", f"/management/models/{name}/versions/{version or 'latest'}", ModelVersion
        )

    # endpoints
    def create_endpoint(self, spec: dict[str, Any]) -> Any:
        return self.request("POST", "/management/endpoints", EndpointView, json=spec)

    def show_endpoint(self, name: str) -> Any:
        return self.request("GET", f"/management/endpoints/{name}", EndpointView)

    def list_endpoints(self) -> Any:
        return self.request("GET", "/management/endpoints", list[EndpointView])

    def update_endpoint(self, name: str, changes: dict[str, Any]) -> Any:
        return self.request("PATCH", f"/management/endpoints/{name}", EndpointView, json=changes)

    def delete_endpoint(self, name: str) -> Any:
        return self.request("DELETE", f"/management/endpoints/{name}")

    def credentials(self, name: str) -> Any:
        return self.request("POST", f"/management/endpoints/{name}/listKeys", Keys | Token)

    def regenerate_key(self, name: str, key_type: str) -> Any:
        return self.request(
            "POST", f"/management/endpoints/{name}/regenerateKeys", Keys, json={"keyType": key_type}
        )

    # deployments
    def create_deployment(
        self,
        endpoint: str,
        spec: dict[str, Any],
        all_traffic: bool,
        mode: str | None = None,
        no_wait: bool = False,
    ) -> Any:
        """`mode`: "create" refuses an existing deployment, "update" a missing one;
        `no_wait`: answered at once, loaded in the background."""
        params = {"all_traffic": str(all_traffic).lower(), "no_wait": str(no_wait).lower()}
        if mode:
            params["mode"] = mode
        return self.request(
            "POST",
            f"/management/endpoints/{endpoint}/deployments",
            Deployment,
            json=spec,
            params=params,
        )

    def list_deployments(self, endpoint: str) -> Any:
        return self.request(
            "GET", f"/management/endpoints/{endpoint}/deployments", list[Deployment]
        )

    def patch_deployment(
        self, endpoint: str, name: str, patch: dict[str, Any], no_wait: bool = False
    ) -> Any:
        """Change some fields of a deployment (a merge patch of its stored spec)."""
        return self.request(
            "PATCH",
            f"/management/endpoints/{endpoint}/deployments/{name}",
            Deployment,
            params={"no_wait": str(no_wait).lower()},
            json=patch,
        )

    def show_deployment(self, endpoint: str, name: str) -> Any:
        return self.request(
            "GET", f"/management/endpoints/{endpoint}/deployments/{name}", Deployment
        )

    def deployment_logs(self, endpoint: str, name: str, lines: int, after: int = 0) -> Any:
        return self.request(
            "GET",
            f"/management/endpoints/{endpoint}/deployments/{name}/logs",
            list[LogLine],
            params={"lines": lines, "after": after},
        )

    def delete_deployment(self, endpoint: str, name: str) -> Any:
        return self.request("DELETE", f"/management/endpoints/{endpoint}/deployments/{name}")

    # rollouts
    def start_rollout(self, endpoint: str, plan: dict[str, Any]) -> Any:
        return self.request(
            "POST", f"/management/endpoints/{endpoint}/rollouts", Rollout, json=plan
        )

    def rollout_status(self, endpoint: str) -> Any:
        return self.request(
            "GET", f"/management/endpoints/{endpoint}/rollouts/status", RolloutStatus
        )

    def abort_rollout(self, endpoint: str) -> Any:
        return self.request("POST", f"/management/endpoints/{endpoint}/rollouts/abort", Rollout)

    def list_rollouts(self, endpoint: str) -> Any:
        return self.request("GET", f"/management/endpoints/{endpoint}/rollouts", list[Rollout])

    # batch
    def create_batch_endpoint(self, spec: dict[str, Any]) -> Any:
        return self.request("POST", "/management/batch/endpoints", BatchEndpoint, json=spec)

    def show_batch_endpoint(self, name: str) -> Any:
        return self.request("GET", f"/management/batch/endpoints/{name}", BatchEndpoint)

    def list_batch_endpoints(self) -> Any:
        return self.request("GET", "/management/batch/endpoints", list[BatchEndpoint])

    def update_batch_endpoint(self, name: str, changes: dict[str, Any]) -> Any:
        return self.request(
            "PATCH", f"/management/batch/endpoints/{name}", BatchEndpoint, json=changes
        )

    def delete_batch_endpoint(self, name: str) -> Any:
        return self.request("DELETE", f"/management/batch/endpoints/{name}")

    def create_batch_deployment(
        self,
        endpoint: str,
        spec: dict[str, Any],
        mode: str | None = None,
        set_default: bool = False,
    ) -> Any:
        params = {"set_default": str(set_default).lower()}
        if mode:
            params["mode"] = mode
        return self.request(
            "POST",
            f"/management/batch/endpoints/{endpoint}/deployments",
            BatchDeployment,
            json=spec,
            params=params,
        )

    def show_batch_deployment(self, endpoint: str, name: str) -> Any:
        return self.request(
            "GET", f"/management/batch/endpoints/{endpoint}/deployments/{name}", BatchDeployment
        )

    def list_batch_deployments(self, endpoint: str) -> Any:
        return self.request(
            "GET", f"/management/batch/endpoints/{endpoint}/deployments", list[BatchDeployment]
        )

    def delete_batch_deployment(self, endpoint: str, name: str) -> Any:
        return self.request("DELETE", f"/management/batch/endpoints/{endpoint}/deployments/{name}")

    def invoke_batch(self, body: dict[str, Any]) -> Any:
        return self.request("POST", "/management/batch/jobs", Job, json=body)

    def job(self, job_id: str) -> Any:
        return self.request("GET", f"/management/batch/jobs/{job_id}", JobDetail)

    def jobs(self, endpoint: str | None) -> Any:
        return self.request(
            "GET",
            "/management/batch/jobs",
            list[Job],
            params={"endpoint": endpoint} if endpoint else None,
        )

    def job_action(self, job_id: str, action: str) -> Any:
        return self.request("POST", f"/management/batch/jobs/{job_id}/{action}", JobDetail)

    def job_logs(self, job_id: str) -> str:
        response = self._http.get(f"/management/batch/jobs/{job_id}/logs")
        if response.status_code >= 400:
            raise ClientError(response.status_code, f"{response.status_code}: {response.text}")
        return response.text

    # audit
    def audit(self, target: str | None, limit: int) -> Any:
        params: dict[str, Any] = {"limit": limit}
        if target:
            params["target"] = target
        return self.request("GET", "/management/audit", list[AuditRecord], params=params)

    def status(self) -> Any:
        return self.request("GET", "/management/status", ClusterStatus)

    # model monitors
    def put_monitor(self, spec: dict[str, Any], mode: str) -> Any:
        return self.request(
            "POST", "/management/monitors", MonitorView, json=spec, params={"mode": mode}
        )

    def list_monitors(self) -> Any:
        return self.request("GET", "/management/monitors", list[MonitorView])

    def show_monitor(self, name: str) -> Any:
        return self.request("GET", f"/management/monitors/{name}", MonitorView)

    def delete_monitor(self, name: str) -> None:
        self.request("DELETE", f"/management/monitors/{name}")

    def run_monitor(self, name: str) -> Any:
        return self.request("POST", f"/management/monitors/{name}/run", MonitorRunView)

    def monitor_runs(self, name: str, limit: int) -> Any:
        return self.request(
            "GET",
            f"/management/monitors/{name}/runs",
            list[MonitorRunView],
            params={"limit": limit},
        )

    # access
    def whoami(self) -> Any:
        return self.request("GET", "/management/access/whoami", PrincipalView)

    def create_token(self, name: str, role: str, endpoints: str, expires: str | None) -> Any:
        body = {"name": name, "role": role, "endpoints": endpoints, "expires": expires}
        return self.request("POST", "/management/access/tokens", AdminTokenCreated, json=body)

    def list_tokens(self) -> Any:
        return self.request("GET", "/management/access/tokens", list[AdminTokenView])

    def revoke_token(self, name: str) -> None:
        self.request("DELETE", f"/management/access/tokens/{name}")

    def set_secret(self, name: str, value: str) -> None:
        self.request("PUT", f"/management/secrets/{name}", json={"value": value})

    def list_secrets(self) -> Any:
        return self.request("GET", "/management/secrets", list[SecretView])

    def delete_secret(self, name: str) -> None:
        self.request("DELETE", f"/management/secrets/{name}")

    def rotate_secrets(self) -> Any:
        return self.request("POST", "/management/secrets/rotate")

    # data plane
    def invoke(
        self, endpoint: str, body: bytes, key: str | None, deployment: str | None, v2: bool
    ) -> Any:
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if deployment:
            headers["azureml-model-deployment"] = deployment
        path = f"/v2/models/{endpoint}/infer" if v2 else f"/endpoints/{endpoint}/score"
        try:
            response = httpx.post(
                self.url + path, content=body, headers=headers, timeout=300, **self._tls
            )
        except httpx.TransportError as exc:
            raise ClientError(0, f"cannot reach the gateway at {self.url}: {exc}") from None
        if response.status_code >= 400:
            message = response.json().get("error", response.text) if response.content else ""
            raise ClientError(response.status_code, f"{response.status_code}: {message}")
        return response.json()
