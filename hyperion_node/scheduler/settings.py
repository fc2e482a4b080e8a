"""The scheduler's knobs, with their defaults and the reason for each.

They come from the ``[scheduler]`` section of the config; :meth:`SchedulerSettings.from_values` takes the
loader's flat ``"section.key" -> value`` mapping and names the key (and its source) of any value out of range.
The block for ``configs/default.toml``, one key per field below::

    [scheduler]
    shortlist_size = 8          # candidates the adaptive layer ranks and the requester may fail over to
    unknown_rtt_ms = 500.0      # RTT assumed for a peer never pinged (scored, not excluded)
    busy_queue_depth = 4        # every slot taken and this many queued in its heartbeat: the peer is busy
    busy_backoff_s = 2.0        # a peer that answered BUSY gets no new work for this long
    default_units = 256.0       # work units (tokens) assumed when a request does not say how many

    [scheduler.weights]         # relative; divided by their sum
    memory = 0.32
    jobs = 0.24
    rtt = 0.16
    throughput = 0.08
    price = 0.10
    reliability = 0.10

    [scheduler.adaptive]
    exploration_rate = 0.05     # share of decisions that put another short-listed peer first
    weight = 0.5                # share of the rank given to what was learnt, against the MCDA score
    discount = 0.98             # per outcome: older outcomes of a (peer, model) fade
    ewma_alpha = 0.2            # weight of each new time-to-first-token and tokens/s sample
    max_entries = 100000        # (peer, model) statistics kept, least recently used forgotten first

    [scheduler.breaker]
    consecutive_failures = 5    # open after this many failures in a row...
    failure_rate = 0.5          # ...or this share of failures...
    window_s = 60.0             # ...over this window...
    min_calls = 10              # ...once the window holds this many outcomes
    cooldown_s = 10.0           # open -> half-open after this long
    backoff_factor = 2.0        # a failed probe multiplies the cool-down...
    max_cooldown_s = 300.0      # ...up to this
    half_open_probes = 1        # requests a half-open breaker lets through at once

    [scheduler.health]
    alpha = 0.3                 # EWMA weight of each latency, jitter and temperature sample
    error_min_outcomes = 10.0   # the error rate counts once this many (fading) outcomes are known...
    error_half_life_s = 60.0    # ...and outcomes fade with this half-life, so a drained peer can come back
    latency_good_ms = 300.0
    latency_bad_ms = 3000.0
    error_rate_good = 0.05
    error_rate_bad = 0.5
    jitter_good_s = 1.0
    jitter_bad_s = 4.0
    gpu_temp_good_c = 80.0
    gpu_temp_bad_c = 92.0
    memory_errors_bad = 0.1     # EWMA of heartbeats that report new uncorrectable GPU memory errors
    trend_window_s = 30.0       # health points the slope is fitted over
    horizon_s = 30.0            # how far ahead a falling health is projected
    drain_below = 0.5           # no new work when the projected health is below this...
    recover_above = 0.75        # ...until the health and its projection are back above this
    max_peers = 10000
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from hyperion_node.errors import ConfigError
from hyperion_node.scheduler.exceptions import InvalidSetting
from hyperion_node.scheduler.weights import Weights

SECTION = "scheduler"


def _need(ok: bool, key: str, value: object, expected: str) -> None:
    if not ok:
        raise InvalidSetting(key, value, expected)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_all(obj: object, prefix: str, rules: Mapping[str, tuple[Callable[[Any], bool], str]]) -> None:
    for f in fields(obj):  # type: ignore[arg-type]
        rule = rules.get(f.name)
        if rule is None:
            continue
        value = getattr(obj, f.name)
        check, expected = rule
        _need(_number(value) and check(value), f"{prefix}.{f.name}", value, expected)


def _positive(v: float) -> bool:
    return v > 0


def _non_negative(v: float) -> bool:
    return v >= 0


def _unit_open(v: float) -> bool:
    return 0 < v <= 1


def _count(v: float) -> bool:
    return isinstance(v, int) and v >= 1


POSITIVE = (_positive, "a number above 0")
NON_NEGATIVE = (_non_negative, "a number >= 0")
FRACTION = (_unit_open, "a number above 0 and at most 1")
COUNT = (_count, "an integer of at least 1")


@dataclass(frozen=True)
class AdaptiveSettings:
    """The learning layer over the short-list (see ``adaptive.py``)."""

    # One decision in twenty tries a short-listed peer other than the current best, so that what is known of
    # the others stays fresh (peers change: a GPU frees up, a link heals). The cost is bounded: it only ever
    # picks among peers that passed every filter and scored near the top.
    exploration_rate: float = 0.05
    weight: float = 0.5
    # Effective memory of 1 / (1 - 0.98) = 50 outcomes per (peer, model).
    discount: float = 0.98
    ewma_alpha: float = 0.2
    max_entries: int = 100_000

    def __post_init__(self) -> None:
        p = f"{SECTION}.adaptive"
        _need(_number(self.exploration_rate) and 0 <= self.exploration_rate < 1, f"{p}.exploration_rate",
              self.exploration_rate, "a number >= 0 and below 1")
        _need(_number(self.weight) and 0 <= self.weight <= 1, f"{p}.weight", self.weight, "a number from 0 to 1")
        _check_all(self, p, {"discount": FRACTION, "ewma_alpha": FRACTION, "max_entries": COUNT})


@dataclass(frozen=True)
class BreakerSettings:
    """Per-peer circuit breaker (see ``breaker.py``).

    Five failures in a row or half of at least ten calls in a minute: the thresholds of Hystrix's defaults
    (50 % errors over a 10 s window with at least 20 requests) scaled to a peer that serves a few tasks a
    minute, not thousands of calls a second.
    """

    consecutive_failures: int = 5
    failure_rate: float = 0.5
    window_s: float = 60.0
    min_calls: int = 10
    cooldown_s: float = 10.0
    backoff_factor: float = 2.0
    max_cooldown_s: float = 300.0
    half_open_probes: int = 1

    def __post_init__(self) -> None:
        p = f"{SECTION}.breaker"
        _check_all(self, p, {
            "consecutive_failures": COUNT, "failure_rate": FRACTION, "window_s": POSITIVE, "min_calls": COUNT,
            "cooldown_s": POSITIVE, "half_open_probes": COUNT,
        })
        _need(_number(self.backoff_factor) and self.backoff_factor >= 1, f"{p}.backoff_factor", self.backoff_factor,
              "a number of at least 1")
        _need(_number(self.max_cooldown_s) and self.max_cooldown_s >= self.cooldown_s, f"{p}.max_cooldown_s",
              self.max_cooldown_s, f"a number of at least {p}.cooldown_s")


@dataclass(frozen=True)
class HealthSettings:
    """Predictive health (see ``health.py``): each signal maps to 1 at or below its good value and to 0 at or
    above its bad one, linearly between; the health is the worst of them."""

    alpha: float = 0.3  # about the last five samples (ten seconds at the default 2 s heartbeat)
    # As many outcomes as the breaker's min_calls: fewer are a burst, the breaker's business.
    error_min_outcomes: float = 10.0
    error_half_life_s: float = 60.0
    # Interactive use tolerates a few hundred ms of network RTT; at seconds, time to first token is gone.
    latency_good_ms: float = 300.0
    latency_bad_ms: float = 3000.0
    # A peer that fails half of what it takes wastes more than it serves.
    error_rate_good: float = 0.05
    error_rate_bad: float = 0.5
    # Heartbeats come every p2p.heartbeat_interval_s (2 s) and a peer is suspect after 6 s of silence: a
    # heartbeat 4 s off its rhythm is most of the way there.
    jitter_good_s: float = 1.0
    jitter_bad_s: float = 4.0
    # NVIDIA boards throttle from their slowdown temperature (``nvidia-smi -q``: "GPU Slowdown Temp", around
    # 85-95 degrees C on data-centre boards); 80 is where sustained load usually sits below that.
    gpu_temp_good_c: float = 80.0
    gpu_temp_bad_c: float = 92.0
    # An uncorrectable ECC error means results computed in that memory may be wrong: one drains the peer.
    memory_errors_bad: float = 0.1
    trend_window_s: float = 30.0
    horizon_s: float = 30.0
    drain_below: float = 0.5
    recover_above: float = 0.75
    max_peers: int = 10_000

    def __post_init__(self) -> None:
        p = f"{SECTION}.health"
        _check_all(self, p, {
            "alpha": FRACTION, "error_min_outcomes": POSITIVE, "error_half_life_s": POSITIVE,
            "trend_window_s": POSITIVE, "horizon_s": NON_NEGATIVE, "max_peers": COUNT, "memory_errors_bad": POSITIVE,
            "latency_good_ms": NON_NEGATIVE, "error_rate_good": NON_NEGATIVE, "jitter_good_s": NON_NEGATIVE,
            "gpu_temp_good_c": (lambda v: True, "a number"),
        })
        for name in ("latency", "error_rate", "jitter", "gpu_temp"):
            suffix = {"latency": "_ms", "error_rate": "", "jitter": "_s", "gpu_temp": "_c"}[name]
            good, bad = getattr(self, f"{name}_good{suffix}"), getattr(self, f"{name}_bad{suffix}")
            _need(_number(bad) and bad > good, f"{p}.{name}_bad{suffix}", bad,
                  f"a number above {p}.{name}_good{suffix}")
        _need(_number(self.drain_below) and 0 < self.drain_below < 1, f"{p}.drain_below", self.drain_below,
              "a number between 0 and 1")
        _need(_number(self.recover_above) and self.drain_below < self.recover_above <= 1, f"{p}.recover_above",
              self.recover_above, f"a number above {p}.drain_below and at most 1")


@dataclass(frozen=True)
class SchedulerSettings:
    weights: Weights = field(default_factory=Weights)
    # Eight is enough to fail over past a few busy or broken peers within one request, and small enough that
    # the per-candidate Python work of the adaptive layer stays a few microseconds.
    shortlist_size: int = 8
    unknown_rtt_ms: float = 500.0
    busy_queue_depth: int = 4
    # About one heartbeat interval: by then the peer's next heartbeat tells its real load.
    busy_backoff_s: float = 2.0
    default_units: float = 256.0
    adaptive: AdaptiveSettings = field(default_factory=AdaptiveSettings)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    health: HealthSettings = field(default_factory=HealthSettings)

    def __post_init__(self) -> None:
        _check_all(self, SECTION, {
            "shortlist_size": COUNT, "unknown_rtt_ms": NON_NEGATIVE, "busy_backoff_s": NON_NEGATIVE,
            "default_units": POSITIVE,
        })
        _need(isinstance(self.busy_queue_depth, int) and not isinstance(self.busy_queue_depth, bool)
              and self.busy_queue_depth >= 0, f"{SECTION}.busy_queue_depth", self.busy_queue_depth,
              "an integer >= 0")

    @classmethod
    def from_values(cls, values: Mapping[str, Any], sources: Mapping[str, str] | None = None) -> SchedulerSettings:
        """Settings from the config loader's flat ``"scheduler.<key>"`` / ``"scheduler.<table>.<key>"`` values
        (other sections are ignored; missing keys keep their defaults). A value out of range raises
        :class:`ConfigError` naming the key and where it came from."""
        sources = sources or {}
        top: dict[str, Any] = {}
        tables: dict[str, dict[str, Any]] = {"weights": {}, "adaptive": {}, "breaker": {}, "health": {}}
        for key, value in values.items():
            parts = key.split(".")
            if parts[0] != SECTION:
                continue
            if len(parts) == 3 and parts[1] in tables:
                tables[parts[1]][parts[2]] = value
            elif len(parts) == 2:
                top[parts[1]] = value
            else:
                raise ConfigError(f"got {value!r}", source=sources.get(key, "config"), key=key,
                                  expected="a key listed in the [scheduler] section of configs/default.toml")
        try:
            known = {f.name for f in fields(cls)}
            for table, cls_ in (("adaptive", AdaptiveSettings), ("breaker", BreakerSettings),
                                ("health", HealthSettings)):
                _refuse_unknown(tables[table], {f.name for f in fields(cls_)}, f"{SECTION}.{table}")
            _refuse_unknown(top, known - set(tables), SECTION)
            return cls(
                weights=Weights.from_mapping(tables["weights"]),
                adaptive=AdaptiveSettings(**tables["adaptive"]),
                breaker=BreakerSettings(**tables["breaker"]),
                health=HealthSettings(**tables["health"]),
                **top,
            )
        except InvalidSetting as exc:
            raise ConfigError(f"got {exc.value!r}", source=sources.get(exc.key, "config"), key=exc.key,
                              expected=exc.expected) from exc


def _refuse_unknown(table: Mapping[str, Any], known: set[str], prefix: str) -> None:
    for name in sorted(set(table) - known):
        raise InvalidSetting(f"{prefix}.{name}", table[name], "a key listed in configs/default.toml")
