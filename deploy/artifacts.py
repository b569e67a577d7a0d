"""Content-addressed model artifacts and scoring-code archives.

A file is stored once per content hash (`artifacts/sha256/<hex><suffix>`), written to a
temporary name and renamed, so a crash never leaves a half-written artifact. The store
is a local folder (the home, or a shared filesystem given as SERVEGATE_ARTIFACTS) or an
object store prefix (`s3://bucket/prefix`, through pyarrow's S3 filesystem): there each
replica keeps a local cache of what it loaded, filled on first use, so a model
registered through one replica loads on every other. An S3 object appears whole when
its upload completes, never half-written.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from deploy.objectstore import s3_filesystem

_CHUNK = 1 << 20
#: A scoring-script folder unpacked: code, not models (those are registered apart).
MAX_CODE_BYTES = 256 * 1024 * 1024
MAX_CODE_FILES = 10_000
#: A model folder unpacked (an MLflow model, a Triton repository).
MAX_MODEL_FOLDER_BYTES = 64 * 1024**3
MAX_MODEL_FOLDER_FILES = 100_000


@dataclass(frozen=True)
class _Limits:
    what: str
    max_bytes: int
    max_files: int
    advice: str = ""


_CODE = _Limits(
    "code archive", MAX_CODE_BYTES, MAX_CODE_FILES, " (register large files as a model instead)"
)
_MODEL_FOLDER = _Limits("model folder archive", MAX_MODEL_FOLDER_BYTES, MAX_MODEL_FOLDER_FILES)
#: batch inputs uploaded by the CLI for a gateway on another host
_DATA = _Limits("data archive", MAX_MODEL_FOLDER_BYTES, 1_000_000)


def _check_unpacked_size(members: list[tarfile.TarInfo], limits: _Limits = _CODE) -> None:
    """Refuse archives that would unpack past the caps: a small tar.gz of zeros can
    expand a thousandfold."""
    if len(members) > limits.max_files:
        raise ValueError(f"{limits.what} has {len(members)} entries; at most {limits.max_files}")
    total = sum(m.size for m in members if m.isfile())
    if total > limits.max_bytes:
        raise ValueError(
            f"{limits.what} unpacks to {total} bytes; at most {limits.max_bytes}{limits.advice}"
        )


@dataclass(frozen=True)
class Artifact:
    sha256: str
    relative_path: str
    size_bytes: int


#: A temporary upload or staging folder untouched this long was left by a process that
#: died (a live writer touches its file as it writes).
STALE_UPLOAD_S = 60.0


def sweep_stale(folder: Path, pattern: str = "*", older_than_s: float = STALE_UPLOAD_S) -> int:
    """Remove what a cut upload or a crash left in `folder` (entries matching `pattern`
    not modified for `older_than_s`); how many. Never follows a link out of it."""
    if not folder.is_dir():
        return 0
    removed, cutoff = 0, time.time() - older_than_s
    for entry in folder.glob(pattern):
        try:
            if entry.lstat().st_mtime > cutoff:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        except OSError:
            continue
    return removed


class ArtifactStore:
    def __init__(self, location: str | Path, cache: Path | None = None) -> None:
        """`location`: a folder, or `s3://bucket/prefix`; `cache`: the local folder that
        holds copies of remote artifacts (default: the folder itself when local)."""
        location = str(location)
        self.remote: tuple[pafs.FileSystem, str] | None = None
        if location.startswith("s3://"):
            if cache is None:
                raise ValueError("an s3:// artifact store needs a local cache folder")
            self.remote = (s3_filesystem(), location[len("s3://") :].rstrip("/"))
            self.home = cache
        else:
            self.home = Path(location)
        self.location = location
        self.root = self.home / "artifacts" / "sha256"

    def sweep_stale(self) -> int:
        """Remove temporary files and staging folders left by uploads that were cut or by
        a crash (`.incoming-*` beside what they were to become)."""
        folders = (
            self.root,
            self.home / "code",
            self.home / "data",
            self.home / "models" / "folders",
        )
        return sum(sweep_stale(folder, ".incoming-*") for folder in folders)

    # -- remote objects ------------------------------------------------------------------
    def _remote_path(self, relative: str) -> str:
        assert self.remote is not None
        return f"{self.remote[1]}/{relative}"

    def _upload(self, local: Path, relative: str) -> None:
        """Upload once: an object of this content-addressed name is already right."""
        assert self.remote is not None
        fs, target = self.remote[0], self._remote_path(relative)
        if fs.get_file_info(target).type == pafs.FileType.File:
            return
        with local.open("rb") as f, fs.open_output_stream(target) as out:
            shutil.copyfileobj(f, out, _CHUNK)

    def _download(self, relative: str) -> Path:
        """The local copy of a remote object, fetched on first use."""
        final = self.home / relative
        if final.exists() or self.remote is None:
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".incoming-")
        try:
            with (
                os.fdopen(fd, "wb") as out,
                self.remote[0].open_input_stream(self._remote_path(relative)) as source,
            ):
                shutil.copyfileobj(source, out, _CHUNK)
            os.replace(tmp, final)
        except FileNotFoundError:
            Path(tmp).unlink(missing_ok=True)
            raise FileNotFoundError(
                f"artifact '{relative}' is not in the artifact store {self.location}"
            ) from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return final

    # -- model files -----------------------------------------------------------------------
    def path_of(self, relative_path: str) -> Path:
        """A local path to the artifact (downloaded from the object store if need be)."""
        return self._download(relative_path)

    def put_file(self, source: Path, suffix: str) -> Artifact:
        """Copy the file at `source` into the store, named by its hash and `suffix`."""
        digest = _sha256(source)
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
        if self.remote is not None:
            self._upload(final, relative)
        return Artifact(digest, relative, source.stat().st_size)

    # -- scoring code ----------------------------------------------------------------------
    def put_code(self, archive: Path) -> Path:
        """Unpack a tar.gz of a code folder into `code/<sha256>/` once; return that folder.
        With an object store, the archive goes there too, for the other replicas."""
        digest = _sha256(archive)
        final = self._unpack(archive, digest)
        if self.remote is not None:
            self._upload(archive, f"code/{digest}.tar.gz")
        return final

    def code_dir(self, stored: str) -> Path:
        """The local folder of a deployment's `code_configuration.code` as stored (the
        folder `put_code` returned on the replica that took the upload). With an object
        store, this replica's own copy of that content, unpacked from the store on first
        use (the stored path is on another replica's disk)."""
        path = Path(stored)
        if self.remote is None or path.parent.name != "code":
            return path
        local = self.home / "code" / path.name
        if not local.is_dir():
            archive = self._download(f"code/{path.name}.tar.gz")
            self._unpack(archive, path.name)
        return local

    # -- model folders -----------------------------------------------------------------
    def put_data(self, archive: Path) -> Path:
        """Unpack a tar.gz of batch inputs into `data/<sha256>/` on this replica; return
        that folder."""
        return self._unpack(archive, _sha256(archive), "data", _DATA)

    def folder_of(self, relative_path: str) -> Path:
        """A model folder stored as a tar.gz artifact, unpacked once on this replica
        (downloaded from the object store first if need be)."""
        archive = self.path_of(relative_path)
        digest = Path(relative_path).name.split(".")[0]
        return self._unpack(archive, digest, "models/folders", _MODEL_FOLDER)

    def check_folder(self, archive: Path) -> Path:
        """Unpack an uploaded model folder archive for a look before it is stored."""
        return self._unpack(archive, _sha256(archive), "models/folders", _MODEL_FOLDER)

    def _unpack(
        self, archive: Path, digest: str, under: str = "code", limits: _Limits = _CODE
    ) -> Path:
        final = self.home / under / digest
        if final.exists():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=".incoming-"))
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = tar.getmembers()
                _check_unpacked_size(members, limits)
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
            raise ValueError(f"not a readable tar.gz {limits.what}: {exc}") from exc
        return final


def tar_folder(folder: Path, archive: Path) -> Path:
    """Pack `folder`'s files (not `__pycache__`) as the tar.gz the stores unpack. The
    same files give the same bytes (no time in the gzip header), so registering a folder
    again is recognised as the same model."""
    with (
        gzip.GzipFile(archive, "wb", mtime=0) as packed,
        tarfile.open(fileobj=packed, mode="w") as tar,
    ):
        for path in sorted(folder.rglob("*")):
            if "__pycache__" not in path.parts:
                tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return archive


def _sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()
