"""The adaptive layer learns which of two equal-looking peers serves better, and keeps exploring."""

from __future__ import annotations

import random

import pytest

from hyperion_node.scheduler.adaptive import AdaptiveLayer, ShortlistEntry
from hyperion_node.scheduler.candidates import TaskRequirements
from hyperion_node.scheduler.scheduler import Outcome, OutcomeKind
from hyperion_node.scheduler.settings import AdaptiveSettings, BreakerSettings, HealthSettings, SchedulerSettings
from tests.scheduler.factories import MODEL, RUNTIME, candidate, scheduler

# Two peers that advertise the same: the MCDA score cannot tell them apart, only their outcomes can. Ties go
# by peer ID, so without learning the poor one would come first.
GOOD, POOR = "b-good", "a-poor"
PEERS = [candidate(GOOD), candidate(POOR)]
# What they really do: chance of success, time to first token, tokens per second.
TRUTH = {GOOD: (0.95, 0.2, 40.0), POOR: (0.75, 0.8, 15.0)}
REQ = TaskRequirements(RUNTIME, MODEL)
# Breakers and health trends would rightly take the poor peer (25 % failures) out now and then; this test is
# about learning, so they are set out of reach.
LENIENT = {"breaker": BreakerSettings(consecutive_failures=10_000, min_calls=10_000),
           "health": HealthSettings(error_rate_good=0.98, error_rate_bad=1.0)}


def learning(**adaptive: float) -> SchedulerSettings:
    return SchedulerSettings(adaptive=AdaptiveSettings(**adaptive), **LENIENT)  # type: ignore[arg-type]


def simulate(seed: int, decisions: int, settings: SchedulerSettings | None = None) -> list[tuple[str, bool]]:
    """Serve ``decisions`` requests to the first choice; (chosen peer, explored) for each."""
    s = scheduler(seed=seed, settings=settings or learning())
    world = random.Random(seed + 1)
    chosen = []
    for _ in range(decisions):
        first = s.choose(REQ, PEERS, 0.0).ranked[0]
        p_success, ttft, rate = TRUTH[first.peer_id]
        if world.random() < p_success:
            s.record_outcome(first.peer_id, MODEL, Outcome(OutcomeKind.SUCCESS, ttft_s=ttft, units_per_s=rate, at=0.0))
        else:
            s.record_outcome(first.peer_id, MODEL, Outcome(OutcomeKind.FAILED, at=0.0))
        chosen.append((first.peer_id, first.explored))
    return chosen


def test_converges_to_the_better_peer_and_keeps_exploring_at_the_documented_rate() -> None:
    rate = AdaptiveSettings().exploration_rate
    assert rate == 0.05  # the documented default
    chosen = simulate(seed=3, decisions=1500)
    late = chosen[500:]
    good_share = sum(peer == GOOD for peer, _ in late) / len(late)
    explored_share = sum(explored for _, explored in late) / len(late)
    # With two peers, every exploring decision puts the poor one first; Thompson draws add a little more.
    # Binomial(1000, 0.05): mean 50, sd 6.9; the bounds are about four sd wide.
    assert 0.022 <= explored_share <= 0.078
    assert good_share >= 1 - rate - 0.04
    assert sum(peer == POOR for peer, _ in late) >= sum(explored for _, explored in late)


def test_without_the_learnt_part_the_tie_break_decides() -> None:
    """The control for the test above: with the adaptive weight at 0 nothing is learnt, and the poor peer,
    first by peer ID, keeps coming first but for the explored decisions."""
    late = simulate(seed=3, decisions=600, settings=learning(weight=0.0))[200:]
    assert sum(peer == GOOD for peer, _ in late) / len(late) <= 0.1


def test_a_seeded_run_is_reproducible() -> None:
    assert simulate(seed=11, decisions=200) == simulate(seed=11, decisions=200)
    assert simulate(seed=11, decisions=200) != simulate(seed=12, decisions=200)


def test_a_peer_that_turns_bad_is_relearnt() -> None:
    layer = AdaptiveLayer(AdaptiveSettings(exploration_rate=0.0), rng=random.Random(5))
    for _ in range(200):
        layer.record("a", MODEL, success=True, ttft_s=0.2, units_per_s=40.0)
        layer.record("b", MODEL, success=True, ttft_s=0.2, units_per_s=40.0)
    for _ in range(60):  # discount 0.98: about one effective memory of failures
        layer.record("a", MODEL, success=False)
    stats = layer.stats("a", MODEL)
    assert stats is not None
    assert stats.success_mean < 0.5
    entries = [ShortlistEntry("a", 0.5), ShortlistEntry("b", 0.5)]
    firsts = [layer.rank(MODEL, entries, 256.0)[0].entry.peer_id for _ in range(200)]
    assert firsts.count("b") >= 190


def test_speed_counts_between_equally_reliable_peers() -> None:
    layer = AdaptiveLayer(AdaptiveSettings(exploration_rate=0.0), rng=random.Random(1))
    for _ in range(100):
        layer.record("slow", MODEL, success=True, ttft_s=1.0, units_per_s=10.0)
        layer.record("fast", MODEL, success=True, ttft_s=0.1, units_per_s=80.0)
    ranked = layer.rank(MODEL, [ShortlistEntry("slow", 0.5), ShortlistEntry("fast", 0.5)], 256.0)
    assert [r.entry.peer_id for r in ranked] == ["fast", "slow"]
    assert ranked[0].speed == 1.0
    assert ranked[1].speed == pytest.approx((0.1 + 256 / 80) / (1.0 + 256 / 10), rel=1e-9)


def test_statistics_are_bounded() -> None:
    layer = AdaptiveLayer(AdaptiveSettings(max_entries=3), rng=random.Random(1))
    for peer in "abcd":
        layer.record(peer, MODEL, success=True)
    assert layer.stats("a", MODEL) is None
    assert all(layer.stats(peer, MODEL) is not None for peer in "bcd")
