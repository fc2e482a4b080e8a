"""What the scheduler chooses among: one :class:`Candidate` per peer that offers a capability, read from the
peer table (or built for this node itself), and the :class:`CandidateSet` that holds them column by column.

A decision must stay linear in the candidates and under a millisecond at 10,000 of them (issue 4), which rules out
a Python loop over candidate objects on every request (about a microsecond each). So the set keeps every
numeric field in a NumPy column, updated in place when a peer's heartbeat or record changes (``upsert``,
O(1)), and :meth:`~hyperion_node.scheduler.scheduler.Scheduler.choose` works on whole columns. Building a set
from scratch is O(n) Python and belongs where the peer table changes, not in the request path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from hyperion_node.p2p.messages import CapabilityRecord, Heartbeat, OfferAd
from hyperion_node.p2p.peer_table import PeerEntry, PeerState, PeerTable
from hyperion_node.scheduler.exceptions import InvalidRequirements, WrongCapability
from hyperion_node.scheduler.scoring import FloatArray

# Reliability of a peer nothing is known about: the mean of the Beta(1, 1) prior that the ledger's
# ReputationView also starts from.
UNKNOWN_RELIABILITY = 0.5


@dataclass(frozen=True)
class TaskRequirements:
    """What a task needs from the peer that runs it."""

    runtime: str
    item: str  # e.g. a model id
    # Memory the task needs on the worker beyond what the offer already holds (the model is loaded once the
    # peer offers it): for inference, the KV cache of the requested context.
    min_memory_bytes: int = 0
    max_price_per_unit: float | None = None  # None: any price
    deadline: float | None = None  # absolute, on the scheduler's clock (trio.current_time in the daemon)
    expected_units: float | None = None  # work units (tokens) the task will take, if the request says
    exclude: frozenset[str] = frozenset()  # peers already tried for this task (failover)

    def __post_init__(self) -> None:
        if not self.runtime or not self.item:
            raise InvalidRequirements("a task needs a runtime and an item")
        if self.min_memory_bytes < 0:
            raise InvalidRequirements(f"min_memory_bytes must be >= 0, got {self.min_memory_bytes}")
        for name in ("max_price_per_unit", "deadline", "expected_units"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise InvalidRequirements(f"{name} must be a finite number, got {value!r}")
        if self.max_price_per_unit is not None and self.max_price_per_unit < 0:
            raise InvalidRequirements(f"max_price_per_unit must be >= 0, got {self.max_price_per_unit}")
        if self.expected_units is not None and self.expected_units <= 0:
            raise InvalidRequirements(f"expected_units must be above 0, got {self.expected_units}")


@dataclass(frozen=True)
class Candidate:
    """One peer (or this node) that offers ``runtime``/``item``, as the scheduler sees it at one instant."""

    peer_id: str
    runtime: str
    item: str
    state: PeerState = PeerState.ALIVE
    price_per_unit: float = 0.0
    capacity: int = 1  # tasks it admits at once
    throughput: float | None = None  # measured units per second, advertised
    free_memory_bytes: int | None = None  # None: unknown
    active_tasks: int = 0
    queue_depth: int = 0
    rtt_ms: float | None = None  # None: never pinged
    reliability: float = UNKNOWN_RELIABILITY  # 0..1, e.g. ReputationView.reliability
    banned: bool = False  # its score (offences against this node) fell to the ban level
    local: bool = False


def free_memory_bytes(heartbeat: Heartbeat | None, hardware: Mapping[str, Any] | None) -> int | None:
    """Memory a task could use on a peer: the largest GPU's free VRAM if its heartbeat reports GPUs, else its
    free RAM (llama.cpp runs on the CPU there). Without a heartbeat, the capability record's totals."""
    if heartbeat is not None:
        vram = [g.get("vram_free") for g in heartbeat.gpus]
        known = [v for v in vram if isinstance(v, int | float) and math.isfinite(v)]
        return int(max(known)) if known else heartbeat.ram_available_bytes
    if hardware:
        gpus = hardware.get("gpus")
        totals = [g.get("vram_bytes") for g in gpus] if isinstance(gpus, list) else []
        known = [v for v in totals if isinstance(v, int | float)]
        if known:
            return int(max(known))
        ram = hardware.get("ram_bytes")
        if isinstance(ram, int | float):
            return int(ram)
    return None


def find_offer(record: CapabilityRecord | None, runtime: str, item: str) -> OfferAd | None:
    if record is None:
        return None
    for offer in record.offers:
        if offer.runtime == runtime and offer.item == item:
            return offer
    return None


