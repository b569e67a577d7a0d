"""The control plane: YAML specs, the store, the audit log and the `servegate` CLI."""
