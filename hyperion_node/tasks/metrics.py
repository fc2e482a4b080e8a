"""Counters and duration histograms of tasks, per runtime and side, for ``/metrics`` (pure code).

Buckets follow what the runtimes take: a ZK proof or a short completion in well under a second on a GPU, a
long generation or a render of many frames in minutes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass
class Histogram:
    bounds: tuple[float, ...] = BUCKETS_S
    counts: list[int] = field(default_factory=list)  # one per bound, then +Inf
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.n += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs, Prometheus style, +Inf last."""
        out, running = [], 0
        for bound, count in zip((*(repr(b) for b in self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass
class TaskMetrics:
    """``outcomes[(runtime, side, outcome)]`` and ``durations[(runtime, side)]``; side is requester or worker."""

    outcomes: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    durations: dict[tuple[str, str], Histogram] = field(default_factory=dict)

    def record(self, runtime: str, side: str, outcome: str, seconds: float | None) -> None:
        self.outcomes[(runtime, side, outcome)] += 1
        if seconds is not None:
            self.durations.setdefault((runtime, side), Histogram()).observe(seconds)
