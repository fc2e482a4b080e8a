"""Gossip limits charge a burst to the peer that made it, never to an origin whose old messages are replayed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hyperion_node.p2p.limits import Freshness, HeartbeatGate, RateLimiter


def gate() -> HeartbeatGate:
    return HeartbeatGate(rate=5.0, burst=10.0, max_age=60.0, max_skew=60.0)


def test_a_replayed_heartbeat_is_stale_not_an_offence() -> None:
    g = gate()
    assert g.check("w", 10, 1000.0, wall_now=1000.0) is Freshness.NEW
    # 235 copies of earlier heartbeats, all at once: each is stale, none counts toward the origin's rate.
    for seq in range(1, 236):
        assert g.check("w", seq % 10, 1000.0 - seq, wall_now=1000.5) is Freshness.STALE
    assert g.check("w", 11, 1001.0, wall_now=1001.0) is Freshness.NEW


def test_a_joining_nodes_backlog_passes_however_fast_it_arrives() -> None:
    """148 heartbeats of one origin sent once a second, delivered within one second of our clock."""
    g = gate()
    verdicts = {g.check("w", seq, 1000.0 - 148 + seq, wall_now=1000.5) for seq in range(1, 149)}
    assert verdicts <= {Freshness.NEW, Freshness.STALE}
    assert Freshness.NEW in verdicts


def test_an_origin_signing_faster_than_its_rate_is_at_fault() -> None:
    g = gate()
    verdicts = [g.check("flood", seq, 1000.0 + seq * 0.01, wall_now=1000.0) for seq in range(1, 40)]
    assert verdicts[:10] == [Freshness.NEW] * 10  # the burst
    assert Freshness.TOO_FREQUENT in verdicts[10:]


def test_old_and_future_heartbeats() -> None:
    g = gate()
    assert g.check("w", 1, 900.0, wall_now=1000.0) is Freshness.STALE  # older than max_age: says nothing now
    assert g.check("w", 2, 1100.0, wall_now=1000.0) is Freshness.FUTURE


def test_gate_memory_is_bounded() -> None:
    g = HeartbeatGate(rate=1.0, burst=1.0, max_age=60.0, max_skew=60.0, max_keys=100)
    for i in range(1000):
        g.check(f"p{i}", 1, 0.0, wall_now=0.0)
    assert len(g) == 100


@given(st.lists(st.tuples(st.integers(0, 50), st.floats(0, 200)), max_size=200))
def test_rate_limiter_never_allows_more_than_burst_plus_rate(events: list[tuple[int, float]]) -> None:
    limiter = RateLimiter(rate=2.0, burst=4.0)
    times = sorted(t for _, t in events)
    allowed = sum(limiter.allow("k", t) for t in times)
    if times:
        assert allowed <= 4 + 2.0 * (times[-1] - times[0]) + 1e-9
