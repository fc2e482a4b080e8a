"""The dashboards' time series and view as pure code: counters in, rates, quantiles and rows out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperion_node.dashboard.series import Counters, SeriesRing, counters_from, quantile
from hyperion_node.dashboard.service import reward_totals
from hyperion_node.dashboard.view import TaskDistribution, build_view, local_row, peer_row
from hyperion_node.tasks.metrics import BUCKETS_S, Histogram, TaskMetrics


def metrics_with(*tasks: tuple[str, str, str, float]) -> TaskMetrics:
    m = TaskMetrics()
    for runtime, side, outcome, seconds in tasks:
        m.record(runtime, side, outcome, seconds)
    return m


def sample(t: float, metrics: TaskMetrics, **rewards: float) -> Counters:
    return counters_from(metrics, t=t, rewards=rewards, peers_alive=1, load=(0, 0))


def test_rates_are_tasks_per_second_over_the_window() -> None:
    ring = SeriesRing(capacity=100, window=5)
    m = TaskMetrics()
    for t in range(11):  # one requester-side completion per second, two served per second
        m.record("inference", "requester", "completed", 0.2)
        m.record("inference", "worker", "completed", 0.1)
        m.record("zk-groth16", "worker", "completed", 0.1)
        ring.add(sample(float(t), m))
    last = ring.points()[-1]
    assert last["routed_per_s"] == pytest.approx(1.0)
    assert last["served_per_s"] == pytest.approx(2.0)
    assert last["failed_per_s"] == 0.0


def test_failures_count_but_refusals_and_cancellations_do_not() -> None:
    ring = SeriesRing(window=1)
    ring.add(sample(0.0, TaskMetrics()))
    m = metrics_with(("inference", "requester", "failed", 1.0), ("inference", "worker", "busy", 0.0),
                     ("inference", "worker", "cancelled", 0.5), ("inference", "worker", "runtime_error", 0.5))
    point = ring.add(sample(1.0, m))
    assert point["failed_per_s"] == pytest.approx(2.0)
    assert ring.latest is not None
    assert ring.latest.failed == {"requester": 1, "worker": 1}


def test_latency_reflects_only_tasks_in_the_window_and_is_none_without_any() -> None:
    ring = SeriesRing(window=1)
    m = metrics_with(*[("inference", "requester", "completed", 30.0)] * 10)  # slow tasks, long ago
    ring.add(sample(0.0, m))
    for _ in range(10):
        m.record("inference", "requester", "completed", 0.07)  # all in the (0.05, 0.1] bucket
    point = ring.add(sample(1.0, m))
    assert 50 < point["routed_p50_ms"] <= 100
    assert 50 < point["routed_p95_ms"] <= 100
    assert ring.add(sample(2.0, m))["routed_p95_ms"] is None  # nothing finished: a gap, not 0


@given(st.lists(st.sampled_from([*BUCKETS_S, 0.01, 500.0]), min_size=1, max_size=50),
       st.floats(min_value=0.0, max_value=1.0))
def test_quantile_lies_within_the_bucket_of_the_true_quantile(values: list[float], q: float) -> None:
    h = Histogram()
    for v in values:
        h.observe(v)
    got = quantile(h, q)
    assert got is not None
    assert 0.0 <= got <= BUCKETS_S[-1]
    assert quantile(h, 0.0) is not None
    assert got >= quantile(h, 0.0)
    assert got <= quantile(h, 1.0)  # type: ignore[operator]


def test_ring_is_bounded_and_answers_since() -> None:
    ring = SeriesRing(capacity=10, window=3)
    for t in range(100):
        ring.add(sample(float(t), TaskMetrics()))
    points = ring.points()
    assert len(points) == 10
    assert points[0]["t"] == 90.0
    assert [p["t"] for p in ring.points(since=97.0)] == [98.0, 99.0]
    with pytest.raises(ValueError, match="not after"):
        ring.add(sample(99.0, TaskMetrics()))


def test_counters_before_the_orchestrator_runs_are_zero() -> None:
    c = counters_from(None, t=1.0, rewards={}, peers_alive=0, load=(2, 1))
    assert c.completed == {"requester": 0, "worker": 0}
    assert (c.queued, c.running) == (2, 1)


def test_reward_totals_match_the_rewards_command() -> None:
    atto = 10**18
    rows = [("worker", "settled", str(3 * atto)), ("worker", "pending", str(atto // 2)),
            ("worker", "disputed", str(atto)), ("requester", "settled", str(2 * atto)),
            ("requester", "pending", str(atto))]
    assert reward_totals(rows) == {"earned": 3.0, "pending": 0.5, "disputed": 1.0, "spent": 2.0}


def test_distribution_counts_requester_side_final_states_by_worker() -> None:
    d = TaskDistribution()
    d.seed([("w1", "inference", "completed", 3), ("w2", "inference", "failed", 1), (None, "inference", "failed", 4)])
    d.observe("task.completed", {"role": "requester", "worker": "w2", "runtime": "zk-groth16"})
    d.observe("task.completed", {"role": "worker", "worker": "w2", "runtime": "inference"})  # served, not routed
    d.observe("task.running", {"role": "requester", "worker": "w1", "runtime": "inference"})
    rows = d.to_json({"w1": "one"})
    assert [(r["peer_id"], r["name"], r["completed"], r["failed"]) for r in rows] == \
        [("w1", "one", 3, 0), ("w2", "", 1, 1)]
    assert rows[0]["share"] == 0.75
    assert rows[1]["runtimes"] == {"zk-groth16": 1}


PEER = {
    "peer_id": "12D3KooWpeer", "name": "gpu-box", "state": "alive", "addrs": ["/ip4/10.0.0.2/tcp/4001"],
    "connected": True, "sources": ["bootstrap"], "last_seen_s_ago": 0.4, "rtt_ms": 2.5, "clock_skew_s": 0.1,
    "score": 1.0, "offences": {},
    "telemetry": {"queue_depth": 1, "active_tasks": 2, "ram_available_bytes": 10, "health": 1.0,
                  "gpus": [{"util": 80, "vram_free": 5, "temp_c": 70, "power_w": 300.0, "extra": "x"}]},
    "offers": [{"runtime": "inference", "item": "m", "unit": "token", "price": 1.0, "capacity": 2,
                "throughput": 9.0}],
    "hardware": {"cpu": "EPYC", "cores": 64, "ram_bytes": 2**40, "gpus": [{"name": "H200", "vram_bytes": 2**37}],
                 "secret": "x"},
}


def test_view_is_an_allow_list() -> None:
    row = peer_row(PEER)
    assert "addrs" not in row
    assert "sources" not in row
    assert "secret" not in row["hardware"]
    assert "extra" not in row["telemetry"]["gpus"][0]
    assert row["telemetry"]["gpus"][0] == {"util": 80, "vram_free": 5, "temp_c": 70, "power_w": 300.0}


def test_view_puts_this_node_first_and_attributes_routed_tasks() -> None:
    ring = SeriesRing()
    ring.add(sample(1.0, metrics_with(("inference", "requester", "completed", 0.3)), earned=0.5))
    d = TaskDistribution()
    d.observe("task.completed", {"role": "requester", "worker": "12D3KooWpeer", "runtime": "inference"})
    local = local_row(peer_id="12D3KooWme", name="gw", hardware_ad={"cores": 2, "ram_bytes": 1, "gpus": []},
                      telemetry_ad={}, load=(0, 1), offers=[])
    dead = {**PEER, "peer_id": "12D3KooWdead", "name": "a-dead", "state": "dead"}
    view = build_view(node={"peer_id": "12D3KooWme", "name": "gw"}, local=local, peers=[dead, PEER],
                      distribution=d, ring=ring, now=2.0, last_event_id=7)
    assert [n["peer_id"] for n in view["nodes"]] == ["12D3KooWme", "12D3KooWpeer", "12D3KooWdead"]
    assert view["nodes"][1]["routed"] == {"completed": 1, "failed": 0}
    assert view["distribution"][0]["name"] == "gpu-box"
    assert view["totals"]["routed_completed"] == 1
    assert view["rewards"]["earned"] == 0.5
    assert view["peers_alive"] == 1
    assert view["nodes_total"] == 3
    assert view["last_event_id"] == 7
    assert view["nodes"][0]["telemetry"]["active_tasks"] == 1
