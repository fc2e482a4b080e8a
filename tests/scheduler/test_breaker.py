"""Circuit breaker transitions on trio's virtual clock (MockClock, autojump): trio.sleep moves time, instantly."""

from __future__ import annotations

import trio
import trio.testing

from hyperion_node.scheduler.breaker import BreakerState, BreakerTransition, CircuitBreaker
from hyperion_node.scheduler.candidates import TaskRequirements
from hyperion_node.scheduler.scheduler import DecisionStatus, Outcome, OutcomeKind, Scheduler, SchedulerEvent
from hyperion_node.scheduler.settings import BreakerSettings, SchedulerSettings
from tests.scheduler.factories import MODEL, RUNTIME, candidate

SETTINGS = BreakerSettings(consecutive_failures=3, failure_rate=0.5, window_s=60.0, min_calls=6, cooldown_s=10.0,
                           backoff_factor=2.0, max_cooldown_s=35.0, half_open_probes=1)


def breaker(events: list[BreakerTransition], settings: BreakerSettings = SETTINGS) -> CircuitBreaker:
    return CircuitBreaker("peer", settings, clock=trio.current_time, on_transition=events.append)


def moves(events: list[BreakerTransition]) -> list[tuple[str, str, str, float]]:
    return [(e.old.value, e.new.value, e.reason, e.at) for e in events]


async def test_closed_open_half_open_closed(autojump_clock: trio.testing.MockClock) -> None:
    events: list[BreakerTransition] = []
    b = breaker(events)
    start = trio.current_time()
    b.record_failure()
    b.record_failure()
    assert b.state is BreakerState.CLOSED
    assert b.allows()
    b.record_failure()  # the third in a row
    assert b.state is BreakerState.OPEN
    assert not b.allows()
    assert not b.acquire()
    assert b.retry_at == start + 10.0

    await trio.sleep(9.999)
    assert b.state is BreakerState.OPEN
    await trio.sleep(0.001)
    assert b.state is BreakerState.HALF_OPEN
    assert b.acquire()  # the probe
    assert not b.acquire()
    assert not b.allows()
    await trio.sleep(1.0)
    b.record_success()
    assert b.state is BreakerState.CLOSED
    assert b.allows()
    assert moves(events) == [
        ("closed", "open", "consecutive-failures", start),
        ("open", "half-open", "cool-down-over", start + 10.0),
        ("half-open", "closed", "probe-succeeded", start + 11.0),
    ]
    assert events[0].cooldown_s == 10.0


async def test_a_success_resets_the_run_of_failures(autojump_clock: trio.testing.MockClock) -> None:
    runs_only = BreakerSettings(consecutive_failures=3, min_calls=1000)  # the rate rule out of reach
    b = breaker([], runs_only)
    for _ in range(10):
        b.record_failure()
        b.record_failure()
        b.record_success()
    assert b.state is BreakerState.CLOSED
    b.record_failure()
    b.record_failure()
    b.record_failure()
    assert b.state is BreakerState.OPEN


async def test_failure_rate_over_the_window_opens_it(autojump_clock: trio.testing.MockClock) -> None:
    events: list[BreakerTransition] = []
    b = breaker(events)
    for _ in range(2):
        b.record_failure()
        b.record_success()
    b.record_failure()
    assert b.state is BreakerState.CLOSED  # 3 of 5: below min_calls
    b.record_success()
    b.record_failure()  # 4 failures of 7, no run of three
    assert b.state is BreakerState.OPEN
    assert [e.reason for e in events] == ["failure-rate"]


async def test_old_outcomes_leave_the_window(autojump_clock: trio.testing.MockClock) -> None:
    events: list[BreakerTransition] = []
    b = breaker(events)
    for _ in range(2):
        b.record_failure()
        b.record_failure()
        b.record_success()
    await trio.sleep(61.0)  # those six are out of the 60 s window
    for _ in range(5):
        b.record_success()
    b.record_failure()
    assert b.state is BreakerState.CLOSED  # 1 of 6 counted, not 5 of 12
    assert events == []


