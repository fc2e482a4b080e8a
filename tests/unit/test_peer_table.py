"""PeerTable state transitions, driven by explicit times (the daemon feeds trio's clock)."""

from __future__ import annotations

import dataclasses

import pytest

from hyperion_node.ledger.exceptions import BadCountersignature, BadSignature
from hyperion_node.p2p.messages import CapabilityRecord, Heartbeat, OfferAd
from hyperion_node.p2p.peer_table import BAN_SCORE, PENALTIES, PeerState, PeerTable


def hb(peer: str, seq: int, health: str = "ok") -> Heartbeat:
    return Heartbeat(peer_id=peer, seq=seq, time=1000.0 + seq, name=f"n-{peer}", addrs=("/ip4/127.0.0.1/tcp/1",),
                     health=health, queue_depth=seq, active_tasks=0, ram_available_bytes=1)


def kinds(events: list) -> list[str]:  # type: ignore[type-arg]
    return [e.kind for e in events]


@pytest.fixture
def table() -> PeerTable:
    return PeerTable("me", suspect_after=6.0, dead_after=15.0)


def test_proofs_of_life_drive_alive_suspect_dead_rejoined(table: PeerTable) -> None:
    assert kinds(table.set_connected("a", True, 0.0)) == ["joined"]
    assert kinds(table.heartbeat(hb("a", 1), 0.0, wall_now=1000.0)) == []
    assert table.get("a").state is PeerState.ALIVE  # type: ignore[union-attr]
    assert table.tick(5.9) == []
    assert kinds(table.tick(6.0)) == ["suspect"]
    assert kinds(table.tick(10.0)) == []  # no repeated events
    assert kinds(table.tick(15.0)) == ["dead"]
    assert kinds(table.tick(100.0)) == []
    assert kinds(table.heartbeat(hb("a", 2), 101.0, wall_now=1000.0)) == ["rejoined"]
    assert table.get("a").state is PeerState.ALIVE  # type: ignore[union-attr]


def test_suspect_recovers_to_alive_by_heartbeat_or_ping(table: PeerTable) -> None:
    table.set_connected("a", True, 0.0)
    table.heartbeat(hb("a", 1), 0.0, wall_now=0.0)
    table.tick(7.0)
    assert kinds(table.heartbeat(hb("a", 2), 7.5, wall_now=0.0)) == ["alive"]
    table.tick(14.0)
    assert kinds(table.pinged("a", 3.5, 14.5)) == ["alive"]
    assert table.get("a").rtt_ms == 3.5  # type: ignore[union-attr]


def test_a_silent_connected_peer_dies_and_a_pruned_one_stays_a_candidate(table: PeerTable) -> None:
    """Timers run while a peer is connected (pinged): silent, it turns suspect, then dead. A connection that
    closes is no proof of death (a pruner may have closed it): the peer stays as it was until a dial fails;
    a dead peer comes back on a proof of life or a record it signed since."""
    table.set_connected("a", True, 0.0)
    assert kinds(table.tick(7.0)) == ["suspect"]
    assert kinds(table.tick(15.0)) == ["dead"]
    table.set_connected("b", True, 0.0)
    table.pinged("b", 1.0, 1.0)
    table.set_connected("b", False, 2.0)
    assert table.tick(10_000.0) == []
    assert table.get("b").state is PeerState.ALIVE  # type: ignore[union-attr]
    assert kinds(table.unreachable("b", 10_001.0, "connection refused")) == ["dead"]
    assert kinds(table.set_connected("b", True, 10_002.0)) == ["rejoined"]  # a connection is a proof of life
    record = CapabilityRecord(peer_id="c", seq=1, expires_at=1.0, name="c", addrs=(), hardware={}, offers=())
    assert kinds(table.capability(record, 0.0)) == ["joined"]
    assert kinds(table.unreachable("c", 1.0, "connection refused")) == ["dead"]
    assert table.capability(record, 2.0) == []  # the same record again: no news
    assert kinds(table.capability(dataclasses.replace(record, seq=2), 3.0)) == ["rejoined"]


