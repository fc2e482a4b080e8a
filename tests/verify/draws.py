"""A chunk draw fixed in advance, for tests and ``scripts/bench_verify.py`` (the node draws from the OS)."""

from __future__ import annotations

import random
from typing import Any


class FixedChunks(random.Random):
    """Hands ``verify_claim`` these chunks instead of a random sample (``count`` must match)."""

    def __init__(self, chunks: list[int]) -> None:
        super().__init__(0)
        self.chunks = chunks

    def sample(self, population: Any, k: int, *, counts: Any = None) -> list[Any]:
        assert k == len(self.chunks), f"asked for {k} chunks, fixed {self.chunks}"
        assert all(c in population for c in self.chunks)
        return list(self.chunks)
