"""Per-caller rate limits: a token bucket per scoring key (per endpoint) and per
management principal, answered 429 with `Retry-After`. Off by default: an endpoint's
`rate_limit`, the gateway's `--management-rate-limit`.

A bucket holds up to `burst` requests and refills at `requests_per_second`. Buckets of
callers idle long enough to be full again are dropped, so random credentials cannot grow
the table past `MAX_CALLERS` (then the oldest go first)."""

from __future__ import annotations

import hashlib
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


def caller_of(authorization: str | None, client: tuple[str, int] | None) -> str:
    """Who a scoring request counts against: its credential (hashed: the table holds no
    key), else its client address."""
    if authorization:
        return hashlib.sha256(authorization.encode()).hexdigest()[:32]
    return client[0] if client else "unknown"
