"""Content-addressed model artifacts under $SERVEGATE_HOME/artifacts.

A file is stored once per content hash (`sha256/<hex><suffix>`), written to a
temporary name and renamed, so a crash never leaves a half-written artifact.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Artifact:
    sha256: str
    relative_path: str
    size_bytes: int


class ArtifactStore:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.root = home / "artifacts" / "sha256"

    def path_of(self, relative_path: str) -> Path:
        return self.home / relative_path

    def put_file(self, source: Path, suffix: str) -> Artifact:
        """Copy the file at `source` into the store, named by its hash and `suffix`."""
        hasher = hashlib.sha256()
        with source.open("rb") as f:
            while chunk := f.read(_CHUNK):
                hasher.update(chunk)
        digest = hasher.hexdigest()
        relative = f"artifacts/sha256/{digest}{suffix.lower()}"
        final = self.home / relative
        if not final.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
            try:
                with os.fdopen(fd, "wb") as out, source.open("rb") as f:
                    shutil.copyfileobj(f, out, _CHUNK)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, final)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return Artifact(digest, relative, source.stat().st_size)
