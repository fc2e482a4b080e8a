"""Time series for the dashboards, as pure code: counter snapshots in, rates and latency quantiles out.

The node already counts what the dashboards chart (``TaskMetrics``: tasks by runtime, side and outcome, and a
duration histogram per runtime and side; the ledger's reward totals), so a sample is a cheap copy of those
counters. A point is the difference between the newest sample and one a few seconds older: a rate over that
window and quantiles of the tasks that finished in it. Memory is bounded by the ring's capacity, not by how
long the node runs or how many tasks it sees.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hyperion_node.tasks.metrics import BUCKETS_S, Histogram, TaskMetrics

SIDES = ("requester", "worker")
# Worker-side answers that are not failures: the requester was told at once and tried another worker.
REFUSALS = frozenset({"busy", "rejected"})
NOT_FAILED = frozenset({"completed", "cancelled"}) | REFUSALS


def merged(histograms: Iterable[Histogram]) -> Histogram:
    """One histogram over several (every runtime of one side); a copy, so later observations do not leak in."""
    out = Histogram()
    for h in histograms:
        out.counts = [a + b for a, b in zip(out.counts, h.counts, strict=True)]
        out.total += h.total
        out.n += h.n
    return out


def difference(newer: Histogram, older: Histogram) -> Histogram:
    """The observations made between two copies of the same histogram."""
    return Histogram(counts=[a - b for a, b in zip(newer.counts, older.counts, strict=True)],
                     total=newer.total - older.total, n=newer.n - older.n)


def quantile(h: Histogram, q: float) -> float | None:
    """The q-quantile in seconds, interpolated linearly inside its bucket as Prometheus's
    ``histogram_quantile`` does; None without observations. Past the last bound the answer is that bound
    (nothing more is known), and the first bucket starts at 0."""
    if h.n <= 0:
        return None
    rank = q * h.n
    seen = 0
    for i, count in enumerate(h.counts):
        if count > 0 and seen + count >= rank:
            if i == len(BUCKETS_S):
                return BUCKETS_S[-1]
            low = 0.0 if i == 0 else BUCKETS_S[i - 1]
            return low + (BUCKETS_S[i] - low) * max(0.0, rank - seen) / count
        seen += count
    return BUCKETS_S[-1]


@dataclass(frozen=True)
class Counters:
    """The node's cumulative counters at one moment (wall time, seconds)."""

    t: float
    completed: Mapping[str, int] = field(default_factory=dict)  # side -> tasks completed since start
    failed: Mapping[str, int] = field(default_factory=dict)  # side -> tasks failed since start
    durations: Mapping[str, Histogram] = field(default_factory=dict)  # side -> durations of finished tasks
    rewards: Mapping[str, float] = field(default_factory=dict)  # earned, pending, disputed, spent (credits)
    peers_alive: int = 0
    queued: int = 0
    running: int = 0


def counters_from(metrics: TaskMetrics | None, *, t: float, rewards: Mapping[str, float], peers_alive: int,
                  load: tuple[int, int]) -> Counters:
    """A snapshot of the orchestrator's metrics (None before it runs: everything zero)."""
    completed = dict.fromkeys(SIDES, 0)
    failed = dict.fromkeys(SIDES, 0)
    durations = {side: Histogram() for side in SIDES}
    if metrics is not None:
        for (_runtime, side, outcome), n in list(metrics.outcomes.items()):
            if outcome == "completed":
                completed[side] = completed.get(side, 0) + n
            elif outcome not in NOT_FAILED:
                failed[side] = failed.get(side, 0) + n
        for side in SIDES:
            durations[side] = merged(h for (_r, s), h in list(metrics.durations.items()) if s == side)
    return Counters(t=t, completed=completed, failed=failed, durations=durations, rewards=dict(rewards),
                    peers_alive=peers_alive, queued=load[0], running=load[1])


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)


def point(newer: Counters, older: Counters) -> dict[str, Any]:
    """One chart point: rates (tasks/s) and latency quantiles (ms) over the window from ``older`` to ``newer``,
    and the gauges of ``newer``. Latencies are None when no task finished in the window (a gap, not a 0)."""
    span = max(newer.t - older.t, 1e-9)
    out: dict[str, Any] = {"t": round(newer.t, 3)}
    for side, name in (("requester", "routed"), ("worker", "served")):
        out[f"{name}_per_s"] = round((newer.completed.get(side, 0) - older.completed.get(side, 0)) / span, 4)
        window = difference(newer.durations.get(side, Histogram()), older.durations.get(side, Histogram()))
        out[f"{name}_p50_ms"] = _ms(quantile(window, 0.5))
        out[f"{name}_p95_ms"] = _ms(quantile(window, 0.95))
    failed = sum(newer.failed.values()) - sum(older.failed.values())
    out["failed_per_s"] = round(failed / span, 4)
    out.update({k: round(v, 9) for k, v in newer.rewards.items()})
    out.update(peers_alive=newer.peers_alive, queued=newer.queued, running=newer.running)
    return out


class SeriesRing:
    """The last ``capacity`` points, each computed over a window of ``window`` samples.

    At one sample a second, the defaults keep ten minutes of history (enough to see a trend on a chart a
    few hundred pixels wide, ~100 KiB of JSON at most) over a 5 s window, which smooths the one-task-at-a-time
    steps of a small network without hiding a change for long.
    """

    def __init__(self, capacity: int = 600, window: int = 5) -> None:
        if capacity < 1 or window < 1:
            raise ValueError("capacity and window must be at least 1")
        self._samples: collections.deque[Counters] = collections.deque(maxlen=window + 1)
        self._points: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)

    def add(self, sample: Counters) -> dict[str, Any]:
        """Record a sample (times must increase); returns the new point."""
        if self._samples and sample.t <= self._samples[-1].t:
            raise ValueError(f"sample time {sample.t} is not after {self._samples[-1].t}")
        self._samples.append(sample)
        new = point(sample, self._samples[0])  # ``window`` samples back once the ring has that many
        self._points.append(new)
        return new

    @property
    def latest(self) -> Counters | None:
        return self._samples[-1] if self._samples else None

    def points(self, since: float = 0.0) -> list[dict[str, Any]]:
        """Points newer than ``since`` (a ``t`` the caller already has), oldest first."""
        return [p for p in self._points if p["t"] > since]
