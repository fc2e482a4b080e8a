"""The PeerTable: one view of every peer, merged from what the node's connections, pings, presence streams,
the DHT, mDNS and the peer cache say.

Pure state: every method takes ``now`` (trio's clock in the daemon, any number in tests) and returns the
presence events it caused; the service persists them. Liveness follows proofs of life -- a connection
opening, a ping answered, a heartbeat on a presence stream (``presence.py``) -- from the peers this node has
been in touch with; a peer known only from its DHT record is *alive* until a dial to it fails
(``unreachable``), since its record says it was there and nothing says otherwise::

    alive --(connected, no proof of life for suspect_after)--> suspect --(none for dead_after)--> dead
    any   --(a dial fails)--> dead
    any   --(heartbeat says draining)--> draining            any --(heartbeat or goodbye says leaving)--> left
    suspect / dead / left --(connection, ping or heartbeat)--> alive (event "rejoined" after dead or left)
    dead  --(a capability record newer than the one held: the peer signed it since)--> alive
    dead and connected, for suspect_after more --> listed by ``wedged``: liveness closes the connection and dials

A connection that closes is no proof of death: the pruner may have closed it, on either side, and a pruned
peer must stay a candidate. So the timers run only while the peer is connected (pinged); a peer that is not
stays as it was last seen until a dial to it fails. The peers that need to know sooner find out sooner: a
requester's presence subscription to a provider breaks when the provider goes, and its resubscription's
failed dial marks the provider dead (``presence.py``).

A node does not hear every other node: only the peers it is connected to (pings: a few dozen at most, set by
the connection watermarks) and the providers it routes to (heartbeats).

A peer's score starts at 0 and goes down for every malformed or forged message it sends; at ``BAN_SCORE`` or
below it is banned: its connections are closed, its streams refused. A penalty fades with a half-life of
``PENALTY_HALF_LIFE_S``, so a ban lasts in proportion to the offences (one past the line: minutes) and a
score that fell through no fault of the peer (an offence charged to it wrongly, a bug of an old version)
comes back without anyone's help. Penalties are charged only to the peer that did the thing: the stream's
authenticated remote, or the signer of a message it made.

The table is bounded (``max_peers``): past it, the entries that matter least go first (not connected, not
alive, not banned, seen longest ago), so a stranger minting peer IDs fills it with nothing that lasts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hyperion_node.p2p.messages import HEALTH_DRAINING, HEALTH_LEAVING, CapabilityRecord, Heartbeat

# Score lost per offence, by kind. A forged signature is deliberate; an oversized message may be a bug.
PENALTIES = {
    "bad_signature": 20.0,
    "bad_countersignature": 20.0,
    "bad_bill": 20.0,  # a bill above what was received or offered: deliberate
    "false_dispute": 20.0,  # a signed dispute of work this node checked and found right
    "bad_evidence": 10.0,  # asked a verifier to judge output that is not the receipt's
    "bad_case": 10.0,
    "replayed": 10.0,
    "oversized": 5.0,
    "undecodable": 5.0,
    "bad_schema": 5.0,
    "non_finite": 5.0,
    "out_of_order": 5.0,
    "not_requester": 5.0,
    "future": 5.0,
    "rate_limited": 1.0,
    "too_frequent": 1.0,
    "too_many_streams": 1.0,
    "dialback_refused": 2.0,
}
DEFAULT_PENALTY = 5.0
BAN_SCORE = -100.0
# A ban holds until the score has faded back above this: at least one half-life (10 minutes) for a peer that
# just crossed the line. Without it a ban at exactly BAN_SCORE lifted at the next tick's fading (seen in CI: a
# banned peer reconnected a few seconds later and kept its connection).
UNBAN_SCORE = BAN_SCORE / 2
MAX_SCORE = 10.0
# A penalty halves every ten minutes: a peer one forged signature past the ban line (-120) is back above it
# after ~2.6 minutes, one that kept offending (-400) after 20; the same offences start it over.
PENALTY_HALF_LIFE_S = 600.0
# Peers remembered at most. Each entry holds at most a capability record (8 KiB, p2p/messages.py) and a
# heartbeat (4 KiB): 4,096 entries are tens of MiB in the worst case, and far more peers than a node deals
# with (it keeps p2p.max_connections connections and looks providers up in the DHT).
MAX_PEERS = 4096


class PeerState(StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    DRAINING = "draining"
    LEFT = "left"


@dataclass(frozen=True)
class PresenceEvent:
    peer_id: str
    kind: str  # joined, rejoined, suspect, dead, draining, left, alive
    time: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class PeerEntry:
    peer_id: str
    first_seen: float
    last_seen: float
    state: PeerState = PeerState.ALIVE
    addrs: tuple[str, ...] = ()
    name: str = ""
    sources: set[str] = field(default_factory=set)  # presence, dht, mdns, connection, cache
    heartbeat: Heartbeat | None = None
    last_heartbeat: float | None = None  # local clock when the last heartbeat arrived
    last_alive: float | None = None  # the last proof of life: a connection opened, a ping, a heartbeat
    dead_since: float | None = None
    probe_after: float = 0.0  # a dead provider is dialled again in the background from then (liveness.py)
    probe_backoff: float = 0.0
    capability: CapabilityRecord | None = None
    rtt_ms: float | None = None
    clock_skew_s: float | None = None  # their wall clock minus ours, from the last heartbeat
    score: float = 0.0
    score_at: float = 0.0  # when ``score`` was last brought up to date (penalties fade from there)
    banned: bool = False  # since its score reached BAN_SCORE, until it has faded back above UNBAN_SCORE
    # The operator's ban (``ban``): held whatever the score, until ``held_until`` (the table's clock; None: until
    # ``unban``).
    held: bool = False
    held_until: float | None = None
    offences: dict[str, int] = field(default_factory=dict)
    connected: bool = False

    def to_json(self, now: float) -> dict[str, Any]:
        hb = self.heartbeat
        return {
            "peer_id": self.peer_id,
            "name": self.name,
            "state": self.state.value,
            "addrs": list(self.addrs),
            "connected": self.connected,
            "sources": sorted(self.sources),
            "last_seen_s_ago": round(now - self.last_seen, 3),
            "rtt_ms": self.rtt_ms,
            "clock_skew_s": self.clock_skew_s,
            "score": round(self.score, 3),
            "banned": self.banned,  # held until the score fades above -50 (the score itself fades from -100 at once)
            "offences": dict(self.offences),
            "telemetry": None if hb is None else {
                "queue_depth": hb.queue_depth, "active_tasks": hb.active_tasks,
                "ram_available_bytes": hb.ram_available_bytes, "gpus": [dict(g) for g in hb.gpus],
                "health": hb.health,
            },
            "offers": [] if self.capability is None else [
                {"runtime": o.runtime, "item": o.item, "unit": o.unit, "price": o.price_per_unit,
                 "capacity": o.capacity, "throughput": o.throughput, "tier": o.tier} for o in self.capability.offers
            ],
            "hardware": None if self.capability is None else dict(self.capability.hardware),
        }


@dataclass
class PeerTable:
    local_peer_id: str
    suspect_after: float
    dead_after: float
    peers: dict[str, PeerEntry] = field(default_factory=dict)
    max_peers: int = MAX_PEERS
    half_life_s: float = PENALTY_HALF_LIFE_S
    evicted: int = 0  # entries forgotten to stay within max_peers
    last_now: float = 0.0  # the latest time any method was given: penalties without one are dated by it
    # Told of a peer whose score has just crossed the ban line (the P2P layer closes its connections: a ban
    # refuses new streams and connections, and a peer already connected must not keep flooding the old ones).
    on_ban: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        if not 0 < self.suspect_after < self.dead_after:
            raise ValueError("need 0 < suspect_after < dead_after")

    def _added(self, entry: PeerEntry) -> None:
        self.peers[entry.peer_id] = entry
        if len(self.peers) > self.max_peers:
            self._evict(entry.peer_id)

    def _evict(self, keep: str) -> None:
        """Forget the least useful tenth of the table at once (amortised: one sort per many additions)."""
        def worth(e: PeerEntry) -> tuple[bool, bool, bool, float]:
            live = e.state in (PeerState.ALIVE, PeerState.DRAINING) and e.last_alive is not None
            return e.connected, live, e.banned, e.last_seen

        victims = sorted((e for e in self.peers.values() if e.peer_id != keep), key=worth)
        for entry in victims[: max(1, len(self.peers) - self.max_peers + self.max_peers // 10)]:
            del self.peers[entry.peer_id]
            self.evicted += 1

    def get(self, peer_id: str) -> PeerEntry | None:
        return self.peers.get(peer_id)

    def _entry(self, peer_id: str, now: float, source: str, events: list[PresenceEvent]) -> PeerEntry:
        entry = self.peers.get(peer_id)
        if entry is None or not entry.sources:  # unknown, or known only from its offences so far
            if entry is None:
                entry = PeerEntry(peer_id=peer_id, first_seen=now, last_seen=now)
                self._added(entry)
            entry.first_seen = entry.last_seen = now
            entry.state = PeerState.ALIVE
            events.append(PresenceEvent(peer_id, "joined", now, {"via": source}))
        entry.sources.add(source)
        return entry

    def saw(self, peer_id: str, now: float, *, source: str, addrs: Iterable[str] = ()) -> list[PresenceEvent]:
        """A sighting that is no proof of life (mDNS, DHT, cache): adds the peer, keeps its addresses; never
        revives a dead peer."""
        if peer_id == self.local_peer_id:
            return []
        events: list[PresenceEvent] = []
        entry = self._entry(peer_id, now, source, events)
        addrs = tuple(addrs)
        if addrs:
            entry.addrs = addrs
        if not entry.last_heartbeat:
            entry.last_seen = max(entry.last_seen, now)
        return events

    def heartbeat(self, hb: Heartbeat, now: float, *, wall_now: float) -> list[PresenceEvent]:
        if hb.peer_id == self.local_peer_id:
            return []
        events: list[PresenceEvent] = []
        entry = self._entry(hb.peer_id, now, "presence", events)
        if entry.heartbeat is not None and hb.seq <= entry.heartbeat.seq and entry.state is not PeerState.LEFT:
            return events  # an old heartbeat delivered late: it says nothing new
        previous = entry.state
        entry.heartbeat = hb
        entry.last_heartbeat = entry.last_alive = now
        entry.last_seen = now
        entry.name = hb.name or entry.name
        entry.addrs = hb.addrs or entry.addrs
        entry.clock_skew_s = round(hb.time - wall_now, 3)
        entry.score = min(MAX_SCORE, entry.score + 0.1)  # slow recovery through good behaviour
        if hb.health == HEALTH_LEAVING:
            entry.state = PeerState.LEFT
        elif hb.health == HEALTH_DRAINING:
            entry.state = PeerState.DRAINING
        else:
            entry.state = PeerState.ALIVE
        if entry.state is not previous:
            kind = entry.state.value
            if entry.state is PeerState.ALIVE:
                kind = "rejoined" if previous in (PeerState.DEAD, PeerState.LEFT) else "alive"
            if not (events and events[-1].kind == "joined" and entry.state is PeerState.ALIVE):
                events.append(PresenceEvent(hb.peer_id, kind, now, {"from": previous.value}))
        return events

    def capability(self, record: CapabilityRecord, now: float) -> list[PresenceEvent]:
        if record.peer_id == self.local_peer_id:
            return []
        events: list[PresenceEvent] = []
        entry = self._entry(record.peer_id, now, "dht", events)
        if entry.capability is None or record.seq > entry.capability.seq:
            if entry.capability is not None and entry.state is PeerState.DEAD:
                self._alive(entry, now, events)  # it signed a new record since we held the last one
            entry.capability = record
            entry.name = entry.name or record.name
            entry.addrs = entry.addrs or record.addrs
        return events

    def set_connected(self, peer_id: str, connected: bool, now: float) -> list[PresenceEvent]:
        """A connection opened (a proof of life) or closed (no proof of anything: module docstring)."""
        if peer_id == self.local_peer_id:
            return []
        events: list[PresenceEvent] = []
        entry = self._entry(peer_id, now, "connection", events)
        entry.connected = connected
        if connected:
            self._alive(entry, now, events)
        return events

    def pinged(self, peer_id: str, rtt_ms: float, now: float) -> list[PresenceEvent]:
        """A ping answered: its round trip, and a proof of life."""
        entry = self.peers.get(peer_id)
        if entry is None or peer_id == self.local_peer_id:
            return []
        events: list[PresenceEvent] = []
        entry.rtt_ms = round(rtt_ms, 3)
        self._alive(entry, now, events)
        return events

    def to_probe(self, now: float, wall_now: float, limit: int) -> list[PeerEntry]:
        """Dead providers whose record is still valid and whose turn to be dialled again has come: a peer
        found dead by a failed dial or silence may have been only unlucky (a loaded machine, a connection
        closed under it), and user tasks must not pay to find out."""
        due = [e for e in self.peers.values()
               if e.state is PeerState.DEAD and not e.connected and e.probe_after <= now and not self.banned(e.peer_id)
               and e.capability is not None and e.capability.offers and e.capability.expires_at > wall_now
               and (e.addrs or e.capability.addrs)]
        due.sort(key=lambda e: e.probe_after)
        return due[:limit]

    def to_connect(self, count: int, pick: Callable[[list[PeerEntry], int], list[PeerEntry]]) -> list[PeerEntry]:
        """Up to ``count`` peers to open a connection to, for a node below its connection target: peers not
        connected, believed alive (their connection may only have been pruned, on either side), not banned, with
        an address. ``pick(candidates, k)`` chooses among them (``random.sample``: every node choosing the same
        peers would pile connections on them)."""
        candidates = [e for e in self.peers.values()
                      if not e.connected and e.state in (PeerState.ALIVE, PeerState.SUSPECT, PeerState.DRAINING)
                      and not self.banned(e.peer_id) and (e.addrs or (e.capability and e.capability.addrs))]
        return pick(candidates, min(count, len(candidates)))

    def probed(self, entry: PeerEntry, now: float, min_s: float, max_s: float) -> None:
        """A background dial of a dead provider failed: the next one waits twice as long (min_s .. max_s)."""
        entry.probe_backoff = min(max_s, max(min_s, 2 * entry.probe_backoff))
        entry.probe_after = now + entry.probe_backoff

    def learned_addrs(self, peer_id: str, addrs: Iterable[str]) -> bool:
        """The addresses a connected peer listens on (from identify, in the host's peerstore): whether they
        are news, to be written to the peer cache."""
        entry = self.peers.get(peer_id)
        addrs = tuple(addrs)
        if entry is None or not addrs or entry.addrs == addrs:
            return False
        entry.addrs = addrs
        return True

    def unreachable(self, peer_id: str, now: float, why: str) -> list[PresenceEvent]:
        """Dialling the peer failed (a task, a presence stream): dead until it proves otherwise."""
        entry = self.peers.get(peer_id)
        if entry is None or entry.state in (PeerState.DEAD, PeerState.LEFT) or entry.connected:
            return []
        previous, entry.state = entry.state, PeerState.DEAD
        entry.dead_since = now
        return [PresenceEvent(peer_id, "dead", now, {"from": previous.value, "why": why})]

    def _alive(self, entry: PeerEntry, now: float, events: list[PresenceEvent]) -> None:
        entry.last_alive = entry.last_seen = now
        entry.dead_since = None
        entry.probe_backoff = entry.probe_after = 0.0
        if entry.state in (PeerState.SUSPECT, PeerState.DEAD):
            previous, entry.state = entry.state, PeerState.ALIVE
            kind = "rejoined" if previous is PeerState.DEAD else "alive"
            events.append(PresenceEvent(entry.peer_id, kind, now, {"from": previous.value}))

    def set_rtt(self, peer_id: str, rtt_ms: float) -> None:
        entry = self.peers.get(peer_id)
        if entry is not None:
            entry.rtt_ms = rtt_ms

    def penalize(self, peer_id: str, reason: str, now: float | None = None) -> float:
        """Lower a peer's score for bad input it sent; returns the new score. ``now`` (the clock ``tick``
        is given) dates the penalty, from which it fades; without it, the last tick's time is used."""
        entry = self.peers.get(peer_id)
        if entry is None:
            # An unknown sender is remembered, so repeated offences accumulate.
            entry = PeerEntry(peer_id=peer_id, first_seen=0.0, last_seen=0.0, state=PeerState.SUSPECT)
            self._added(entry)
        self.last_now = max(self.last_now, now if now is not None else self.last_now)
        self._fade(entry, self.last_now)
        entry.score -= PENALTIES.get(reason, DEFAULT_PENALTY)
        entry.offences[reason] = entry.offences.get(reason, 0) + 1
        if entry.score <= BAN_SCORE and not entry.banned:
            entry.banned = True
            if self.on_ban is not None:
                self.on_ban(peer_id)
        return entry.score

    def _fade(self, entry: PeerEntry, now: float) -> None:
        if entry.score < 0 and now > entry.score_at:
            entry.score *= math.pow(0.5, (now - entry.score_at) / self.half_life_s)
            if entry.score > -0.01:
                entry.score = 0.0
        entry.score_at = max(entry.score_at, now)
        if entry.held and entry.held_until is not None and now >= entry.held_until:
            entry.held, entry.held_until = False, None
        if entry.banned and entry.score > UNBAN_SCORE and not entry.held:
            entry.banned = False

    def ban(self, peer_id: str, duration_s: float | None) -> None:
        """The operator's ban: closes the peer's connections and refuses its streams, as a score ban does,
        for ``duration_s`` (None: until ``unban``)."""
        entry = self.peers.get(peer_id)
        if entry is None:
            entry = PeerEntry(peer_id=peer_id, first_seen=0.0, last_seen=0.0, state=PeerState.SUSPECT)
            self._added(entry)
        entry.held = True
        entry.held_until = None if duration_s is None else self.last_now + duration_s
        if not entry.banned:
            entry.banned = True
            if self.on_ban is not None:
                self.on_ban(peer_id)

    def unban(self, peer_id: str) -> bool:
        """Lift any ban on the peer, the operator's or its score's (the score starts again from 0); whether
        it was banned."""
        entry = self.peers.get(peer_id)
        if entry is None or not entry.banned:
            return False
        entry.held, entry.held_until, entry.banned, entry.score = False, None, False, 0.0
        return True

    def banned(self, peer_id: str) -> bool:
        entry = self.peers.get(peer_id)
        return entry is not None and entry.banned

    def tick(self, now: float) -> list[PresenceEvent]:
        """Advance liveness (a connected peer that stops proving it is alive turns suspect, then dead) and let
        penalties fade."""
        events: list[PresenceEvent] = []
        self.last_now = max(self.last_now, now)
        for entry in self.peers.values():
            self._fade(entry, now)
            if entry.state in (PeerState.DEAD, PeerState.LEFT) or entry.last_alive is None or not entry.connected:
                continue
            silent = now - entry.last_alive
            if silent >= self.dead_after:
                events.append(PresenceEvent(entry.peer_id, "dead", now,
                                            {"from": entry.state.value, "silent_s": round(silent, 3)}))
                entry.state, entry.dead_since = PeerState.DEAD, now
            elif silent >= self.suspect_after and entry.state is PeerState.ALIVE:
                events.append(PresenceEvent(entry.peer_id, "suspect", now, {"silent_s": round(silent, 3)}))
                entry.state = PeerState.SUSPECT
        return events

    def wedged(self, now: float) -> list[PeerEntry]:
        """Connected peers dead for ``suspect_after`` longer: the connection itself may be stuck. Seen on
        real daemons: after a burst of DHT streams opened and cancelled, both ends of a connection stopped
        hearing each other's pings, marked each other dead, and kept the connection (so neither dialled
        again) for over a minute. Closing it lets liveness dial a fresh one; a peer that is alive but only
        slow answers that dial and is alive again."""
        return [e for e in self.peers.values()
                if e.connected and e.state is PeerState.DEAD and e.dead_since is not None
                and now - e.dead_since >= self.suspect_after and not e.banned]

    def live_peers(self) -> list[PeerEntry]:
        return [e for e in self.peers.values() if e.state in (PeerState.ALIVE, PeerState.DRAINING)]

    def to_json(self, now: float) -> list[dict[str, Any]]:
        return [e.to_json(now) for e in sorted(self.peers.values(), key=lambda e: e.peer_id)]
