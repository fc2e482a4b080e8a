"""The adaptive layer: learn from outcomes which short-listed peer actually serves a model best.

The MCDA score ranks peers by what they advertise and report; this layer ranks the short-list by what they
did. Per (peer, item) it keeps, discounted by ``discount`` at every new outcome of that pair (so a peer that
changes is relearnt within about ``1 / (1 - discount)`` outcomes):

* successes and failures, the posterior Beta(1 + successes, 1 + failures) of the chance the next task succeeds;
* EWMAs of time to first token and units (tokens) per second.

Each decision is Thompson sampling (Thompson, 1933; Chapelle & Li, "An Empirical Evaluation of Thompson
Sampling", NeurIPS 2011): for every short-listed peer draw ``p ~ Beta(1 + s, 1 + f)``, estimate the task's
time as ``ttft + units / units_per_s`` (observed, else the advertised throughput and the RTT, else unknown),
``speed = fastest time on the list / this time`` (1 when unknown: optimism for the untried), and rank by

    (1 - weight) * mcda + weight * p * speed

A peer with few outcomes has a wide posterior, so it is sometimes drawn high and tried; a proven one is drawn
near its true rate. Thompson sampling alone stops exploring once posteriors are narrow, and peers change, so
on top of it a fixed share of decisions -- the **exploration rate**, ``AdaptiveSettings.exploration_rate``,
5 % by default -- puts a uniformly chosen other member of the short-list first. Decisions that did are marked
``explored``. Randomness comes from an injected ``random.Random``, so a seeded run is reproducible.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from hyperion_node.scheduler.settings import AdaptiveSettings


@dataclass
class OutcomeStats:
    """What one peer did with one item. Counts are discounted, so they are floats."""

    successes: float = 0.0
    failures: float = 0.0
    ttft_s: float | None = None
    units_per_s: float | None = None
    outcomes: int = 0  # undiscounted, for display

    @property
    def success_mean(self) -> float:
        return (1.0 + self.successes) / (2.0 + self.successes + self.failures)

    def to_json(self) -> dict[str, object]:
        return {"successes": round(self.successes, 3), "failures": round(self.failures, 3),
                "success_mean": round(self.success_mean, 4), "ttft_s": self.ttft_s, "units_per_s": self.units_per_s,
                "outcomes": self.outcomes}


class ShortlistEntry(NamedTuple):
    """A short-listed candidate as the adaptive layer sees it. (Tuples: a decision builds a few per request,
    and a frozen dataclass costs four times as much to build.)"""

    peer_id: str
    mcda: float
    prior_ttft_s: float | None = None  # e.g. its RTT
    prior_units_per_s: float | None = None  # its advertised throughput


class Ranked(NamedTuple):
    entry: ShortlistEntry
    position: int  # where it was in the short-list handed in
    score: float
    success_sample: float
    speed: float
    explored: bool  # put first by the exploration rate rather than by its score


class AdaptiveLayer:
    def __init__(self, settings: AdaptiveSettings | None = None, *, rng: random.Random) -> None:
        self.settings = settings or AdaptiveSettings()
        self._rng = rng
        self._stats: OrderedDict[tuple[str, str], OutcomeStats] = OrderedDict()

    def stats(self, peer_id: str, item: str) -> OutcomeStats | None:
        return self._stats.get((peer_id, item))

    def record(self, peer_id: str, item: str, *, success: bool, ttft_s: float | None = None,
               units_per_s: float | None = None) -> None:
        """One finished task: a success (with its measurements, if any) or a failure."""
        key = (peer_id, item)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = OutcomeStats()
            while len(self._stats) > self.settings.max_entries:
                self._stats.popitem(last=False)
        else:
            self._stats.move_to_end(key)
        gamma = self.settings.discount
        stats.successes = stats.successes * gamma + (1.0 if success else 0.0)
        stats.failures = stats.failures * gamma + (0.0 if success else 1.0)
        stats.outcomes += 1
        alpha = self.settings.ewma_alpha
        if ttft_s is not None and ttft_s >= 0:
            stats.ttft_s = ttft_s if stats.ttft_s is None else stats.ttft_s + alpha * (ttft_s - stats.ttft_s)
        if units_per_s is not None and units_per_s > 0:
            stats.units_per_s = (units_per_s if stats.units_per_s is None
                                 else stats.units_per_s + alpha * (units_per_s - stats.units_per_s))

    def rank(self, item: str, shortlist: Sequence[ShortlistEntry], units: float) -> list[Ranked]:
        """The short-list in the order to try it. Draws one Beta sample per entry, in the order given, then
        one uniform number for the exploration decision (when there are two entries or more)."""
        if not shortlist:
            return []
        stats_of = self._stats.get
        draw = self._rng.betavariate  # ~1 us a draw; numpy's Generator.beta costs ~4x that per call of 8
        samples: list[float] = []
        times: list[float | None] = []
        for entry in shortlist:
            stats = stats_of((entry.peer_id, item))
            if stats is None:
                samples.append(draw(1.0, 1.0))
                ttft, rate = entry.prior_ttft_s, entry.prior_units_per_s
            else:
                samples.append(draw(1.0 + stats.successes, 1.0 + stats.failures))
                ttft = stats.ttft_s if stats.ttft_s is not None else entry.prior_ttft_s
                rate = stats.units_per_s if stats.units_per_s is not None else entry.prior_units_per_s
            times.append((ttft or 0.0) + units / rate if rate else None)
        known = [t for t in times if t is not None and t > 0]
        fastest = min(known) if known else None
        w = self.settings.weight
        ranked = []
        for position, (entry, sample, time) in enumerate(zip(shortlist, samples, times, strict=True)):
            speed = fastest / time if fastest is not None and time is not None and time > 0 else 1.0
            ranked.append(Ranked(entry, position, (1.0 - w) * entry.mcda + w * sample * speed, sample, speed, False))
        ranked.sort(key=_rank_key)
        if len(ranked) >= 2 and self._rng.random() < self.settings.exploration_rate:
            chosen = ranked.pop(1 + self._rng.randrange(len(ranked) - 1))  # any but the current first
            ranked.insert(0, chosen._replace(explored=True))
        return ranked


def _rank_key(r: Ranked) -> tuple[float, str]:
    return -r.score, r.entry.peer_id
