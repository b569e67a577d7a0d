"""Content-addressed model artifacts under $SERVEGATE_HOME/artifacts.

A file is stored once per content hash (`sha256/<hex><suffix>`), written to a
temporary name and renamed, so a crash never leaves a half-written artifact.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1 << 20
#: A scoring-script folder unpacked: code, not models (those are registered apart).
MAX_CODE_BYTES = 256 * 1024 * 1024
MAX_CODE_FILES = 10_000


def _check_unpacked_size(members: list[tarfile.TarInfo]) -> None:
    """Refuse archives that would unpack past the caps: a small tar.gz of zeros can
    expand a thousandfold."""
    if len(members) > MAX_CODE_FILES:
        raise ValueError(f"code archive has {len(members)} entries; at most {MAX_CODE_FILES}")
    total = sum(m.size for m in members if m.isfile())
    if total > MAX_CODE_BYTES:
        raise ValueError(
            f"code archive unpacks to {total} bytes; at most {MAX_CODE_BYTES} "
            "(register large files as a model instead)"
        )


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

    def put_code(self, archive: Path) -> Path:
        """Unpack a tar.gz of a code folder into `code/<sha256>/` once; return that folder."""
        hasher = hashlib.sha256()
        with archive.open("rb") as f:
            while chunk := f.read(_CHUNK):
                hasher.update(chunk)
        final = self.home / "code" / hasher.hexdigest()
        if final.exists():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=".incoming-"))
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = tar.getmembers()
                _check_unpacked_size(members)
                # The "data" filter refuses absolute paths, links out of the folder, devices.
                tar.extractall(staging, members, filter="data")
            os.replace(staging, final)
        except ValueError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        except (tarfile.TarError, OSError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if final.exists():  # another request unpacked the same archive first
                return final
            raise ValueError(f"not a readable tar.gz code archive: {exc}") from exc
        return final
