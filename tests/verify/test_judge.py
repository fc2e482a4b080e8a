"""The verdict on measured statistics (``verifier.judge``): pure code, no model.

The bounds themselves come from recorded trials (scripts/bench_verify.py --record, scripts/calibrate_verify.py);
these tests pin what each bound does at its edge, and that recorded statistics judge the same as live ones.
"""

from __future__ import annotations

import dataclasses
import json

from hypothesis import given
from hypothesis import strategies as st

from runtimes.inference.verifier import (
    GREEDY_GAP,
    MAX_GREEDY_GAPS,
    MEDIAN_DEVIATION_LIMIT,
    TEMPERATURE_FACTORS,
    CheckStatistics,
    judge,
    temperature_margin,
)

N = 16


def honest(**changes: object) -> CheckStatistics:
    """Figures typical of an honest sampled 16-token result in calibration."""
    stats = CheckStatistics(
        positions=N,
        deviations=(0.1, 0.15, 0.2, 0.3, 0.12),
        value_mismatches=(),
        token_mismatches=(),
        replay_differed=3,
        replay_less_likely=2,
        replay_more_likely=1,
        replay_matched=13,
        matched_at_factors=tuple((f, 11) for f in TEMPERATURE_FACTORS),
        greedy_gaps=(),
    )
    return dataclasses.replace(stats, **changes)  # type: ignore[arg-type]


def test_honest_figures_pass() -> None:
    assert judge(honest(), 0.8) == (True, "ok")


def test_median_deviation_over_the_limit_fails() -> None:
    at_limit = honest(deviations=(MEDIAN_DEVIATION_LIMIT,) * 5)
    over = honest(deviations=(MEDIAN_DEVIATION_LIMIT + 0.01,) * 5)
    assert judge(at_limit, 0.8)[0]
    ok, reason = judge(over, 0.8)
    assert not ok
    assert "median" in reason


def test_another_temperature_matching_by_the_margin_fails() -> None:
    hotter = tuple((f, 13 + (temperature_margin(N) if f == 1.75 else 0)) for f in TEMPERATURE_FACTORS)
    short = tuple((f, 13 + (temperature_margin(N) - 1 if f == 1.75 else 0)) for f in TEMPERATURE_FACTORS)
    assert judge(honest(matched_at_factors=short), 0.8)[0]
    ok, reason = judge(honest(matched_at_factors=hotter), 0.8)
    assert not ok
    assert "hotter" in reason
    colder = tuple((f, 13 + (temperature_margin(N) if f == 0.5 else 0)) for f in TEMPERATURE_FACTORS)
    ok, reason = judge(honest(matched_at_factors=colder), 0.8)
    assert not ok
    assert "colder" in reason


def test_greedy_claim_with_real_gaps_fails_and_near_ties_pass() -> None:
    greedy = honest(matched_at_factors=(), replay_matched=0, replay_less_likely=0, replay_more_likely=0,
                    replay_differed=MAX_GREEDY_GAPS)
    near_ties = dataclasses.replace(greedy, greedy_gaps=(0.05,) * MAX_GREEDY_GAPS)
    real = dataclasses.replace(greedy, greedy_gaps=(GREEDY_GAP + 0.1,) * MAX_GREEDY_GAPS)
    one = dataclasses.replace(greedy, greedy_gaps=(GREEDY_GAP + 0.1,) * (MAX_GREEDY_GAPS - 1))
    assert judge(near_ties, 0.0)[0]
    assert judge(one, 0.0)[0]
    ok, reason = judge(real, 0.0)
    assert not ok
    assert "not greedy" in reason


def test_the_temperature_margin_grows_like_the_square_root_of_the_positions() -> None:
    assert temperature_margin(16) == 3
    assert temperature_margin(32) == 8
    assert temperature_margin(64) == 10
    assert temperature_margin(256) == 20


def test_too_few_positions_skip_the_replay_tests() -> None:
    hotter = tuple((f, 4 + temperature_margin(4)) for f in TEMPERATURE_FACTORS)
    assert judge(honest(positions=4, replay_matched=4, replay_differed=0, matched_at_factors=hotter), 0.8)[0]


@given(
    deviations=st.lists(st.floats(0, 5), max_size=33),
    matched=st.integers(0, 33),
    others=st.lists(st.integers(0, 33), min_size=len(TEMPERATURE_FACTORS), max_size=len(TEMPERATURE_FACTORS)),
    gaps=st.lists(st.floats(0, 4), max_size=33),
    temperature=st.sampled_from([0.0, 0.5, 1.2]),
)
def test_recorded_statistics_judge_as_live_ones(
    deviations: list[float], matched: int, others: list[int], gaps: list[float], temperature: float
) -> None:
    stats = honest(deviations=tuple(deviations), replay_matched=matched, greedy_gaps=tuple(gaps),
                   matched_at_factors=tuple(zip(TEMPERATURE_FACTORS, others, strict=True)), positions=33)
    recorded = json.loads(json.dumps(stats.to_details()))  # what bench_verify --record writes
    again = CheckStatistics.from_details(recorded)
    assert again == stats
    assert judge(again, temperature) == judge(stats, temperature)
