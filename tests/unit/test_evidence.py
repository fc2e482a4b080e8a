"""Evidence over many checks (``verify/evidence.py``), the sampling budget (``verify/sampling.py``) and the
inference runtime's check costs and scores (``runtimes/inference/scoring.py``): pure code, no model.

The calibration against real honest and cheating results is ``scripts/bench_verify.py --parts sequential``
(docs/performance.md); these tests pin the arithmetic those figures rest on.
"""

from __future__ import annotations

import math
import random

import pytest

from hyperion_node.verify.evidence import FAILED_CHECK, THRESHOLD, Check, EvidenceBook, false_dispute_bound, replay
from hyperion_node.verify.sampling import Sampler, SamplingPolicy
from runtimes.inference.scoring import VALUES_SCALE, check_scores, check_share


def checks(scores: list[float], name: str = "values") -> list[Check]:
    return [Check(f"r{i}", True, {name: s}) for i, s in enumerate(scores)]


def test_results_that_each_look_honest_never_add_up_to_a_dispute() -> None:
    rng = random.Random(7)
    disputed, peak = replay(checks([rng.uniform(0.0, 0.99) for _ in range(20_000)]))
    assert disputed is None
    assert peak < 1.0


def test_a_small_excess_in_every_result_adds_up_and_the_dispute_names_the_checks_it_rests_on() -> None:
    book = EvidenceBook()
    found = [book.observe("w", "m", c) for c in checks([0.2, 0.1, *[1.5] * 20])]  # honest twice, then 0.5 over
    at = next(i for i, f in enumerate(found) if f is not None)
    assert at == 2 + math.ceil(THRESHOLD / 0.5) - 1  # the eighth leaning check reaches the threshold
    dispute = found[at]
    assert dispute is not None
    assert dispute.statistic == "values"
    assert [c.receipt_id for c in dispute.checks] == [f"r{j}" for j in range(2, at + 1)]  # not the honest ones
    assert book.condemned("w")
    assert not book.condemned("other")
    assert all(f is None for f in found[at + 1:])  # once per worker and item


def test_honest_results_between_cheats_pull_the_sum_back() -> None:
    alternating = [1.9 if i % 2 == 0 else 0.0 for i in range(1000)]  # +0.9 then -1: never adds up
    assert replay(checks(alternating))[0] is None
    assert replay(checks([1.9 if i % 4 else 0.5 for i in range(100)]))[0] is not None  # +0.9 x3, -0.5


def test_a_failed_check_is_a_dispute_at_once_that_the_book_counts_without_condemning() -> None:
    book = EvidenceBook()
    found = book.observe("w", "m", Check("bad", False, {"values": 0.3}, reason="other model"))
    assert found is not None
    assert found.statistic == FAILED_CHECK
    assert found.checks[0].receipt_id == "bad"
    evidence = book.get("w", "m")
    assert evidence is not None
    assert evidence.failed == 1
    assert evidence.checks == 1
    assert not book.condemned("w")  # the spot checks' own dispute path acts on it
    assert replay([Check("a", True, {}), Check("b", False, {})])[0] == 1


def test_odd_scores_neither_crash_nor_hide() -> None:
    assert replay(checks([math.nan] * 100))[0] is None
    assert replay(checks([math.inf]))[0] == 0


def test_drift_is_the_way_to_a_dispute() -> None:
    book = EvidenceBook()
    for check in checks([2.0, 2.0]):
        book.observe("w", "m", check)
    assert book.drift("w", "m") == pytest.approx(2.0 / THRESHOLD)
    assert book.drift("w", "other") == 0.0
    assert book.checked("w", "m") == 2


def test_the_book_forgets_the_least_recently_checked_worker_first() -> None:
    book = EvidenceBook(max_workers=2)
    for worker in ("a", "b", "a", "c"):
        book.observe(worker, "m", Check("r", True, {}))
    assert book.get("a", "m") is not None
    assert book.get("c", "m") is not None
    assert book.get("b", "m") is None


