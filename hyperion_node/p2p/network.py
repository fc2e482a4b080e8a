"""The P2P layer: what makes the node a member of the network, composed of components that each own one part
(each a trio component started with ``nursery.start``):

* the stack: the host (TCP and QUIC, Noise only, yamux, the node's Ed25519 key, bans enforced on every
  stream and connection) and the Kademlia DHT (``libp2p_stack.py``; the demo's in-memory fabric stands in
  under the same interfaces, passed as ``stack``);
* the records this node and its peers keep in the DHT, checked by one validator (``records.py``);
* liveness: the peer table fed by connections and pings to the peers this node is connected to, its events
  persisted (``liveness.py``);
* presence: load and health pushed straight to the peers that route to this node (``presence.py``);
* the advertiser: this node's signed capability record and provider keys (``advertiser.py``);
* the dialler: bootstrap peers and the peer cache (``dialer.py``);
* dial-back for `doctor` (``dialback.py``);
* the census: the network's size, GPUs and capacity, estimated from a sample of the DHT (``census.py``).

No topic floods every node any more: each node's cost is set by its connection count, its own requests and
its subscribers, all bounded, not by the size of the network (issue #22; docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import multiaddr
import structlog
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.utils.address_validation import get_available_interfaces

from hyperion_node.identity import Identity
from hyperion_node.p2p import provider_walk
from hyperion_node.p2p.advertiser import Advertiser
from hyperion_node.p2p.census import Census
from hyperion_node.p2p.dialback import DIALBACK_PROTOCOL, Dialback
from hyperion_node.p2p.dialer import Dialer
from hyperion_node.p2p.libp2p_stack import libp2p_stack, run_mdns
from hyperion_node.p2p.limits import HeartbeatGate
from hyperion_node.p2p.liveness import Liveness, close_connection
from hyperion_node.p2p.local import LATENCY_WINDOW_S, LocalState, P2PStats
from hyperion_node.p2p.messages import (
    HEALTH_LEAVING,
    CapabilityRecord,
    DialbackResult,
    Heartbeat,
    MalformedMessage,
    capability_key,
    record_key,
)
from hyperion_node.p2p.peer_table import PeerTable
from hyperion_node.p2p.presence import PRESENCE_PROTOCOL, Presence
from hyperion_node.p2p.provider_walk import ProviderWalk
from hyperion_node.p2p.records import SENDER, RecordValidator, dealings_key, epoch_key
from hyperion_node.p2p.settings import P2PSettings
from hyperion_node.store import Store
from hyperion_node.trio_types import TaskStatus

__all__ = ["LATENCY_WINDOW_S", "LocalState", "P2PNetwork", "P2PStats", "Stack", "dealings_key", "epoch_key"]

log = structlog.get_logger(__name__)

# A heartbeat dated further ahead of our clock than this is its signer's lie (or a clock to fix: `doctor`
# reports skew). Honest clocks under NTP agree to well within a second.
MAX_CLOCK_SKEW_S = 60.0
FIND_TRIES = 3  # provider lookups that found no one, tried again after FIND_AGAIN_S, then twice that
FIND_AGAIN_S = 0.5
JOINING_S = 30.0

# (identity, settings, validator, stats, table, on_connection) -> the running (host, dht)
Stack = Callable[[Identity, P2PSettings, RecordValidator, P2PStats, PeerTable, Callable[[ID, bool], None]],
                 AbstractAsyncContextManager[tuple[Any, Any]]]


class PeerObserver(Protocol):
    """What the P2P layer tells the parts of a node that follow peers' health (the scheduler's trends), each
    added with :meth:`P2PNetwork.add_observer`, as libp2p's ``Notifee`` is registered with its network."""

    def observe_heartbeat(self, heartbeat: Heartbeat) -> None:
        """A checked heartbeat of a provider this node subscribes to."""

    def observe_rtt(self, peer_id: str, rtt_ms: float) -> None:
        """A ping to a connected peer came back after ``rtt_ms``."""