async def test_a_failed_probe_reopens_with_a_longer_cool_down(autojump_clock: trio.testing.MockClock) -> None:
    events: list[BreakerTransition] = []
    b = breaker(events)
    for _ in range(3):
        b.record_failure()
    cooldowns = []
    for _ in range(4):
        opened = trio.current_time()
        await trio.sleep(b.retry_at - opened)  # type: ignore[operator]
        cooldowns.append(trio.current_time() - opened)
        assert b.acquire()
        b.record_failure()
        assert b.state is BreakerState.OPEN
    assert cooldowns == [10.0, 20.0, 35.0, 35.0]  # doubled, capped at max_cooldown_s
    await trio.sleep(35.0)
    assert b.acquire()
    b.record_success()
    assert b.state is BreakerState.CLOSED
    assert b.cooldown_s == 10.0  # a closed breaker starts again from the base cool-down
    assert [e.reason for e in events].count("probe-failed") == 4


async def test_a_probe_that_ends_without_a_verdict_frees_its_slot(autojump_clock: trio.testing.MockClock) -> None:
    b = breaker([])
    for _ in range(3):
        b.record_failure()
    await trio.sleep(10.0)
    assert b.acquire()
    assert not b.acquire()
    b.release()  # it answered BUSY
    assert b.state is BreakerState.HALF_OPEN
    assert b.acquire()


async def test_the_scheduler_skips_an_open_breaker_and_probes_it_back(autojump_clock: trio.testing.MockClock) -> None:
    events: list[SchedulerEvent] = []
    s = Scheduler(SchedulerSettings(breaker=SETTINGS), clock=trio.current_time, on_event=events.append)
    req = TaskRequirements(RUNTIME, MODEL)
    peers = [candidate("flaky", rtt_ms=1.0), candidate("steady", rtt_ms=200.0)]
    for _ in range(3):
        assert s.begin("flaky")
        s.record_outcome("flaky", MODEL, Outcome(OutcomeKind.UNREACHABLE))

    decision = s.choose(req, peers, trio.current_time())
    assert decision.peers == ("steady",)
    assert decision.excluded() == {"flaky": "breaker-open"}
    alone = s.choose(req, peers[:1], trio.current_time())
    assert alone.status is DecisionStatus.ALL_BUSY
    assert alone.retry_after_s == 10.0

    await trio.sleep(10.0)
    decision = s.choose(req, peers, trio.current_time())
    probe = {c.peer_id: c.probe for c in decision.ranked}
    assert probe == {"flaky": True, "steady": False}
    assert s.begin("flaky")
    assert not s.begin("flaky")  # its one probe slot is taken: the requester moves on
    assert s.choose(req, peers, trio.current_time()).excluded() == {"flaky": "breaker-open"}
    s.record_outcome("flaky", MODEL, Outcome(OutcomeKind.SUCCESS, ttft_s=0.1, units_per_s=50.0))
    decision = s.choose(req, peers, trio.current_time())
    assert {c.peer_id: c.probe for c in decision.ranked} == {"flaky": False, "steady": False}
    assert [(e.new.value, e.reason) for e in events if isinstance(e, BreakerTransition)] == [
        ("open", "consecutive-failures"), ("half-open", "cool-down-over"), ("closed", "probe-succeeded")]


async def test_busy_and_cancelled_are_not_faults(autojump_clock: trio.testing.MockClock) -> None:
    s = Scheduler(SchedulerSettings(breaker=SETTINGS), clock=trio.current_time)
    for kind in [OutcomeKind.BUSY, OutcomeKind.CANCELLED] * 5:
        s.record_outcome("p", MODEL, Outcome(kind))
    assert s.breaker("p").state is BreakerState.CLOSED
    for kind in (OutcomeKind.FAILED, OutcomeKind.TIMEOUT, OutcomeKind.UNREACHABLE):
        s.record_outcome("p", MODEL, Outcome(kind))
    assert s.breaker("p").state is BreakerState.OPEN