def candidate_from_entry(entry: PeerEntry, offer: OfferAd, *, reliability: float = UNKNOWN_RELIABILITY) -> Candidate:
    hb = entry.heartbeat
    capability = entry.capability
    if hb is not None:
        active, queued = hb.active_tasks, hb.queue_depth
    else:  # only the record's load (running / capacity) at publication time
        load = capability.load if capability is not None else 0.0
        active, queued = round(load * offer.capacity), 0
    return Candidate(
        peer_id=entry.peer_id, runtime=offer.runtime, item=offer.item, state=entry.state,
        price_per_unit=offer.price_per_unit, capacity=offer.capacity, throughput=offer.throughput,
        free_memory_bytes=free_memory_bytes(hb, capability.hardware if capability is not None else None),
        active_tasks=active, queue_depth=queued, rtt_ms=entry.rtt_ms, reliability=reliability,
        banned=entry.banned,
    )


def candidates_from_peer_table(
    table: PeerTable,
    runtime: str,
    item: str,
    now: float,
    *,
    reliability: Callable[[str], float] | None = None,
    wall_now: float | None = None,
) -> list[Candidate]:
    """Every peer in ``table`` whose capability record offers ``runtime``/``item``, whatever its state: the
    scheduler, not this function, decides who is excluded, so that a refusal can say why.

    ``now`` is the table's clock, for a peer whose last heartbeat is older than the table's dead threshold but
    whose state ``tick`` has not caught up with yet (it is reported dead). ``reliability`` maps a peer ID to
    0..1 (``ReputationView.reliability``); without it every peer gets the prior's 0.5. With ``wall_now`` (unix
    seconds), a peer whose record has expired is left out.
    """
    out: list[Candidate] = []
    for entry in table.peers.values():
        offer = _offer_of(table, entry, runtime, item, wall_now)
        if offer is not None:
            out.append(_from_table(entry, offer, _silent_dead(table, entry, now),
                                   UNKNOWN_RELIABILITY if reliability is None else reliability(entry.peer_id)))
    return out


def _offer_of(table: PeerTable, entry: PeerEntry, runtime: str, item: str, wall_now: float | None) -> OfferAd | None:
    """The entry's offer of runtime/item, unless the entry is this node or its record has expired."""
    offer = find_offer(entry.capability, runtime, item)
    if offer is None or entry.peer_id == table.local_peer_id:
        return None
    if wall_now is not None and entry.capability is not None and entry.capability.expires_at <= wall_now:
        return None
    return offer


def _silent_dead(table: PeerTable, entry: PeerEntry, now: float) -> bool:
    """Silent past the table's dead threshold, though ``tick`` has not caught up with it yet."""
    return (entry.last_alive is not None and now - entry.last_alive >= table.dead_after
            and entry.state is not PeerState.LEFT)


def _from_table(entry: PeerEntry, offer: OfferAd, dead: bool, reliability: float, distrusted: bool = False
                ) -> Candidate:
    candidate = candidate_from_entry(entry, offer, reliability=reliability)
    if dead:
        candidate = replace(candidate, state=PeerState.DEAD)
    if distrusted:
        candidate = replace(candidate, banned=True)
    return candidate


def local_candidate(
    peer_id: str,
    offer: OfferAd,
    *,
    free_memory_bytes: int | None,
    active_tasks: int = 0,
    queue_depth: int = 0,
    draining: bool = False,
    reliability: float = UNKNOWN_RELIABILITY,
) -> Candidate:
    """This node as a candidate for its own requests: no network round trip, never banned."""
    return Candidate(
        peer_id=peer_id, runtime=offer.runtime, item=offer.item,
        state=PeerState.DRAINING if draining else PeerState.ALIVE, price_per_unit=offer.price_per_unit,
        capacity=offer.capacity, throughput=offer.throughput, free_memory_bytes=free_memory_bytes,
        active_tasks=active_tasks, queue_depth=queue_depth, rtt_ms=0.0, reliability=reliability, local=True,
    )


# -- the columnar set -----------------------------------------------------------------------------------------

