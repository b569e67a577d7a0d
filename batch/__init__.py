"""Batch endpoints and jobs: data references cut into mini-batches, scored by worker
processes, results written back to storage; jobs survive crashes and resume."""
