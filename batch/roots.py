"""Where batch jobs may read and write (`servegate serve --batch-roots`, or
`SERVEGATE_BATCH_ROOTS`: folders and `s3://bucket/prefix`es, separated by commas).

With roots, a job's input and output must lie under one of them, and so must every input
file it lists (symlinks are followed before the check, so a link cannot lead out); the
inputs the CLI uploads for a gateway on another host (the artifact store's `data/`) are
always allowed. With none (the default, as before), any path the gateway can read or
write will do; `serve` warns at start when its API listens beyond loopback. Either way
the gateway's home is not a batch location: outputs never go there, and inputs only from
those uploads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from batch.errors import BatchInputError

ROOTS_ENV = "SERVEGATE_BATCH_ROOTS"


def _resolved(path: str) -> str:
    """A local path with its symlinks followed (for one not made yet, its nearest
    existing parent's), absolute."""
    return os.path.realpath(os.path.abspath(path))


def _local(uri: str) -> str | None:
    if uri.startswith("s3://"):
        return None
    return _resolved(uri[len("file://") :] if uri.startswith("file://") else uri)


def _under(path: str, root: str) -> bool:
    root = root.rstrip("/")
    return path == root or path.startswith(root + "/")


def parse_roots(text: str) -> tuple[str, ...]:
    """`--batch-roots` as given: comma-separated folders and s3:// prefixes."""
    roots = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            roots.append(part.rstrip("/") if part.startswith("s3://") else _resolved(part))
    return tuple(roots)


@dataclass(frozen=True)
class BatchRoots:
    roots: tuple[str, ...] = ()
    #: the gateway's home (None: not known here)
    home: Path | None = None
    #: where uploaded batch inputs are unpacked (deploy.artifacts.put_data)
    uploads: Path | None = None

    @classmethod
    def from_environment(cls, home: Path | None, uploads: Path | None = None) -> BatchRoots:
        return cls(parse_roots(os.environ.get(ROOTS_ENV, "")), home, uploads)

    def _check(self, uri: str, field: str, writing: bool) -> None:
        local = _local(uri)
        where = local if local is not None else uri.rstrip("/")
        if local is not None and not writing and self._in(local, self.uploads):
            return
        if local is not None and self._in(local, self.home):
            raise BatchInputError(
                f"field '{field}': '{uri}' is in the gateway's home folder, which is not a "
                "batch location"
            )
        if self.roots and not any(_under(where, root) for root in self.roots):
            raise BatchInputError(
                f"field '{field}': '{uri}' is outside the batch roots this gateway allows "
                f"(--batch-roots: {', '.join(self.roots)})"
            )

    @staticmethod
    def _in(path: str, folder: Path | None) -> bool:
        return folder is not None and _under(path, _resolved(str(folder)))

    def check_input(self, uri: str) -> None:
        # A glob is checked by the folder it starts from; each file it finds, as listed.
        base = uri.split("*", 1)[0].split("?", 1)[0]
        self._check(base if base != uri else uri, "input", writing=False)

    def check_output(self, uri: str) -> None:
        self._check(uri, "output", writing=True)

    def check_listed(self, uri: str, files: list[str]) -> None:
        """Every file an input lists (local ones with their links followed)."""
        if uri.startswith("s3://"):
            return  # listed under the checked prefix; an object store has no links
        for path in files:
            self._check(path, "input", writing=False)
