"""Per-client token bucket (in memory, one process), keyed by client address."""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


def retry_after_seconds(wait_s: float) -> int:
    """Value for a Retry-After header: whole seconds, at least 1."""
    return max(1, math.ceil(wait_s))


def client_key(host: str | None) -> str:
    """The limiter's key for a client address: IPv6 by its /64 (one subscriber's share)."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Allow ``rate_per_s`` requests per second per key, bursting to ``burst``.

    A rate of 0 disables limiting. The table of keys is bounded and evicts the
    least recently seen key: a flood of new keys forgets other new keys, never
    the whole table at once (which would reset every client's limit).
    """

    def __init__(
        self,
        rate_per_s: float,
        *,
        burst: float | None = None,
        max_keys: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate_per_s
        self.burst = burst if burst is not None else max(1.0, rate_per_s)
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def acquire(self, key: str) -> float:
        """Take one token: 0.0 if allowed, else seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        else:
            self._buckets.move_to_end(key)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)
