"""Object storage (S3 and compatible servers) through pyarrow's filesystems, shared by
batch inputs/outputs and the artifact store.

`SERVEGATE_S3_ENDPOINT_URL` (or `AWS_ENDPOINT_URL`) points at an S3-compatible server
(MinIO, moto, Ceph); credentials come from the usual AWS variables and files.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import pyarrow.fs as pafs


def s3_filesystem() -> pafs.S3FileSystem:
    endpoint = os.environ.get("SERVEGATE_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    options: dict[str, object] = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    if endpoint:
        parts = urlsplit(endpoint)
        options.update(endpoint_override=parts.netloc, scheme=parts.scheme or "https")
    return pafs.S3FileSystem(**options)
