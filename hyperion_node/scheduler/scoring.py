"""Multi-criteria score (MCDA) of the candidates that passed the filters: pure arithmetic on arrays.

Simple additive weighting (Hwang & Yoon, *Multiple Attribute Decision Making*, 1981): each criterion is
normalised to [0, 1] over the candidate set by linear min-max, benefit criteria rising and cost criteria
falling, and the score is the weighted sum, so it lies in [0, 1] too:

    norm(x) = (x - min) / (max - min)        for a benefit (more is better)
    norm(x) = (max - x) / (max - min)        for a cost (less is better)
    norm(x) = 1                               when every candidate has the same value (the criterion cannot
                                              tell them apart, and a lone candidate is the best there is)

Properties the tests check with Hypothesis: every score is in [0, 1]; a candidate's score never falls when
one of its own criteria gets better (the others fixed); the scores do not depend on the order in which the
candidates are given.

The default weights start from the TitanCompute reference split -- 40 % memory headroom, 30 % current jobs,
20 % RTT, 10 % measured throughput -- scaled to 80 % of the total, and give the remaining 20 % to the two
criteria it lacks in an open network: price (10 %) and reliability (10 %, the Beta reputation from the
ledger). The split is a starting point to tune against real traffic, not a measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from hyperion_node.scheduler.exceptions import InvalidSetting

FloatArray = npt.NDArray[np.float64]

# Column order of every criteria matrix in the scheduler.
CRITERIA: tuple[str, ...] = ("memory", "jobs", "rtt", "throughput", "price", "reliability")
# True where more is better: memory headroom (bytes free beyond what the task needs), measured throughput
# (units per second), reliability (0..1). False where less is better: current jobs (running + queued per slot),
# RTT (ms), price per unit.
BENEFIT: tuple[bool, ...] = (True, False, False, True, False, True)
_SIGN = np.array([[1.0 if benefit else -1.0] for benefit in BENEFIT])


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

    def vector(self) -> FloatArray:
        """The weights in ``CRITERIA`` order, summing to 1."""
        raw = np.array(self.as_tuple(), dtype=np.float64)
        out: FloatArray = raw / raw.sum()
        return out

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> Weights:
        unknown = set(values) - set(CRITERIA)
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidSetting(f"scheduler.weights.{name}", values[name], "one of " + ", ".join(CRITERIA))
        return cls(**values)


def orient(criteria: FloatArray) -> FloatArray:
    """Raw criterion-major values with the costs negated, so that more is better on every row."""
    if criteria.ndim != 2 or criteria.shape[0] != len(CRITERIA):
        raise ValueError(f"expected a ({len(CRITERIA)}, n) matrix, got shape {criteria.shape}")
    out: FloatArray = criteria * _SIGN
    return out


def normalise_oriented(oriented: FloatArray, *, in_place: bool = False) -> FloatArray:
    """Min-max normalise each row of an oriented ``(len(CRITERIA), n)`` matrix of finite values to [0, 1].

    Criterion-major (one row per criterion, one column per candidate) so that every reduction runs over
    contiguous memory. No clipping is needed: for ``low <= x <= high``, IEEE rounding is monotone, so
    ``fl(x - low) <= fl(high - low)`` and the quotient is in [0, 1] exactly.
    """
    out = oriented if in_place else oriented.copy()
    if out.shape[1] == 0:
        return out
    low = out.min(axis=1, keepdims=True)
    spread = out.max(axis=1, keepdims=True) - low
    flat = spread[:, 0] <= 0
    spread[flat] = 1.0
    out -= low
    out /= spread
    out[flat] = 1.0
    return out


def normalise(criteria: FloatArray) -> FloatArray:
    """Min-max normalise raw criterion-major values (benefits rising, costs falling) to [0, 1]."""
    return normalise_oriented(orient(criteria), in_place=True)


def mcda_scores(normalised: FloatArray, weights: FloatArray) -> FloatArray:
    """Weighted sum of normalised criteria (criterion-major): one score in [0, 1] per candidate."""
    scores: FloatArray = weights @ normalised
    np.clip(scores, 0.0, 1.0, out=scores)
    return scores


def score(criteria: FloatArray, weights: Weights) -> FloatArray:
    """Scores of raw, criterion-major criteria values: :func:`normalise`, then :func:`mcda_scores`."""
    return mcda_scores(normalise(criteria), weights.vector())


def score_oriented_in_place(oriented: FloatArray, weights: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The same scores as ``mcda_scores(normalise_oriented(oriented), weights)`` in fewer passes over the matrix,
    for the scheduler's hot path: ``w . ((x - low) / spread)`` is computed as ``(w / spread) . (x - low)``, and a
    flat criterion adds its weight. Consumes ``oriented`` (left holding ``x - low``); returns the scores and
    the per-criterion divisor (``inf`` for a flat criterion) that turns a column of what is left into its
    normalised values: ``normalised_columns(oriented[:, columns], divisor)``."""
    if oriented.shape[1] == 0:
        return np.zeros(0), np.ones(len(CRITERIA))
    low = oriented.min(axis=1)
    spread = oriented.max(axis=1) - low
    flat = spread <= 0
    divisor = np.where(flat, np.inf, spread)
    oriented -= low[:, None]
    scores: FloatArray = (weights / divisor) @ oriented
    scores += weights[flat].sum()
    np.clip(scores, 0.0, 1.0, out=scores)
    return scores, divisor


def normalised_columns(rest: FloatArray, divisor: FloatArray) -> list[list[float]]:
    """Normalised criteria of a few candidates, one list per candidate, from the columns of what
    :func:`score_oriented_in_place` left (a flat criterion is 1, as in :func:`normalise_oriented`)."""
    out: FloatArray = rest / divisor[:, None]
    out[np.isinf(divisor)] = 1.0
    np.clip(out, 0.0, 1.0, out=out)
    columns: list[list[float]] = out.T.tolist()
    return columns
