"""Secrets never leave the store in an answer or an audit entry.

Values that are secrets by where they sit are masked wherever a document is
rendered: every value of a remote runtime's `headers` (they carry credentials
such as `Authorization`), and `environment_variables` whose names look like
secrets (`*KEY*`, `*TOKEN*`, `*SECRET*`, `*PASSWORD*`, `*PASSWD*`, `*CREDENTIAL*`,
`*AUTH*`). The
store keeps the real values: the runtimes need them. A value that is a reference to a
secret (`${secret:NAME}`) is shown: it holds nothing secret.
"""

from __future__ import annotations

import re
from typing import Any

from deploy.vault import is_reference

MASK = "***"
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)


def looks_secret(name: str) -> bool:
    """An environment variable's name that says it holds a credential."""
    return _SECRET_NAME.search(name) is not None


def _mask_headers(headers: dict[str, Any]) -> dict[str, Any]:
    return {name: value if is_reference(value) else MASK for name, value in headers.items()}


def _mask_environment(variables: dict[str, Any]) -> dict[str, Any]:
    return {
        name: MASK if looks_secret(str(name)) and not is_reference(value) else value
        for name, value in variables.items()
    }


def mask_secrets(doc: Any) -> Any:
    """A copy of `doc` (JSON-like) with secret values replaced by '***'."""
    if isinstance(doc, list):
        return [mask_secrets(item) for item in doc]
    if not isinstance(doc, dict):
        return doc
    masked = {}
    for key, value in doc.items():
        if key == "headers" and isinstance(value, dict):
            masked[key] = _mask_headers(value)
        elif key == "environment_variables" and isinstance(value, dict):
            masked[key] = _mask_environment(value)
        else:
            masked[key] = mask_secrets(value)
    return masked
