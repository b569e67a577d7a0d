"""The management API's OpenAPI document against the gateway's real answers: every
route declared, every status it answered documented for it, every answer valid
against the schema the document gives, and a permission on every route."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from deploy.roles import Permission
from tests.conftest import Gateway

NO_SUCH = {
    "endpoint": "no-such-endpoint",
    "deployment": "no-such-deployment",
    "name": "no-such-model",
    "version": "1",
    "job": "no-such-job",
    "action": "cancel",
}


def _management_operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, item in doc["paths"].items()
        if path.startswith("/management/")
        for method, op in item.items()
    ]


def _check_answer(doc: dict[str, Any], op: dict[str, Any], response: httpx.Response) -> None:
    """The status is documented for the operation and the body fits its schema."""
    documented = op["responses"]
    assert str(response.status_code) in documented, (
        f"{op['operationId']} answered {response.status_code} ({response.text[:200]}), "
        f"documented: {sorted(documented)}"
    )
    content = documented[str(response.status_code)].get("content", {})
    schema = content.get("application/json", {}).get("schema")
    if schema is not None and response.content:
        jsonschema.validate(response.json(), {**schema, "components": doc["components"]})


@pytest.fixture(scope="module")
def doc(gateway: Gateway) -> dict[str, Any]:
    return httpx.get(f"{gateway.url}/openapi.json").json()


def test_every_management_route_declares_a_permission(doc: dict[str, Any]) -> None:
    operations = _management_operations(doc)
    assert len(operations) >= 30
    for method, path, op in operations:
        assert op.get("x-servegate-permission") in set(Permission), (method, path)
        assert {"401", "403", "503"} <= set(op["responses"]), (method, path)


def test_error_answers_are_documented(gateway: Gateway, doc: dict[str, Any]) -> None:
    admin = {"Authorization": f"Bearer {gateway.admin_token}"}
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for method, path, op in _management_operations(doc):
            url = re.sub(r"{(\w+)}", lambda m: NO_SUCH[m.group(1)], path)
            # No credential: 401, documented.
            r = client.request(method, url)
            assert r.status_code == 401, (method, path, r.status_code)
            _check_answer(doc, op, r)
            # Things that do not exist, and a body the route cannot accept.
            body = op.get("requestBody", {}).get("content", {})
            kwargs: dict[str, Any] = {}
            if "application/json" in body:
                kwargs["json"] = {"not_a_field": 1}
            elif body:
                kwargs["content"] = b"not a model file"
                kwargs["params"] = {"filename": "x.onnx"}
            r = client.request(method, url, headers=admin, **kwargs)
            if "{" in path or body:  # nothing by those names, or nothing valid to do
                assert r.status_code >= 400, (method, path, r.status_code, r.text)
            _check_answer(doc, op, r)
            # A body too large.
            if body:
                r = client.request(method, url, headers=admin, content=b"{" * (2 << 20))
                if "application/json" in body:
                    assert r.status_code in (404, 413), (method, path, r.status_code)
                _check_answer(doc, op, r)


def test_real_answers_fit_the_documented_schemas(
    gateway: Gateway, doc: dict[str, Any], tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    gateway.create_endpoint(tmp_path, unique_name)
    gateway.deploy(tmp_path, unique_name, "blue", model_dir / "classifier.onnx")
    admin = {"Authorization": f"Bearer {gateway.admin_token}"}
    names = {**NO_SUCH, "endpoint": unique_name, "deployment": "blue"}
    _, out = gateway.cli("model", "list")
    model = json.loads(out)[-1]
    names.update(name=model["name"], version=str(model["version"]))
    checked = 0
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        batch = f"{unique_name}-batch"
        r = client.post("/management/batch/endpoints", json={"name": batch}, headers=admin)
        _check_answer(doc, doc["paths"]["/management/batch/endpoints"]["post"], r)
        r = client.post(
            f"/management/batch/endpoints/{batch}/deployments",
            # the model `deploy` registered for this endpoint's blue
            json={"name": "blue", "model": f"{unique_name}-blue:1"},
            headers=admin,
        )
        assert r.status_code == 201, r.text
        _check_answer(
            doc, doc["paths"]["/management/batch/endpoints/{endpoint}/deployments"]["post"], r
        )
        for method, path, op in _management_operations(doc):
            if method != "GET" and not path.endswith("/listKeys"):
                continue
            if "{job}" in path or path.endswith("/rollouts/status") or "/monitors/" in path:
                continue  # no job, rollout or monitor in this test
            here = {**names, "endpoint": batch} if path.startswith("/management/batch/") else names
            url = re.sub(r"{(\w+)}", lambda m, here=here: here[m.group(1)], path)
            r = client.request(method, url, headers=admin)
            assert r.status_code == int(next(iter(op["responses"]))), (path, r.text)
            _check_answer(doc, op, r)
            checked += 1
    assert checked >= 12