# Rows of CandidateSet's block. The raw values the filters read (NaN: unknown, except MEMORY: -1, so that an
# unknown amount fails any memory requirement in one comparison; QUEUED_WHEN_FULL: the queue depth when every
# slot is taken, else -1, so that "busy" is one comparison)...
PRICE, CAPACITY, THROUGHPUT, MEMORY, ACTIVE, QUEUE, RTT, QUEUED_WHEN_FULL = range(8)
# ...then the six scoring criteria in ``scoring.CRITERIA`` order, computed once per upsert and oriented so that
# more is better (costs negated), unknowns imputed -- no memory headroom, no measured throughput -- except RTT,
# left NaN for the scheduler's ``unknown_rtt_ms``. Memory is the free bytes, not the headroom over the task's
# need: min-max normalisation does not change when a constant is subtracted.
CRITERIA_ROWS = slice(8, 14)
CRITERION_RTT = 2  # within CRITERIA_ROWS
_FIELDS = 14
# The criteria are also kept as float32, for ranking only: a decision at 10,000 candidates is bound by the
# memory it reads, and half the bytes is ~0.6x the time once other work has taken the cache (measured).
_N_CRITERIA = CRITERIA_ROWS.stop - CRITERIA_ROWS.start
# And what the per-request filters compare, arranged so that each catches a candidate whose value is above
# its threshold (so all three are one comparison): the queue depth when every slot is taken (else -1), the
# free memory negated (unknown: +1, above any threshold a memory requirement sets), the price.
FILTER_QUEUED, FILTER_NEG_MEMORY, FILTER_PRICE = range(3)
_N_FILTERS = 3

# Why a peer can take no work whatever the task, kept per candidate; higher wins.
GONE_OK, GONE_BANNED, GONE_DRAINING, GONE_UNREACHABLE = range(4)
_GONE_BY_STATE = {
    PeerState.ALIVE: GONE_OK, PeerState.SUSPECT: GONE_UNREACHABLE, PeerState.DEAD: GONE_UNREACHABLE,
    PeerState.DRAINING: GONE_DRAINING, PeerState.LEFT: GONE_DRAINING,
}


def _row(c: Candidate) -> tuple[float, ...]:
    nan = math.nan
    throughput = nan if c.throughput is None else c.throughput
    memory = -1.0 if c.free_memory_bytes is None else c.free_memory_bytes
    rtt = nan if c.rtt_ms is None else c.rtt_ms
    load = (c.active_tasks + c.queue_depth) / max(c.capacity, 1)
    return (
        c.price_per_unit, c.capacity, throughput, memory, c.active_tasks, c.queue_depth, rtt,
        c.queue_depth if c.active_tasks >= c.capacity else -1.0,
        max(memory, 0.0), -load, -rtt, 0.0 if c.throughput is None else throughput, -c.price_per_unit, c.reliability,
    )


def _gone(c: Candidate) -> int:
    return max(_GONE_BY_STATE[c.state], GONE_BANNED if c.banned else GONE_OK)