def test_a_connection_dead_a_while_longer_is_to_be_closed_and_dialled_again(table: PeerTable) -> None:
    """A connected peer dead for suspect_after (6 s here) longer is listed as wedged; one that proved it is
    alive, one not connected, and one banned are not."""
    for peer in ("a", "b", "c"):
        table.set_connected(peer, True, 0.0)
    assert kinds(table.tick(15.0)) == ["dead"] * 3
    table.set_connected("b", False, 16.0)
    for _ in range(20):
        table.penalize("c", "bad_signature", 16.0)
    assert table.banned("c")
    assert table.wedged(20.9) == []
    assert [e.peer_id for e in table.wedged(21.0)] == ["a"]
    table.pinged("a", 1.0, 21.5)
    assert table.wedged(22.0) == []


def test_draining_and_leaving_come_from_the_peer(table: PeerTable) -> None:
    table.heartbeat(hb("a", 1), 0.0, wall_now=0.0)
    assert kinds(table.heartbeat(hb("a", 2, "draining"), 1.0, wall_now=0.0)) == ["draining"]
    assert [p.peer_id for p in table.live_peers()] == ["a"]  # draining peers still finish their work
    assert kinds(table.heartbeat(hb("a", 3, "leaving"), 2.0, wall_now=0.0)) == ["left"]
    assert table.live_peers() == []
    assert table.tick(100.0) == []  # a peer that left is not declared dead later


def test_late_heartbeats_do_not_roll_state_back(table: PeerTable) -> None:
    table.heartbeat(hb("a", 5, "draining"), 0.0, wall_now=0.0)
    assert table.heartbeat(hb("a", 4), 1.0, wall_now=0.0) == []
    assert table.get("a").state is PeerState.DRAINING  # type: ignore[union-attr]


def test_own_messages_are_ignored(table: PeerTable) -> None:
    assert table.heartbeat(hb("me", 1), 0.0, wall_now=0.0) == []
    assert table.saw("me", 0.0, source="mdns") == []
    assert table.peers == {}


def test_clock_skew_is_measured(table: PeerTable) -> None:
    table.heartbeat(hb("a", 1), 0.0, wall_now=1003.5)  # they say 1001.0
    assert table.get("a").clock_skew_s == -2.5  # type: ignore[union-attr]


def test_sightings_without_heartbeats_never_revive_the_dead(table: PeerTable) -> None:
    table.set_connected("a", True, 0.0)
    table.heartbeat(hb("a", 1), 0.0, wall_now=0.0)
    table.tick(20.0)
    assert table.saw("a", 21.0, source="connection") == []
    assert table.get("a").state is PeerState.DEAD  # type: ignore[union-attr]


def test_penalties_accumulate_to_a_ban(table: PeerTable) -> None:
    for _ in range(4):
        table.penalize("rogue", "bad_signature")
    assert not table.banned("rogue")
    table.penalize("rogue", "bad_signature")
    assert table.get("rogue").score <= BAN_SCORE  # type: ignore[union-attr]
    assert table.banned("rogue")
    assert table.get("rogue").offences == {"bad_signature": 5}  # type: ignore[union-attr]


def test_a_ban_at_the_line_holds_until_the_score_has_faded_half_way_back() -> None:
    """Banned at exactly BAN_SCORE (20 malformed tasks of 5 points), the peer stays banned while its penalty
    fades, for a half-life, not until the next tick's fading takes it a hair above the line."""
    table = PeerTable("me", suspect_after=6.0, dead_after=15.0, half_life_s=600.0)
    table.tick(0.0)
    for _ in range(20):
        table.penalize("rogue", "bad_schema", now=0.0)
    assert table.get("rogue").score == BAN_SCORE  # type: ignore[union-attr]
    assert table.banned("rogue")
    table.tick(5.0)
    assert table.get("rogue").score > BAN_SCORE  # type: ignore[union-attr]
    assert table.banned("rogue")  # a few seconds of fading lift no ban
    table.tick(590.0)
    assert table.banned("rogue")
    table.tick(610.0)  # past one half-life: -50 and above
    assert not table.banned("rogue")


def test_the_operators_ban_holds_whatever_the_score_until_its_time_or_unban() -> None:
    table = PeerTable("me", suspect_after=6.0, dead_after=15.0, half_life_s=600.0)
    closed: list[str] = []
    table.on_ban = closed.append
    table.tick(100.0)
    table.ban("honest-looking", 3600.0)  # a clean score: the operator's word is enough
    assert table.banned("honest-looking")
    assert closed == ["honest-looking"]  # its connections are closed at once
    table.tick(3600.0)
    assert table.banned("honest-looking")
    table.tick(3701.0)  # an hour after the ban
    assert not table.banned("honest-looking")

    for _ in range(20):
        table.penalize("rogue", "bad_schema", now=3701.0)
    table.ban("rogue", None)  # until unban
    table.tick(1e6)  # the score has long faded: the operator's ban still holds
    assert table.banned("rogue")
    assert table.unban("rogue")
    assert not table.banned("rogue")
    assert table.get("rogue").score == 0.0  # type: ignore[union-attr]
    assert not table.unban("rogue")  # nothing to lift


