"""The control-plane error tree. No HTTP here; the gateway maps these to statuses.

ControlPlaneError
├── SpecError      a YAML/JSON spec or a request field is invalid
├── NotFound       a named model, endpoint or deployment does not exist
├── Conflict       the change clashes with current state (exists, in use)
└── StoreUnavailable  the store cannot be written safely (file gone or replaced)
"""

from __future__ import annotations


class ControlPlaneError(Exception):
    """Base of every control-plane error."""


class SpecError(ControlPlaneError):
    """A spec or field is invalid; the message names the source and the field."""


class NotFound(ControlPlaneError):
    """A named object does not exist."""


class Conflict(ControlPlaneError):
    """The change clashes with the current state."""


class StoreUnavailable(ControlPlaneError):
    """The store cannot take writes: its file was removed or replaced under the process,
    so a write would land in a file nobody reads."""
