"""Who may do what: the management API's permissions and the roles that grant them
(Azure ML's built-in roles, narrowed to servegate's resources)."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from enum import StrEnum

from deploy.errors import SpecError


class Permission(StrEnum):
    """What a management route needs."""

    #: read the control plane: endpoints, deployments, models, rollouts, jobs, audit
    READ = "read"
    #: change it: models, endpoints, deployments, traffic, rollouts, batch jobs
    OPERATE = "operate"
    #: read endpoint keys and tokens (get-credentials)
    READ_KEYS = "read_keys"
    #: admin tokens and secrets
    MANAGE_ACCESS = "manage_access"
    #: only to be signed in (`access whoami`)
    SIGNED_IN = "signed_in"


ROLES: dict[str, frozenset[Permission]] = {
    "owner": frozenset(Permission),
    "operator": frozenset({Permission.READ, Permission.OPERATE, Permission.SIGNED_IN}),
    "scorer-key-reader": frozenset({Permission.READ_KEYS, Permission.SIGNED_IN}),
    "reader": frozenset({Permission.READ, Permission.SIGNED_IN}),
}

#: Principals the gateway itself acts as (the audit log's actor names them)
SYSTEM = "system"

_TOKEN_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_PATTERN = re.compile(r"^[A-Za-z0-9*?\[\]-]{1,64}$")


def check_role(role: str, field: str = "role") -> str:
    if role not in ROLES:
        raise SpecError(f"{field}: unknown role '{role}'; allowed: {', '.join(ROLES)}")
    return role


def check_token_name(name: str) -> str:
    if not _TOKEN_NAME.match(name):
        raise SpecError(
            f"name: '{name}' is not a token name (lowercase letters, digits and '-', "
            "at most 63 characters, starting with a letter or digit)"
        )
    return name


def check_endpoint_pattern(pattern: str) -> str:
    if pattern and not _PATTERN.match(pattern):
        raise SpecError(
            f"endpoints: '{pattern}' is not an endpoint name pattern (letters, digits, '-' "
            "and the wildcards * ? [...])"
        )
    return pattern


@dataclass(frozen=True)
class Principal:
    """Who a management request acts as, resolved once per request."""

    name: str
    #: user (an identity provider's token), service (an admin token) or system
    kind: str
    roles: tuple[str, ...]
    #: the endpoints it may act on (a name pattern); "": all
    endpoints: str = ""

    @property
    def actor(self) -> str:
        """Its name in the audit log: `token:ci-pipeline`, `user:alice@example.com`."""
        return (
            self.name
            if self.kind == "system"
            else f"{'token' if self.kind == 'service' else 'user'}:{self.name}"
        )

    def can(self, permission: Permission) -> bool:
        return any(permission in ROLES.get(role, ()) for role in self.roles)

    def may_act_on(self, endpoint: str) -> bool:
        return not self.endpoints or fnmatch.fnmatchcase(endpoint, self.endpoints)

    def to_dict(self) -> dict[str, object]:
        permissions = sorted({str(p) for role in self.roles for p in ROLES.get(role, ())})
        return {
            "name": self.name,
            "kind": self.kind,
            "actor": self.actor,
            "roles": list(self.roles),
            "endpoints": self.endpoints or "*",
            "permissions": permissions,
        }