class CandidateSet:
    """The candidates for one capability, kept as columns: one row of a float block per field (``PRICE``,
    ``CAPACITY``, ... then the criteria), one column per candidate, plus a ``gone`` code per candidate.

    Order is not meaningful (removal swaps the last column in); the scheduler's result does not depend on it.
    """

    def __init__(self, runtime: str, item: str, candidates: Iterable[Candidate] = ()) -> None:
        self.runtime = runtime
        self.item = item
        # One pass over the candidates: a later one with the same peer ID replaces an earlier one, as upsert.
        latest: dict[str, Candidate] = {}
        for candidate in candidates:
            self._check(candidate)
            latest[candidate.peer_id] = candidate
        size = max(16, 1 << (len(latest) - 1).bit_length())
        self._data: FloatArray = np.empty((_FIELDS, size), dtype=np.float64)
        self._ranking: npt.NDArray[np.float32] = np.empty((_N_CRITERIA, size), dtype=np.float32)
        self._filters: FloatArray = np.empty((_N_FILTERS, size), dtype=np.float64)
        self._gone: npt.NDArray[np.int8] = np.zeros(size, dtype=np.int8)
        self._candidates: list[Candidate] = []
        self._peer_ids: list[str] = []  # parallel to _candidates
        self._shared = False  # _peer_ids was handed out by snapshot_peer_ids(): copy it before changing it
        self._index: dict[str, int] = {}
        # What a reader derived from the column layout (which peer is in which column), keyed by the reader;
        # dropped whenever a candidate is added or removed. Replacing a candidate keeps its column.
        self._memo: dict[object, object] = {}
        if latest:
            # The first candidates in one block write, not a column at a time: a set built for one request
            # (the daemon's, from its peer table) cost ~60 us a candidate through ``upsert``, ~9% of a 50-node
            # demo's CPU.
            self._candidates = list(latest.values())
            self._peer_ids = list(latest)
            self._index = {peer_id: i for i, peer_id in enumerate(latest)}
            self._write(slice(0, len(latest)), np.array([_row(c) for c in latest.values()], dtype=np.float64).T,
                        [_gone(c) for c in latest.values()])

    def _check(self, candidate: Candidate) -> None:
        if candidate.runtime != self.runtime or candidate.item != self.item:
            raise WrongCapability(f"a candidate for {candidate.runtime}/{candidate.item} in the set for "
                                  f"{self.runtime}/{self.item}")

    def _write(self, columns: int | slice | npt.NDArray[np.intp], rows: Any, gone: Any) -> None:
        """Store the field rows of the candidates in ``columns`` (one column, a slice or an index array; ``rows``
        is ``(fields,)`` or ``(fields, columns)``) and everything derived from them."""
        block = np.asarray(rows, dtype=np.float64)
        self._data[:, columns] = block
        self._ranking[:, columns] = block[CRITERIA_ROWS]
        filters = block[[QUEUED_WHEN_FULL, MEMORY, PRICE]]
        filters[FILTER_NEG_MEMORY] *= -1.0
        self._filters[:, columns] = filters
        self._gone[columns] = gone

    def __len__(self) -> int:
        return len(self._candidates)

    def __iter__(self) -> Iterator[Candidate]:
        return iter(self._candidates)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._index

    def get(self, peer_id: str) -> Candidate | None:
        index = self._index.get(peer_id)
        return None if index is None else self._candidates[index]

    def index_of(self, peer_id: str) -> int | None:
        return self._index.get(peer_id)

    def indices(self, peer_ids: Iterable[str]) -> list[int]:
        """Column indices of those of ``peer_ids`` that are in the set."""
        index = self._index
        return [i for i in map(index.get, peer_ids) if i is not None]

    def at(self, index: int) -> Candidate:
        return self._candidates[index]

    def snapshot_peer_ids(self) -> Sequence[str]:
        """The peer IDs in column order, as they are now and will stay (copy-on-write: O(1) here, and the
        next add or removal copies the list once)."""
        self._shared = True
        return self._peer_ids

    def columns(self) -> FloatArray:
        """A read-only ``(fields, n)`` view of the block."""
        view = self._data[:, : len(self._candidates)]
        view.flags.writeable = False
        return view

    def ranking_criteria(self, columns: npt.NDArray[np.intp] | None = None) -> npt.NDArray[np.float32]:
        """The criteria rows as float32, for ranking (the exact values are ``columns()[CRITERIA_ROWS]``): a new
        ``(criteria, len(columns))`` array of the given columns, or of all of them.

        Taken from the whole block, not a view of its first ``n`` columns: ``np.take`` copies an input that
        is not C-contiguous before gathering, which at 10,000 candidates doubles the cost."""
        if columns is None:
            return self._ranking[:, : len(self._candidates)].copy()
        return np.take(self._ranking, columns, axis=1)

    def filter_rows(self) -> FloatArray:
        """A read-only ``(3, n)`` view of the filter block (``FILTER_*`` rows)."""
        view = self._filters[:, : len(self._candidates)]
        view.flags.writeable = False
        return view

    def above(self, thresholds: FloatArray) -> npt.NDArray[np.bool_]:
        """``filter_rows() > thresholds[:, None]``: which candidates each filter catches, as a new array."""
        out: npt.NDArray[np.bool_] = np.greater(self._filters[:, : len(self._candidates)], thresholds[:, None])
        return out

    def exact_criteria(self, columns: npt.NDArray[np.intp]) -> FloatArray:
        """A new ``(criteria, len(columns))`` float64 array of the given columns' criteria rows (few columns:
        fancy indexing, which unlike ``np.take`` does not first copy the non-contiguous rows)."""
        out: FloatArray = self._data[CRITERIA_ROWS, :][:, columns]
        return out

    def mapped_gone(self, codes: npt.NDArray[np.int8]) -> npt.NDArray[np.int8]:
        """``codes.take(gone())``: each candidate's ``GONE_*`` code mapped through ``codes``, as a new array."""
        out: npt.NDArray[np.int8] = codes.take(self._gone[: len(self._candidates)])
        return out

    def gone(self) -> npt.NDArray[np.int8]:
        """A read-only view of the ``GONE_*`` code of every candidate."""
        view = self._gone[: len(self._candidates)]
        view.flags.writeable = False
        return view

    def layout_memo(self) -> dict[object, object]:
        """A dict for what a reader derives from which peer is in which column (e.g. the column indices of a
        set of peer IDs), emptied by every add or removal: valid for as long as its entries are there."""
        return self._memo

    def _own_peer_ids(self) -> None:
        self._memo.clear()
        if self._shared:
            self._peer_ids = list(self._peer_ids)
            self._shared = False

    def upsert(self, candidate: Candidate) -> None:
        """Add a candidate or replace the one with the same peer ID. O(1) amortised."""
        self._check(candidate)
        index = self._index.get(candidate.peer_id)
        if index is None:
            index = len(self._candidates)
            if index == self._data.shape[1]:
                self._data = np.concatenate([self._data, np.empty_like(self._data)], axis=1)
                self._ranking = np.concatenate([self._ranking, np.empty_like(self._ranking)], axis=1)
                self._filters = np.concatenate([self._filters, np.empty_like(self._filters)], axis=1)
                self._gone = np.concatenate([self._gone, np.zeros_like(self._gone)])
            self._own_peer_ids()
            self._candidates.append(candidate)
            self._peer_ids.append(candidate.peer_id)
            self._index[candidate.peer_id] = index
        else:
            self._candidates[index] = candidate
        self._write(index, _row(candidate), _gone(candidate))

    def update(self, candidates: Iterable[Candidate]) -> None:
        """``upsert`` each, with the columns of those already in the set rewritten in one block write (a later
        candidate with the same peer ID replaces an earlier one). New peers are appended one by one."""
        latest: dict[str, Candidate] = {}
        for candidate in candidates:
            self._check(candidate)
            latest[candidate.peer_id] = candidate
        columns: list[int] = []
        known: list[Candidate] = []
        for peer_id, candidate in latest.items():
            index = self._index.get(peer_id)
            if index is None:
                self.upsert(candidate)
            else:
                self._candidates[index] = candidate
                columns.append(index)
                known.append(candidate)
        if columns:
            self._write(np.array(columns, dtype=np.intp), np.array([_row(c) for c in known], dtype=np.float64).T,
                        [_gone(c) for c in known])

    def discard(self, peer_id: str) -> None:
        """Remove a peer if present. O(1): the last column takes its place."""
        index = self._index.pop(peer_id, None)
        if index is None:
            return
        self._own_peer_ids()
        last = len(self._candidates) - 1
        moved = self._candidates.pop()
        self._peer_ids.pop()
        if index != last:
            self._candidates[index] = moved
            self._peer_ids[index] = moved.peer_id
            self._index[moved.peer_id] = index
            self._data[:, index] = self._data[:, last]
            self._ranking[:, index] = self._ranking[:, last]
            self._filters[:, index] = self._filters[:, last]
            self._gone[index] = self._gone[last]


