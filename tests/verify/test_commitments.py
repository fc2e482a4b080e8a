"""The logit commitment codec and comparison, as pure code: round trips, garbage, the certified-id rule."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtimes.inference.commitments import (
    PRIME,
    CommitmentBuilder,
    CommitmentParams,
    LogitCommitment,
    certified_ids,
    check_position,
    distance,
    evaluate,
    interpolate,
    quantize,
    top_k,
)
from runtimes.inference.exceptions import MalformedCommitment

VOCAB = 262_144  # Gemma 3's vocabulary: four ids share each residue mod P

logit_rows = st.lists(
    st.floats(min_value=-40, max_value=40, allow_nan=False, width=32), min_size=1, max_size=40
).map(lambda values: np.array(values, dtype=np.float32))


@given(
    points=st.dictionaries(st.integers(0, PRIME - 1), st.integers(0, PRIME - 1), min_size=1, max_size=8),
)
def test_interpolation_passes_through_every_point(points: dict[int, int]) -> None:
    coeffs = interpolate(sorted(points.items()), 8)
    assert len(coeffs) == 8
    assert all(evaluate(coeffs, x) == y for x, y in points.items())


def reference_top_k(row: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """The obvious way: sort every id by (-logit, id)."""
    order = sorted(range(row.shape[0]), key=lambda i: (-float(row[i]), i))[:k]
    return order, [float(row[i]) for i in order]


@settings(max_examples=200)
@given(row=st.lists(st.integers(-6, 6), min_size=1, max_size=3000).map(lambda v: np.array(v, dtype=np.float32)),
       k=st.integers(1, 12))
def test_top_k_is_the_sorted_top_with_ties_by_the_lower_id(row: np.ndarray, k: int) -> None:
    # Few distinct values: ties at the k-th value in almost every row, where the shortlist must keep them all.
    assert top_k(row, k) == reference_top_k(row, min(k, row.shape[0]))


def test_top_k_of_a_vocabulary_row_and_of_rows_that_are_not_finite() -> None:
    rng = np.random.default_rng(3)
    row = (rng.normal(size=VOCAB) * 3).astype(np.float32)
    assert top_k(row, 4) == reference_top_k(row, 4)
    row[[7, 70_000]] = row.max() + 1  # a tie at the top
    assert top_k(row, 2)[0] == [7, 70_000]
    row[9] = np.nan  # a broken row: the whole row is read, as before
    assert len(top_k(row, 4)[0]) == 4


@given(value=st.floats(-500, 500), noise=st.floats(-1, 1))
def test_quantized_distance_is_the_value_distance(value: float, noise: float) -> None:
    scale = 64
    measured = distance(quantize(value, scale), quantize(value + noise, scale))
    assert abs(measured - abs(noise) * scale) <= 1


@settings(max_examples=50)
@given(rows=st.lists(logit_rows, min_size=0, max_size=70), k=st.integers(1, 6), chunk=st.integers(1, 33))
def test_commitment_round_trips_through_evidence(rows: list[Any], k: int, chunk: int) -> None:
    builder = CommitmentBuilder(CommitmentParams(chunk_tokens=chunk, top_k=k))
    for row in rows:
        builder.add(row)
    built = builder.build()
    evidence = built.to_evidence()
    parsed = LogitCommitment.from_evidence(evidence)
    assert parsed == built
    assert parsed.positions == len(rows)
    assert all(len(base64.b64decode(c)) <= chunk * 2 * k for c in evidence["chunks"])
    for position, row in enumerate(rows):
        ids, values = top_k(row, k)
        # Evaluated at its own top-k, the polynomial gives back each quantized value (ids < P: no collision).
        assert check_position(parsed.coefficients(position), ids, values, 64).max_deviation == 0


def test_size_is_eight_bytes_per_token_for_k4() -> None:
    rng = np.random.default_rng(1)
    builder = CommitmentBuilder(CommitmentParams())
    for _ in range(64):
        builder.add(rng.normal(size=VOCAB).astype(np.float32))
    built = builder.build()
    assert [len(c) for c in built.chunks] == [256, 256]


def test_other_logits_do_not_match() -> None:
    rng = np.random.default_rng(2)
    honest = rng.normal(scale=4, size=VOCAB).astype(np.float32)
    builder = CommitmentBuilder(CommitmentParams())
    builder.add(honest)
    coeffs = builder.build().coefficients(0)
    ids, values = certified_ids(honest + rng.normal(scale=0.01, size=VOCAB).astype(np.float32), 4, 0.05)
    assert ids
    assert check_position(coeffs, ids, values, 64).max_deviation <= 2
    other = honest + rng.normal(scale=0.5, size=VOCAB).astype(np.float32)  # another quantization, say
    ids, values = certified_ids(other, 4, 0.05)
    assert check_position(coeffs, ids, values, 64).max_deviation > 5


def test_ids_near_the_top_k_boundary_or_sharing_a_residue_are_not_checked() -> None:
    logits = np.zeros(VOCAB, dtype=np.float32)
    logits[[10, 20, 30, 40, 50]] = [9.0, 8.0, 7.0, 6.0, 5.95]  # 4th and 5th within 2 x 0.05
    ids, _ = certified_ids(logits, 4, 0.05)
    assert ids == [10, 20, 30]
    logits[20 + PRIME] = 7.9  # 20's residue twin, in the top-4 too: neither can be checked
    ids, _ = certified_ids(logits, 4, 0.05)
    assert ids == [10, 30]


def test_colliding_ids_keep_the_higher_ranked_point() -> None:
    logits = np.zeros(VOCAB, dtype=np.float32)
    logits[[5, 5 + PRIME, 7, 9]] = [3.0, 2.0, 1.5, 1.0]
    builder = CommitmentBuilder(CommitmentParams())
    builder.add(logits)
    coeffs = builder.build().coefficients(0)
    assert evaluate(coeffs, 5) == quantize(3.0, 64)
    assert evaluate(coeffs, 7) == quantize(1.5, 64)


def _valid() -> dict[str, Any]:
    builder = CommitmentBuilder(CommitmentParams(chunk_tokens=4))
    for n in range(6):
        builder.add(np.arange(n, n + 20, dtype=np.float32))
    return builder.build().to_evidence()


@pytest.mark.parametrize(
    "change",
    [
        {"scheme": "topk-logit-poly/0"},
        {"prime": 65537},
        {"prime": True},
        {"top_k": 0},
        {"top_k": True},
        {"chunk_tokens": "4"},
        {"scale": 10**9},
        {"positions": 7},
        {"positions": -1},
        {"chunks": "AAAA"},
        {"chunks": ["AAAA"]},
        {"chunks": ["!!!!", "AAAA"]},
        {"sha256": "0" * 64},
    ],
)
def test_malformed_evidence_is_our_error(change: dict[str, Any]) -> None:
    with pytest.raises(MalformedCommitment):
        LogitCommitment.from_evidence({**_valid(), **change})


@given(garbage=st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=20,
))
def test_garbage_in_is_malformed_never_a_crash(garbage: Any) -> None:
    with pytest.raises(MalformedCommitment):
        LogitCommitment.from_evidence(garbage)


@given(field=st.sampled_from(sorted(_valid())), value=st.none() | st.integers() | st.text() | st.lists(st.text()))
def test_one_garbage_field_is_malformed_never_a_crash(field: str, value: Any) -> None:
    evidence = {**_valid(), field: value}
    try:
        LogitCommitment.from_evidence(evidence)
    except MalformedCommitment:
        return
    assert evidence == _valid()  # accepted only when the "garbage" was the valid value
