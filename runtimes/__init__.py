"""Model runtimes behind one small interface (see `runtimes.base.Runtime`).

This package is the leaf of the dependency graph: it imports neither
`gateway`, `batch` nor `deploy`.
"""
