"""Object storage (S3 and compatible servers) through pyarrow's filesystems, shared by
batch inputs/outputs and the artifact store.

`SERVEGATE_S3_ENDPOINT_URL` (or `AWS_ENDPOINT_URL`) points at an S3-compatible server
(MinIO, moto, Ceph); credentials come from the usual AWS variables and files.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import pyarrow.fs as pafs

#: What `s3_filesystem` reads from the environment (and pyarrow's AWS SDK with it).
S3_VARIABLES = (
    "SERVEGATE_S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
)


def s3_environment() -> dict[str, str]:
    """This process's S3 settings, for a process elsewhere that must reach the same
    storage the same way (a Ray actor on another node)."""
    return {name: os.environ[name] for name in S3_VARIABLES if name in os.environ}


def s3_filesystem() -> pafs.S3FileSystem:
    endpoint = os.environ.get("SERVEGATE_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    options: dict[str, object] = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    if endpoint:
        parts = urlsplit(endpoint)
        options.update(endpoint_override=parts.netloc, scheme=parts.scheme or "https")
    return pafs.S3FileSystem(**options)
