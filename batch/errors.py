"""Batch errors. No HTTP here; the gateway maps them (400 for bad input)."""

from __future__ import annotations

import os
import re


class BatchError(Exception):
    """Base of the batch error tree."""


class WorkerStartError(BatchError):
    """A worker could not load the model or start the scoring script (its `init()`
    raised, an import failed): the same for every mini-batch it would take. The message
    is the cause, as the worker saw it."""


class BatchInputError(BatchError):
    """An input cannot be used: missing, unreadable, or its schema does not match.
    The message names the file (and the column)."""


def without_content(message: str, path: str) -> str:
    """A reader's error message (pyarrow's) with nothing of the file's content in it: a
    CSV row after "got N columns", quoted values and header names. Jobs' errors are shown
    to readers, so a file the gateway can read must not leak into one (`/etc/shadow` as a
    CSV put its first line in the error). The file's own path stays: the caller named it."""
    message = re.sub(r"(got \d+)(?: columns)?: .*", r"\1", message)
    names = (path, os.path.basename(path))

    def quoted(match: re.Match[str]) -> str:
        return match[0] if match[1] in names or match[1] in ("csv", "json", "parquet") else "'…'"

    return re.sub(r"'([^']*)'", quoted, message)
