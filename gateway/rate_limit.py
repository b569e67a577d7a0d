"""Per-caller rate limits: a token bucket per scoring key (per endpoint) and per
management principal, answered 429 with `Retry-After`. Off by default: an endpoint's
`rate_limit`, the gateway's `--management-rate-limit`.

A bucket holds up to `burst` requests and refills at `requests_per_second`. Buckets of
callers idle long enough to be full again are dropped, so random credentials cannot grow
the table past `MAX_CALLERS` (then the oldest go first)."""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from runtimes.errors import Overloaded

MAX_CALLERS = 10_000


class RateLimiter:
    def __init__(self, requests_per_second: float, burst: int, what: str) -> None:
        self.rate = requests_per_second
        self.burst = burst
        self._what = what
        #: caller -> (tokens left, when counted)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, caller: str) -> None:
        """Count one request of `caller`; Overloaded (429) when its bucket is empty."""
        now = time.monotonic()
        tokens, then = self._buckets.pop(caller, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens < 1.0:
            self._buckets[caller] = (tokens, now)
            wait_s = max(1, math.ceil((1.0 - tokens) / self.rate))
            raise Overloaded(
                f"rate limit of {self._what} exceeded ({self.rate:g} requests/s, bursts of "
                f"{self.burst}); retry after {wait_s} s",
                wait_s,
            )
        self._buckets[caller] = (tokens - 1.0, now)
        if len(self._buckets) > MAX_CALLERS:
            self._buckets.popitem(last=False)


def client_address(client: tuple[str, int] | None) -> str:
    """A connection's address without its port (the bucket of callers it cannot prove)."""
    return client[0] if client else "unknown"


def peer_address(peer: str | None) -> str:
    """A gRPC peer (`ipv4:127.0.0.1:5000`, `ipv6:[::1]:5000`) without its port."""
    if not peer:
        return "unknown"
    address = peer.partition(":")[2] or peer
    return address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
