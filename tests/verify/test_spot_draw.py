"""Which chunks and positions a spot check reads: pure code, no model."""

from __future__ import annotations

import random
from collections import Counter

from runtimes.inference.claims import Claim
from runtimes.inference.commitments import CommitmentParams, LogitCommitment
from runtimes.inference.verifier import checked_positions, choose_chunks


def claim(tokens: int, end_token: int | None) -> Claim:
    params = CommitmentParams()
    positions = tokens + (end_token is not None)
    sizes = [min(32, positions - start) for start in range(0, positions, 32)]
    commitment = LogitCommitment(params, positions, tuple(b"\0" * 8 * n for n in sizes))
    return Claim(tuple(range(tokens)), end_token, commitment, seed=0, temperature=0.0, top_p=0.95)


def test_one_chunk_is_drawn_uniformly() -> None:
    rng = random.Random(8)
    counts = Counter(choose_chunks(8, 1, rng) for _ in range(8000))
    assert set(counts) == {(c,) for c in range(8)}
    assert all(800 <= n <= 1200 for n in counts.values()), counts


def test_several_chunks_come_sorted_and_distinct() -> None:
    rng = random.Random(1)
    for _ in range(100):
        drawn = choose_chunks(8, 3, rng)
        assert len(set(drawn)) == 3
        assert list(drawn) == sorted(drawn)


def test_zero_or_enough_means_every_chunk() -> None:
    rng = random.Random(0)
    assert choose_chunks(5, 0, rng) == (0, 1, 2, 3, 4)
    assert choose_chunks(2, 3, rng) == (0, 1)
    assert choose_chunks(1, 1, rng) == (0,)


def test_positions_are_the_chunks_and_the_end_token() -> None:
    assert checked_positions(claim(70, None), (1,)) == list(range(32, 64))
    assert checked_positions(claim(70, None), (2,)) == list(range(64, 70))
    # A claimed end token is where a truncation lies: its position is read whatever was drawn.
    assert checked_positions(claim(69, 106), (0,)) == [*range(32), 69]
    assert checked_positions(claim(69, 106), (2,)) == list(range(64, 70))
