"""HTTP client of the gateway's management API (what the CLI uses)."""

from __future__ import annotations

import getpass
import os
import socket
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


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


def _actor() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:  # getuser fails without a passwd entry (some containers)
        return "unknown"


class AdminClient:
    def __init__(self, url: str, token: str, timeout_s: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}", "x-servegate-actor": _actor()},
            timeout=timeout_s,
        )

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(0, f"cannot reach the gateway at {self.url}: {exc}") from None
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise ClientError(response.status_code, f"{response.status_code}: {message}")
        return response.json() if response.content else None

    # models
    def register_model(
        self, name: str, path: Path, version: int | None, runtime: str | None, description: str
    ) -> Any:
        params: dict[str, Any] = {"filename": path.name, "description": description}
        if version is not None:
            params["version"] = version
        if runtime:
            params["runtime"] = runtime
        with path.open("rb") as f:
            return self.request(
                "POST", f"/management/models/{name}/versions", params=params, content=f
            )

    def upload_code(self, folder: Path) -> str:
        """Pack a scoring-script folder as tar.gz and upload it; the gateway's folder."""
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "code.tar.gz"
            with tarfile.open(archive, "w:gz") as tar:
                for path in sorted(folder.rglob("*")):
                    if "__pycache__" not in path.parts:
                        tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
            with archive.open("rb") as f:
                reply = self.request("POST", "/management/code", content=f)
        return str(reply["code"])

    def list_models(self, name: str | None = None) -> Any:
        return self.request("GET", "/management/models", params={"name": name} if name else None)

    def show_model(self, name: str, version: int | None) -> Any:
        return self.request("GET", f"/management/models/{name}/versions/{version or 'latest'}")

    # endpoints
    def create_endpoint(self, spec: dict[str, Any]) -> Any:
        return self.request("POST", "/management/endpoints", json=spec)

    def show_endpoint(self, name: str) -> Any:
        return self.request("GET", f"/management/endpoints/{name}")

    def list_endpoints(self) -> Any:
        return self.request("GET", "/management/endpoints")

    def update_endpoint(self, name: str, changes: dict[str, Any]) -> Any:
        return self.request("PATCH", f"/management/endpoints/{name}", json=changes)

    def delete_endpoint(self, name: str) -> Any:
        return self.request("DELETE", f"/management/endpoints/{name}")

    def credentials(self, name: str) -> Any:
        return self.request("POST", f"/management/endpoints/{name}/listKeys")

    def regenerate_key(self, name: str, key_type: str) -> Any:
        return self.request(
            "POST", f"/management/endpoints/{name}/regenerateKeys", json={"keyType": key_type}
        )

    # deployments
    def create_deployment(self, endpoint: str, spec: dict[str, Any], all_traffic: bool) -> Any:
        return self.request(
            "POST",
            f"/management/endpoints/{endpoint}/deployments",
            json=spec,
            params={"all_traffic": str(all_traffic).lower()},
        )

    def list_deployments(self, endpoint: str) -> Any:
        return self.request("GET", f"/management/endpoints/{endpoint}/deployments")

    def show_deployment(self, endpoint: str, name: str) -> Any:
        return self.request("GET", f"/management/endpoints/{endpoint}/deployments/{name}")

    def delete_deployment(self, endpoint: str, name: str) -> Any:
        return self.request("DELETE", f"/management/endpoints/{endpoint}/deployments/{name}")

    # rollouts
    def start_rollout(self, endpoint: str, plan: dict[str, Any]) -> Any:
        return self.request("POST", f"/management/endpoints/{endpoint}/rollouts", json=plan)

    def rollout_status(self, endpoint: str) -> Any:
        return self.request("GET", f"/management/endpoints/{endpoint}/rollouts/status")

    def abort_rollout(self, endpoint: str) -> Any:
        return self.request("POST", f"/management/endpoints/{endpoint}/rollouts/abort")

    def list_rollouts(self, endpoint: str) -> Any:
        return self.request("GET", f"/management/endpoints/{endpoint}/rollouts")

    # batch
    def create_batch_endpoint(self, spec: dict[str, Any]) -> Any:
        return self.request("POST", "/management/batch/endpoints", json=spec)

    def create_batch_deployment(self, endpoint: str, spec: dict[str, Any]) -> Any:
        return self.request(
            "POST", f"/management/batch/endpoints/{endpoint}/deployments", json=spec
        )

    def invoke_batch(self, body: dict[str, Any]) -> Any:
        return self.request("POST", "/management/batch/jobs", json=body)

    def job(self, job_id: str) -> Any:
        return self.request("GET", f"/management/batch/jobs/{job_id}")

    def jobs(self, endpoint: str | None) -> Any:
        return self.request(
            "GET", "/management/batch/jobs", params={"endpoint": endpoint} if endpoint else None
        )

    def job_action(self, job_id: str, action: str) -> Any:
        return self.request("POST", f"/management/batch/jobs/{job_id}/{action}")

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
        return self.request("GET", "/management/audit", params=params)

    def status(self) -> Any:
        return self.request("GET", "/management/status")

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
            response = httpx.post(self.url + path, content=body, headers=headers, timeout=300)
        except httpx.TransportError as exc:
            raise ClientError(0, f"cannot reach the gateway at {self.url}: {exc}") from None
        if response.status_code >= 400:
            message = response.json().get("error", response.text) if response.content else ""
            raise ClientError(response.status_code, f"{response.status_code}: {message}")
        return response.json()
