"""Commitments to the top-k logits of generated tokens, and their comparison: pure code, no llama.cpp, no trio.

The idea is TOPLOC's (Ong et al., Prime Intellect, 2025, "TOPLOC: A Locality Sensitive Hashing Scheme for
Trustless Verifiable Inference"): while it generates, the worker records a few of the model's output values at
every generated position; a verifier later recomputes them with one batched forward pass (prefill), which is
far cheaper than generating, and compares within a tolerance that absorbs honest floating-point noise but not
another model, another quantization or made-up numbers.

What is committed, per generated position: the ``top_k`` largest logits and their token ids. Storing ids and
values plainly costs 18 bits per id (Gemma's vocabulary has 262,144 tokens) plus the value. TOPLOC's trick
halves that: the ``k`` points ``(x = token_id mod P, y = round(logit * scale) mod P)`` are interpolated into a
polynomial of degree ``k - 1`` over GF(P), P = 65521 (the largest 16-bit prime), and only its ``k``
coefficients are stored, 2 bytes each. The verifier evaluates that polynomial at the ids of *its own* top-k
and compares with its own values. Anyone without the logits can only guess: the polynomial at an id that was
not committed is a uniformly random field element, which lands within a tolerance of ``t`` quanta with
probability ``(2t + 1) / P`` (~2e-4 for t = 6).

Layout: ``top_k`` little-endian uint16 coefficients per position (constant term first), positions
concatenated, ``chunk_tokens`` positions per chunk (the last chunk may be shorter). With k = 4 that is
8 bytes per token, 256 bytes per 32-token chunk.

Two ids that agree mod P (ids ``i`` and ``i + P``; 4 ids share each residue in a 262,144-token vocabulary)
cannot both be points: the higher-ranked one is kept. The verifier skips an id when another id of its
residue class could be in the worker's top-k (``certified_ids``), so a collision never reads as a lie.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from runtimes.inference.exceptions import MalformedCommitment

SCHEME = "topk-logit-poly/1"
PRIME = 65521  # largest prime below 2**16: coefficients fit in uint16
DOMAIN = b"hyperion/inference-commitment/v1\0"
# Bounds on what a peer's evidence may ask us to decode. 2**17 positions is 64x the default context; top_k
# and chunk sizes far past these would only be a way to make the verifier allocate.
MAX_POSITIONS = 1 << 17
MAX_TOP_K = 32
MAX_CHUNK_TOKENS = 4096
MAX_SCALE = 4096


@dataclass(frozen=True)
class CommitmentParams:
    """How a commitment was made. ``scale`` quanta per logit unit (64: resolution 0.016)."""

    chunk_tokens: int = 32
    top_k: int = 4
    scale: int = 64

    def __post_init__(self) -> None:
        for name, value, high in (
            ("chunk_tokens", self.chunk_tokens, MAX_CHUNK_TOKENS),
            ("top_k", self.top_k, MAX_TOP_K),
            ("scale", self.scale, MAX_SCALE),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
                raise MalformedCommitment(f"commitment {name} must be an integer in [1, {high}], got {value!r}")

    @property
    def position_bytes(self) -> int:
        return 2 * self.top_k


def quantize(value: float, scale: int) -> int:
    """A logit as a field element: ``round(value * scale) mod P``; comparisons are modular (``distance``)."""
    return round(float(value) * scale) % PRIME


def distance(a: int, b: int) -> int:
    """Distance of two field elements on the circle of P: quantized values wrap, their difference does not."""
    d = (a - b) % PRIME
    return min(d, PRIME - d)


def interpolate(points: Sequence[tuple[int, int]], degree_bound: int) -> list[int]:
    """Coefficients (constant first, ``degree_bound`` of them) of the polynomial through ``points`` mod P.

    Lagrange form expanded to monomials: O(k^3) for k points, ~40 µs for k = 4 in CPython, against a
    ~45 ms decode step per token here. The x values must be distinct mod P.
    """
    if len(points) > degree_bound:
        raise ValueError(f"{len(points)} points need degree bound > {degree_bound}")
    coeffs = [0] * degree_bound
    for i, (xi, yi) in enumerate(points):
        basis = [1]  # prod_{j != i} (x - xj), built up one factor at a time
        denom = 1
        for j, (xj, _) in enumerate(points):
            if j == i:
                continue
            shifted = [0, *basis]
            for n, c in enumerate(basis):
                shifted[n] = (shifted[n] - xj * c) % PRIME
            basis = shifted
            denom = denom * (xi - xj) % PRIME
        factor = yi * pow(denom, PRIME - 2, PRIME) % PRIME
        for n, c in enumerate(basis):
            coeffs[n] = (coeffs[n] + factor * c) % PRIME
    return coeffs


def evaluate(coeffs: Sequence[int], x: int) -> int:
    result = 0
    for c in reversed(coeffs):
        result = (result * x + c) % PRIME
    return result


# Shortlist of a logit row (``shortlist``): the row's ids at or above a threshold read off every
# SHORTLIST_STRIDE-th logit, that sample's SHORTLIST_RANK-th largest, which leaves ~stride x rank = 256 of
# the 262,144 ids (again at 4x the rank when fewer than asked for, then the whole row). The verifier's sampler
# chain and certified ids need 41, a commitment 4. A fixed margin below the row's largest logit does not do:
# 8 logit units held 169 ids of a row right after a prompt and 55-240,000 of the rows of a 256-token
# generation (packaged model).
SHORTLIST_STRIDE = 64
SHORTLIST_RANK = 4


def shortlist(logits: npt.NDArray[np.float32], count: int) -> npt.NDArray[np.intp]:
    """Ids, ascending, of a set that holds every id whose logit is at least the ``count``-th largest: the
    ``count`` largest whichever way ties fall. The set is every id at or above some threshold, and holds at
    least ``count`` ids, so the ``count``-th largest logit is at or above the threshold too. The whole
    vocabulary when no threshold does (or the row is not finite).

    A sample's partition, a comparison and a scan of the row, ~0.1 ms for Gemma's 262,144 logits, against
    ~0.6 ms for ``argpartition`` of the row and ~0.4 ms for llama.cpp to copy the row into its candidates and
    sort out its top-k.
    """
    n = logits.shape[0]
    if count < n and math.isfinite(float(logits.max())):
        sample = logits[::SHORTLIST_STRIDE]
        rank = max(SHORTLIST_RANK, -(-2 * count // SHORTLIST_STRIDE))
        for _ in range(2):
            if rank > sample.size:
                break
            ids = np.flatnonzero(logits >= np.partition(sample, -rank)[-rank])
            if ids.size >= count:
                return ids
            rank *= 4
    return np.arange(n)


def leading(
    logits: npt.NDArray[np.float32], near: npt.NDArray[np.intp], k: int
) -> tuple[list[int], list[float]]:
    """The ``k`` largest logits among the shortlisted ids ``near``, largest first, ties by the lower id: on a
    shortlist of ``k`` (``shortlist``), the row's own top ``k``."""
    values = logits[near]
    order = np.lexsort((near, -values))[:k]
    return near[order].tolist(), values[order].astype(np.float64).tolist()


