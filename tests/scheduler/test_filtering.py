"""Who is left out, why, and what the API will answer when nobody is left."""

from __future__ import annotations

import pytest

from hyperion_node.p2p.peer_table import PeerState
from hyperion_node.scheduler.candidates import TaskRequirements
from hyperion_node.scheduler.scheduler import DecisionStatus, Outcome, OutcomeKind
from hyperion_node.scheduler.settings import SchedulerSettings
from tests.scheduler.factories import GIB, MODEL, RUNTIME, ManualClock, candidate, scheduler

REQ = TaskRequirements(RUNTIME, MODEL)


@pytest.mark.parametrize(("fields", "requirements", "reason"), [
    ({"state": PeerState.SUSPECT}, REQ, "unreachable"),
    ({"state": PeerState.DEAD}, REQ, "unreachable"),
    ({"state": PeerState.DRAINING}, REQ, "draining"),
    ({"state": PeerState.LEFT}, REQ, "draining"),
    ({"banned": True}, REQ, "banned"),
    ({"price_per_unit": 3e-6}, TaskRequirements(RUNTIME, MODEL, max_price_per_unit=2e-6), "price"),
    ({"free_memory_bytes": 3 * GIB}, TaskRequirements(RUNTIME, MODEL, min_memory_bytes=4 * GIB), "memory"),
    ({"free_memory_bytes": None}, TaskRequirements(RUNTIME, MODEL, min_memory_bytes=1), "memory"),
    ({"active_tasks": 2, "queue_depth": 4}, REQ, "busy"),  # capacity 2, busy_queue_depth 4
    ({"throughput": 10.0, "rtt_ms": 100.0},
     TaskRequirements(RUNTIME, MODEL, deadline=10.0, expected_units=200.0), "too-slow"),  # 0.1 + 20 s > 10 s
])
def test_each_filter_names_its_reason(fields: dict[str, object], requirements: TaskRequirements,
                                      reason: str) -> None:
    decision = scheduler().choose(requirements, [candidate("bad", **fields), candidate("good")], 0.0)
    assert decision.excluded() == {"bad": reason}
    assert decision.excluded_counts == {reason: 1}
    assert decision.peers == ("good",)


@pytest.mark.parametrize(("fields", "requirements"), [
    ({"free_memory_bytes": None}, REQ),  # unknown memory is fine when the task asks for none
    ({"free_memory_bytes": 4 * GIB}, TaskRequirements(RUNTIME, MODEL, min_memory_bytes=4 * GIB)),  # exactly enough
    ({"price_per_unit": 2e-6}, TaskRequirements(RUNTIME, MODEL, max_price_per_unit=2e-6)),  # exactly the limit
    ({"active_tasks": 2, "queue_depth": 3}, REQ),  # full slots, but room in its queue
    ({"throughput": None}, TaskRequirements(RUNTIME, MODEL, deadline=10.0, expected_units=1e9)),  # unmeasured
    ({"throughput": 100.0, "rtt_ms": 100.0}, TaskRequirements(RUNTIME, MODEL, deadline=10.0, expected_units=900.0)),
])
def test_candidates_at_the_limit_are_kept(fields: dict[str, object], requirements: TaskRequirements) -> None:
    decision = scheduler().choose(requirements, [candidate("edge", **fields)], 0.0)
    assert decision.peers == ("edge",)
    assert decision.excluded() == {}


def test_the_first_reason_in_precedence_order_is_given() -> None:
    req = TaskRequirements(RUNTIME, MODEL, max_price_per_unit=1e-6, min_memory_bytes=4 * GIB)
    both = candidate("a", price_per_unit=5e-6, free_memory_bytes=GIB)
    gone = candidate("b", price_per_unit=5e-6, state=PeerState.DEAD, banned=True)
    decision = scheduler().choose(req, [both, gone], 0.0)
    assert decision.excluded() == {"a": "price", "b": "unreachable"}


def test_a_busy_answer_keeps_a_peer_out_for_the_backoff() -> None:
    clock = ManualClock(100.0)
    s = scheduler(clock=clock, settings=SchedulerSettings(busy_backoff_s=2.0))
    s.record_outcome("a", MODEL, Outcome(OutcomeKind.BUSY))
    assert s.choose(REQ, [candidate("a"), candidate("b")], 101.9).excluded() == {"a": "busy"}
    assert set(s.choose(REQ, [candidate("a"), candidate("b")], 102.0).peers) == {"a", "b"}


def test_tried_peers_are_skipped_for_failover() -> None:
    decision = scheduler().choose(TaskRequirements(RUNTIME, MODEL, exclude=frozenset({"a"})),
                                  [candidate("a"), candidate("b")], 0.0)
    assert decision.peers == ("b",)
    assert decision.excluded() == {"a": "already-tried"}


def test_no_peer_serves_the_model() -> None:
    for candidates in ([], [candidate("x", item="other-model")]):
        decision = scheduler().choose(REQ, candidates, 0.0)
        assert decision.status is DecisionStatus.NO_PROVIDER
        assert decision.message == f"no peer serves {RUNTIME}/{MODEL}"
    decision = scheduler().choose(REQ, [candidate("a", state=PeerState.DEAD), candidate("b", state=PeerState.LEFT)],
                                  0.0)
    assert decision.status is DecisionStatus.NO_PROVIDER
    assert decision.message == f"no peer serves {RUNTIME}/{MODEL} (2 known but unreachable, draining or banned)"


def test_all_busy_says_when_to_retry() -> None:
    clock = ManualClock(10.0)
    s = scheduler(clock=clock)
    s.record_outcome("a", MODEL, Outcome(OutcomeKind.BUSY))  # back at 12.0
    decision = s.choose(REQ, [candidate("a"), candidate("b", active_tasks=2, queue_depth=9),
                              candidate("c", state=PeerState.DEAD)], 10.5)
    assert decision.status is DecisionStatus.ALL_BUSY
    assert decision.ranked == ()
    assert decision.retry_after_s == pytest.approx(1.5)
    assert decision.message.startswith(f"all peers serving {RUNTIME}/{MODEL} are busy or failing (")


def test_no_match_when_live_peers_cannot_meet_the_request() -> None:
    decision = scheduler().choose(TaskRequirements(RUNTIME, MODEL, max_price_per_unit=1e-9),
                                  [candidate("a"), candidate("b")], 0.0)
    assert decision.status is DecisionStatus.NO_MATCH
    assert decision.retry_after_s is None
    assert "2 price" in decision.message


def test_a_passed_deadline_excludes_everyone() -> None:
    decision = scheduler().choose(TaskRequirements(RUNTIME, MODEL, deadline=5.0), [candidate("a")], 5.0)
    assert decision.status is DecisionStatus.DEADLINE
    assert decision.excluded() == {"a": "deadline-passed"}
