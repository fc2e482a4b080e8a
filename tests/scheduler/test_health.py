"""Predictive health on trio's virtual clock: a peer whose health falls gets no new work before it fails, and
gets work again once it has recovered. Heartbeats arrive every 2 s of virtual time, as p2p.heartbeat_interval_s."""

from __future__ import annotations

import random

import trio
import trio.testing

from hyperion_node.scheduler.candidates import TaskRequirements
from hyperion_node.scheduler.health import HealthChange
from hyperion_node.scheduler.scheduler import Outcome, OutcomeKind, Scheduler, SchedulerEvent
from hyperion_node.scheduler.settings import HealthSettings, SchedulerSettings
from tests.scheduler.factories import MODEL, RUNTIME, candidate, heartbeat

REQ = TaskRequirements(RUNTIME, MODEL)
PEERS = [candidate("sick"), candidate("well")]
BAD_C = HealthSettings().gpu_temp_bad_c


class Node:
    """The scheduler of a requester, fed heartbeats of both peers as the P2P layer would."""

    def __init__(self, health: HealthSettings | None = None) -> None:
        self.events: list[SchedulerEvent] = []
        self.scheduler = Scheduler(SchedulerSettings(health=health or HealthSettings()), rng=random.Random(0),
                                   clock=trio.current_time, on_event=self.events.append)
        self.seq = 0

    async def beat(self, sick_gpu: dict[str, float] | None = None, *, every: float = 2.0) -> None:
        await trio.sleep(every)
        self.seq += 1
        self.scheduler.observe_heartbeat(heartbeat("sick", self.seq, gpus=(sick_gpu or {"temp_c": 65.0},)))
        self.scheduler.observe_heartbeat(heartbeat("well", self.seq, gpus=({"temp_c": 65.0},)))

    def serves(self, peer: str) -> bool:
        decision = self.scheduler.choose(REQ, PEERS, trio.current_time())
        assert "well" in decision.peers  # the control: the healthy peer is never taken out
        return peer in decision.peers

    def changes(self) -> list[tuple[str, bool]]:
        return [(e.peer_id, e.drained) for e in self.events if isinstance(e, HealthChange)]


async def heat_until_drained(node: Node) -> tuple[float, float, float]:
    """Steady at 70 degrees for 20 s, then half a degree per second; (time, temperature, health) at the drain."""
    start = trio.current_time()
    temp = 70.0
    while node.serves("sick"):
        assert temp < BAD_C + 10, "never drained"
        if trio.current_time() - start >= 20.0:
            temp += 1.0
        await node.beat({"temp_c": temp})
    return trio.current_time() - start, temp, node.scheduler.health.health("sick", trio.current_time()).score


async def test_a_heating_gpu_is_drained_before_it_fails_and_comes_back_cool(
        autojump_clock: trio.testing.MockClock) -> None:
    node = Node()
    _, temp, score = await heat_until_drained(node)
    assert temp < BAD_C - 3  # well before the temperature it fails at
    assert score >= HealthSettings().drain_below  # its health was still above the threshold: the trend drained it

    cooled = trio.current_time()
    while not node.serves("sick"):
        assert trio.current_time() - cooled < 60.0, "never recovered"
        await node.beat({"temp_c": 70.0})
    health = node.scheduler.health.health("sick", trio.current_time())
    assert health.score >= HealthSettings().recover_above
    assert node.changes() == [("sick", True), ("sick", False)]


async def test_the_trend_drains_earlier_than_the_level_alone(autojump_clock: trio.testing.MockClock) -> None:
    drained_at, temp, _ = await heat_until_drained(Node())
    level_drained_at, level_temp, level_score = await heat_until_drained(Node(HealthSettings(horizon_s=0.0)))
    assert level_drained_at > drained_at
    assert level_temp > temp
    assert level_score < HealthSettings().drain_below


async def test_hysteresis_keeps_a_drained_peer_out_until_it_has_really_recovered(
        autojump_clock: trio.testing.MockClock) -> None:
    node = Node()
    await heat_until_drained(node)
    # 84.8 degrees is a health of 0.6: above drain_below (0.5), below recover_above (0.75).
    for _ in range(30):
        await node.beat({"temp_c": 84.8})
        assert not node.serves("sick")
    for _ in range(10):
        await node.beat({"temp_c": 82.0})  # health 0.83
    assert node.serves("sick")
    assert node.changes() == [("sick", True), ("sick", False)]


async def test_a_peer_steady_at_middling_health_keeps_its_work(autojump_clock: trio.testing.MockClock) -> None:
    """Not falling, and above drain_below: nothing to predict."""
    node = Node()
    for _ in range(60):
        await node.beat({"temp_c": 84.8})
        assert node.serves("sick")
    assert node.changes() == []


async def test_a_rising_error_rate_drains_before_the_breaker_opens(autojump_clock: trio.testing.MockClock) -> None:
    node = Node()
    outcomes = 0
    while node.serves("sick"):
        outcomes += 1
        assert outcomes < 60, "never drained"
        # One task in three fails: no run of five, and under the breaker's 50 %.
        kind = OutcomeKind.FAILED if outcomes % 3 == 0 else OutcomeKind.SUCCESS
        node.scheduler.record_outcome("sick", MODEL, Outcome(kind, ttft_s=0.1, units_per_s=40.0))
        await node.beat()
    assert node.scheduler.breaker("sick").allows()
    assert node.scheduler.choose(REQ, PEERS, trio.current_time()).excluded() == {"sick": "unhealthy"}
    # Given no work, its outcomes fade until there are too few to judge it by: it gets work again.
    drained = trio.current_time()
    while not node.serves("sick"):
        assert trio.current_time() - drained < 300.0, "never recovered"
        await node.beat()


