"""The scheduler's criteria and their weights (``[scheduler.weights]``): plain data, no numpy, so that
the configuration loader can validate them without loading the scoring code."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from hyperion_node.settings import InvalidSetting

# Column order of every criteria matrix in the scheduler.
CRITERIA: tuple[str, ...] = ("memory", "jobs", "rtt", "throughput", "price", "reliability")
# True where more is better: memory headroom (bytes free beyond what the task needs), measured throughput
# (units per second), reliability (0..1). False where less is better: current jobs (running + queued per slot),
# RTT (ms), price per unit.
BENEFIT: tuple[bool, ...] = (True, False, False, True, False, True)


@dataclass(frozen=True)
class Weights:
    """Relative weight of each criterion. Any non-negative finite numbers with a positive sum; they are
    divided by their sum, so ``memory=2, jobs=1`` means two thirds and one third."""

    memory: float = 0.32
    jobs: float = 0.24
    rtt: float = 0.16
    throughput: float = 0.08
    price: float = 0.10
    reliability: float = 0.10

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise InvalidSetting(f"scheduler.weights.{f.name}", value, "a finite number >= 0")
        if sum(self.as_tuple()) <= 0:
            raise InvalidSetting("scheduler.weights", self.as_dict(), "at least one weight above 0")

    def as_tuple(self) -> tuple[float, ...]:
        return tuple(float(getattr(self, name)) for name in CRITERIA)

    def as_dict(self) -> dict[str, float]:
        return dict(zip(CRITERIA, self.as_tuple(), strict=True))

    def vector(self) -> tuple[float, ...]:
        """The weights in ``CRITERIA`` order, summing to 1."""
        raw = self.as_tuple()
        total = sum(raw)
        return tuple(w / total for w in raw)

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> Weights:
        unknown = set(values) - set(CRITERIA)
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidSetting(f"scheduler.weights.{name}", values[name], "one of " + ", ".join(CRITERIA))
        return cls(**values)
