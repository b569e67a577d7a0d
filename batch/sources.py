"""Data references: a file, a folder or a glob, on local disk or object storage
(`s3://bucket/key`, through pyarrow filesystems).

The S3 endpoint comes from `AWS_ENDPOINT_URL` (or `SERVEGATE_S3_ENDPOINT_URL`),
credentials from the usual AWS variables, so an S3-compatible server on loopback
works as well as AWS.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass

import pyarrow.fs as pafs

from batch.errors import BatchInputError
from deploy.objectstore import s3_filesystem

#: file suffix -> pyarrow dataset format, for tabular inputs


@dataclass(frozen=True)
class Location:
    """A URI split into a pyarrow filesystem and the path on it."""

    uri: str
    filesystem: pafs.FileSystem
    path: str

    def child(self, name: str) -> Location:
        sep = "" if self.uri.endswith("/") else "/"
        return locate(f"{self.uri}{sep}{name}")


def locate(uri: str) -> Location:
    """`s3://bucket/key`, `file:///path` or a local path."""
    if "\x00" in uri:  # no filesystem takes one (pyarrow raises ArrowInvalid)
        raise BatchInputError(f"path {uri!r}: holds a NUL character")
    if uri.startswith("s3://"):
        return Location(uri, s3_filesystem(), uri[len("s3://") :].rstrip("/"))
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return Location(uri, pafs.LocalFileSystem(), os.path.abspath(path))


def list_inputs(uri: str, input_type: str | None = None) -> tuple[Location, list[str]]:
    """The input files a URI names, sorted: one file, every file under a folder, or the
    files a glob (`*`, `?`) matches. Raises BatchInputError naming the URI."""
    location = locate(uri)
    fs = location.filesystem
    pattern = None
    if any(c in location.path for c in "*?["):
        base, _, _ = location.path.partition("*")
        folder = base.rsplit("/", 1)[0]
        pattern, location = location.path, Location(uri, fs, folder)
    try:
        info = fs.get_file_info(location.path)
    except (OSError, ValueError) as exc:  # ValueError: pyarrow's ArrowInvalid
        raise BatchInputError(f"input '{uri}': cannot read it: {exc}") from None
    if info.type == pafs.FileType.NotFound:
        raise BatchInputError(f"input '{uri}': no such file or folder")
    if info.type == pafs.FileType.File:
        if input_type == "uri_folder":
            raise BatchInputError(f"input '{uri}' is a file, but --input-type is uri_folder")
        return location, [location.path]
    if input_type == "uri_file":
        raise BatchInputError(f"input '{uri}' is a folder, but --input-type is uri_file")
    selector = pafs.FileSelector(location.path, recursive=True)
    files = sorted(
        f.path
        for f in fs.get_file_info(selector)
        if f.type == pafs.FileType.File and not os.path.basename(f.path).startswith(".")
    )
    if pattern is not None:
        files = [f for f in files if fnmatch.fnmatch(f, pattern)]
    if not files:
        raise BatchInputError(f"input '{uri}': no files in it")
    return location, files
