"""MCDA weights and scores; the [scheduler] settings and their validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperion_node.errors import ConfigError
from hyperion_node.scheduler.candidates import TaskRequirements
from hyperion_node.scheduler.scoring import normalise, score
from hyperion_node.scheduler.settings import SchedulerSettings
from hyperion_node.scheduler.weights import BENEFIT, CRITERIA, Weights
from hyperion_node.settings import InvalidSetting
from tests.scheduler.factories import MODEL, RUNTIME, candidate, scheduler

# Realistic ranges per criterion (memory bytes, jobs per slot, RTT ms, units/s, price, reliability): wide
# enough to hold any real peer, and bounded so that max - min stays finite.
BOUNDS = [(0.0, 2.0**50), (0.0, 64.0), (0.0, 1e5), (0.0, 1e6), (0.0, 1e3), (0.0, 1.0)]


@st.composite
def criteria_matrices(draw: st.DrawFn, min_n: int = 1) -> np.ndarray:
    n = draw(st.integers(min_n, 12))
    rows = []
    for low, high in BOUNDS:
        # Few distinct values, so that ties and flat criteria come up often.
        pool = draw(st.lists(st.floats(low, high, allow_nan=False), min_size=1, max_size=4))
        rows.append([draw(st.sampled_from(pool)) for _ in range(n)])
    return np.array(rows, dtype=np.float64)


weights_strategy = st.tuples(*[st.floats(0, 10) for _ in CRITERIA]).filter(lambda t: sum(t) > 0).map(
    lambda t: Weights(*t))


@settings(max_examples=150, deadline=None)
@given(criteria_matrices(), weights_strategy)
def test_scores_are_in_the_unit_interval(matrix: np.ndarray, weights: Weights) -> None:
    scores = score(matrix, weights)
    assert scores.shape == (matrix.shape[1],)
    assert np.all((scores >= 0.0) & (scores <= 1.0))
    assert np.all((normalise(matrix) >= 0.0) & (normalise(matrix) <= 1.0))


@settings(max_examples=200, deadline=None)
@given(criteria_matrices(), weights_strategy, st.data())
def test_a_better_criterion_never_lowers_the_score(matrix: np.ndarray, weights: Weights, data: st.DataObject) -> None:
    who = data.draw(st.integers(0, matrix.shape[1] - 1))
    which = data.draw(st.integers(0, len(CRITERIA) - 1))
    low, high = BOUNDS[which]
    current = matrix[which, who]
    # "Better" is more of a benefit and less of a cost.
    better = data.draw(st.floats(current, high) if BENEFIT[which] else st.floats(low, current))
    improved = matrix.copy()
    improved[which, who] = better
    assert score(improved, weights)[who] >= score(matrix, weights)[who] - 1e-12


@settings(max_examples=150, deadline=None)
@given(criteria_matrices(), weights_strategy, st.randoms(use_true_random=False))
def test_scores_do_not_depend_on_the_order_of_candidates(matrix: np.ndarray, weights: Weights, rnd: object) -> None:
    order = list(range(matrix.shape[1]))
    rnd.shuffle(order)  # type: ignore[attr-defined]
    assert np.allclose(score(matrix[:, order], weights), score(matrix, weights)[order], rtol=0, atol=1e-12)


def test_each_criterion_points_the_right_way() -> None:
    base = {"free_memory_bytes": 8 << 30, "active_tasks": 1, "rtt_ms": 50.0, "throughput": 50.0,
            "price_per_unit": 1e-6, "reliability": 0.5}
    better = {"free_memory_bytes": 16 << 30, "active_tasks": 0, "rtt_ms": 10.0, "throughput": 90.0,
              "price_per_unit": 5e-7, "reliability": 0.9}
    for name in CRITERIA:
        field = {"memory": "free_memory_bytes", "jobs": "active_tasks", "rtt": "rtt_ms", "throughput": "throughput",
                 "price": "price_per_unit", "reliability": "reliability"}[name]
        only = Weights(**{c: (1.0 if c == name else 0.0) for c in CRITERIA})
        s = scheduler(settings=SchedulerSettings(weights=only))
        decision = s.choose(TaskRequirements(RUNTIME, MODEL),
                            [candidate("base", **base), candidate("better", **{**base, field: better[field]})], 0.0)
        by_peer = {c.peer_id: c for c in decision.ranked}
        assert (by_peer["better"].mcda, by_peer["base"].mcda) == (1.0, 0.0), name
        assert by_peer["better"].criteria[name] == 1.0


def test_default_weights_keep_the_titancompute_split() -> None:
    w = Weights().as_dict()
    assert sum(w.values()) == pytest.approx(1.0)
    # 40 / 30 / 20 / 10 among the reference criteria...
    reference = [w["memory"], w["jobs"], w["rtt"], w["throughput"]]
    assert [x / sum(reference) for x in reference] == pytest.approx([0.4, 0.3, 0.2, 0.1])
    # ...and room for price and reliability.
    assert w["price"] > 0
    assert w["reliability"] > 0
    assert Weights(memory=2, jobs=1, rtt=0, throughput=0, price=0, reliability=1).vector() == pytest.approx(
        [0.5, 0.25, 0, 0, 0, 0.25])


@pytest.mark.parametrize(("fields", "key"), [
    ({"memory": -0.1}, "scheduler.weights.memory"),
    ({"rtt": math.nan}, "scheduler.weights.rtt"),
    ({"price": math.inf}, "scheduler.weights.price"),
    ({"jobs": True}, "scheduler.weights.jobs"),
    (dict.fromkeys(CRITERIA, 0.0), "scheduler.weights"),
])
def test_invalid_weights_name_their_key(fields: dict[str, float], key: str) -> None:
    with pytest.raises(InvalidSetting) as caught:
        Weights(**fields)
    assert caught.value.key == key


def test_settings_from_config_values() -> None:
    settings_ = SchedulerSettings.from_values({
        "api.port": 8787, "scheduler.shortlist_size": 4, "scheduler.weights.price": 0.5,
        "scheduler.breaker.cooldown_s": 3.0, "scheduler.adaptive.exploration_rate": 0.1,
        "scheduler.health.horizon_s": 0.0,
    })
    assert settings_.shortlist_size == 4
    assert settings_.weights.price == 0.5
    assert settings_.weights.memory == Weights().memory
    assert settings_.breaker.cooldown_s == 3.0
    assert settings_.breaker.consecutive_failures == 5
    assert settings_.adaptive.exploration_rate == 0.1
    assert settings_.health.horizon_s == 0.0
    assert SchedulerSettings.from_values({}) == SchedulerSettings()


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("scheduler.shortlist_size", 0, "an integer of at least 1"),
    ("scheduler.weights.memory", -1.0, "a finite number >= 0"),
    ("scheduler.weights.speed", 1.0, "one of memory, jobs, rtt, throughput, price, reliability"),
    ("scheduler.adaptive.exploration_rate", 1.0, "a number >= 0 and below 1"),
    ("scheduler.breaker.max_cooldown_s", 1.0, "a number of at least scheduler.breaker.cooldown_s"),
    ("scheduler.health.recover_above", 0.4, "a number above scheduler.health.drain_below and at most 1"),
    ("scheduler.health.gpu_temp_bad_c", 70.0, "a number above scheduler.health.gpu_temp_good_c"),
    ("scheduler.breaker.colour", "red", "a key listed in configs/default.toml"),
])
def test_bad_settings_are_config_errors_naming_key_and_source(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SchedulerSettings.from_values({key: value}, {key: "/etc/hyperion.toml"})
    assert (caught.value.key, caught.value.source, caught.value.expected) == (key, "/etc/hyperion.toml", expected)
