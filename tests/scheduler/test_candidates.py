"""Candidates read from a real PeerTable (heartbeats, capability records, RTT, scores) and the columnar set."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from hyperion_node.p2p.peer_table import PeerState, PeerTable
from hyperion_node.scheduler.candidates import (
    Candidate,
    CandidateSet,
    TableCandidates,
    TaskRequirements,
    candidates_from_peer_table,
    local_candidate,
)
from hyperion_node.scheduler.exceptions import InvalidRequirements, WrongCapability
from hyperion_node.scheduler.scheduler import DecisionStatus
from tests.scheduler.factories import GIB, MODEL, RUNTIME, candidate, heartbeat, offer, record, scheduler


@pytest.fixture
def table() -> PeerTable:
    """Peers in every situation the scheduler must tell apart, at t = 100 on the table's clock."""
    t = PeerTable("me", suspect_after=6.0, dead_after=15.0)
    gpu = {"util": 10.0, "vram_free": 6.0 * GIB, "temp_c": 60.0, "power_w": 90.0}
    # fast: alive, a GPU with 6 GiB free, pinged, one task running.
    t.capability(record("fast", offer(throughput=80.0), offer("other-model")), 0.0)
    t.set_connected("fast", True, 0.0)  # heartbeats come on presence streams: over a connection
    t.heartbeat(heartbeat("fast", 1, active=1, gpus=(gpu,)), 99.0, wall_now=1_700_000_001.0)
    t.set_rtt("fast", 12.5)
    # cpu: alive, no GPU: its free RAM counts.
    t.capability(record("cpu", offer(price=5e-7, throughput=None)), 0.0)
    t.set_connected("cpu", True, 0.0)
    t.heartbeat(heartbeat("cpu", 1, ram_free=3 * GIB, queue=2), 99.0, wall_now=1_700_000_001.0)
    # quiet: known from the DHT only; its record's hardware and load are all there is.
    t.capability(record("quiet", offer(capacity=4), load=0.5,
                        hardware={"ram_bytes": 64 * GIB, "gpus": [{"name": "A", "vram_bytes": 24 * GIB}]}), 0.0)
    # leaving: its heartbeat said draining.
    t.capability(record("leaving", offer()), 0.0)
    t.set_connected("leaving", True, 0.0)
    t.heartbeat(heartbeat("leaving", 1, health="draining"), 99.0, wall_now=1_700_000_001.0)
    # silent: connected, last heartbeat 20 s ago; the table has not ticked since, so it still says alive.
    t.capability(record("silent", offer()), 0.0)
    t.set_connected("silent", True, 0.0)
    t.heartbeat(heartbeat("silent", 1), 80.0, wall_now=1_700_000_001.0)
    # rogue: forged signatures until banned.
    t.capability(record("rogue", offer()), 0.0)
    for _ in range(5):
        t.penalize("rogue", "bad_signature")
    # elsewhere: offers another model only.
    t.capability(record("elsewhere", offer("other-model")), 0.0)
    return t


def test_peer_table_fields_become_candidates(table: PeerTable) -> None:
    found = {c.peer_id: c for c in candidates_from_peer_table(table, RUNTIME, MODEL, 100.0)}
    assert set(found) == {"fast", "cpu", "quiet", "leaving", "silent", "rogue"}

    fast = found["fast"]
    assert (fast.free_memory_bytes, fast.rtt_ms, fast.active_tasks, fast.throughput) == (6 * GIB, 12.5, 1, 80.0)
    assert fast.state is PeerState.ALIVE
    assert not fast.banned
    assert not fast.local
    cpu = found["cpu"]
    assert (cpu.free_memory_bytes, cpu.queue_depth, cpu.throughput, cpu.price_per_unit) == (3 * GIB, 2, None, 5e-7)
    quiet = found["quiet"]
    assert (quiet.free_memory_bytes, quiet.active_tasks, quiet.rtt_ms) == (24 * GIB, 2, None)
    assert found["leaving"].state is PeerState.DRAINING
    assert found["silent"].state is PeerState.DEAD
    assert found["rogue"].banned


def test_reliability_comes_from_the_callable_and_defaults_to_the_prior(table: PeerTable) -> None:
    rated = candidates_from_peer_table(table, RUNTIME, MODEL, 100.0, reliability=lambda p: 0.9 if p == "fast" else 0.2)
    assert {c.peer_id: c.reliability for c in rated}["fast"] == 0.9
    assert {c.reliability for c in candidates_from_peer_table(table, RUNTIME, MODEL, 100.0)} == {0.5}


