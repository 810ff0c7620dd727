"""Per-client token bucket (in memory, one process)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


def retry_after_seconds(wait_s: float) -> int:
    """Value for a Retry-After header: whole seconds, at least 1."""
    return max(1, math.ceil(wait_s))


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Allow ``rate_per_s`` requests per second per key, bursting to ``burst``.

    A rate of 0 disables limiting. The table of keys is bounded: when full,
    buckets that have refilled completely (idle clients) are forgotten.
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
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, key: str) -> float:
        """Take one token: 0.0 if allowed, else seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate

    def _make_room(self, now: float) -> None:
        if len(self._buckets) < self.max_keys:
            return
        full_after = self.burst / self.rate
        self._buckets = {k: b for k, b in self._buckets.items() if now - b.updated < full_after}
        if len(self._buckets) >= self.max_keys:
            self._buckets.clear()
