"""Predictive health: take new work away from a peer whose health is falling, before it fails.

Per peer, each signal is smoothed by an EWMA and mapped to a goodness in [0, 1] -- 1 at or below its "good"
value, 0 at or above its "bad" one, linear between (``HealthSettings``):

* latency: RTT samples (libp2p ping);
* error rate: the share of failed tasks among those sent to it, both counts fading with ``error_half_life_s``,
  and only once they hold ``error_min_outcomes``: a short burst of failures is the circuit breaker's business
  (it opens, then probes); a sustained or rising error rate is this one's, and takes the peer out before the
  breaker's own threshold is reached. A drained peer gets no work, so its counts fade below the minimum and
  it is let back to show how it does now;
* heartbeat lateness ("jitter"): how far past its due time each heartbeat arrives, between consecutive
  sequence numbers only (a gap is silence, liveness's business, or a restart). A heartbeat says when the next
  regular one is due (``every_s``); a provider also pushes one early when its load changes (presence.py),
  which is no sign of trouble, so only lateness counts. Lateness is read on the sender's own clock (the
  heartbeats' timestamps), so that it measures the peer's rhythm and not this node's: a requester whose own
  event loop stalled must not drain every provider at once (the path's delay is the latency signal's
  business). For a heartbeat that says nothing of its rhythm, the due time is the peer's usual interval,
  measured on arrival;
* GPU temperature: the hottest GPU in its heartbeat (``temp_c``);
* GPU memory errors: heartbeats whose GPUs report a higher cumulative uncorrectable count (``mem_errors``)
  than the heartbeat before.

The health is the worst goodness: one overheating GPU is enough. Its trend is the least-squares slope of the
health over the last ``trend_window_s``; the projection is ``health + min(0, slope) * horizon_s``. A peer is
drained when the projection falls below ``drain_below`` -- while its health is still above it, when the fall is
fast -- and comes back only when both its health and its projection are at or above ``recover_above``
(hysteresis: a peer hovering near the threshold does not flap).

Pure code: times are passed in, changes are reported to ``on_change``.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from hyperion_node.p2p.messages import Heartbeat
from hyperion_node.scheduler.settings import HealthSettings

SIGNALS = ("latency", "error_rate", "jitter", "gpu_temp", "memory_errors")
# A slope needs a few points to mean anything; three heartbeats (six seconds at the default interval).
MIN_TREND_POINTS = 3
MAX_TREND_POINTS = 64


def goodness(value: float | None, good: float, bad: float) -> float:
    """1 at or below ``good``, 0 at or above ``bad``, linear between; 1 when nothing is known."""
    if value is None:
        return 1.0
    if value <= good:
        return 1.0
    if value >= bad:
        return 0.0
    return (bad - value) / (bad - good)


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (time, value) points; 0 when the times do not spread."""
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var <= 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var


def _ewma(level: float | None, sample: float, alpha: float) -> float:
    return sample if level is None else level + alpha * (sample - level)


@dataclass(frozen=True)
class PeerHealth:
    peer_id: str
    score: float  # 0..1, the worst signal's goodness
    projected: float  # score + min(0, slope) * horizon, 0..1
    slope_per_s: float
    drained: bool
    signals: Mapping[str, float]  # goodness per signal

    @property
    def worst(self) -> str:
        return min(self.signals, key=lambda name: self.signals[name])

    def to_json(self) -> dict[str, object]:
        return {"peer_id": self.peer_id, "score": round(self.score, 4), "projected": round(self.projected, 4),
                "slope_per_s": round(self.slope_per_s, 6), "drained": self.drained,
                "signals": {k: round(v, 4) for k, v in self.signals.items()}}


@dataclass(frozen=True)
class HealthChange:
    """A peer drained (no new work) or recovered."""

    peer_id: str
    drained: bool
    at: float
    health: PeerHealth

    def to_json(self) -> dict[str, object]:
        return {"peer_id": self.peer_id, "drained": self.drained, "at": self.at, "health": self.health.to_json()}


