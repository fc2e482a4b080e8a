"""Evidence that accumulates: every check this node made of a worker's results, judged together. Pure code.

One spot check reads a sample of one result and disputes it when that sample alone shows a forgery. A close
cheat -- a lower quantization passed off as the advertised one, a temperature a little off the claimed one --
passes single checks often (bench_verify: 59-88 of 100), but each check still measures how far its result
lies from honest work. The runtime turns a check's statistics into *scores* (``check_scores`` on its class,
``runtimes.interface``): one number per statistic, scaled so that honest results keep it below 1 nearly
always and a cheat's sits above 1 on average.

Per worker and item, each score runs a one-sided CUSUM (Page 1954)::

    S_n = max(0, S_(n-1) + x_n - 1)

and the worker is disputed here when any ``S_n`` reaches ``THRESHOLD``. Honest results pull ``S`` back to 0
after every check; results that together are unlikely to be honest push it up by their excess, however small
each one is, and a single failed check (a clear forgery) disputes at once as before. The checks a dispute rests
on are the ones since its CUSUM last stood at 0: they travel with it (``Condemnation.checks``: receipt, scores)
so that another node can check any of them again.

The scales and the threshold are calibrated on recorded honest results (``scripts/bench_verify.py --parts
sequential``, docs/performance.md): the honest runs' highest CUSUM stays well under the threshold, and
``false_dispute_bound`` says what that allows.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Where a CUSUM disputes: honest scores sit below 1 each, so this is the summed excess of several checks
# that all lean one way (``scripts/bench_verify.py --parts sequential`` shows the honest maxima against it).
THRESHOLD = 4.0
# A worker's evidence counts as drifting (more of its results are checked) once a CUSUM is this far up.
DRIFT = 0.5
MAX_KEPT_CHECKS = 64  # per worker and item: the checks a dispute can name
MAX_WORKERS = 4096
# The statistic of a single check that failed on its own: a dispute at once, by the spot checks' own path
# (confirmed by a second verifier, ``service.SpotChecker``); the book counts it but does not condemn for it.
FAILED_CHECK = "failed_check"  # workers (and items) whose evidence this node keeps, least recently checked forgotten


@dataclass(frozen=True)
class Check:
    """One check of one result: its receipt, whether it passed alone, and its scores."""

    receipt_id: str
    ok: bool
    scores: Mapping[str, float]
    at_ms: int = 0
    reason: str = ""

    def to_map(self) -> dict[str, Any]:
        return {"receipt_id": self.receipt_id, "ok": self.ok, "reason": self.reason, "at_ms": self.at_ms,
                "scores": {k: round(v, 4) for k, v in sorted(self.scores.items())}}


@dataclass(frozen=True)
class Condemnation:
    """The sequential test's dispute of a worker's results together, with the checks it rests on."""

    worker: str
    item: str
    statistic: str  # the score whose CUSUM reached the threshold, or "failed_check"
    value: float
    checks: tuple[Check, ...]

    def to_map(self) -> dict[str, Any]:
        return {"worker": self.worker, "item": self.item, "statistic": self.statistic,
                "value": round(self.value, 4), "checks": [c.to_map() for c in self.checks]}


@dataclass
class Cusum:
    """Page's one-sided CUSUM of scores with reference value 1 (module docstring)."""

    value: float = 0.0
    peak: float = 0.0
    since: int = 0  # index (in the worker's checks) of the first check since value last stood at 0

    def add(self, score: float, index: int) -> float:
        if not math.isfinite(score):
            score = 0.0 if math.isnan(score) else THRESHOLD + 1.0  # an infinite excess is a forgery in itself
        if self.value <= 0.0:
            self.since = index
        self.value = max(0.0, self.value + score - 1.0)
        self.peak = max(self.peak, self.value)
        return self.value


@dataclass
class WorkerEvidence:
    """Everything this node's checks say of one worker's results for one item."""

    checks: int = 0
    failed: int = 0
    cusums: dict[str, Cusum] = field(default_factory=dict)
    kept: deque[tuple[int, Check]] = field(default_factory=lambda: deque(maxlen=MAX_KEPT_CHECKS))
    condemned: Condemnation | None = None

    @property
    def drift(self) -> float:
        """The highest CUSUM as a share of the threshold: 0 while the results look honest, 1 at a dispute."""
        return max((c.value for c in self.cusums.values()), default=0.0) / THRESHOLD

    def to_map(self) -> dict[str, Any]:
        return {"checks": self.checks, "failed": self.failed, "drift": round(self.drift, 4),
                "cusums": {k: {"value": round(c.value, 4), "peak": round(c.peak, 4)}
                           for k, c in sorted(self.cusums.items())},
                "condemned": self.condemned.to_map() if self.condemned is not None else None}


