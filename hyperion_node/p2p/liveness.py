"""Liveness: the peer table kept up to date from connections and pings, and its events persisted (a trio
component, run by ``P2PNetwork``).

Every interval the peer table's timers advance (a connected peer that proves nothing turns suspect, then
dead) and each connected peer is pinged (libp2p ping, in parallel, each under PING_TIMEOUT_S): a reply is a
proof of life and a round trip the scheduler reads. The cost is the connection count, which the connection
watermarks (p2p.target_connections) bound, whatever the size of the network.

A connection on which the peer stays dead for ``p2p.suspect_after_s`` longer is closed and dialled again at once
(``PeerTable.wedged``): a connection can wedge while both peers run.

A provider found dead (a dial failed, or it fell silent while connected) is dialled again in the background
now and then, with backoff (``_probe_loop``): a loaded machine or a connection lost under a healthy peer
must not take it out of the scheduler's candidates until its record expires, and user tasks must not pay
for finding out.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import multiaddr
import structlog
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from hyperion_node.p2p.peer_table import PeerEntry, PeerTable, PresenceEvent
from hyperion_node.p2p.settings import P2PSettings
from hyperion_node.store import Store

log = structlog.get_logger(__name__)

PING_TIMEOUT_S = 2.0
# Dead providers dialled again in the background: at most PROBES per PROBE_EVERY_S, each peer again after
# PROBE_MIN_S, doubling to PROBE_MAX_S while it stays unreachable.
PROBE_EVERY_S = 10.0
PROBES = 4
PROBE_MIN_S = 10.0
PROBE_MAX_S = 600.0
KEEP_EVERY_S = 5.0  # a node below its connection target dials peers it knows this often
EVENT_BUFFER = 1000  # presence events waiting for the store; past it they are logged, not stored


async def cache_peer(store: Store, entry: PeerEntry, keep: int) -> None:
    """Write a peer's addresses, state and score to the peer cache (``peer_cache_size`` entries kept), so that a
    restarted node can dial it again."""
    await store.run(lambda: store.remember_peer(entry.peer_id, list(entry.addrs), state=entry.state.value,
                                                score=entry.score, keep=keep))


async def close_connection(host: Any, peer_id: str, timeout_s: float, why: str) -> None:
    """Close our connections to ``peer_id`` (a host without ``disconnect``, the memory fabric's, keeps them)."""
    disconnect = getattr(host, "disconnect", None)
    if disconnect is None:
        return
    with trio.move_on_after(timeout_s):
        try:
            await disconnect(ID.from_base58(peer_id))
        except Exception as exc:  # already gone, or a connection py-libp2p is tearing down itself
            log.debug("connection_close_failed", peer=peer_id, why=why, error=type(exc).__name__)


class Liveness:
    def __init__(self, table: PeerTable, settings: P2PSettings, store: Store,
                 rng: random.Random | None = None, on_rtt: Callable[[str, float], None] | None = None) -> None:
        self.table = table
        self._rng = rng or random.Random()
        self.settings = settings
        self.store = store
        self._on_rtt = on_rtt  # round trips in ms, for the scheduler's trends (P2PNetwork's observers)
        self._events_out: trio.MemorySendChannel[PresenceEvent] | None = None
        self._redialling: set[str] = set()  # peers whose dead connection is being closed and dialled again

    def emit(self, events: list[PresenceEvent]) -> None:
        for event in events:
            log.info("peer_" + event.kind, peer=event.peer_id, **event.detail)
            if self._events_out is not None:
                try:
                    self._events_out.send_nowait(event)
                except trio.WouldBlock:
                    log.warning("presence_events_dropped", peer=event.peer_id, kind=event.kind)

    async def run(self, host: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        events_in: trio.MemoryReceiveChannel[PresenceEvent]
        self._events_out, events_in = trio.open_memory_channel(EVENT_BUFFER)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._persist, events_in)
                nursery.start_soon(self._ping_loop, host, nursery)
                nursery.start_soon(self._probe_loop, host)
                nursery.start_soon(self._keep_loop, host)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._events_out = None

    async def _persist(self, events: trio.MemoryReceiveChannel[PresenceEvent]) -> None:
        async for event in events:
            await self.store.run(self.store.append_event, f"peer.{event.kind}",
                                 {"peer_id": event.peer_id, **event.detail})
            entry = self.table.get(event.peer_id)
            if entry is not None and entry.addrs and event.kind in ("joined", "rejoined", "alive"):
                await cache_peer(self.store, entry, self.settings.peer_cache_size)

    async def _probe_loop(self, host: Any) -> None:
        """Dial dead providers again now and then (``PeerTable.to_probe``): one that answers is connected, and
        so alive again, without a user's task paying for the dial. The cost is bounded: PROBES dials per
        PROBE_EVERY_S, each peer backing off to PROBE_MAX_S."""

        async def one(entry: PeerEntry) -> None:
            if not await self._dial(host, entry):
                self.table.probed(entry, trio.current_time(), PROBE_MIN_S, PROBE_MAX_S)

        while True:
            await trio.sleep(PROBE_EVERY_S)
            due = self.table.to_probe(trio.current_time(), time.time(), PROBES)
            for entry in due:
                entry.probe_after = trio.current_time() + PROBE_MIN_S  # not twice at once
            async with trio.open_nursery() as nursery:
                for entry in due:
                    nursery.start_soon(one, entry)

    async def _keep_loop(self, host: Any) -> None:
        """Keep at least ``p2p.target_connections`` connections: below it, dial peers the table knows (alive,
        with an address). The two ends of a connection prune independently (libp2p_stack), so a node can fall
        below its target through others' pruning; py-libp2p's auto-connector dials only peers whose addresses
        its peerstore still holds, which expire soon after a connection closes."""
        while True:
            await trio.sleep(KEEP_EVERY_S)
            missing = self.settings.target_connections - len(host.get_connected_peers())
            if missing <= 0:
                continue
            async with trio.open_nursery() as nursery:
                for entry in self.table.to_connect(missing, self._rng.sample):
                    nursery.start_soon(self._dial, host, entry)

    async def _dial(self, host: Any, entry: PeerEntry) -> bool:
        addrs = [multiaddr.Multiaddr(a) for a in (entry.addrs or (entry.capability.addrs if entry.capability else ()))]
        with trio.move_on_after(self.settings.dial_timeout_s):
            try:
                await host.connect(PeerInfo(ID.from_base58(entry.peer_id), addrs))
                self.emit(self.table.set_connected(entry.peer_id, True, trio.current_time()))
                return True
            except Exception as exc:  # unreachable: py-libp2p raises many types
                log.debug("dial_failed", peer=entry.peer_id, error=type(exc).__name__)
        return False

    async def _redial(self, host: Any, entry: PeerEntry) -> None:
        """Close a connection on which the peer has been dead a while, and dial it again at once (a failed
        dial backs off as the probe loop's do)."""
        try:
            log.info("peer_connection_closed_dead", peer=entry.peer_id,
                     dead_s=round(trio.current_time() - (entry.dead_since or trio.current_time()), 1))
            await close_connection(host, entry.peer_id, self.settings.dial_timeout_s, "dead")
            self.emit(self.table.set_connected(entry.peer_id, False, trio.current_time()))
            if not await self._dial(host, entry):
                self.table.probed(entry, trio.current_time(), PROBE_MIN_S, PROBE_MAX_S)
        finally:
            self._redialling.discard(entry.peer_id)

    async def _ping_loop(self, host: Any, nursery: trio.Nursery) -> None:
        """Each interval: the table's timers advance, and every connected peer without a ping in flight is
        pinged, each on its own (a ping that hangs on one connection must not delay the others': a round that
        waited for all of them let healthy peers fall silent behind one stuck stream)."""
        interval = min(self.settings.heartbeat_interval_s, self.settings.suspect_after_s / 3)
        pinging: set[ID] = set()

        async def one(peer_id: ID) -> None:
            try:
                await ping(peer_id)
            finally:
                pinging.discard(peer_id)

        async def ping(peer_id: ID) -> None:
            with trio.move_on_after(PING_TIMEOUT_S):
                try:
                    rtts = await host.ping(peer_id)
                except Exception as exc:  # a peer without ping, or a dropped stream: silence, as liveness reads it
                    log.debug("ping_failed", peer=str(peer_id), error=type(exc).__name__)
                    return
                if rtts:
                    self.emit(self.table.pinged(str(peer_id), float(rtts[0]), trio.current_time()))
                    if self._on_rtt is not None:
                        self._on_rtt(str(peer_id), float(rtts[0]))
            # The peer's listen addresses (identify put them in the peerstore) go to the peer cache, so that
            # a restarted node can redial the peers it held connections to.
            if self.table.learned_addrs(str(peer_id), host.peer_addrs(peer_id)):
                entry = self.table.get(str(peer_id))
                if entry is not None:
                    await cache_peer(self.store, entry, self.settings.peer_cache_size)

        while True:
            await trio.sleep(interval)
            # A connected peer found dead keeps its connection for a while: a ping that succeeds later (a
            # loaded machine, a flood it was under) brings it back at once. Dead for suspect_after longer, its
            # connection is closed and dialled afresh (``PeerTable.wedged``).
            self.emit(self.table.tick(trio.current_time()))
            for entry in self.table.wedged(trio.current_time()):
                if entry.peer_id not in self._redialling:
                    self._redialling.add(entry.peer_id)
                    nursery.start_soon(self._redial, host, entry)
            for peer_id in list(host.get_connected_peers()):
                if peer_id not in pinging:
                    pinging.add(peer_id)
                    nursery.start_soon(one, peer_id)
