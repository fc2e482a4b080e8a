"""The Scheduler: candidates -> filters -> MCDA score -> short-list -> adaptive order -> a Decision.

Pure code: no I/O, no task; the clock is injected (``trio.current_time`` in the daemon). The requester side
uses it like this::

    decision = scheduler.choose(requirements, candidate_set, trio.current_time())
    if not decision.ranked:
        -> HTTP 503 with decision.message (decision.status says which: no-provider, all-busy, ...)
    with trio.fail_at(requirements.deadline):          # the deadline holds across every attempt
        for choice in decision.ranked:                 # best first; fail over down the list
            if not scheduler.begin(choice.peer_id):    # its breaker refused (a half-open probe is out)
                continue
            outcome = ...dispatch to choice.peer_id...
            scheduler.record_outcome(choice.peer_id, requirements.item, outcome)
            if outcome.kind is SUCCESS or tokens were already streamed: break

The P2P side feeds what the health trends need: ``observe_heartbeat`` for every accepted heartbeat and
``observe_rtt`` for every ping.

Cost: every filter and the score are whole-column NumPy operations over the candidate set, and the short-list
is an ``argpartition`` (O(n)), not a sort; per-peer Python work is bounded by the short-list and by the
peers with an open breaker, a BUSY answer or a drained health -- never by the number of candidates.

A drained peer gets no new work while another provider can take it; when every provider left is drained, the
drained ones are ranked as usual rather than the request refused (a degraded provider serves better than a
503).
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from hyperion_node.p2p.messages import Heartbeat
from hyperion_node.scheduler import candidates as cs
from hyperion_node.scheduler.adaptive import AdaptiveLayer, ShortlistEntry
from hyperion_node.scheduler.breaker import BreakerState, BreakerTransition, CircuitBreaker, Clock, trio_clock
from hyperion_node.scheduler.candidates import Candidate, CandidateSet, TaskRequirements
from hyperion_node.scheduler.exceptions import WrongCapability
from hyperion_node.scheduler.health import HealthChange, HealthMonitor
from hyperion_node.scheduler.scoring import exact_scores, rank_in_place
from hyperion_node.scheduler.settings import SchedulerSettings
from hyperion_node.scheduler.weights import CRITERIA

SchedulerEvent = BreakerTransition | HealthChange


class Exclusion(StrEnum):
    """Why a candidate was not considered, by precedence: one caught by several filters gets the first listed."""

    NOT_OFFERED = "not-offered"  # a candidate for another runtime or item
    DEADLINE = "deadline-passed"
    UNREACHABLE = "unreachable"  # suspect or dead in the peer table
    DRAINING = "draining"  # it said it is draining or leaving
    BANNED = "banned"  # its score (offences against this node) reached the ban level
    TRIED = "already-tried"  # in requirements.exclude
    PRICE = "price"
    MEMORY = "memory"
    BUSY = "busy"  # every slot and its queue full, or it answered BUSY a moment ago
    BREAKER_OPEN = "breaker-open"
    UNHEALTHY = "unhealthy"  # drained by its health trend
    TOO_SLOW = "too-slow"  # cannot finish expected_units before the deadline at its advertised speed


_EXCLUSIONS = tuple(Exclusion)
# Codes rise with precedence (0 = eligible): the reason a candidate gets is the highest code that applies, and
# filters combine with np.maximum in any order. At 10,000 candidates ``np.maximum(reasons, mask * code)``
# takes 3 us where the boolean-mask assignment ``reasons[mask] = code`` takes 39 (measured).
_CODE = {reason: len(_EXCLUSIONS) - i for i, reason in enumerate(_EXCLUSIONS)}
_BY_CODE = {code: reason for reason, code in _CODE.items()}
_CODE_INT8 = {reason: np.int8(code) for reason, code in _CODE.items()}
_VALUE_CODES = [(reason.value, code) for reason, code in _CODE.items()]
_FILTER_CODES = np.array([[_CODE[Exclusion.BUSY]], [_CODE[Exclusion.MEMORY]], [_CODE[Exclusion.PRICE]]], dtype=np.int8)
_GONE_CODES = np.zeros(4, dtype=np.int8)  # CandidateSet.gone() code -> exclusion code
_GONE_CODES[cs.GONE_BANNED] = _CODE[Exclusion.BANNED]
_GONE_CODES[cs.GONE_DRAINING] = _CODE[Exclusion.DRAINING]
_GONE_CODES[cs.GONE_UNREACHABLE] = _CODE[Exclusion.UNREACHABLE]
# Reasons that pass with time (Retry-After), as opposed to a request no serving peer can meet.
_TRANSIENT = (Exclusion.BUSY, Exclusion.BREAKER_OPEN, Exclusion.UNHEALTHY, Exclusion.TRIED)
_GONE = (Exclusion.UNREACHABLE, Exclusion.DRAINING, Exclusion.BANNED)


class DecisionStatus(StrEnum):
    OK = "ok"
    NO_PROVIDER = "no-provider"  # nobody live serves the item: 503 "no peer serves the model"
    ALL_BUSY = "all-busy"  # live providers exist, all busy, failing or tried: 503 with Retry-After
    NO_MATCH = "no-match"  # live providers exist, none meets the price, memory or deadline asked for
    DEADLINE = "deadline-passed"


class OutcomeKind(StrEnum):
    SUCCESS = "success"
    BUSY = "busy"  # it refused at admission: load, not a fault
    UNREACHABLE = "unreachable"  # dial or stream open failed
    FAILED = "failed"  # it accepted and then failed (before or after the first token)
    TIMEOUT = "timeout"  # no answer within the deadline
    CANCELLED = "cancelled"  # our side gave up (the client went away): says nothing about the peer


_FAULTS = (OutcomeKind.UNREACHABLE, OutcomeKind.FAILED, OutcomeKind.TIMEOUT)


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    ttft_s: float | None = None  # time to first token (or first partial result)
    units_per_s: float | None = None  # tokens per second after the first
    at: float | None = None  # when it ended, on the scheduler's clock; None: now


class ScoredCandidate(NamedTuple):
    """One short-listed candidate, as ranked. (A tuple: a decision builds a few per request, and a frozen
    dataclass costs four times as much to build.)"""

    candidate: Candidate
    score: float  # the rank score: MCDA blended with the adaptive estimate
    mcda: float
    criteria: Mapping[str, float]  # each criterion normalised to 0..1 over the eligible set
    success_sample: float  # the Thompson draw of its success chance
    speed: float  # fastest expected time on the short-list / its own, 0..1
    probe: bool  # its breaker is half-open: this request would be the probe
    explored: bool  # put first by the exploration rate

    @property
    def peer_id(self) -> str:
        return self.candidate.peer_id

    def to_json(self) -> dict[str, object]:
        return {"peer_id": self.peer_id, "local": self.candidate.local, "score": round(self.score, 4),
                "mcda": round(self.mcda, 4), "criteria": {k: round(v, 4) for k, v in self.criteria.items()},
                "success_sample": round(self.success_sample, 4), "speed": round(self.speed, 4),
                "probe": self.probe, "explored": self.explored}


@dataclass(frozen=True, eq=False)
class Decision:
    requirements: TaskRequirements
    status: DecisionStatus
    ranked: tuple[ScoredCandidate, ...]  # best first: the order to try them in
    considered: int  # candidates looked at
    excluded_counts: Mapping[str, int]
    retry_after_s: float | None = None  # for ALL_BUSY: when the first excluded peer may be back
    _peer_ids: Sequence[str] = field(default=(), repr=False)
    _reasons: npt.NDArray[np.int8] = field(default_factory=lambda: np.zeros(0, np.int8), repr=False)
    _other: Mapping[str, str] = field(default_factory=dict, repr=False)  # exclusions outside the set

    @property
    def peers(self) -> tuple[str, ...]:
        return tuple(c.peer_id for c in self.ranked)

    def excluded(self) -> dict[str, str]:
        """Peer ID -> reason, for every candidate left out (built on demand: O(excluded))."""
        out = dict(self._other)
        for index in np.flatnonzero(self._reasons):
            out[self._peer_ids[int(index)]] = _BY_CODE[int(self._reasons[index])].value
        return out

    @property
    def message(self) -> str:
        r = self.requirements
        what = f"{r.runtime}/{r.item}"
        counts = self.excluded_counts
        if self.status is DecisionStatus.OK:
            serving = self.considered - counts.get(Exclusion.NOT_OFFERED.value, 0)
            return f"{len(self.ranked)} of {serving} peers serving {what} short-listed"
        if self.status is DecisionStatus.DEADLINE:
            return "the request's deadline passed before a peer was chosen"
        if self.status is DecisionStatus.NO_PROVIDER:
            gone = sum(counts.get(reason.value, 0) for reason in _GONE)
            return f"no peer serves {what}" + (f" ({gone} known but unreachable, draining or banned)" if gone else "")
        detail = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()) if n)
        if self.status is DecisionStatus.ALL_BUSY:
            retry = f"; retry in {self.retry_after_s:.1f} s" if self.retry_after_s is not None else ""
            return f"all peers serving {what} are busy or failing ({detail}){retry}"
        return f"no peer serving {what} meets the request ({detail})"

    def to_json(self, *, with_excluded: bool = False) -> dict[str, object]:
        out: dict[str, object] = {
            "status": self.status.value, "message": self.message, "considered": self.considered,
            "ranked": [c.to_json() for c in self.ranked], "excluded_counts": dict(self.excluded_counts),
            "retry_after_s": self.retry_after_s,
        }
        if with_excluded:
            out["excluded"] = self.excluded()
        return out


def _flag(reasons: npt.NDArray[np.int8], mask: npt.NDArray[np.bool_], reason: Exclusion) -> None:
    # Not ``where=mask``: that path is ~25x slower at 10,000 candidates (measured).
    np.maximum(reasons, mask.view(np.int8) * _CODE_INT8[reason], out=reasons)


def _flag_rows(reasons: npt.NDArray[np.int8], rows: list[int], reason: Exclusion) -> None:
    if rows:
        reasons[rows] = np.maximum(reasons[rows], np.int8(_CODE[reason]))


class Scheduler:
    def __init__(self, settings: SchedulerSettings | None = None, *, rng: random.Random | None = None,
                 clock: Clock = trio_clock, on_event: Callable[[SchedulerEvent], None] | None = None) -> None:
        self.settings = settings or SchedulerSettings()
        self._clock = clock
        self._on_event = on_event
        self.adaptive = AdaptiveLayer(self.settings.adaptive, rng=rng if rng is not None else random.Random())
        self.health = HealthMonitor(self.settings.health, on_change=self._emit)
        self._breakers: OrderedDict[str, CircuitBreaker] = OrderedDict()
        # Peers whose breaker is not closed, kept apart so that a decision touches only them: open ones with
        # the end of their cool-down, half-open ones.
        self._open_until: dict[str, float] = {}
        self._half_open: set[str] = set()
        self._busy_until: dict[str, float] = {}
        # The earliest of each, so that a decision looks at the dicts only when one of them is due.
        self._open_next = math.inf
        self._busy_next = math.inf
        # Rises whenever _open_until or _busy_until changes: with the health monitor's drained_version it
        # says whether a CandidateSet's cached exclusion codes (see _peer_codes) still hold.
        self._peers_version = 0
        self._weights = np.array(self.settings.weights.vector(), dtype=np.float64)
        self._weights32 = self._weights.astype(np.float32)
        self._weight_list: list[float] = self._weights.tolist()

    # -- peer state ------------------------------------------------------------------------------------------

    def breaker(self, peer_id: str) -> CircuitBreaker:
        breaker = self._breakers.get(peer_id)
        if breaker is None:
            breaker = self._breakers[peer_id] = CircuitBreaker(
                peer_id, self.settings.breaker, clock=self._clock, on_transition=self._on_breaker)
            self._evict_breakers()
        else:
            self._breakers.move_to_end(peer_id)
        return breaker

    def _evict_breakers(self) -> None:
        # Bounded like the health trends. Closed breakers go first; a troubled one is kept (its peer stays
        # excluded until it is probed back), and there are few of those.
        excess = len(self._breakers) - self.settings.health.max_peers
        for peer_id in list(self._breakers):
            if excess <= 0:
                break
            if peer_id not in self._open_until and peer_id not in self._half_open:
                del self._breakers[peer_id]
                excess -= 1

    def _on_breaker(self, transition: BreakerTransition) -> None:
        peer_id = transition.peer_id
        self._open_until.pop(peer_id, None)
        self._half_open.discard(peer_id)
        if transition.new is BreakerState.OPEN:
            self._open_until[peer_id] = self._breakers[peer_id].open_until
        elif transition.new is BreakerState.HALF_OPEN:
            self._half_open.add(peer_id)
        self._open_next = min(self._open_until.values(), default=math.inf)
        self._peers_version += 1
        self._emit(transition)

    def _emit(self, event: SchedulerEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)

    # -- inputs from the P2P layer and the requester --------------------------------------------------------

    def observe_heartbeat(self, heartbeat: Heartbeat, now: float | None = None) -> None:
        self.health.observe_heartbeat(heartbeat, self._clock() if now is None else now)

    def observe_rtt(self, peer_id: str, rtt_ms: float, now: float | None = None) -> None:
        self.health.observe_rtt(peer_id, rtt_ms, self._clock() if now is None else now)

    def begin(self, peer_id: str) -> bool:
        """Call just before dispatching to a chosen peer. False: its breaker refuses now (open, or a half-open
        breaker whose probe slots are taken): try the next candidate. After True, report exactly one
        ``record_outcome`` for this dispatch."""
        breaker = self._breakers.get(peer_id)
        return True if breaker is None else breaker.acquire()

    def record_outcome(self, peer_id: str, item: str, outcome: Outcome) -> None:
        now = self._clock() if outcome.at is None else outcome.at
        breaker = self.breaker(peer_id)
        if outcome.kind is OutcomeKind.SUCCESS:
            breaker.record_success()
            self.adaptive.record(peer_id, item, success=True, ttft_s=outcome.ttft_s, units_per_s=outcome.units_per_s)
            self.health.observe_outcome(peer_id, failed=False, now=now)
        elif outcome.kind in _FAULTS:
            breaker.record_failure()
            self.adaptive.record(peer_id, item, success=False)
            self.health.observe_outcome(peer_id, failed=True, now=now)
        else:
            breaker.release()
            if outcome.kind is OutcomeKind.BUSY:
                until = self._busy_until[peer_id] = now + self.settings.busy_backoff_s
                self._busy_next = min(self._busy_next, until)
                self._peers_version += 1

    # -- the decision ----------------------------------------------------------------------------------------

    def choose(self, requirements: TaskRequirements, candidates: CandidateSet | Iterable[Candidate],
               now: float | None = None) -> Decision:
        """Rank the candidates for a task. ``candidates`` is best a :class:`CandidateSet` kept up to date by
        the caller; any iterable of :class:`Candidate` works too, at an extra O(n) Python cost."""
        now = self._clock() if now is None else now
        other: dict[str, str] = {}
        if isinstance(candidates, CandidateSet):
            if (candidates.runtime, candidates.item) != (requirements.runtime, requirements.item):
                raise WrongCapability(f"candidates for {candidates.runtime}/{candidates.item} offered for a "
                                      f"{requirements.runtime}/{requirements.item} task")
            cset = candidates
        else:
            matching = []
            for candidate in candidates:
                if (candidate.runtime, candidate.item) == (requirements.runtime, requirements.item):
                    matching.append(candidate)
                else:
                    other[candidate.peer_id] = Exclusion.NOT_OFFERED.value
            cset = CandidateSet(requirements.runtime, requirements.item, matching)
        reasons, probes = self._filter(requirements, cset, now)
        eligible = np.flatnonzero(reasons == 0)
        if eligible.size == 0:
            # Every provider left is drained by its health trend: a drain predicts trouble, it is no refusal,
            # and a degraded provider serves the client better than a 503 (seen: a flood that slowed every
            # node of a small network drained them all at once). They are ranked as usual.
            eligible = np.flatnonzero(reasons == _CODE[Exclusion.UNHEALTHY])
        counts = np.bincount(reasons, minlength=len(_EXCLUSIONS) + 1).tolist()
        excluded_counts = {value: counts[code] for value, code in _VALUE_CODES if counts[code]}
        if other:
            excluded_counts[Exclusion.NOT_OFFERED.value] = len(other)
        status, retry = DecisionStatus.OK, None
        ranked: tuple[ScoredCandidate, ...] = ()
        if eligible.size == 0:
            status = self._status(len(cset), excluded_counts)
            if status is DecisionStatus.ALL_BUSY:
                retry = self._retry_after(cset, reasons, now)
        else:
            ranked = self._rank(requirements, cset, eligible, probes)
        return Decision(requirements=requirements, status=status, ranked=ranked, considered=len(cset) + len(other),
                        excluded_counts=excluded_counts, retry_after_s=retry, _peer_ids=cset.snapshot_peer_ids(),
                        _reasons=reasons, _other=other)

    def _filter(self, req: TaskRequirements, cset: CandidateSet,
                now: float) -> tuple[npt.NDArray[np.int8], set[int]]:
        """One reason code per candidate (0: eligible), and the rows whose breaker is half-open. Every filter
        raises the codes of the candidates it catches to its own (see ``_CODE``)."""
        n = len(cset)
        reasons = np.empty(n, dtype=np.int8)  # every path below sets every code
        probes: set[int] = set()
        if n == 0:
            return reasons, probes
        if req.deadline is not None and req.deadline <= now:
            reasons[:] = _CODE[Exclusion.DEADLINE]
            return reasons, probes
        np.maximum(self._peer_codes(cset, now), cset.mapped_gone(_GONE_CODES), out=reasons)
        if req.deadline is not None and req.expected_units is not None:
            data = cset.columns()
            rtt = data[cs.RTT]
            seconds = np.where(np.isnan(rtt), self.settings.unknown_rtt_ms, rtt) / 1000.0
            seconds += req.expected_units / data[cs.THROUGHPUT]  # NaN (unmeasured) is never too slow
            _flag(reasons, seconds > req.deadline - now, Exclusion.TOO_SLOW)
        if self._half_open:
            self._probe_filter(reasons, probes, cset)
        # Busy by its heartbeat, too little memory, too dear: one comparison against the three thresholds.
        thresholds = np.array([
            self.settings.busy_queue_depth - 0.5,  # queue depths are whole numbers (or -1: a slot is free)
            -req.min_memory_bytes if req.min_memory_bytes > 0 else np.inf,  # unknown (+1 here) fails
            np.inf if req.max_price_per_unit is None else req.max_price_per_unit,
        ])
        caught = cset.above(thresholds).view(np.int8)
        caught *= _FILTER_CODES
        np.maximum(reasons, caught.max(axis=0), out=reasons)
        if req.exclude:
            _flag_rows(reasons, cset.indices(req.exclude), Exclusion.TRIED)
        return reasons, probes

    def _peer_codes(self, cset: CandidateSet, now: float) -> npt.NDArray[np.int8]:
        """The exclusion code of every column from this scheduler's own view of the peers -- drained by
        health, breaker open, BUSY a moment ago -- cached in the set's layout memo until one of those
        changes, so that a decision costs O(peers in trouble) only when something changed."""
        if self._open_until and (clock_now := self._clock()) >= self._open_next:
            # The breakers' clock: a test may pass choose() a ``now`` of its own.
            for peer_id in [p for p, until in self._open_until.items() if until <= clock_now]:
                self._breakers[peer_id].admits_at(clock_now)  # cool-down over: half-open (via _on_breaker)
        if now >= self._busy_next:
            for peer_id in [p for p, until in self._busy_until.items() if until <= now]:
                del self._busy_until[peer_id]
            self._busy_next = min(self._busy_until.values(), default=math.inf)
            self._peers_version += 1
        version = (self._peers_version, self.health.drained_version)
        memo = cset.layout_memo()
        cached = memo.get(self)
        if isinstance(cached, tuple) and cached[0] == version:
            codes: npt.NDArray[np.int8] = cached[1]
            return codes
        codes = np.zeros(len(cset), dtype=np.int8)
        _flag_rows(codes, cset.indices(self.health.drained()), Exclusion.UNHEALTHY)
        _flag_rows(codes, cset.indices(self._open_until), Exclusion.BREAKER_OPEN)
        _flag_rows(codes, cset.indices(self._busy_until), Exclusion.BUSY)
        codes.flags.writeable = False
        memo[self] = (version, codes)
        return codes

    def _probe_filter(self, reasons: npt.NDArray[np.int8], probes: set[int], cset: CandidateSet) -> None:
        """Half-open breakers: a peer is a probe while its breaker has a probe slot free, else kept out."""
        clock_now = self._clock()
        for peer_id in self._half_open:
            index = cset.index_of(peer_id)
            if index is None:
                continue
            if self._breakers[peer_id].admits_at(clock_now):
                probes.add(index)
            else:  # its probe slots are taken
                _flag_rows(reasons, [index], Exclusion.BREAKER_OPEN)

    def _retry_after(self, cset: CandidateSet, reasons: npt.NDArray[np.int8], now: float) -> float | None:
        """Seconds until the first peer kept out by a passing reason may be back (for an ALL_BUSY answer)."""
        times = []
        if self._open_until:
            offset = now - self._clock()  # from the breakers' clock to the caller's
            times += [until + offset for p, until in self._open_until.items() if p in cset]
        if (reasons == _CODE[Exclusion.BUSY]).any():
            # Busy by its heartbeat: the next one (within about busy_backoff_s) tells; busy by its answer: its
            # back-off, never later than that.
            times += [until for p, until in self._busy_until.items() if p in cset]
            times.append(now + self.settings.busy_backoff_s)
        return max(0.0, min(times) - now) if times else None

    @staticmethod
    def _status(serving: int, counts: Mapping[str, int]) -> DecisionStatus:
        if counts.get(Exclusion.DEADLINE.value):
            return DecisionStatus.DEADLINE
        gone = sum(counts.get(reason.value, 0) for reason in _GONE)
        if serving == 0 or gone == serving:
            return DecisionStatus.NO_PROVIDER
        if any(counts.get(reason.value) for reason in _TRANSIENT):
            return DecisionStatus.ALL_BUSY
        return DecisionStatus.NO_MATCH

    def _rank(self, req: TaskRequirements, cset: CandidateSet, eligible: npt.NDArray[np.intp],
              probes: set[int]) -> tuple[ScoredCandidate, ...]:
        # One gather (or copy) of the six oriented criteria rows, ranked in place from here. np.take, not
        # fancy indexing on the second axis, which returns a Fortran-ordered array whose row reductions run
        # ~100x slower (measured: 1.1 ms against 8 us at 10,000 candidates).
        oriented = cset.ranking_criteria(eligible if eligible.size < len(cset) else None)
        unknown_rtt = -self.settings.unknown_rtt_ms
        rtt = oriented[cs.CRITERION_RTT]
        rtt[np.isnan(rtt)] = unknown_rtt
        scores, low_at, high_at = rank_in_place(oriented, self._weights32)
        k = min(self.settings.shortlist_size, eligible.size)
        if eligible.size > k:  # the k best in O(n); only they are sorted
            top = np.argpartition(scores, eligible.size - k)[eligible.size - k:]
        else:
            top = np.arange(eligible.size)
        # The short-list's scores and criteria, exact: float64 columns of the extremes and the k chosen.
        exact = cset.exact_criteria(eligible[np.concatenate((low_at, high_at, top))])
        rtt = exact[cs.CRITERION_RTT]
        rtt[np.isnan(rtt)] = unknown_rtt
        top_scores, top_criteria = exact_scores(exact.tolist(), self._weight_list)
        rows = eligible[top].tolist()
        top_candidates = [cset.at(row) for row in rows]
        # Ties are broken by peer ID so that the short-list order does not depend on the set's row order.
        order = sorted(range(len(rows)), key=lambda j: (-top_scores[j], top_candidates[j].peer_id))
        unknown_rtt_ms = self.settings.unknown_rtt_ms
        shortlist = []
        for j in order:
            candidate = top_candidates[j]
            rtt_ms = unknown_rtt_ms if candidate.rtt_ms is None else candidate.rtt_ms
            shortlist.append(ShortlistEntry(candidate.peer_id, top_scores[j], rtt_ms / 1000, candidate.throughput))
        units = req.expected_units if req.expected_units is not None else self.settings.default_units
        out = []
        for ranked in self.adaptive.rank(req.item, shortlist, units):
            j = order[ranked.position]
            out.append(ScoredCandidate(
                top_candidates[j], ranked.score, ranked.entry.mcda, dict(zip(CRITERIA, top_criteria[j], strict=True)),
                ranked.success_sample, ranked.speed, rows[j] in probes, ranked.explored))
        return tuple(out)
