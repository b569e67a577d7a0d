"""Batch endpoints and jobs (mini-batches over data references). Built in a later issue."""