def test_false_dispute_bounds() -> None:
    assert false_dispute_bound(2000) == pytest.approx(1 - 0.05 ** (1 / 2000))  # ~1.5e-3
    assert false_dispute_bound(100, 1) == pytest.approx(0.0466, abs=2e-4)  # Clopper-Pearson, one-sided 95 %
    assert false_dispute_bound(0) == 1.0


def test_the_rate_is_the_budget_over_the_checks_share_raised_for_new_and_drifting_workers() -> None:
    policy = SamplingPolicy(budget=0.01, new_worker_results=20, new_worker_boost=10.0, drift_boost=5.0)
    assert policy.probability(0.1, results_seen=100, drift=0.0) == pytest.approx(0.1)
    assert policy.probability(0.1, results_seen=3, drift=0.0) == pytest.approx(1.0)
    assert policy.probability(0.5, results_seen=100, drift=0.6) == pytest.approx(0.1)
    assert policy.probability(0.0, results_seen=100, drift=0.0) == 1.0  # a free check is still capped at 1
    assert SamplingPolicy(budget=0.0).probability(0.1, results_seen=0, drift=1.0) == 0.0
    assert SamplingPolicy(budget=1.0).probability(0.9, results_seen=100, drift=0.0) == 1.0


def test_checks_drawn_by_the_budget_cost_the_budget() -> None:
    sampler = Sampler(SamplingPolicy(budget=0.01, new_worker_results=0), random.Random(3))
    rng = random.Random(4)
    for _ in range(200_000):
        sampler.draw(rng.choice((0.05, 0.1, 0.4)), rng.choice((16.0, 256.0)), results_seen=100, drift=0.0)
    assert sampler.to_map()["spent_share"] == pytest.approx(0.01, rel=0.1)


def test_an_inference_checks_share_falls_with_the_length_of_the_generation() -> None:
    shares = [check_share(20, n) for n in (16, 64, 256, 1024)]
    assert shares == sorted(shares, reverse=True)
    # The model against what was recorded (scoring.py): one chunk of a 256-token result cost 0.053 of its
    # generation (bench_verify --record), every chunk 0.21 (bench_audit).
    assert 0.04 < check_share(20, 256) < 0.07
    assert 0.15 < check_share(20, 256, chunks=0) < 0.3


def test_scores_of_a_sampled_and_a_greedy_check() -> None:
    details = {"checked_positions": 16, "deviations": [0.1, 0.2, 0.3], "value_mismatch_positions": [],
               "token_mismatch_positions": [], "replay_differed": 5, "replay_less_likely": 5,
               "replay_more_likely": 0, "replay_matched": 9, "replay_matched_at_factors": [[0.5, 5], [1.4, 13]],
               "greedy_gaps": []}
    scores = check_scores(details)
    assert scores["values"] == pytest.approx(0.2 / VALUES_SCALE)
    assert scores["temperature"] > 0
    assert scores["hotter"] > 0
    assert scores["colder"] == 0
    greedy = {**details, "replay_matched_at_factors": [], "greedy_gaps": [0.1, 0.7, 0.9]}
    assert check_scores(greedy)["greedy_gaps"] > 0
    assert "temperature" not in check_scores(greedy)
    assert check_scores({"tokens_replayed": False, **details}).keys() == {"values"}  # a shaped result
    assert check_scores({"reason": "refused before the forward pass"}) == {}


def test_a_check_that_fails_alone_and_completes_the_sequential_dispute_reports_the_sequential_one() -> None:
    book = EvidenceBook()
    for check in checks([2.0, 2.0, 2.0]):
        assert book.observe("w", "m", check) is None
    found = book.observe("w", "m", Check("both", False, {"values": 3.0}))
    assert found is not None
    assert found.statistic == "values"  # the caller acts on it (event, case); the failure has its own path
    assert book.condemned("w")
