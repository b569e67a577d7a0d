"""The runtime error tree. Lower layers know no HTTP; the gateway maps these.

InferenceError
├── InvalidInput          the request does not match the model signature
├── ModelLoadError        the model file cannot be loaded
│   ├── DeviceUnavailable the requested device/provider is not present
│   └── MissingExtra      an optional dependency is not installed
├── InferenceTimeout      inference did not finish within its deadline
└── InferenceFailed       the runtime raised while running the model
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base of every error raised by a runtime."""


class InvalidInput(InferenceError):
    """The inputs do not match the model's signature (name, dtype or shape)."""


class ModelLoadError(InferenceError):
    """The model could not be loaded."""


class DeviceUnavailable(ModelLoadError):
    """A deployment asked for a device or execution provider this host lacks."""


class MissingExtra(ModelLoadError):
    """A runtime needs an optional dependency; the message names the extra."""


class InferenceTimeout(InferenceError):
    """Inference did not finish before the request's deadline."""


class InferenceFailed(InferenceError):
    """The runtime raised while running the model."""


class Overloaded(InferenceError):
    """Admission refused the request; retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InstanceFailed(InferenceError):
    """The instance (a worker process) crashed or hung; it is being replaced."""


class Retired(InferenceError):
    """The scheduler was retired (its deployment replaced or deleted) before the
    request reached it; the caller routes the request again."""