async def test_a_burst_of_failures_is_left_to_the_breaker(autojump_clock: trio.testing.MockClock) -> None:
    node = Node()
    for _ in range(3):
        node.scheduler.record_outcome("sick", MODEL, Outcome(OutcomeKind.FAILED))
        await node.beat()
    assert not node.scheduler.health.is_drained("sick")


async def test_a_new_memory_error_drains_at_once(autojump_clock: trio.testing.MockClock) -> None:
    node = Node()
    for _ in range(3):
        await node.beat({"temp_c": 65.0, "mem_errors": 0.0})
    assert node.serves("sick")
    await node.beat({"temp_c": 65.0, "mem_errors": 1.0})
    assert not node.serves("sick")
    assert node.scheduler.health.health("sick", trio.current_time()).worst == "memory_errors"
    recovering = trio.current_time()
    while not node.serves("sick"):  # no new errors: the fading average lets it back
        assert trio.current_time() - recovering < 120.0, "never recovered"
        await node.beat({"temp_c": 65.0, "mem_errors": 1.0})


async def test_late_heartbeats_drain_and_early_ones_do_not(autojump_clock: trio.testing.MockClock) -> None:
    """A heartbeat due every 2 s that arrives 7.5 s after the last one, again and again, is a sick peer's; one
    pushed early because the peer's load changed (0.3 s after the last) is not."""
    node = Node()
    for _ in range(20):
        await node.beat()
    seq = 100
    for i in range(20):  # busy and well: every other heartbeat early, the rest on time
        await trio.sleep(0.3 if i % 2 else 2.0)
        seq += 1
        node.scheduler.observe_heartbeat(heartbeat("sick", seq, every_s=2.0, time=trio.current_time()))
    assert node.serves("sick")
    for i in range(20):
        await trio.sleep(0.5 if i % 2 else 7.5)
        seq += 1
        node.scheduler.observe_heartbeat(heartbeat("sick", seq, every_s=2.0, time=trio.current_time()))
    assert not node.serves("sick")
    assert node.scheduler.health.health("sick", trio.current_time()).worst == "jitter"


async def test_lateness_is_read_on_the_senders_clock(autojump_clock: trio.testing.MockClock) -> None:
    """Heartbeats sent on time but taken in late (this node's own loop stalled, or the path slowed) drain no
    one: that is this node's trouble, or the latency signal's."""
    node = Node()
    for _ in range(20):
        await node.beat()
    sent = trio.current_time()
    for i in range(20):
        await trio.sleep(0.5 if i % 2 else 7.5)  # arrivals bunched and spread out
        sent += 2.0  # sent every 2 s, on time
        node.scheduler.observe_heartbeat(heartbeat("sick", 200 + i, every_s=2.0, time=sent))
    assert node.serves("sick")


async def test_a_restarted_peer_is_not_drained_for_the_gap_in_its_heartbeats(
        autojump_clock: trio.testing.MockClock) -> None:
    node = Node()
    for _ in range(20):
        await node.beat()
    await trio.sleep(10.0)  # killed, then started again: its sequence starts afresh at its clock in ms
    restarted = 1_764_000_000_000
    for i in range(5):
        node.scheduler.observe_heartbeat(heartbeat("sick", restarted + i))
        assert node.serves("sick"), f"drained at heartbeat {i} after the restart"
        await trio.sleep(2.0)
    health = node.scheduler.health.health("sick", trio.current_time())
    assert health.signals["jitter"] == 1.0
    # A stale heartbeat (its sequence behind) is ignored, and the rhythm still counts from the last one.
    node.scheduler.observe_heartbeat(heartbeat("sick", 20))
    await trio.sleep(7.5)
    node.scheduler.observe_heartbeat(heartbeat("sick", restarted + 5))
    assert node.scheduler.health.health("sick", trio.current_time()).signals["jitter"] < 1.0


async def test_rising_latency_drains(autojump_clock: trio.testing.MockClock) -> None:
    node = Node()
    rtt = 50.0
    while node.serves("sick"):
        assert rtt < HealthSettings().latency_bad_ms, "never drained"
        node.scheduler.observe_rtt("sick", rtt)
        node.scheduler.observe_rtt("well", 50.0)
        await node.beat()
        rtt *= 1.25  # a link that gets worse
    assert node.scheduler.health.health("sick", trio.current_time()).worst == "latency"


async def test_when_every_provider_is_drained_the_least_bad_still_serves(
        autojump_clock: trio.testing.MockClock) -> None:
    """A drain keeps new work away from a peer while others can take it; with every provider drained (a flood
    slowing a whole small network), a degraded provider serves the client better than a 503."""
    node = Node()
    for _ in range(10):
        await node.beat()
    sick_only = [p for p in PEERS if p.peer_id == "sick"]
    await heat_until_drained(node)
    decision = node.scheduler.choose(REQ, sick_only, trio.current_time())
    assert decision.peers == ("sick",)
    assert not node.serves("sick")  # the healthy one is preferred while it is there
