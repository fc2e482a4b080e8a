"""The whole decision: short-list selection, failover order, the breakdown the API shows."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from hyperion_node.p2p.messages import Heartbeat
from hyperion_node.p2p.peer_table import PeerState
from hyperion_node.scheduler.candidates import CandidateSet, TaskRequirements, local_candidate
from hyperion_node.scheduler.scheduler import Outcome, OutcomeKind
from hyperion_node.scheduler.scoring import score
from hyperion_node.scheduler.settings import AdaptiveSettings, SchedulerSettings
from hyperion_node.scheduler.weights import Weights
from tests.scheduler.factories import GIB, MODEL, RUNTIME, ManualClock, candidate, offer, scheduler

REQ = TaskRequirements(RUNTIME, MODEL)
MCDA_ONLY = SchedulerSettings(adaptive=AdaptiveSettings(weight=0.0, exploration_rate=0.0))


def random_candidates(n: int, seed: int) -> list:  # type: ignore[type-arg]
    rng = random.Random(seed)
    return [candidate(f"p{i:05d}", price_per_unit=rng.uniform(0, 2e-6), capacity=rng.choice([1, 2, 4]),
                      throughput=rng.choice([None, rng.uniform(5, 200)]), free_memory_bytes=rng.randrange(1, 80) * GIB,
                      active_tasks=rng.randrange(4), queue_depth=rng.randrange(4),
                      rtt_ms=rng.choice([None, rng.uniform(1, 300)]), reliability=rng.random(),
                      state=rng.choice([PeerState.ALIVE] * 8 + [PeerState.DEAD, PeerState.DRAINING]))
            for i in range(n)]


def reference_ranking(candidates: list, req: TaskRequirements, settings: SchedulerSettings) -> list[str]:  # type: ignore[type-arg]
    """The slow, obvious way: Python filters, then a full sort by the MCDA score."""
    eligible = [c for c in candidates if c.state is PeerState.ALIVE
                and (req.max_price_per_unit is None or c.price_per_unit <= req.max_price_per_unit)
                and (c.free_memory_bytes or 0) >= req.min_memory_bytes
                and not (c.active_tasks >= c.capacity and c.queue_depth >= settings.busy_queue_depth)]
    matrix = np.array([
        [float(c.free_memory_bytes or 0) for c in eligible],
        [(c.active_tasks + c.queue_depth) / c.capacity for c in eligible],
        [settings.unknown_rtt_ms if c.rtt_ms is None else c.rtt_ms for c in eligible],
        [c.throughput or 0.0 for c in eligible],
        [c.price_per_unit for c in eligible],
        [c.reliability for c in eligible],
    ])
    scores = score(matrix, settings.weights)
    return [c.peer_id for _, c in sorted(zip(scores, eligible, strict=True), key=lambda p: (-p[0], p[1].peer_id))]


@pytest.mark.parametrize("n", [1, 8, 9, 3000])
def test_the_short_list_is_the_top_of_a_full_sort(n: int) -> None:
    candidates = random_candidates(n, seed=n)
    req = TaskRequirements(RUNTIME, MODEL, min_memory_bytes=4 * GIB, max_price_per_unit=1.5e-6)
    decision = scheduler(settings=MCDA_ONLY).choose(req, CandidateSet(RUNTIME, MODEL, candidates), 0.0)
    expected = reference_ranking(candidates, req, MCDA_ONLY)[: MCDA_ONLY.shortlist_size]
    assert list(decision.peers) == expected
    assert all(0.0 <= c.mcda <= 1.0 for c in decision.ranked)


def test_failover_walks_the_list_and_learns_from_it() -> None:
    clock = ManualClock(0.0)
    s = scheduler(clock=clock, settings=MCDA_ONLY)
    peers = [candidate("first", rtt_ms=5.0), candidate("second", rtt_ms=50.0), candidate("third", rtt_ms=150.0)]
    decision = s.choose(REQ, peers, 0.0)
    assert decision.peers == ("first", "second", "third")
    # The requester tries them in order: the first is busy, the second unreachable, the third serves.
    results = {"first": OutcomeKind.BUSY, "second": OutcomeKind.UNREACHABLE, "third": OutcomeKind.SUCCESS}
    served = None
    for choice in decision.ranked:
        assert s.begin(choice.peer_id)
        s.record_outcome(choice.peer_id, MODEL, Outcome(results[choice.peer_id], ttft_s=0.3, units_per_s=30.0))
        if results[choice.peer_id] is OutcomeKind.SUCCESS:
            served = choice.peer_id
            break
    assert served == "third"
    stats = s.adaptive.stats("third", MODEL)
    assert stats is not None
    assert (stats.successes, stats.ttft_s, stats.units_per_s) == (1.0, 0.3, 30.0)
    second = s.adaptive.stats("second", MODEL)
    assert second is not None
    assert second.failures == 1.0
    assert s.adaptive.stats("first", MODEL) is None  # BUSY says nothing about how it serves
    assert s.choose(REQ, peers, 1.0).excluded() == {"first": "busy"}


def test_the_local_node_wins_when_all_else_is_equal() -> None:
    me = local_candidate("me", offer(), free_memory_bytes=8 * GIB)
    decision = scheduler(settings=MCDA_ONLY).choose(REQ, [candidate("remote", rtt_ms=40.0), me], 0.0)
    assert decision.peers == ("me", "remote")
    assert decision.ranked[0].criteria["rtt"] == 1.0


def test_weights_change_the_choice() -> None:
    cheap_far = candidate("cheap", price_per_unit=1e-7, rtt_ms=250.0)
    dear_near = candidate("near", price_per_unit=2e-6, rtt_ms=5.0)
    price_first = SchedulerSettings(weights=Weights(price=1.0, rtt=0.1, memory=0, jobs=0, throughput=0,
                                                    reliability=0), adaptive=MCDA_ONLY.adaptive)
    rtt_first = SchedulerSettings(weights=Weights(price=0.1, rtt=1.0, memory=0, jobs=0, throughput=0,
                                                  reliability=0), adaptive=MCDA_ONLY.adaptive)
    assert scheduler(settings=price_first).choose(REQ, [cheap_far, dear_near], 0.0).peers[0] == "cheap"
    assert scheduler(settings=rtt_first).choose(REQ, [cheap_far, dear_near], 0.0).peers[0] == "near"


def test_the_decision_serialises_for_the_api() -> None:
    decision = scheduler().choose(TaskRequirements(RUNTIME, MODEL, max_price_per_unit=1e-6),
                                  [candidate("a"), candidate("b", price_per_unit=1.0)], 0.0)
    body = json.loads(json.dumps(decision.to_json(with_excluded=True)))
    assert body["status"] == "ok"
    assert body["excluded"] == {"b": "price"}
    assert [c["peer_id"] for c in body["ranked"]] == ["a"]
    assert set(body["ranked"][0]["criteria"]) == {"memory", "jobs", "rtt", "throughput", "price", "reliability"}
    assert body["message"] == f"1 of 2 peers serving {RUNTIME}/{MODEL} short-listed"


def test_one_kept_set_follows_busy_answers_breakers_health_and_membership() -> None:
    """The scheduler caches, per candidate set, which columns its own view of the peers (BUSY answers, open
    breakers, drained health) keeps out; every change to either side must show in the next decision."""
    clock = ManualClock()
    s = scheduler(clock=clock)
    cset = CandidateSet(RUNTIME, MODEL, [candidate(p) for p in "abdc"])

    def excluded(now: float | None = None) -> dict[str, str]:
        return s.choose(REQ, cset, clock.now if now is None else now).excluded()

    assert excluded() == {}
    s.record_outcome("a", MODEL, Outcome(OutcomeKind.BUSY, at=0.0))
    assert excluded() == {"a": "busy"}
    assert excluded(s.settings.busy_backoff_s + 0.1) == {}  # its back-off is over
    for _ in range(s.settings.breaker.consecutive_failures):
        s.record_outcome("b", MODEL, Outcome(OutcomeKind.UNREACHABLE, at=clock.now))
    assert excluded() == {"b": "breaker-open"}
    clock.now += s.settings.breaker.cooldown_s + 0.1
    decision = s.choose(REQ, cset, clock.now)
    assert decision.excluded() == {}
    assert {c.peer_id: c.probe for c in decision.ranked}["b"]  # half-open: its request is the probe
    hot = Heartbeat(peer_id="c", seq=1, time=0.0, name="", addrs=(), health="ok", queue_depth=0, active_tasks=0,
                    ram_available_bytes=GIB, gpus=({"temp_c": 99.0, "mem_errors": 0},))
    s.observe_heartbeat(hot, clock.now)
    assert s.health.is_drained("c")
    assert excluded() == {"c": "unhealthy"}
    cset.discard("a")  # the last column, c's, moves into a's place
    cset.upsert(candidate("e"))
    assert excluded() == {"c": "unhealthy"}
    s.health.forget("c")
    assert excluded() == {}