class EvidenceBook:
    """Per worker and item, the evidence of this node's checks; ``observe`` says when it disputes."""

    def __init__(self, *, threshold: float = THRESHOLD, max_workers: int = MAX_WORKERS) -> None:
        self.threshold = threshold
        self._max_workers = max_workers
        self._evidence: OrderedDict[tuple[str, str], WorkerEvidence] = OrderedDict()

    def get(self, worker: str, item: str) -> WorkerEvidence | None:
        return self._evidence.get((worker, item))

    def of_worker(self, worker: str) -> dict[str, WorkerEvidence]:
        return {item: ev for (w, item), ev in self._evidence.items() if w == worker}

    def condemned(self, worker: str) -> bool:
        """Whether this node's checks together disputed ``worker`` on any item (the sequential test)."""
        return any(ev.condemned is not None for ev in self.of_worker(worker).values())

    def drift(self, worker: str, item: str) -> float:
        found = self._evidence.get((worker, item))
        return found.drift if found is not None else 0.0

    def checked(self, worker: str, item: str) -> int:
        found = self._evidence.get((worker, item))
        return found.checks if found is not None else 0

    def observe(self, worker: str, item: str, check: Check) -> Condemnation | None:
        """Add one check; the dispute it completes, if any: the sequential test's (once per worker and item, then
        ``condemned``), else a failed check's (``FAILED_CHECK``, each time)."""
        key = (worker, item)
        evidence = self._evidence.pop(key, None) or WorkerEvidence()
        self._evidence[key] = evidence
        while len(self._evidence) > self._max_workers:
            self._evidence.popitem(last=False)
        index = evidence.checks
        evidence.checks += 1
        evidence.kept.append((index, check))
        if not check.ok:
            evidence.failed += 1
        failed = Condemnation(worker, item, FAILED_CHECK, math.inf, (check,)) if not check.ok else None
        verdict: Condemnation | None = None
        for name, score in check.scores.items():
            cusum = evidence.cusums.setdefault(name, Cusum())
            value = cusum.add(score, index)
            if verdict is None and value >= self.threshold:
                rests_on = tuple(c for i, c in evidence.kept if i >= cusum.since)
                verdict = Condemnation(worker, item, name, value, rests_on)
        if verdict is not None and evidence.condemned is None:
            evidence.condemned = verdict  # the sequential test's dispute, even on a check that also failed alone
            return verdict
        return failed

    def condemn(self, found: Condemnation) -> bool:
        """A dispute of the sequential test this node confirmed by its own checks of another node's case
        (``evidence_case``); False if the worker stood condemned on that item already."""
        key = (found.worker, found.item)
        evidence = self._evidence.pop(key, None) or WorkerEvidence()
        self._evidence[key] = evidence
        while len(self._evidence) > self._max_workers:
            self._evidence.popitem(last=False)
        if evidence.condemned is not None:
            return False
        evidence.condemned = found
        return True

    def snapshot(self) -> list[dict[str, Any]]:
        return [{"worker": w, "item": item, **ev.to_map()} for (w, item), ev in self._evidence.items()]


def replay(checks: Iterable[Check], threshold: float = THRESHOLD) -> tuple[int | None, float]:
    """Feed one worker's checks through a fresh book: the index of the check that disputed it (None if none
    did) and the highest CUSUM reached. ``scripts/bench_verify.py`` replays recorded checks this way."""
    book = EvidenceBook(threshold=threshold)
    for i, check in enumerate(checks):
        if book.observe("w", "m", check) is not None:
            evidence = book.get("w", "m")
            assert evidence is not None
            return i, max(c.peak for c in evidence.cusums.values()) if evidence.cusums else math.inf
    evidence = book.get("w", "m")
    peak = max((c.peak for c in evidence.cusums.values()), default=0.0) if evidence is not None else 0.0
    return None, peak


def false_dispute_bound(honest_sequences: int, disputed: int = 0, confidence: float = 0.95) -> float:
    """Upper bound on the chance that one honest sequence is disputed, after ``disputed`` of
    ``honest_sequences`` were: the exact binomial (Clopper-Pearson) bound; with none disputed, the rule of
    three's ``1 - (1 - confidence)^(1/n)``."""
    if honest_sequences <= 0:
        return 1.0
    if disputed == 0:
        return float(1.0 - (1.0 - confidence) ** (1.0 / honest_sequences))
    # Bisection on the binomial tail: P(X <= disputed | p) = 1 - confidence.
    lo, hi = disputed / honest_sequences, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        tail = sum(math.comb(honest_sequences, k) * mid ** k * (1 - mid) ** (honest_sequences - k)
                   for k in range(disputed + 1))
        lo, hi = (mid, hi) if tail > 1 - confidence else (lo, mid)
    return float(hi)
