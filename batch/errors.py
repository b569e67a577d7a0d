"""Batch errors. No HTTP here; the gateway maps them (400 for bad input)."""

from __future__ import annotations


class BatchError(Exception):
    """Base of the batch error tree."""


class BatchInputError(BatchError):
    """An input cannot be used: missing, unreadable, or its schema does not match.
    The message names the file (and the column)."""
