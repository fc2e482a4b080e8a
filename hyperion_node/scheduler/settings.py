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

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self

from hyperion_node.scheduler.weights import Weights
from hyperion_node.settings import (
    COUNT,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    InvalidSetting,
    Rule,
    Section,
    between,
    config_errors,
    count,
    is_number,
    need,
    setting,
)

SECTION = "scheduler"


@dataclass(frozen=True)
class AdaptiveSettings(Section):
    """The learning layer over the short-list (see ``adaptive.py``)."""

    SECTION: ClassVar[str] = "scheduler.adaptive"

    # One decision in twenty tries a short-listed peer other than the current best, so that what is known of
    # the others stays fresh (peers change: a GPU frees up, a link heals). The cost is bounded: it only ever
    # picks among peers that passed every filter and scored near the top.
    exploration_rate: float = setting(0.05, Rule(lambda v: is_number(v) and 0 <= v < 1, "a number >= 0 and below 1"))
    weight: float = setting(0.5, between(0, 1, "a number from 0 to 1"))
    # Effective memory of 1 / (1 - 0.98) = 50 outcomes per (peer, model).
    discount: float = setting(0.98, FRACTION)
    ewma_alpha: float = setting(0.2, FRACTION)
    max_entries: int = setting(100_000, COUNT)


@dataclass(frozen=True)
class BreakerSettings(Section):
    """Per-peer circuit breaker (see ``breaker.py``).

    Five failures in a row or half of at least ten calls in a minute: the thresholds of Hystrix's defaults
    (50 % errors over a 10 s window with at least 20 requests) scaled to a peer that serves a few tasks a
    minute, not thousands of calls a second.
    """

    SECTION: ClassVar[str] = "scheduler.breaker"

    consecutive_failures: int = setting(5, COUNT)
    failure_rate: float = setting(0.5, FRACTION)
    window_s: float = setting(60.0, POSITIVE)
    min_calls: int = setting(10, COUNT)
    cooldown_s: float = setting(10.0, POSITIVE)
    backoff_factor: float = setting(2.0, Rule(lambda v: is_number(v) and v >= 1, "a number of at least 1"))
    max_cooldown_s: float = 300.0
    half_open_probes: int = setting(1, COUNT)

    def check(self) -> None:
        need(is_number(self.max_cooldown_s) and self.max_cooldown_s >= self.cooldown_s, self.key("max_cooldown_s"),
             self.max_cooldown_s, f"a number of at least {self.key('cooldown_s')}")


@dataclass(frozen=True)
class HealthSettings(Section):
    """Predictive health (see ``health.py``): each signal maps to 1 at or below its good value and to 0 at or
    above its bad one, linearly between; the health is the worst of them."""

    SECTION: ClassVar[str] = "scheduler.health"

    alpha: float = setting(0.3, FRACTION)  # about the last five samples (ten seconds at the default 2 s heartbeat)
    # As many outcomes as the breaker's min_calls: fewer are a burst, the breaker's business.
    error_min_outcomes: float = setting(10.0, POSITIVE)
    error_half_life_s: float = setting(60.0, POSITIVE)
    # Interactive use tolerates a few hundred ms of network RTT; at seconds, time to first token is gone.
    latency_good_ms: float = setting(300.0, NON_NEGATIVE)
    latency_bad_ms: float = 3000.0
    # A peer that fails half of what it takes wastes more than it serves.
    error_rate_good: float = setting(0.05, NON_NEGATIVE)
    error_rate_bad: float = 0.5
    # Heartbeats come every p2p.heartbeat_interval_s (2 s) and a peer is suspect after 6 s of silence: a
    # heartbeat 4 s off its rhythm is most of the way there.
    jitter_good_s: float = setting(1.0, NON_NEGATIVE)
    jitter_bad_s: float = 4.0
    # NVIDIA boards throttle from their slowdown temperature (``nvidia-smi -q``: "GPU Slowdown Temp", around
    # 85-95 degrees C on data-centre boards); 80 is where sustained load usually sits below that.
    gpu_temp_good_c: float = setting(80.0, Rule(is_number, "a number"))
    gpu_temp_bad_c: float = 92.0
    # An uncorrectable ECC error means results computed in that memory may be wrong: one drains the peer.
    memory_errors_bad: float = setting(0.1, POSITIVE)
    trend_window_s: float = setting(30.0, POSITIVE)
    horizon_s: float = setting(30.0, NON_NEGATIVE)
    drain_below: float = setting(0.5, Rule(lambda v: is_number(v) and 0 < v < 1, "a number between 0 and 1"))
    recover_above: float = 0.75
    max_peers: int = setting(10_000, COUNT)

    def check(self) -> None:
        for good, bad in (("latency_good_ms", "latency_bad_ms"), ("error_rate_good", "error_rate_bad"),
                          ("jitter_good_s", "jitter_bad_s"), ("gpu_temp_good_c", "gpu_temp_bad_c")):
            value = getattr(self, bad)
            need(is_number(value) and value > getattr(self, good), self.key(bad), value,
                 f"a number above {self.key(good)}")
        need(is_number(self.recover_above) and self.drain_below < self.recover_above <= 1, self.key("recover_above"),
             self.recover_above, f"a number above {self.key('drain_below')} and at most 1")


@dataclass(frozen=True)
class SchedulerSettings(Section):
    SECTION: ClassVar[str] = SECTION

    weights: Weights = field(default_factory=Weights)
    # Eight is enough to fail over past a few busy or broken peers within one request, and small enough that
    # the per-candidate Python work of the adaptive layer stays a few microseconds.
    shortlist_size: int = setting(8, COUNT)
    unknown_rtt_ms: float = setting(500.0, NON_NEGATIVE)
    busy_queue_depth: int = setting(4, count(0, "an integer >= 0"))
    # About one heartbeat interval: by then the peer's next heartbeat tells its real load.
    busy_backoff_s: float = setting(2.0, NON_NEGATIVE)
    default_units: float = setting(256.0, POSITIVE)
    adaptive: AdaptiveSettings = field(default_factory=AdaptiveSettings)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    health: HealthSettings = field(default_factory=HealthSettings)

    @classmethod
    def from_values(cls, values: Mapping[str, Any], sources: Mapping[str, str] | None = None,
                    **given: Any) -> Self:
        """Settings from the config loader's flat ``"scheduler.<key>"`` / ``"scheduler.<table>.<key>"`` values
        (other sections are ignored; missing keys keep their defaults). A value out of range, or a key the
        section does not have, raises :class:`ConfigError` naming the key and where it came from."""
        sources = sources or {}
        tables = {"weights": Weights, "adaptive": AdaptiveSettings, "breaker": BreakerSettings,
                  "health": HealthSettings}
        with config_errors(sources):
            for key, value in values.items():
                parts = key.split(".")
                if parts[0] != SECTION or parts[1:2] == ["weights"]:  # Weights names its own criteria
                    continue
                known = ({f.name for f in fields(tables[parts[1]])} if len(parts) == 3 and parts[1] in tables
                         else {f.name for f in fields(cls)} - set(tables) if len(parts) == 2 else set())
                if parts[-1] not in known:
                    raise InvalidSetting(key, value, "a key listed in configs/default.toml")
            weights = Weights.from_mapping({key.split(".")[2]: value for key, value in values.items()
                                            if key.startswith(f"{SECTION}.weights.")})
        return super().from_values(values, sources, weights=weights,
                                   adaptive=AdaptiveSettings.from_values(values, sources),
                                   breaker=BreakerSettings.from_values(values, sources),
                                   health=HealthSettings.from_values(values, sources), **given)
