"""Per-peer rate limiting for gossip, as pure code (time passed in)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RateLimiter:
    """A token bucket per key: ``rate`` tokens per second, bursts up to ``burst``.

    Bounded memory: at most ``max_keys`` buckets; the stalest are forgotten first (a forgotten peer starts
    again with a full bucket, which only ever errs on the side of accepting).
    """

    rate: float
    burst: float
    max_keys: int = 10_000
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> (tokens, last time)

    def allow(self, key: str, now: float) -> bool:
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)  # re-inserted last: dict order is least recently used first
        if len(self._buckets) > self.max_keys:
            del self._buckets[next(iter(self._buckets))]
        return allowed
