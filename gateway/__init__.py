"""The data plane: the ASGI app, scoring routes, auth, routing, metrics, admin API."""