def test_expired_records_are_left_out_when_wall_time_is_given(table: PeerTable) -> None:
    assert candidates_from_peer_table(table, RUNTIME, MODEL, 100.0, wall_now=2_000_000_001.0) == []


def test_the_scheduler_explains_every_peer_of_the_table(table: PeerTable) -> None:
    found = candidates_from_peer_table(table, RUNTIME, MODEL, 100.0)
    decision = scheduler().choose(TaskRequirements(RUNTIME, MODEL, min_memory_bytes=4 * GIB), found, 100.0)
    assert decision.status is DecisionStatus.OK
    assert set(decision.peers) == {"fast", "quiet"}
    assert decision.excluded() == {"cpu": "memory", "leaving": "draining", "silent": "unreachable",
                                   "rogue": "banned"}


def test_local_candidate_has_no_round_trip() -> None:
    me = local_candidate("me", offer(), free_memory_bytes=2 * GIB, active_tasks=1)
    assert (me.local, me.rtt_ms, me.state, me.active_tasks) == (True, 0.0, PeerState.ALIVE, 1)
    assert local_candidate("me", offer(), free_memory_bytes=None, draining=True).state is PeerState.DRAINING


def test_a_set_kept_up_to_date_decides_like_a_fresh_one() -> None:
    rng = random.Random(7)
    kept = CandidateSet(RUNTIME, MODEL)
    current = {}
    for step in range(400):
        peer = f"p{rng.randrange(40)}"
        if rng.random() < 0.3:
            kept.discard(peer)
            current.pop(peer, None)
        else:
            c = candidate(peer, rtt_ms=rng.uniform(1, 300), free_memory_bytes=rng.randrange(1, 16) * GIB,
                          price_per_unit=rng.uniform(0, 2e-6), active_tasks=rng.randrange(3),
                          queue_depth=rng.randrange(6),
                          state=rng.choice([PeerState.ALIVE] * 4 + [PeerState.DRAINING, PeerState.SUSPECT]))
            kept.upsert(c)
            current[peer] = c
        if step % 50 == 49:
            req = TaskRequirements(RUNTIME, MODEL, min_memory_bytes=4 * GIB, max_price_per_unit=1.5e-6)
            fresh = CandidateSet(RUNTIME, MODEL, sorted(current.values(), key=lambda c: c.peer_id))
            a, b = scheduler(seed=step).choose(req, kept, 0.0), scheduler(seed=step).choose(req, fresh, 0.0)
            assert {c.peer_id: c for c in kept} == current
            assert a.excluded() == b.excluded()
            assert a.peers == b.peers
            assert [c.score for c in a.ranked] == pytest.approx([c.score for c in b.ranked], abs=1e-12)


def assert_same_set(got: CandidateSet, expected: CandidateSet) -> None:
    """The same candidates with the same columns, whatever the order of the columns."""
    order = [got.index_of(c.peer_id) for c in expected]
    assert {c.peer_id: c for c in got} == {c.peer_id: c for c in expected}
    assert got.columns()[:, order] == pytest.approx(expected.columns(), nan_ok=True)
    assert got.filter_rows()[:, order] == pytest.approx(expected.filter_rows(), nan_ok=True)
    assert got.ranking_criteria()[:, order] == pytest.approx(expected.ranking_criteria(), nan_ok=True)
    assert got.gone()[order].tolist() == expected.gone().tolist()


def test_a_set_built_at_once_holds_what_upserts_build() -> None:
    rng = random.Random(3)
    cands = [candidate(f"p{rng.randrange(30)}", rtt_ms=rng.choice([None, rng.uniform(1, 300)]),
                       free_memory_bytes=rng.choice([None, rng.randrange(1, 16) * GIB]),
                       throughput=rng.choice([None, 40.0]), active_tasks=rng.randrange(3), queue_depth=rng.randrange(4),
                       banned=rng.random() < 0.1, state=rng.choice(list(PeerState)))
             for _ in range(40)]  # some peer IDs twice: the later candidate wins, as with upsert
    one_by_one = CandidateSet(RUNTIME, MODEL)
    for c in cands:
        one_by_one.upsert(c)
    at_once = CandidateSet(RUNTIME, MODEL, cands)
    assert_same_set(at_once, one_by_one)
    for i in range(40):  # and it grows past its first block like any other set
        at_once.upsert(candidate(f"new{i}"))
    assert len(at_once) == len(one_by_one) + 40
    assert at_once.get("new39") == candidate("new39")


