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

import numpy as np
import numpy.typing as npt

from hyperion_node.scheduler.weights import BENEFIT, CRITERIA, Weights

FloatArray = npt.NDArray[np.float64]

_SIGN = np.array([[1.0 if benefit else -1.0] for benefit in BENEFIT])


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
    return mcda_scores(normalise(criteria), np.array(weights.vector(), dtype=np.float64))


def rank_in_place(oriented: npt.NDArray[np.float32], weights: npt.NDArray[np.float32]
                  ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Scores in the order of ``mcda_scores(normalise_oriented(oriented), weights)``, for choosing a short-list
    out of many candidates: float32 (the criteria are stored twice, this copy for ranking), unclipped, in
    fewer passes over the matrix -- ``w . ((x - low) / spread)`` as ``(w / spread) . (x - low)``, without
    the weight of the flat criteria (the same for every candidate). Consumes ``oriented``. Also returns,
    per criterion, the column holding its lowest and its highest value, from which :func:`exact_scores`
    recovers the exact bounds: rounding to float32 is monotone, so the float32 extremes sit in columns
    holding the float64 extremes (up to ties within float32 precision)."""
    n_criteria = oriented.shape[0]
    rows = np.arange(n_criteria)
    if oriented.shape[1] == 0:
        empty = np.zeros(n_criteria, dtype=np.intp)
        return np.zeros(0, dtype=np.float32), empty, empty
    low_at = oriented.argmin(axis=1)
    high_at = oriented.argmax(axis=1)
    low = oriented[rows, low_at]
    spread = oriented[rows, high_at] - low
    flat = spread <= 0
    oriented -= low[:, None]
    scale = np.divide(weights, np.where(flat, np.float32(np.inf), spread), dtype=np.float32)
    scores = np.matmul(scale, oriented, dtype=np.float32)
    return scores, low_at, high_at


def exact_scores(oriented: list[list[float]], weights: list[float]) -> tuple[list[float], list[list[float]]]:
    """The exact (float64) scores and normalised criteria of a few candidates, from oriented rows (one per
    criterion, as lists) whose first values hold each criterion's lowest value (value ``r`` for criterion
    ``r``), the next its highest, and the last ``k`` the candidates: what :func:`normalise_oriented` and
    :func:`mcda_scores` give over the whole eligible set. Plain Python: a short-list is a few dozen values,
    and as many NumPy calls on arrays that small cost more than the arithmetic. The clipping guards against a
    float32 near-tie having picked a column a rounding step away from the true extreme."""
    n_criteria = len(oriented)
    k = len(oriented[0]) - 2 * n_criteria if oriented else 0
    scores = [0.0] * k
    columns = [[1.0] * n_criteria for _ in range(k)]  # a flat criterion is 1
    for r, (row, weight) in enumerate(zip(oriented, weights, strict=True)):
        low = row[r]
        spread = row[n_criteria + r] - low
        if spread <= 0:
            for j in range(k):
                scores[j] += weight
            continue
        for j, value in enumerate(row[2 * n_criteria:]):
            normalised = (value - low) / spread
            if normalised > 1.0:
                normalised = 1.0
            elif normalised < 0.0:
                normalised = 0.0
            columns[j][r] = normalised
            scores[j] += weight * normalised
    return [1.0 if score > 1.0 else 0.0 if score < 0.0 else score for score in scores], columns