@dataclass
class _Trends:
    latency_ms: float | None = None
    failures: float = 0.0  # decayed counts
    outcomes: float = 0.0
    outcomes_at: float | None = None
    interval_s: float | None = None
    next_due_s: float | None = None  # what the last heartbeat said of the next regular one's interval
    last_sent_at: float | None = None  # the last heartbeat's timestamp, on the sender's clock
    jitter_s: float | None = None
    last_heartbeat_at: float | None = None
    last_seq: int | None = None
    gpu_temp_c: float | None = None
    memory_errors: float | None = None
    memory_error_count: float | None = None
    points: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=MAX_TREND_POINTS))
    drained: bool = False


class HealthMonitor:
    """Health trends of every peer seen, bounded to ``max_peers`` (least recently observed forgotten)."""

    def __init__(self, settings: HealthSettings | None = None, *,
                 on_change: Callable[[HealthChange], None] | None = None) -> None:
        self.settings = settings or HealthSettings()
        self._on_change = on_change
        self._peers: OrderedDict[str, _Trends] = OrderedDict()
        self._drained: set[str] = set()
        self.drained_version = 0  # rises whenever the drained set changes, for readers that cache what it gives

    # -- what is known ---------------------------------------------------------------------------------------

    def drained(self) -> AbstractSet[str]:
        """Peers that get no new work now (a live, read-only view). Small: only the sick ones."""
        return self._drained

    def is_drained(self, peer_id: str) -> bool:
        return peer_id in self._drained

    def health(self, peer_id: str, now: float) -> PeerHealth:
        trends = self._peers.get(peer_id)
        if trends is None:
            return PeerHealth(peer_id, 1.0, 1.0, 0.0, False, dict.fromkeys(SIGNALS, 1.0))
        return self._health(peer_id, trends, now, self._signals(trends, now))

    def _health(self, peer_id: str, trends: _Trends, now: float, signals: dict[str, float]) -> PeerHealth:
        score = min(signals.values())
        points = [p for p in trends.points if p[0] >= now - self.settings.trend_window_s]
        trend = slope(points) if len(points) >= MIN_TREND_POINTS else 0.0
        projected = min(1.0, max(0.0, score + min(0.0, trend) * self.settings.horizon_s))
        return PeerHealth(peer_id, score, projected, trend, trends.drained, signals)

    # -- observations ----------------------------------------------------------------------------------------

    def observe_rtt(self, peer_id: str, rtt_ms: float, now: float) -> None:
        if not math.isfinite(rtt_ms) or rtt_ms < 0:
            return
        trends = self._trends(peer_id)
        trends.latency_ms = _ewma(trends.latency_ms, rtt_ms, self.settings.alpha)
        self._evaluate(peer_id, trends, now)

    def observe_outcome(self, peer_id: str, *, failed: bool, now: float) -> None:
        trends = self._trends(peer_id)
        decay = self._decay(trends, now)
        trends.failures = trends.failures * decay + float(failed)
        trends.outcomes = trends.outcomes * decay + 1.0
        trends.outcomes_at = now
        self._evaluate(peer_id, trends, now)

    def observe_heartbeat(self, heartbeat: Heartbeat, now: float) -> None:
        trends = self._trends(heartbeat.peer_id)
        alpha = self.settings.alpha
        if trends.last_seq is not None and heartbeat.seq <= trends.last_seq:
            return  # a stale or replayed heartbeat says nothing new
        # Rhythm is measured between consecutive heartbeats only. A gap in the sequence is silence (lost
        # heartbeats, or a restart: a new process starts its sequence at its clock in ms), which liveness
        # answers with suspect and dead; counted here, a worker restarted after 8 s would look 8 s off its
        # rhythm and be drained for its first seconds back.
        consecutive = trends.last_seq is not None and heartbeat.seq == trends.last_seq + 1
        if consecutive and trends.next_due_s is not None and trends.last_sent_at is not None:
            late = max(0.0, heartbeat.time - trends.last_sent_at - trends.next_due_s)  # on the sender's clock
            trends.jitter_s = _ewma(trends.jitter_s, late, alpha)
        elif consecutive and trends.last_heartbeat_at is not None and now > trends.last_heartbeat_at:
            interval = now - trends.last_heartbeat_at
            if trends.interval_s is not None:
                trends.jitter_s = _ewma(trends.jitter_s, abs(interval - trends.interval_s), alpha)
            trends.interval_s = _ewma(trends.interval_s, interval, alpha)
        trends.next_due_s = heartbeat.every_s or None
        trends.last_sent_at = heartbeat.time
        trends.last_heartbeat_at = now
        trends.last_seq = heartbeat.seq
        temps = [g.get("temp_c") for g in heartbeat.gpus]
        known = [float(t) for t in temps if isinstance(t, int | float) and math.isfinite(t)]
        if known:
            trends.gpu_temp_c = _ewma(trends.gpu_temp_c, max(known), alpha)
        counts = [g.get("mem_errors") for g in heartbeat.gpus]
        reported = [float(c) for c in counts if isinstance(c, int | float) and math.isfinite(c)]
        if reported:
            total = sum(reported)
            new = trends.memory_error_count is not None and total > trends.memory_error_count
            trends.memory_errors = _ewma(trends.memory_errors or 0.0, float(new), alpha)
            trends.memory_error_count = total
        self._evaluate(heartbeat.peer_id, trends, now)

    def forget(self, peer_id: str) -> None:
        self._peers.pop(peer_id, None)
        self._undrain(peer_id)

    # -- internals -------------------------------------------------------------------------------------------

    def _trends(self, peer_id: str) -> _Trends:
        trends = self._peers.get(peer_id)
        if trends is None:
            trends = self._peers[peer_id] = _Trends()
            while len(self._peers) > self.settings.max_peers:
                forgotten, _ = self._peers.popitem(last=False)
                self._undrain(forgotten)
        else:
            self._peers.move_to_end(peer_id)
        return trends

    def _undrain(self, peer_id: str) -> None:
        if peer_id in self._drained:
            self._drained.discard(peer_id)
            self.drained_version += 1

    def _decay(self, trends: _Trends, now: float) -> float:
        if trends.outcomes_at is None or now <= trends.outcomes_at:
            return 1.0
        return float(0.5 ** ((now - trends.outcomes_at) / self.settings.error_half_life_s))

    def _error_rate(self, trends: _Trends, now: float) -> float | None:
        decay = self._decay(trends, now)
        if trends.outcomes * decay < self.settings.error_min_outcomes:
            return None
        return trends.failures / trends.outcomes

    def _signals(self, trends: _Trends, now: float) -> dict[str, float]:
        s = self.settings
        return {
            "latency": goodness(trends.latency_ms, s.latency_good_ms, s.latency_bad_ms),
            "error_rate": goodness(self._error_rate(trends, now), s.error_rate_good, s.error_rate_bad),
            "jitter": goodness(trends.jitter_s, s.jitter_good_s, s.jitter_bad_s),
            "gpu_temp": goodness(trends.gpu_temp_c, s.gpu_temp_good_c, s.gpu_temp_bad_c),
            "memory_errors": goodness(trends.memory_errors, 0.0, s.memory_errors_bad),
        }

    def _evaluate(self, peer_id: str, trends: _Trends, now: float) -> None:
        signals = self._signals(trends, now)
        score = min(signals.values())
        if trends.points and trends.points[-1][0] >= now:
            trends.points.pop()  # one point per instant: a burst of outcomes is not a trend
        trends.points.append((now, score))
        health = self._health(peer_id, trends, now, signals)
        if trends.drained:
            changed = min(health.score, health.projected) >= self.settings.recover_above
        else:
            changed = health.projected < self.settings.drain_below
        if not changed:
            return
        trends.drained = not trends.drained
        if trends.drained:
            self._drained.add(peer_id)
            self.drained_version += 1
        else:
            self._undrain(peer_id)
        if self._on_change is not None:
            self._on_change(HealthChange(peer_id, trends.drained, now,
                                         PeerHealth(peer_id, health.score, health.projected, health.slope_per_s,
                                                    trends.drained, health.signals)))
