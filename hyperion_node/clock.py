"""The wall clock as the node records it: milliseconds since the Unix epoch, in receipts, task records,
evidence and events. Intervals and timeouts use trio's monotonic clock instead; this one is for what other
nodes and the operator read."""

from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)