@pytest.mark.parametrize("error", [BadSignature, BadCountersignature])
def test_a_forged_receipt_signature_costs_what_any_forged_signature_does(table: PeerTable, error: type) -> None:
    """The ledger's reasons are the peer table's offence names: a forged receipt is a forgery, not bad input."""
    before = table.penalize("rogue", "rate_limited")
    after = table.penalize("rogue", error("x").reason)
    assert before - after == pytest.approx(PENALTIES["bad_signature"])


def test_capability_keeps_the_newest_record(table: PeerTable) -> None:
    def rec(seq: int) -> CapabilityRecord:
        return CapabilityRecord(peer_id="a", seq=seq, expires_at=1.0, name="a", addrs=(), hardware={}, offers=())

    assert kinds(table.capability(rec(2), 0.0)) == ["joined"]
    table.capability(rec(1), 1.0)
    assert table.get("a").capability.seq == 2  # type: ignore[union-attr]
    table.capability(rec(3), 2.0)
    assert table.get("a").capability.seq == 3  # type: ignore[union-attr]


def test_thresholds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="suspect_after"):
        PeerTable("me", suspect_after=10.0, dead_after=5.0)


def test_a_peer_first_known_for_an_offence_still_joins(table: PeerTable) -> None:
    table.penalize("a", "oversized")
    assert kinds(table.heartbeat(hb("a", 1), 3.0, wall_now=0.0)) == ["joined"]
    assert table.get("a").score < 0  # type: ignore[union-attr]  # the offence is not forgotten


def test_a_penalty_fades_so_a_ban_ends_without_anyones_help() -> None:
    table = PeerTable("me", suspect_after=6.0, dead_after=15.0, half_life_s=600.0)
    table.tick(0.0)
    for _ in range(6):
        table.penalize("w", "bad_signature", now=0.0)  # -120: banned
    assert table.banned("w")
    table.tick(60.0)
    assert table.banned("w")  # a minute later, still
    table.tick(0.5 * 3600)
    assert not table.banned("w")
    assert -20.0 < table.get("w").score < 0  # type: ignore[union-attr]  # and still remembered
    table.penalize("w", "bad_signature")  # dated by the last tick, not by the start of time
    table.tick(0.5 * 3600 + 1)
    assert table.get("w").score < -20.0  # type: ignore[union-attr]


def test_the_table_stays_bounded_and_keeps_what_matters() -> None:
    table = PeerTable("me", suspect_after=6.0, dead_after=15.0, max_peers=100)
    table.set_connected("friend", True, 0.0)
    for i in range(1000):  # a stranger minting peer IDs, each sending one bad message
        table.penalize(f"sybil{i}", "bad_schema", now=float(i))
    assert len(table.peers) <= 100
    assert table.get("friend") is not None
    assert table.evicted >= 900


def test_dead_providers_are_probed_with_backoff_and_only_while_their_record_holds(table: PeerTable) -> None:
    offer = OfferAd(runtime="inference", item="m", unit="token", price_per_unit=0.0, capacity=1, throughput=1.0)
    record = CapabilityRecord(peer_id="p", seq=1, expires_at=1_000.0, name="p", addrs=("/ip4/127.0.0.1/tcp/9",),
                              hardware={}, offers=(offer,))
    table.capability(record, 0.0)
    assert table.to_probe(0.0, 0.0, 4) == []  # alive: nothing to probe
    table.unreachable("p", 1.0, "refused")
    entry = table.get("p")
    assert table.to_probe(1.0, 0.0, 4) == [entry]
    assert entry is not None
    table.probed(entry, 1.0, 10.0, 600.0)
    table.probed(entry, 11.0, 10.0, 600.0)
    assert entry.probe_after == 31.0  # 10 s, then 20 s
    assert table.to_probe(30.0, 0.0, 4) == []
    assert table.to_probe(31.0, 0.0, 4) == [entry]
    assert table.to_probe(31.0, 1_000.0, 4) == []  # its record expired: nothing says it is a provider any more
    table.set_connected("p", True, 40.0)
    assert entry.probe_backoff == 0.0
