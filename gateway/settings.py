"""The gateway's own settings: small, immutable, built once from flags/env.

One name end to end: `max_request_body_bytes` <-> `--max-request-body-bytes`
<-> `SERVEGATE_MAX_REQUEST_BODY_BYTES`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_PORT = 8000


def default_home() -> Path:
    return Path(os.environ.get("SERVEGATE_HOME") or Path.home() / ".servegate").expanduser()


@dataclass(frozen=True)
class GatewaySettings:
    home: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    #: Scoring bodies above this (after decompression, too) are answered 413.
    max_request_body_bytes: int = 100 * 1024 * 1024
    #: Model uploads through the management API may be larger.
    max_model_bytes: int = 4 * 1024 * 1024 * 1024
    #: On SIGTERM, in-flight requests get this long to finish.
    graceful_shutdown_s: float = 30.0
    demo: bool = False
    #: Request line + headers above this are answered 431.
    max_header_bytes: int = 64 * 1024
    #: A connection must send a request's complete headers within this (else 408).
    header_timeout_s: float = 10.0
    #: Open connections above this are answered 503; 0 = derived from the fd limit.
    max_connections: int = 0
    #: The Open Inference Protocol over gRPC on this port (on `host`); 0 = off.
    grpc_port: int = 0
    #: the name server metadata answers (`GET /v2`, gRPC ServerMetadata)
    server_name: str = "servegate"
    #: TLS for HTTP and gRPC: the server's certificate chain and key (PEM)
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    #: mutual TLS: clients must present a certificate signed by these CAs
    ssl_ca_certs: Path | None = None
    #: an identity provider whose tokens are accepted (gateway.oidc.OidcSettings)
    oidc: Any = None
    #: per-principal management rate limit: (requests per second, burst); None: off
    management_rate_limit: tuple[float, int] | None = None
    #: the log's lines: "text" or "json" (one object per line)
    log_format: str = "text"
    #: the fraction of requests the access log records (0: off; 1: all)
    access_log: float = 0.0

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_certfile else "http"

    @property
    def store_path(self) -> Path:
        return self.home / "store.db"

    @property
    def admin_token_path(self) -> Path:
        return self.home / "admin_token"

    @property
    def url(self) -> str:
        """Where this gateway is reached from its own host (a wildcard host as loopback)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{host}:{self.port}"