def test_a_block_update_holds_what_upserts_build() -> None:
    rng = random.Random(5)

    def some(peer: str) -> Candidate:
        return candidate(peer, rtt_ms=rng.choice([None, rng.uniform(1, 300)]),
                         free_memory_bytes=rng.choice([None, rng.randrange(1, 16) * GIB]),
                         throughput=rng.choice([None, 40.0]), active_tasks=rng.randrange(3),
                         queue_depth=rng.randrange(4), banned=rng.random() < 0.1, state=rng.choice(list(PeerState)))

    one_by_one, updated = CandidateSet(RUNTIME, MODEL), CandidateSet(RUNTIME, MODEL)
    for _ in range(6):  # peers replaced in place, new ones, and the same peer twice in one update
        batch = [some(f"p{rng.randrange(30)}") for _ in range(25)]
        for c in batch:
            one_by_one.upsert(c)
        updated.update(batch)
        assert_same_set(updated, one_by_one)


def test_kept_table_candidates_follow_the_table_and_rebuild_only_what_changed(table: PeerTable) -> None:
    kept = TableCandidates(RUNTIME, MODEL)
    trust = {"fast": 0.9}
    distrusted: set[str] = set()
    me = local_candidate("me", offer(), free_memory_bytes=GIB, active_tasks=0)
    now = [100.0]

    def check() -> CandidateSet:
        got = kept.refresh(table, now[0], reliability=lambda p: trust.get(p, 0.5), distrusted=distrusted.__contains__,
                           local=me)
        fresh = candidates_from_peer_table(table, RUNTIME, MODEL, now[0], reliability=lambda p: trust.get(p, 0.5))
        fresh = [replace(c, banned=True) if c.peer_id in distrusted else c for c in fresh] + [me]
        assert_same_set(got, CandidateSet(RUNTIME, MODEL, fresh))
        return got

    first = check()
    before = {c.peer_id: c for c in first}
    table.heartbeat(heartbeat("cpu", 2, queue=0), 101.0, wall_now=1_700_000_002.0)  # one peer's load changes
    me = local_candidate("me", offer(), free_memory_bytes=GIB, active_tasks=1)
    again = check()
    assert again is first, "the same set, kept"
    rebuilt = {c.peer_id for c in again if c is not before[c.peer_id]}
    assert rebuilt == {"cpu", "me"}
    trust["quiet"] = 0.1  # a peer's reliability and its confirmed disputes are part of its candidate too
    distrusted.add("fast")
    check()
    now[0] = 120.0  # fast's last heartbeat (99) is past the dead threshold (15 s): dead before the table ticks
    got = check()
    assert got.get("fast").state is PeerState.DEAD
    table.capability(record("cpu", offer("other-model"), seq=2), 120.0)  # cpu stops offering the model
    assert "cpu" not in check()


def test_a_decision_keeps_its_exclusions_when_the_set_changes_after_it() -> None:
    cset = CandidateSet(RUNTIME, MODEL, [candidate("a"), candidate("b", price_per_unit=9.0), candidate("c")])
    decision = scheduler().choose(TaskRequirements(RUNTIME, MODEL, max_price_per_unit=1.0), cset, 0.0)
    cset.discard("a")
    cset.upsert(candidate("d", price_per_unit=9.0))
    assert decision.excluded() == {"b": "price"}


def test_a_set_holds_one_capability() -> None:
    cset = CandidateSet(RUNTIME, MODEL)
    with pytest.raises(WrongCapability):
        cset.upsert(candidate("a", item="other-model"))
    with pytest.raises(WrongCapability):
        scheduler().choose(TaskRequirements(RUNTIME, "other-model"), cset, 0.0)


@pytest.mark.parametrize("fields", [
    {"min_memory_bytes": -1}, {"max_price_per_unit": float("nan")}, {"max_price_per_unit": -1.0},
    {"deadline": float("inf")}, {"expected_units": 0.0}, {"item": ""},
])
def test_impossible_requirements_are_refused(fields: dict[str, object]) -> None:
    args: dict[str, object] = {"runtime": RUNTIME, "item": MODEL, **fields}
    with pytest.raises(InvalidRequirements):
        TaskRequirements(**args)  # type: ignore[arg-type]