class TableCandidates:
    """The :class:`CandidateSet` of one capability as a peer table sees it, kept from one decision to the
    next, as the module docstring asks: :meth:`refresh` rebuilds only the candidates of peers whose entry
    changed since the last one (a heartbeat, a record, its state, RTT, ban, reliability, confirmed disputes)
    and rewrites their columns in one block, and the set keeps what the scheduler cached on its layout.
    After a quarter of the peers' heartbeats that is 0.43x / 0.38x reading and building the set anew at 50 /
    1,000 peers (scripts/bench_scheduler.py); in the 50-node demo, where nearly every peer's reliability moves
    between two decisions, the set itself costs more than a build and only ``choose`` gains.

    ``local`` is this node's own candidate, whose load changes with every task it takes: rewritten each time.
    """

    def __init__(self, runtime: str, item: str) -> None:
        self.set = CandidateSet(runtime, item)
        self._built_from: dict[str, tuple[object, ...]] = {}  # peer ID -> what its candidate was built from

    def refresh(self, table: PeerTable, now: float, *, reliability: Callable[[str], float],
                distrusted: Callable[[str], bool], wall_now: float | None = None,
                local: Candidate | None = None) -> CandidateSet:
        cset, built_from = self.set, self._built_from
        changed: list[Candidate] = []
        seen: set[str] = set()
        for peer_id, entry in table.peers.items():
            offer = _offer_of(table, entry, cset.runtime, cset.item, wall_now)
            if offer is None:
                continue
            seen.add(peer_id)
            dead, trust, banned = _silent_dead(table, entry, now), reliability(peer_id), distrusted(peer_id)
            # The offer comes from the capability record, the free memory from it or the heartbeat.
            key = (entry.heartbeat, entry.capability, entry.state, entry.rtt_ms, entry.banned, dead,
                   trust, banned)
            if built_from.get(peer_id) != key:
                built_from[peer_id] = key
                changed.append(_from_table(entry, offer, dead, trust, banned))
        if local is not None:
            seen.add(local.peer_id)
            built_from[local.peer_id] = ()
            changed.append(local)
        for peer_id in [p for p in built_from if p not in seen]:
            del built_from[peer_id]
            cset.discard(peer_id)
        if changed:
            cset.update(changed)
        return cset
