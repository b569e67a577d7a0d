"""Browser-facing protections on every answer but the scoring hot path (machine clients,
answered JSON with its content type; one more header there cost 1.5% of the requests/s
in one benchmark run): no content sniffing, no framing, no referrer, and a content
security policy: the studio runs only its own script and styles and talks only to this
gateway and the identity provider it signs in at; an API answer loads nothing."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_COMMON = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
_API_POLICY = b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'"


def studio_policy(connect_origins: tuple[str, ...]) -> bytes:
    """The studio's policy; `connect_origins`: the identity provider's origins."""
    connect = " ".join(("'self'", *connect_origins))
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src {connect}; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; object-src 'none'"
    ).encode()


class SecurityHeaders:
    """ASGI middleware adding the headers above to each answer."""

    def __init__(self, app: ASGIApp, provider_origins: Callable[[], tuple[str, ...]]) -> None:
        self.app = app
        self._provider_origins = provider_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        studio = scope["path"].startswith("/studio")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                policy = studio_policy(self._provider_origins()) if studio else _API_POLICY
                message["headers"] = [
                    *message.get("headers", ()),
                    *_COMMON,
                    (b"content-security-policy", policy),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)
