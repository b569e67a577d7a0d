"""Opening the control plane from settings: the one place that does.

What several replicas must share comes from outside the local home: the store
(`--store` / SERVEGATE_STORE), the artifacts (`--artifacts` / SERVEGATE_ARTIFACTS: a
folder on a shared filesystem, or `s3://bucket/prefix`) and the server secret that
derives endpoint keys and signs tokens (SERVEGATE_SECRET_KEY, or a file named by
SERVEGATE_SECRET_KEY_FILE). A gateway alone keeps all three in $SERVEGATE_HOME, as
before. The secret is never written to the store, so a copy of the database alone
reveals no key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from deploy.artifacts import ArtifactStore
from deploy.control import ControlPlane
from deploy.credentials import Credentials, read_or_create_secret
from deploy.errors import StoreUnavailable
from deploy.store import STORE_ENV, default_store_url, open_store

SECRET_ENV = "SERVEGATE_SECRET_KEY"
SECRET_FILE_ENV = "SERVEGATE_SECRET_KEY_FILE"
ARTIFACTS_ENV = "SERVEGATE_ARTIFACTS"
#: A secret shorter than this is refused: it would make keys guessable.
MIN_SECRET_CHARS = 32


@dataclass(frozen=True)
class ControlPlaneSettings:
    home: Path
    store_url: str
    #: a folder, or s3://bucket/prefix
    artifacts: str

    @classmethod
    def resolve(
        cls, home: Path, store: str | None = None, artifacts: str | Path | None = None
    ) -> ControlPlaneSettings:
        """Flags first, then the environment, then the home's defaults."""
        return cls(
            home=home,
            store_url=store or default_store_url(home),
            artifacts=str(artifacts or os.environ.get(ARTIFACTS_ENV) or home),
        )

    def child_environment(self) -> dict[str, str]:
        """What a process this one starts (a batch runner) needs to open the same plane."""
        return {**os.environ, STORE_ENV: self.store_url, ARTIFACTS_ENV: self.artifacts}


def server_secret(home: Path) -> str:
    value = os.environ.get(SECRET_ENV)
    source = SECRET_ENV
    if not value and os.environ.get(SECRET_FILE_ENV):
        source = os.environ[SECRET_FILE_ENV]
        try:
            value = Path(source).read_text().strip()
        except OSError as exc:
            raise StoreUnavailable(f"{SECRET_FILE_ENV}: cannot read '{source}': {exc}") from None
    if not value:
        return read_or_create_secret(home / "server_secret")
    if len(value) < MIN_SECRET_CHARS:
        raise StoreUnavailable(
            f"{source}: the server secret must be at least {MIN_SECRET_CHARS} characters "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return value


def open_control_plane(settings: ControlPlaneSettings) -> ControlPlane:
    """The control plane over the configured store, artifacts and secret."""
    settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    credentials = Credentials(server_secret(settings.home))
    location = settings.artifacts
    if not location.startswith("s3://"):
        location = str(Path(location).expanduser())
    # Copies of object-store artifacts are cached in the home (and survive restarts).
    artifacts = ArtifactStore(location, cache=settings.home / "artifact-cache")
    return ControlPlane(open_store(settings.store_url), artifacts, credentials, settings)