class P2PNetwork:
    """The node's P2P layer for the daemon's lifetime (a trio component): its components, and what the rest of
    the node asks of the network."""

    def __init__(self, identity: Identity, settings: P2PSettings, store: Store, local: LocalState,
                 *, name: str, stack: Stack | None = None) -> None:
        self.identity = identity
        self.settings = settings
        self.store = store
        self.local = local
        self.name = name
        self.peer_id = str(identity.peer_id)
        self._stack: Stack = stack or libp2p_stack
        self.network = "libp2p" if stack is None else "memory"
        self.table = PeerTable(self.peer_id, settings.suspect_after_s, settings.dead_after_s, on_ban=self._banned)
        self.stats = P2PStats()
        self.host: Any = None  # the host (streams by protocol, connections, ping) while running
        self.dht: Any = None  # the Kademlia DHT while running
        self._walk: ProviderWalk | None = None  # provider lookups that stop at an answer (py-libp2p's DHT)
        self._validator: RecordValidator | None = None
        self._observers: list[PeerObserver] = []
        self.liveness = Liveness(self.table, settings, store, on_rtt=self._on_rtt)
        rate = settings.heartbeat_rate_per_peer
        # Heartbeats older than the dead timeout say nothing of a peer now (and must not revive a dead one).
        gate = HeartbeatGate(rate=rate, burst=2 * rate, max_age=max(settings.dead_after_s, 60.0),
                             max_skew=MAX_CLOCK_SKEW_S)
        self.presence = Presence(peer_id=self.peer_id, table=self.table, gate=gate,
                                 interval_s=settings.heartbeat_interval_s,
                                 heartbeat=lambda: self._heartbeat(self.local.health()).seal(self.identity),
                                 deliver=self._on_heartbeat, emit=self.liveness.emit, reject=self._rejected_presence)
        self.advertiser = Advertiser(identity, settings, local, name=name, addrs=self.listen_addrs)
        self.dialer = Dialer(self.peer_id, settings, store, self.table, self.liveness.emit)
        self.dialback = Dialback(identity, self.table, self.stats, settings.dial_timeout_s)
        self.census = Census(closest=self._closest_peers, record=self._record_of, me=self.advertiser.record,
                             every_s=settings.census_interval_s)
        # Heartbeat sequence numbers start from the clock (ms), so they keep rising across restarts: a
        # subscriber drops a heartbeat whose seq is not above the last one it saw.
        self._heartbeat_seq = time.time_ns() // 1_000_000
        self._nursery: trio.Nursery | None = None  # the running component's, for work a handler starts
        self._up_since = 0.0
        self._heard = trio.Event()  # set (and replaced) at each heartbeat taken

    def add_observer(self, observer: PeerObserver) -> None:
        """Tell ``observer`` of every heartbeat taken and every round trip measured from now on."""
        self._observers.append(observer)

    def _on_rtt(self, peer_id: str, rtt_ms: float) -> None:
        for observer in self._observers:
            observer.observe_rtt(peer_id, rtt_ms)

    # -- the component -------------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        validator = self._validator = RecordValidator(self)
        try:
            async with self._stack(self.identity, self.settings, validator, self.stats, self.table,
                                   self.connection_changed) as (host, dht):
                host.set_stream_handler(DIALBACK_PROTOCOL, self.dialback.handle)
                self.host, self.dht, self.dialback.host = host, dht, host
                self._walk = ProviderWalk(dht) if provider_walk.supports(dht) else None
                self._up_since = trio.current_time()
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(self.liveness.run, host)
                    if self.settings.mdns and self.network == "libp2p":
                        nursery.start_soon(run_mdns, host)
                    await self.dialer.dial_known_peers(host, dht)
                    nursery.start_soon(self.dialer.rejoin_loop, host)
                    await nursery.start(self.presence.run, host)
                    await nursery.start(self.advertiser.run, dht)
                    await nursery.start(self.census.run)
                    log.info("p2p_ready", addrs=self.listen_addrs(), network=self.network)
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self.host = self.dht = self._nursery = self._walk = None

    # -- addresses ---------------------------------------------------------------------------------------

    def listen_addrs(self) -> list[str]:
        """Our dialable addresses with /p2p/<peer ID>: announce addresses if set, else what we listen on,
        with a wildcard listen address (0.0.0.0) expanded to this machine's interface addresses."""
        if self.host is None:
            return []
        if self.settings.announce_addrs:
            return [str(a) for a in self.host.get_addrs()]
        addrs: list[str] = []
        for addr in self.host.get_transport_addrs():
            text = str(addr)
            if "/ip4/0.0.0.0/" in text or "/ip6/::/" in text:
                # get_available_interfaces gives /ip4/<interface>/tcp/<port>; reuse its host part for QUIC.
                wildcard = "/ip4/0.0.0.0" if "/ip4/0.0.0.0/" in text else "/ip6/::"
                rest = text[len(wildcard):]
                for iface in get_available_interfaces(1, "tcp"):
                    addrs.append(str(iface).rsplit("/tcp/", 1)[0] + rest)
            else:
                addrs.append(text)
        return [f"{a}/p2p/{self.peer_id}" for a in sorted(dict.fromkeys(addrs), key=lambda a: "/quic" in a)]

    # -- what the stack and the validator report -----------------------------------------------------------

    def connection_changed(self, peer_id: ID, connected: bool) -> None:
        self.liveness.emit(self.table.set_connected(str(peer_id), connected, trio.current_time()))
        entry = self.table.get(str(peer_id))
        if connected and entry is not None and not entry.addrs and self._nursery is not None:
            self._nursery.start_soon(self._learn_addrs, str(peer_id))

    async def _learn_addrs(self, peer_id: str) -> None:
        """Where a newly connected peer listens, for the peer cache, so that a restarted node can dial it back:
        the peerstore's addresses for a peer this node dialled (and identify's); for a peer that dialled us, which
        told us none, its signed capability record."""
        known = self.host.peer_addrs(ID.from_base58(peer_id)) if self.host is not None else ()
        if known:
            if self.table.learned_addrs(peer_id, known):
                entry = self.table.get(peer_id)
                if entry is not None:
                    await self.dialer.remember(entry)
            return
        with trio.move_on_after(10):
            if self._walk is not None:  # asked of the peer itself: one request on the connection just opened
                await self._provider_record(self._walk, ID.from_base58(peer_id))
            else:
                await self.capability_of(peer_id)
        entry = self.table.get(peer_id)
        if entry is not None and entry.addrs:
            await self.dialer.remember(entry)

    def learned_capability(self, record: CapabilityRecord) -> None:
        self.liveness.emit(self.table.capability(record, trio.current_time()))

    def rejected(self, where: str, reason: str, peer_id: str | None) -> None:
        self.stats.reject(where, reason)
        if peer_id:
            self.table.penalize(peer_id, reason)

    def _rejected_presence(self, peer_id: str, reason: str) -> None:
        self.rejected("presence", reason, peer_id)

    def _banned(self, peer_id: str) -> None:
        """A peer just crossed the ban line: close its connections now (new ones are refused as they open)."""
        log.info("peer_banned", peer=peer_id, offences=dict(self.table.peers[peer_id].offences))
        if self._nursery is not None:
            self._nursery.start_soon(close_connection, self.host, peer_id, self.settings.dial_timeout_s, "banned")

    # -- presence ----------------------------------------------------------------------------------------

    def _heartbeat(self, health: str) -> Heartbeat:
        self._heartbeat_seq += 1
        telemetry = self.local.telemetry()
        queue, active = self.local.load()
        self.stats.sent[PRESENCE_PROTOCOL] += 1
        return Heartbeat(
            peer_id=self.peer_id, seq=self._heartbeat_seq, time=time.time(), name=self.name,
            addrs=tuple(a.rsplit("/p2p/", 1)[0] for a in self.listen_addrs()), health=health,
            queue_depth=queue, active_tasks=active, ram_available_bytes=int(telemetry.get("ram_available_bytes", 0)),
            gpus=tuple(telemetry.get("gpus", ())), every_s=self.settings.heartbeat_interval_s,
        )

    def _on_heartbeat(self, hb: Heartbeat) -> None:
        """A checked heartbeat of a provider this node subscribes to (presence.py)."""
        self.stats.received[PRESENCE_PROTOCOL] += 1
        self._heard.set()
        self._heard = trio.Event()
        self.stats.latencies_ms.append((time.monotonic(), max(0.0, (time.time() - hb.time) * 1000)))
        self.liveness.emit(self.table.heartbeat(hb, trio.current_time(), wall_now=time.time()))
        for observer in self._observers:
            observer.observe_heartbeat(hb)
        # A peer first seen as a bare connection joined without addresses; its heartbeats bring them. Cache
        # them now, or a restarted node could not redial the peers that dialled it.
        entry = self.table.get(hb.peer_id)
        if entry is not None and self._nursery is not None and self.dialer.addresses_changed(hb.peer_id, hb.addrs):
            self._nursery.start_soon(self.dialer.remember, entry)

    async def announce_leaving(self) -> None:
        """Tell subscribers this node is leaving (a last heartbeat), so that they mark it "left" at once rather
        than dead after a timeout. Called by the daemon before it cancels the components."""
        await self.presence.leave(self._heartbeat(HEALTH_LEAVING).seal(self.identity))

    # -- what the services above ask of the network ---------------------------------------------------------

    async def open_stream(self, peer_id: str, protocol: str) -> Any:
        """A new stream to ``peer_id`` speaking ``protocol`` (dialling it if need be)."""
        assert self.host is not None
        return await self.host.new_stream(ID.from_base58(peer_id), [TProtocol(protocol)])

    async def provide_key(self, key: str) -> None:
        """Announce this node in the DHT as a provider of ``key`` (a hex multihash)."""
        assert self.dht is not None
        await self.dht.provide(key)

    async def providers_of(self, key: str, count: int) -> list[str]:
        """Peers the DHT names as providers of ``key``, each once (py-libp2p may name one several times)."""
        assert self.dht is not None
        try:
            infos = await self.dht.find_providers(key, count)
        except Exception as exc:  # a lookup that fails on the network finds nobody
            log.info("provider_lookup_failed", key=key[:16], error=type(exc).__name__)
            return []
        return list(dict.fromkeys(str(i.peer_id) for i in infos))

    async def put_record(self, key: str, value: bytes) -> None:
        """Store one of this node's signed records in the DHT (at the peers closest to its key): its epoch
        root (``epoch_key``), its dealings (``dealings_key``)."""
        assert self.dht is not None
        with trio.move_on_after(30):
            await self.dht.put_value(key, value)

    async def get_record(self, key: str) -> bytes | None:
        """A signed record from the DHT, checked by the validator as it arrives; None when none is found."""
        assert self.dht is not None
        with trio.move_on_after(5):
            try:
                value: bytes | None = await self.dht.get_value(key)
            except Exception as exc:  # a lookup that fails on the network is a miss
                log.info("record_lookup_failed", key=key[:40], error=type(exc).__name__)
                return None
            return value
        return None

    async def find_providers(self, runtime: str, item: str, *, count: int = 20,
                             enough: int | None = None) -> list[CapabilityRecord]:
        """Peers offering ``runtime/item``, found through DHT provider records, with their capability records:
        as soon as ``enough`` (default ``count``) records are checked, for a task that waits on the answer. A
        lookup that finds none is tried again (after FIND_AGAIN_S, then twice that, ...): FIND_TRIES times in
        all, and until the 10 s bound in a node's first JOINING_S. py-libp2p's lookup counts a peer whose stream
        failed as one that knows nothing, and a node that has just joined sends its first lookups while its new
        connections, and the peers' answers to its start-up lookups, still compete (seen on a 2-core machine
        with a dozen daemons: a new node's streams failing for its first 5 s)."""
        joining = trio.current_time() - self._up_since < JOINING_S
        with trio.move_on_after(10):
            for attempt in itertools.count():
                if attempt >= FIND_TRIES and not joining:
                    break
                if attempt:
                    await trio.sleep(FIND_AGAIN_S * min(attempt, 4))
                records = await self._lookup(runtime, item, count, enough or count)
                if records:
                    return records
        return []

    async def _lookup(self, runtime: str, item: str, count: int, enough: int) -> list[CapabilityRecord]:
        """One provider lookup: the walk that stops at an answer (``provider_walk``), each provider's record
        asked of the provider itself; then, if that found no valid record (no provider named, or only peers
        whose records do not check: a peer may name anyone), py-libp2p's own lookup."""
        key = capability_key(runtime, item)

        def offers(record: CapabilityRecord | None) -> bool:
            return record is not None and any(o.runtime == runtime and o.item == item for o in record.offers)

        records: list[CapabilityRecord] = []
        started = trio.current_time()
        if self.host is not None and not self.host.get_connected_peers():
            # Alone (its bootstrap peers did not answer yet): a task waiting on this lookup does not wait for
            # the dialler's next try.
            await self.dialer.dial_known_peers(self.host, self.dht, again=True)
        if self._walk is not None:
            walk = self._walk
            infos = await walk.providers(key, min(enough, count))
            async with trio.open_nursery() as nursery:

                async def resolve(info: PeerInfo) -> None:
                    record = await self._provider_record(walk, info.peer_id)
                    if offers(record):
                        assert record is not None
                        records.append(record)
                        if len(records) >= enough:
                            nursery.cancel_scope.cancel()

                for info in infos[:count]:
                    nursery.start_soon(resolve, info)
            log.debug("provider_records", item=item, valid=len(records),
                      ms=round((trio.current_time() - started) * 1000))
            if records:
                self.stats.lookups["walk"] += 1
                return records
        for peer_id in await self.providers_of(key, count):
            record = await self.capability_of(peer_id)
            if offers(record):
                assert record is not None
                records.append(record)
        self.stats.lookups["dht" if records else "none"] += 1
        return records

    async def _provider_record(self, walk: ProviderWalk, peer: ID) -> CapabilityRecord | None:
        """A peer's capability record: the peer table's while fresh, else asked of the peer itself (one GET_VALUE,
        not a DHT walk) and checked by the DHT's validator (signature, key, expiry, replay), which also files it
        in the peer table. Seen before: every new connection's record looked up by a whole walk, a dozen walks
        at once on a node that had just joined, and its first task's lookup starved behind them."""
        peer_id = str(peer)
        held = self._held_capability(peer_id)
        if held is not None:
            return held
        key = record_key(peer_id)
        value = await walk.record_from(peer, key)
        if value is None or self._validator is None:
            return None
        sender = SENDER.set(peer_id)  # the provider answered (Noise authenticated it): charged for a bad record
        try:
            return self._validator.capability(key, value)
        except MalformedMessage:  # counted and charged by the validator
            return None
        finally:
            SENDER.reset(sender)

    def _held_capability(self, peer_id: str) -> CapabilityRecord | None:
        """This node's own record, or a peer's that the peer table holds unexpired."""
        if peer_id == self.peer_id:
            return self.advertiser.record()
        entry = self.table.get(peer_id)
        if entry is not None and entry.capability is not None and entry.capability.expires_at > time.time():
            return entry.capability
        return None

    async def capability_of(self, peer_id: str) -> CapabilityRecord | None:
        held = self._held_capability(peer_id)
        if held is not None:
            return held
        value = await self.get_record(record_key(peer_id))
        if value is None:
            return None
        try:
            record = CapabilityRecord.decode(value)
        except MalformedMessage:
            return None
        self.learned_capability(record)
        return record

    async def reach(self, peer_id: str) -> bool:
        """Connect to ``peer_id`` unless connected, at the addresses of its signed capability record; whether
        it is connected now. For a peer named by the user (``models pull --from``), not found by a lookup."""
        if self.host is None or peer_id == self.peer_id:
            return False
        try:
            peer = ID.from_base58(peer_id)
        except Exception:  # not a peer ID at all
            return False
        entry = self.table.get(peer_id)
        if entry is not None and entry.connected:
            return True
        record = await self.capability_of(peer_id)
        if record is None or not record.addrs:
            return False
        return await self.dialer.dial(PeerInfo(peer, [multiaddr.Multiaddr(a) for a in record.addrs]))

    async def _closest_peers(self, key: bytes, count: int) -> list[bytes]:
        """The peers closest to ``key`` in the DHT (one Kademlia lookup), as binary peer IDs."""
        assert self.dht is not None
        # py-libp2p keeps lookups on the DHT's peer routing; the memory fabric's DHT answers them itself.
        finder = getattr(self.dht, "peer_routing", self.dht)
        found = await finder.find_closest_peers_network(key, count)
        return [p.to_bytes() for p in dict.fromkeys(found) if str(p) != self.peer_id][:count]

    async def _record_of(self, peer: bytes) -> CapabilityRecord | None:
        return await self.capability_of(str(ID(peer)))

    async def request_dialback(self, peer_id: str) -> DialbackResult:
        """Ask a connected peer to dial our TCP addresses (used by `doctor`). TCP only: a probe can open a TCP
        connection and close it, but an unanswered QUIC (UDP) packet proves nothing either way."""
        addrs = tuple(a.rsplit("/p2p/", 1)[0] for a in self.listen_addrs() if "/tcp/" in a)
        return await self.dialback.request(peer_id, addrs)

    async def hear_from(self, peers: list[str]) -> None:
        """Subscribe to these peers' presence and return once each has sent a heartbeat (callers bound it)."""
        self.presence.want(peers, trio.current_time())
        while not all((e := self.table.get(p)) is not None and e.clock_skew_s is not None for p in peers):
            await self._heard.wait()

    def unreachable(self, peer_id: str, why: str) -> None:
        """A dial to the peer failed (a task's stream): the peer table marks it dead until it proves otherwise."""
        self.liveness.emit(self.table.unreachable(peer_id, trio.current_time(), why))

    # -- views -------------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "addrs": self.listen_addrs(),
            "network": self.network,
            "connected": len(self.host.get_connected_peers()) if self.host else 0,
            "peers_known": len(self.table.peers),
            "peers_live": len(self.table.live_peers()),
            "dht": {
                "routing_table": self.dht.get_routing_table_size() if self.dht else 0,
                "values": self.dht.get_value_store_size() if self.dht else 0,
            },
            "presence": {"subscribers": len(self.presence.subscribers()),
                         "subscriptions": len(self.presence.subscriptions()),
                         "heartbeats_received": self.presence.received},
            "stats": self.stats.to_json(),
            "advertised": [dataclasses.asdict(o) for o in self.advertiser.advertised or ()],
            "network_estimate": self.census.to_json(),
        }