def top_k(logits: npt.NDArray[np.float32], k: int) -> tuple[list[int], list[float]]:
    """The ``k`` largest logits, largest first, with their token ids; ties broken by the lower id.

    Once per generated token on the worker: through a shortlist (``shortlist``) this is ~0.1 ms for Gemma's
    262,144 logits, where ``argpartition`` of the row took ~0.6 ms (~2% of a token at 30 tokens/s on the
    reference machine) and a full sort ~15 ms.
    """
    k = min(k, logits.shape[0])
    return leading(logits, shortlist(logits, k), k)


def commit_position(ids: Sequence[int], values: Sequence[float], params: CommitmentParams) -> bytes:
    """The ``2 * top_k`` bytes for one position, from its top-k ids and logits (highest first)."""
    points: list[tuple[int, int]] = []
    seen: set[int] = set()
    for token, value in zip(ids[: params.top_k], values[: params.top_k], strict=True):
        x = token % PRIME
        if x in seen:
            continue  # a lower-ranked id of the same residue class: see the module docstring
        seen.add(x)
        points.append((x, quantize(value, params.scale)))
    return struct.pack(f"<{params.top_k}H", *interpolate(points, params.top_k))


@dataclass(frozen=True)
class LogitCommitment:
    """The commitments of one generation: ``positions`` polynomials in chunks of ``params.chunk_tokens``."""

    params: CommitmentParams
    positions: int
    chunks: tuple[bytes, ...]

    def __post_init__(self) -> None:
        p = self.params
        if isinstance(self.positions, bool) or not isinstance(self.positions, int):
            raise MalformedCommitment("commitment positions must be an integer")
        if not 0 <= self.positions <= MAX_POSITIONS:
            raise MalformedCommitment(f"commitment positions must be in [0, {MAX_POSITIONS}]")
        expected = -(-self.positions // p.chunk_tokens)
        if len(self.chunks) != expected:
            raise MalformedCommitment(f"{self.positions} positions need {expected} chunks, got {len(self.chunks)}")
        for n, chunk in enumerate(self.chunks):
            count = min(p.chunk_tokens, self.positions - n * p.chunk_tokens)
            if len(chunk) != count * p.position_bytes:
                raise MalformedCommitment(
                    f"chunk {n} has {len(chunk)} bytes, expected {count * p.position_bytes} ({count} positions)"
                )

    def coefficients(self, position: int) -> tuple[int, ...]:
        p = self.params
        chunk, offset = divmod(position, p.chunk_tokens)
        start = offset * p.position_bytes
        return struct.unpack_from(f"<{p.top_k}H", self.chunks[chunk], start)

    def sha256(self) -> str:
        """Hex digest over the parameters and every chunk: what a dispute or a gossiped verdict can cite."""
        p = self.params
        digest = hashlib.sha256(DOMAIN)
        digest.update(struct.pack("<5I", PRIME, p.chunk_tokens, p.top_k, p.scale, self.positions))
        for chunk in self.chunks:
            digest.update(chunk)
        return digest.hexdigest()

    def to_evidence(self) -> dict[str, Any]:
        """JSON- and CBOR-plain form: chunks as base64 text (JSON has no bytes), ~11 bytes per token with k = 4."""
        p = self.params
        return {
            "scheme": SCHEME,
            "chunk_tokens": p.chunk_tokens,
            "top_k": p.top_k,
            "scale": p.scale,
            "prime": PRIME,
            "positions": self.positions,
            "chunks": [base64.b64encode(chunk).decode("ascii") for chunk in self.chunks],
            "sha256": self.sha256(),
        }

    @classmethod
    def from_evidence(cls, value: object) -> LogitCommitment:
        """Parse :meth:`to_evidence`'s form; anything else is :class:`MalformedCommitment`, never a crash."""
        if not isinstance(value, Mapping):
            raise MalformedCommitment("the logit commitment must be a map")
        if value.get("scheme") != SCHEME:
            raise MalformedCommitment(f"unknown commitment scheme {value.get('scheme')!r} (this node reads {SCHEME})")
        if value.get("prime") != PRIME or isinstance(value.get("prime"), bool):
            raise MalformedCommitment(f"commitment prime must be {PRIME}")
        params = CommitmentParams(
            chunk_tokens=value.get("chunk_tokens"),  # type: ignore[arg-type]  # checked in __post_init__
            top_k=value.get("top_k"),  # type: ignore[arg-type]
            scale=value.get("scale"),  # type: ignore[arg-type]
        )
        raw_chunks = value.get("chunks")
        if not isinstance(raw_chunks, list) or len(raw_chunks) > MAX_POSITIONS:
            raise MalformedCommitment("commitment chunks must be a list of base64 strings")
        chunks: list[bytes] = []
        for n, text in enumerate(raw_chunks):
            if not isinstance(text, str) or len(text) > 4 * params.chunk_tokens * params.position_bytes:
                raise MalformedCommitment(f"commitment chunk {n} is not a base64 string of a chunk's size")
            try:
                chunks.append(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise MalformedCommitment(f"commitment chunk {n} is not valid base64: {exc}") from exc
        commitment = cls(params=params, positions=value.get("positions"), chunks=tuple(chunks))  # type: ignore[arg-type]
        if value.get("sha256") != commitment.sha256():
            raise MalformedCommitment("commitment sha256 does not match its chunks")
        return commitment


class CommitmentBuilder:
    """Collects positions while a generation runs; not thread-safe (one generation, one thread)."""

    def __init__(self, params: CommitmentParams) -> None:
        self.params = params
        self._done: list[bytes] = []
        self._current = bytearray()
        self._positions = 0

    def add(self, logits: npt.NDArray[np.float32]) -> None:
        """Commit to one position's logits (the full vocabulary row that produced the generated token)."""
        ids, values = top_k(logits, self.params.top_k)
        self._current += commit_position(ids, values, self.params)
        self._positions += 1
        if self._positions % self.params.chunk_tokens == 0:
            self._done.append(bytes(self._current))
            self._current = bytearray()

    def build(self) -> LogitCommitment:
        chunks = [*self._done, bytes(self._current)] if self._current else list(self._done)
        return LogitCommitment(params=self.params, positions=self._positions, chunks=tuple(chunks))


@dataclass(frozen=True)
class PositionCheck:
    """One position compared: how many ids could be checked and the largest deviation, in quanta."""

    checked: int
    max_deviation: int  # 0 when nothing was checked


def certified_ids(
    logits: npt.NDArray[np.float32],
    k: int,
    tolerance: float,
    *,
    top: tuple[Sequence[int], Sequence[float]] | None = None,
) -> tuple[list[int], list[float]]:
    """The verifier's ids that are surely in an honest worker's top-k, given |worker - verifier| <= tolerance.

    An id whose logit exceeds the verifier's (k+1)-th largest by more than 2 x tolerance beats, on the
    worker's side too, every id outside the verifier's top-k, so it is among the worker's k largest. Ids
    near that boundary may honestly have swapped places with the (k+1)-th and are not checked. An id is also
    skipped when another id of its residue class mod P could be in the worker's top-k (module docstring).

    ``top``: the k+1 largest logits as ``top_k`` gives them, when the caller already has them. Which of
    several ids tied at the (k+1)-th value it holds cannot change the answer: only the values at ranks k
    and k+1 are read, and only ids strictly above the (k+1)-th value are returned, which every top-(k+1)
    holds, in the same (value, id) order.
    """
    ids, values = top_k(logits, k + 1) if top is None else (list(top[0]), list(top[1]))
    floor = values[-1] if len(values) > k else -np.inf
    could_be_top = float(values[k - 1] if len(values) >= k else values[-1]) - 2 * tolerance
    out_ids: list[int] = []
    out_values: list[float] = []
    for token, value in zip(ids[:k], values[:k], strict=True):
        if value <= floor + 2 * tolerance:
            break  # sorted: the rest are no higher
        rivals = logits[token % PRIME :: PRIME]  # every id with this residue, this one included
        if int(np.count_nonzero(rivals >= could_be_top)) > 1:
            continue
        out_ids.append(token)
        out_values.append(value)
    return out_ids, out_values


def check_position(
    coeffs: Sequence[int], ids: Sequence[int], values: Sequence[float], scale: int
) -> PositionCheck:
    """Evaluate the committed polynomial at the verifier's certified ids and compare with its values."""
    worst = 0
    for token, value in zip(ids, values, strict=True):
        worst = max(worst, distance(evaluate(coeffs, token % PRIME), quantize(value, scale)))
    return PositionCheck(checked=len(ids), max_deviation=worst)
