"""The P2P service: what makes the node a member of the network, on its libp2p host (``libp2p_stack.py``:
TCP, Noise, Yamux, the node's Ed25519 key; mDNS when enabled) or on the demo's in-memory fabric (``memory.py``).

* Kademlia DHT in server mode, with random walk unless ``p2p.dht_random_walk`` is off; our signed
  CapabilityRecord under ``/hyperion/<peer ID>``
  (validated by ``CapabilityValidator``) and one provider record per offer (``capability_key``);
* gossipsub, started before any peer connects (messages do not flow otherwise), with two topics:
  presence (heartbeats) and receipts; every message passes a validator: size cap, schema, signature of the
  sender's key, per-origin rate limit; failures are dropped, counted and the origin scored down;
* the PeerTable, fed by heartbeats, DHT records and connection events; presence events go to the store;
* the peer cache: live peers' addresses are remembered and redialled at start, with the bootstrap list;
* ``/hyperion/dialback/1``: a peer asks us to dial its addresses, so `doctor` can tell whether they are
  reachable from outside.

Everything blocking on the network runs under a deadline (``dial_timeout_s``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import structlog
import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.pubsub import Pubsub
from libp2p.records.validator import Validator
from libp2p.utils.address_validation import get_available_interfaces

from hyperion_node import __version__
from hyperion_node.config.loader import P2PSettings
from hyperion_node.identity import Identity
from hyperion_node.p2p.libp2p_stack import STRICT_SIGNING, libp2p_stack, run_mdns
from hyperion_node.p2p.limits import Freshness, HeartbeatGate, RateLimiter, SeenDigests
from hyperion_node.p2p.memory import MemoryDHT, MemoryFabric, MemoryHost, MemoryPubsub
from hyperion_node.p2p.messages import (
    HEALTH_LEAVING,
    HEALTH_OK,
    MAX_DIALBACK_BYTES,
    TYPE_DIALBACK_REQUEST,
    TYPE_DIALBACK_RESULT,
    CapabilityRecord,
    DialbackRequest,
    DialbackResult,
    Envelope,
    Heartbeat,
    MalformedMessage,
    OfferAd,
    decode_varint,
    encode_frame,
    open_envelope,
    peer_id_from_bytes,
    record_key,
    seal,
)
from hyperion_node.p2p.peer_table import PeerTable, PresenceEvent
from hyperion_node.protocols import dialback as dialback_protocol
from hyperion_node.protocols.machine import ProtocolViolation
from hyperion_node.store import Store
from hyperion_node.trio_types import TaskStatus

log = structlog.get_logger(__name__)

PRESENCE_TOPIC = "/hyperion/presence/1"
RECEIPTS_TOPIC = "/hyperion/receipts/1"
DIALBACK_PROTOCOL = TProtocol(dialback_protocol.PROTOCOL_ID)
MAX_RECEIPT_GOSSIP_BYTES = 64 * 1024
# A gossip message dated further ahead of our clock than this is its signer's lie (or a clock to fix: `doctor`
# reports skew). Honest clocks under NTP agree to well within a second.
MAX_CLOCK_SKEW_S = 60.0
# Receipts-topic messages carry their publication time (``at_ms``, added and removed by this layer); older
# ones are dropped unread, and the seen-digest cache covers this age, so a replay is never counted twice.
RECEIPT_GOSSIP_MAX_AGE_S = 600.0
PING_TIMEOUT_S = 2.0
LATENCY_WINDOW_S = 60.0
VALIDATED_KEPT = 2048  # decoded messages waiting for their consumer; above it the oldest are decoded again


@dataclass
class P2PStats:
    """Counters an operator (and the tests) read through the API."""

    gossip_in: Counter[str] = field(default_factory=Counter)  # accepted, by topic
    gossip_out: Counter[str] = field(default_factory=Counter)  # published by us, by topic
    rejected: Counter[str] = field(default_factory=Counter)  # "<where>:<reason>" -> count
    # Everything gossipsub writes to peers (our messages, forwards, IHAVE/IWANT/GRAFT/PRUNE): the per-node
    # cost that must stay bounded by the mesh degree as the network grows.
    rpc_frames_out: int = 0
    messages_out: int = 0  # published messages inside those frames, ours and forwarded
    control_out: int = 0  # control entries inside those frames
    # Publish-to-receive delay of heartbeats (sender's clock to ours): (local monotonic time, ms). Reported
    # over the last LATENCY_WINDOW_S only, so start-up (messages held for peers not yet ready) fades out.
    latencies_ms: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=5000))

    def reject(self, where: str, reason: str) -> None:
        self.rejected[f"{where}:{reason}"] += 1

    def to_json(self) -> dict[str, Any]:
        since = time.monotonic() - LATENCY_WINDOW_S
        lat = sorted(ms for at, ms in self.latencies_ms if at >= since)

        def pct(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None

        return {"gossip_in": dict(self.gossip_in), "gossip_out": dict(self.gossip_out),
                "rejected": dict(self.rejected), "rejected_total": sum(self.rejected.values()),
                "rpc_frames_out": self.rpc_frames_out, "messages_out": self.messages_out,
                "control_out": self.control_out,
                "heartbeat_latency_ms": {"p50": pct(0.5), "p95": pct(0.95), "n": len(lat),
                                         "window_s": LATENCY_WINDOW_S}}


@dataclass(frozen=True)
class LocalState:
    """What the daemon tells the P2P layer about this node, read each heartbeat and advert."""

    offers: Callable[[], Sequence[OfferAd]]
    hardware: Callable[[], dict[str, Any]]
    telemetry: Callable[[], dict[str, Any]]  # ram_available_bytes, gpus: [{util, vram_free, temp_c, power_w}]
    load: Callable[[], tuple[int, int]]  # (queue depth, active tasks)
    health: Callable[[], str] = lambda: HEALTH_OK


class CapabilityValidator(Validator):
    """DHT validator for ``/hyperion/<peer ID>``: signature, key/peer match, expiry, and no replays.

    A record whose sequence number is not above the highest this node has accepted for that peer is a
    replay (or an equivocation, if its bytes differ) and is refused before it reaches the value store.
    """

    def __init__(self, network: P2PNetwork, max_peers: int = 4096) -> None:
        self._network = network
        # The highest record per peer, least recently accepted first; bounded like the peer table. A record
        # forgotten here is still no replay risk: the peer table keeps the highest seq it holds.
        self._highest: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        self._max_peers = max_peers

    def _reject(self, reason: str, peer_id: str | None) -> None:
        self._network.stats.reject("dht", reason)
        if peer_id:
            self._network.table.penalize(peer_id, reason)

    def validate(self, key: str, value: bytes) -> None:
        try:
            record = CapabilityRecord.decode(value)
        except MalformedMessage as exc:
            self._reject(exc.reason, exc.peer_id)
            raise
        if key != record_key(record.peer_id):
            self._reject("key_mismatch", record.peer_id)
            raise MalformedMessage("key_mismatch", f"{key} holds a record of {record.peer_id}")
        if record.expires_at < time.time():
            self._reject("expired", None)  # an old record is not proof of bad faith
            raise MalformedMessage("expired", f"record of {record.peer_id} expired")
        seen = self._highest.get(record.peer_id)
        if seen is not None and (record.seq < seen[0] or (record.seq == seen[0] and value != seen[1])):
            self._reject("replayed", None)  # anyone can re-send an old signed record: the sender is unknown
            raise MalformedMessage("replayed", f"seq {record.seq} <= {seen[0]} for {record.peer_id}")
        self._highest.pop(record.peer_id, None)
        self._highest[record.peer_id] = (record.seq, value)
        if len(self._highest) > self._max_peers:
            self._highest.popitem(last=False)
        self._network.learned_capability(record)

    def select(self, key: str, values: list[bytes]) -> int:
        best, best_seq = 0, -1
        for i, value in enumerate(values):
            try:
                seq = CapabilityRecord.decode(value).seq
            except MalformedMessage:
                continue
            if seq > best_seq:
                best, best_seq = i, seq
        return best


class P2PNetwork:
    """Owns the libp2p host, DHT and pubsub for the daemon's lifetime (a trio component)."""

    def __init__(self, identity: Identity, settings: P2PSettings, store: Store, local: LocalState,
                 *, name: str, fabric: MemoryFabric | None = None) -> None:
        self.identity = identity
        # None: the libp2p host (TCP/QUIC, Noise, yamux, Kademlia, gossipsub); else the in-process fabric
        # that the demo's --network memory puts under its virtual nodes (p2p/memory.py).
        self.fabric = fabric
        self.settings = settings
        self.store = store
        self.local = local
        self.name = name
        self.peer_id = str(identity.peer_id)
        self.table = PeerTable(self.peer_id, settings.suspect_after_s, settings.dead_after_s, on_ban=self._banned)
        self.stats = P2PStats()
        self.host: Any = None  # libp2p IHost (or MemoryHost) while running
        self.dht: KadDHT | MemoryDHT | None = None
        self.pubsub: Pubsub | MemoryPubsub | None = None
        rate = settings.gossip_rate_per_peer
        self._limiter = RateLimiter(rate=rate, burst=2 * rate)
        # Heartbeats older than the dead timeout say nothing of a peer now (and must not revive a dead one).
        self._presence_gate = HeartbeatGate(rate=rate, burst=2 * rate, max_age=max(settings.dead_after_s, 60.0),
                                            max_skew=MAX_CLOCK_SKEW_S)
        self._seen_receipts = SeenDigests(ttl=RECEIPT_GOSSIP_MAX_AGE_S + MAX_CLOCK_SKEW_S)
        self._dialback_limiter = RateLimiter(rate=dialback_protocol.RATE_PER_S, burst=dialback_protocol.BURST)
        # Heartbeat and record sequence numbers start from the clock (ms), so they keep rising across restarts:
        # peers drop a heartbeat whose seq is not above the last one they saw (gossip may reorder).
        self._heartbeat_seq = time.time_ns() // 1_000_000
        self._record_seq = time.time_ns() // 1_000_000  # monotonic across restarts without storing it
        self._advertised: tuple[OfferAd, ...] | None = None
        self._events_out: trio.MemorySendChannel[PresenceEvent] | None = None
        self._leaving = False
        # Listeners the orchestrator sets: the scheduler's health trends read heartbeats and RTTs, the
        # reputation view reads the receipts topic (sender's peer ID, envelope body).
        self.on_heartbeat: Callable[[Heartbeat], None] | None = None
        self.on_rtt: Callable[[str, float], None] | None = None  # (peer ID, RTT in ms)
        self.on_receipt_gossip: Callable[[str, dict[str, Any]], None] | None = None
        # What the peer cache holds, per peer, this run (bounded: peers come and go for weeks).
        self._cached_addrs: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._nursery: trio.Nursery | None = None  # the running component's, for writes a handler starts
        # Gossip our validators accepted, decoded, by its bytes, until the subscription hands it over: each
        # heartbeat and receipt was decoded twice before (~70 us a heartbeat), to validate and to consume.
        self._validated: OrderedDict[bytes, Heartbeat | tuple[Envelope, dict[str, Any]]] = OrderedDict()

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

    # -- callbacks from libp2p ---------------------------------------------------------------------------------

    def _emit(self, events: list[PresenceEvent]) -> None:
        for event in events:
            log.info("peer_" + event.kind, peer=event.peer_id, **event.detail)
            if self._events_out is not None:
                try:
                    self._events_out.send_nowait(event)
                except trio.WouldBlock:
                    log.warning("presence_events_dropped", peer=event.peer_id, kind=event.kind)

    def connection_changed(self, peer_id: ID, connected: bool) -> None:
        self._emit(self.table.set_connected(str(peer_id), connected, trio.current_time()))

    def _banned(self, peer_id: str) -> None:
        """A peer just crossed the ban line: close its connections now (new ones are refused as they open)."""
        log.info("peer_banned", peer=peer_id, offences=dict(self.table.peers[peer_id].offences))
        if self._nursery is not None and self.host is not None and not isinstance(self.host, MemoryHost):
            self._nursery.start_soon(self._disconnect, peer_id)

    async def _disconnect(self, peer_id: str) -> None:
        with trio.move_on_after(self.settings.dial_timeout_s):
            try:
                await self.host.get_network().close_peer(ID.from_base58(peer_id))
            except Exception as exc:  # already gone, or a connection py-libp2p is tearing down itself
                log.debug("banned_peer_close_failed", peer=peer_id, error=type(exc).__name__)

    def learned_capability(self, record: CapabilityRecord) -> None:
        self._emit(self.table.capability(record, trio.current_time()))

    def _validate_presence(self, forwarder: ID, msg: Any) -> bool:
        origin = _origin(msg)
        if origin and self.table.banned(origin):
            self.stats.reject("presence", "banned")
            return False
        try:
            hb = Heartbeat.decode(msg.data, signed_by=_signed_origin(msg))
        except MalformedMessage as exc:
            self.stats.reject("presence", exc.reason)
            # Sealing another peer's heartbeat in one's own message is a forgery attempt: scored as one.
            penalty = "bad_signature" if exc.reason == "sender_mismatch" else exc.reason
            self.table.penalize(origin or str(forwarder), penalty)
            log.info("gossip_rejected", topic="presence", reason=exc.reason, origin=origin, forwarder=str(forwarder))
            return False
        if origin and hb.peer_id != origin:
            self.stats.reject("presence", "sender_mismatch")
            self.table.penalize(origin, "bad_signature")
            return False
        if hb.peer_id != self.peer_id:
            # Replays and backlogs are dropped before anything is counted against the origin (limits.py).
            fresh = self._presence_gate.check(hb.peer_id, hb.seq, hb.time, time.time())
            if fresh is not Freshness.NEW:
                self.stats.reject("presence", fresh.value)
                if fresh is not Freshness.STALE:
                    self.table.penalize(hb.peer_id, fresh.value)
                return False
        self._keep_validated(msg.data, hb)
        return True

    def _keep_validated(self, data: bytes, decoded: Heartbeat | tuple[Envelope, dict[str, Any]]) -> None:
        self._validated[data] = decoded
        if len(self._validated) > VALIDATED_KEPT:
            self._validated.popitem(last=False)

    def _validate_receipt_gossip(self, forwarder: ID, msg: Any) -> bool:
        """Receipts are validated in full by the ledger; here only what protects the mesh: size, signature,
        freshness, and the sender's rate over what is new."""
        origin = _origin(msg)
        if origin and self.table.banned(origin):
            self.stats.reject("receipts", "banned")
            return False
        try:
            envelope, body = open_envelope(msg.data, expected_type="receipt", max_bytes=MAX_RECEIPT_GOSSIP_BYTES,
                                           signed_by=_signed_origin(msg))
            body = dict(body)  # decoded bodies may be shared between the demo's nodes (inprocess.py): copied
            at_ms = body.pop("at_ms", None)
            if isinstance(at_ms, bool) or not isinstance(at_ms, int):
                raise MalformedMessage("bad_schema", "at_ms must be the publication time in unix milliseconds")
        except MalformedMessage as exc:
            self.stats.reject("receipts", exc.reason)
            self.table.penalize(origin or str(forwarder), exc.reason)
            return False
        sender = str(envelope.peer_id)
        if sender != self.peer_id:
            now = time.time()
            if at_ms > (now + MAX_CLOCK_SKEW_S) * 1000:
                self.stats.reject("receipts", "future")
                self.table.penalize(sender, "future")
                return False
            if at_ms < (now - RECEIPT_GOSSIP_MAX_AGE_S) * 1000 or not self._seen_receipts.first_time(msg.data, now):
                self.stats.reject("receipts", "stale")  # a replay or a late copy: nobody is charged
                return False
            if not self._limiter.allow(f"receipts/{sender}", trio.current_time()):
                self.stats.reject("receipts", "rate_limited")
                self.table.penalize(sender, "rate_limited")
                return False
        self._keep_validated(msg.data, (envelope, body))
        return True

    # -- the component -------------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        validator = CapabilityValidator(self)
        stack: AbstractAsyncContextManager[tuple[Any, KadDHT | MemoryDHT, Pubsub | MemoryPubsub]]
        if self.fabric is None:
            stack = libp2p_stack(self.identity, self.settings, validator, self.stats, self.table,
                                 self.connection_changed)
        else:
            stack = self.fabric.attach(self.identity.peer_id, self.connection_changed, validator)
        events_in: trio.MemoryReceiveChannel[PresenceEvent]
        self._events_out, events_in = trio.open_memory_channel(1000)
        try:
            async with stack as (host, dht, pubsub):
                pubsub.set_topic_validator(PRESENCE_TOPIC, self._validate_presence, False)
                pubsub.set_topic_validator(RECEIPTS_TOPIC, self._validate_receipt_gossip, False)
                host.set_stream_handler(DIALBACK_PROTOCOL, self._handle_dialback)
                self.host, self.dht, self.pubsub = host, dht, pubsub
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._persist_events, events_in)
                    if self.settings.mdns and self.fabric is None:
                        nursery.start_soon(run_mdns, host)
                    for topic, handle in ((PRESENCE_TOPIC, self._on_presence), (RECEIPTS_TOPIC, self._on_receipt)):
                        if isinstance(pubsub, MemoryPubsub):
                            # The fabric calls the handler as it delivers: no queue, and no task woken for
                            # each message (49 of them for every heartbeat at 50 nodes).
                            pubsub.handle(topic, handle)
                        else:
                            nursery.start_soon(self._consume, await pubsub.subscribe(topic), handle)
                    await self._dial_known_peers()
                    nursery.start_soon(self._heartbeat_loop)
                    nursery.start_soon(self._liveness_loop)
                    nursery.start_soon(self._advertise_loop)
                    log.info("p2p_ready", addrs=self.listen_addrs(), network="memory" if self.fabric else "libp2p")
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self.host = self.dht = self.pubsub = None
            self._events_out = self._nursery = None

    # -- tasks -------------------------------------------------------------------------------------------

    async def _persist_events(self, events: trio.MemoryReceiveChannel[PresenceEvent]) -> None:
        async for event in events:
            await self.store.run(self.store.append_event, f"peer.{event.kind}",
                                 {"peer_id": event.peer_id, **event.detail})
            entry = self.table.get(event.peer_id)
            if entry is not None and entry.addrs and event.kind in ("joined", "rejoined", "alive"):
                await self.store.run(
                    lambda e=entry: self.store.remember_peer(e.peer_id, list(e.addrs), state=e.state.value,
                                                             score=e.score, keep=self.settings.peer_cache_size))

    async def _consume(self, subscription: Any, handle: Callable[[Any], None]) -> None:
        while True:
            handle(await subscription.get())

    def _on_presence(self, msg: Any) -> None:
        hb = self._validated.pop(msg.data, None)
        if not isinstance(hb, Heartbeat):
            try:
                hb = Heartbeat.decode(msg.data, signed_by=_signed_origin(msg))
            except MalformedMessage:
                return  # our own validator already counted it; only our own messages skip validation
        if hb.peer_id == self.peer_id:
            return
        self.stats.gossip_in[PRESENCE_TOPIC] += 1
        self.stats.latencies_ms.append((time.monotonic(), max(0.0, (time.time() - hb.time) * 1000)))
        self._emit(self.table.heartbeat(hb, trio.current_time(), wall_now=time.time()))
        if self.on_heartbeat is not None:
            self.on_heartbeat(hb)
        if hb.addrs and self._cached_addrs.get(hb.peer_id) != hb.addrs:
            # A peer first seen as a bare connection joined without addresses; its heartbeats bring
            # them. Cache them now, or a restarted node could not redial the peers that dialled it.
            self._cached_addrs.pop(hb.peer_id, None)
            self._cached_addrs[hb.peer_id] = hb.addrs
            if len(self._cached_addrs) > 4 * self.settings.peer_cache_size:
                self._cached_addrs.popitem(last=False)
            entry = self.table.get(hb.peer_id)
            if entry is not None and self._nursery is not None:
                self._nursery.start_soon(self._remember, entry)

    async def _remember(self, entry: Any) -> None:
        await self.store.run(lambda: self.store.remember_peer(
            entry.peer_id, list(entry.addrs), state=entry.state.value, score=entry.score,
            keep=self.settings.peer_cache_size))

    def _on_receipt(self, msg: Any) -> None:
        validated = self._validated.pop(msg.data, None)
        if isinstance(validated, tuple):
            envelope, body = validated
        else:
            try:
                envelope, body = open_envelope(msg.data, expected_type="receipt",
                                               max_bytes=MAX_RECEIPT_GOSSIP_BYTES, signed_by=_signed_origin(msg))
            except MalformedMessage:
                return  # counted by the validator; only our own messages skip it
            body = {k: v for k, v in body.items() if k != "at_ms"}
        sender = str(envelope.peer_id)
        if sender == self.peer_id:
            return
        self.stats.gossip_in[RECEIPTS_TOPIC] += 1
        if self.on_receipt_gossip is not None:
            self.on_receipt_gossip(sender, body)

    async def publish_receipt_gossip(self, body: dict[str, Any]) -> None:
        """Publish a settled receipt, an epoch root or a dispute (``hyperion_node.ledger.messages``)."""
        if self.pubsub is None:
            return
        stamped = {**body, "at_ms": int(time.time() * 1000)}  # freshness, checked and removed by receivers
        await self.pubsub.publish(RECEIPTS_TOPIC, seal(self.identity, "receipt", stamped))
        self.stats.gossip_out[RECEIPTS_TOPIC] += 1

    def _heartbeat(self, health: str) -> Heartbeat:
        self._heartbeat_seq += 1
        telemetry = self.local.telemetry()
        queue, active = self.local.load()
        return Heartbeat(
            peer_id=self.peer_id, seq=self._heartbeat_seq, time=time.time(), name=self.name,
            addrs=tuple(a.rsplit("/p2p/", 1)[0] for a in self.listen_addrs()), health=health,
            queue_depth=queue, active_tasks=active, ram_available_bytes=int(telemetry.get("ram_available_bytes", 0)),
            gpus=tuple(telemetry.get("gpus", ())),
        )

    async def _publish_heartbeat(self, health: str) -> None:
        if self.pubsub is None:
            return
        await self.pubsub.publish(PRESENCE_TOPIC, self._heartbeat(health).seal(self.identity))
        self.stats.gossip_out[PRESENCE_TOPIC] += 1

    async def announce_leaving(self) -> None:
        """Gossip a last heartbeat saying we leave, so peers mark us "left" at once rather than dead after
        a timeout. Called by the daemon before it cancels the components (libp2p must still be running)."""
        self._leaving = True
        await self._publish_heartbeat(HEALTH_LEAVING)
        # gossipsub sends from its own tasks: give them a moment to flush before they are cancelled.
        await trio.sleep(0.1)

    async def _heartbeat_loop(self) -> None:
        while True:
            if not self._leaving:
                await self._publish_heartbeat(self.local.health())
            await trio.sleep(self.settings.heartbeat_interval_s)

    async def _liveness_loop(self) -> None:
        from libp2p.host.ping import PingService

        ping = self.host if isinstance(self.host, MemoryHost) else PingService(self.host)
        interval = min(self.settings.heartbeat_interval_s, self.settings.suspect_after_s / 3)
        rounds = 0
        while True:
            await trio.sleep(interval)
            self._emit(self.table.tick(trio.current_time()))
            rounds += 1
            if rounds % 5 == 0:  # RTT changes slowly; a ping round every few ticks is enough
                for peer_id in list(self.host.get_connected_peers())[:32]:
                    with trio.move_on_after(PING_TIMEOUT_S):
                        try:
                            rtts = await ping.ping(peer_id)
                        except Exception as exc:  # a peer without ping, or a dropped stream
                            log.debug("ping_failed", peer=str(peer_id), error=type(exc).__name__)
                            continue
                        if rtts:
                            self.table.set_rtt(str(peer_id), float(rtts[0]))
                            if self.on_rtt is not None:
                                self.on_rtt(str(peer_id), float(rtts[0]))

    def _capability_record(self, offers: tuple[OfferAd, ...]) -> CapabilityRecord:
        self._record_seq += 1
        _queue, active = self.local.load()
        capacity = sum(o.capacity for o in offers) or 1
        return CapabilityRecord(
            peer_id=self.peer_id, seq=self._record_seq, expires_at=time.time() + self.settings.record_ttl_s,
            name=self.name, addrs=tuple(a.rsplit("/p2p/", 1)[0] for a in self.listen_addrs()),
            hardware=self.local.hardware(), offers=offers, load=round(active / capacity, 3),
            node_version=__version__,
        )

    async def advertise(self) -> None:
        """Publish our signed record and one provider record per offer."""
        assert self.dht is not None
        offers = tuple(self.local.offers())
        record = self._capability_record(offers)
        await self.dht.put_value(record_key(self.peer_id), record.seal(self.identity))
        for offer in offers:
            await self.dht.provide(offer.capability_key())
        self._advertised = offers
        log.info("advertised", offers=[f"{o.runtime}/{o.item}" for o in offers], seq=record.seq)

    async def _advertise_loop(self) -> None:
        """Publish at start, at a third of the record's lifetime, when offers change, and when the routing
        table grows: provider records live on the peers closest to the key, and a node that provided
        before those peers were known has its records only at home (py-libp2p's lookup stops at local
        providers when it has any, so providers must push their records out)."""
        assert self.dht is not None
        republish = self.settings.record_ttl_s / 3
        last, table_size = -republish, 0
        while True:
            now, size = trio.current_time(), self.dht.get_routing_table_size()
            grew = size > table_size and (table_size < 20 or size >= 2 * table_size)
            if now - last >= republish or tuple(self.local.offers()) != self._advertised or grew:
                with trio.move_on_after(30):
                    await self.advertise()
                last, table_size = now, size
            await trio.sleep(min(self.settings.heartbeat_interval_s, republish))

    async def _dial(self, info: PeerInfo) -> bool:
        if info.peer_id == self.identity.peer_id:
            return False
        with trio.move_on_after(self.settings.dial_timeout_s):
            try:
                await self.host.connect(info)
            except Exception as exc:  # libp2p raises many types for an unreachable peer
                log.info("dial_failed", peer=str(info.peer_id), error=f"{type(exc).__name__}: {exc}"[:200])
                return False
            if self.dht is not None:
                await self.dht.add_peer(info.peer_id)
            return True
        log.info("dial_timeout", peer=str(info.peer_id))
        return False

    async def _dial_known_peers(self) -> None:
        """Bootstrap peers and the peer cache, in parallel; each bounded by dial_timeout_s."""
        infos: dict[str, PeerInfo] = {}
        for addr in self.settings.bootstrap:
            try:
                info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
            except Exception as exc:  # bad multiaddrs from config were checked for form, not content
                log.warning("bootstrap_addr_invalid", addr=addr, error=str(exc))
                continue
            infos[str(info.peer_id)] = info
        for cached in await self.store.run(self.store.known_peers):
            if cached["peer_id"] in infos or cached["peer_id"] == self.peer_id:
                continue
            addrs = [multiaddr.Multiaddr(a) for a in cached["addrs"]]
            if addrs:
                infos[cached["peer_id"]] = PeerInfo(ID.from_base58(cached["peer_id"]), addrs)
                self._emit(self.table.saw(cached["peer_id"], trio.current_time(), source="cache",
                                          addrs=cached["addrs"]))
        if not infos:
            return
        results: dict[str, bool] = {}

        async def dial(key: str, info: PeerInfo) -> None:
            results[key] = await self._dial(info)

        async with trio.open_nursery() as nursery:
            for key, info in infos.items():
                nursery.start_soon(dial, key, info)
        log.info("dialled_known_peers", reached=sum(results.values()), tried=len(results))

    # -- provider lookup ---------------------------------------------------------------------------------------

    async def find_providers(self, runtime: str, item: str, *, count: int = 20) -> list[CapabilityRecord]:
        """Peers offering ``runtime/item``, found through DHT provider records, with their capability records."""
        from hyperion_node.p2p.messages import capability_key

        assert self.dht is not None
        with trio.move_on_after(10):
            infos = await self.dht.find_providers(capability_key(runtime, item), count)
            records: list[CapabilityRecord] = []
            # find_providers can return one peer several times: keep the first of each.
            for peer_id in dict.fromkeys(str(i.peer_id) for i in infos):
                record = await self.capability_of(peer_id)
                if record is not None and any(o.runtime == runtime and o.item == item for o in record.offers):
                    records.append(record)
            return records
        return []

    async def capability_of(self, peer_id: str) -> CapabilityRecord | None:
        assert self.dht is not None
        if peer_id == self.peer_id:
            return self._capability_record(tuple(self.local.offers()))
        entry = self.table.get(peer_id)
        if entry is not None and entry.capability is not None and entry.capability.expires_at > time.time():
            return entry.capability
        with trio.move_on_after(5):
            try:
                value = await self.dht.get_value(record_key(peer_id))
            except Exception as exc:  # a lookup that fails on the network is a miss, not a crash
                log.info("record_lookup_failed", peer=peer_id, error=type(exc).__name__)
                return None
            if value is None:
                return None
            try:
                record = CapabilityRecord.decode(value)
            except MalformedMessage:
                return None
            self.learned_capability(record)
            return record
        return None

    # -- dial-back ---------------------------------------------------------------------------------------------

    async def _handle_dialback(self, stream: INetStream) -> None:
        """Dial a peer back, as ``protocols/dialback.py`` bounds it: only the peer's own observed IP, only
        ports it announces, a few times an hour, and the answer is open or closed with no error text."""
        remote = str(stream.muxed_conn.peer_id)
        conversation = dialback_protocol.dialler_side()
        try:
            if not self._dialback_limiter.allow(remote, trio.current_time()):
                raise MalformedMessage("rate_limited", "too many dial-backs asked")
            with trio.fail_after(self.settings.dial_timeout_s):
                data = await _read_frame(stream, MAX_DIALBACK_BYTES)
            sender, request = DialbackRequest.decode(data)
            if sender != remote:
                raise MalformedMessage("sender_mismatch", f"{sender} over a stream from {remote}")
            conversation.received(TYPE_DIALBACK_REQUEST, peer_id=remote)
        except (MalformedMessage, ProtocolViolation, trio.TooSlowError) as exc:
            reason = "timeout" if isinstance(exc, trio.TooSlowError) else exc.reason
            self.stats.reject("dialback", reason)
            self.table.penalize(remote, reason)
            log.info("stream_rejected", protocol=DIALBACK_PROTOCOL, peer=remote, reason=reason)
            await stream.reset()
            return
        observed = getattr(stream, "get_remote_address", lambda: None)()  # the demo's streams have none
        ports = self._announced_tcp_ports(remote)
        results: list[tuple[str, bool, str]] = []
        refused = 0
        for addr in request.addrs[:dialback_protocol.MAX_PROBES]:
            target = dialback_target(addr, observed[0] if observed else "", ports)
            if target is None:
                refused += 1
                continue
            results.append((addr, await self._probe(*target), ""))
        if refused:
            self.stats.reject("dialback", "not_yours")
            self.table.penalize(remote, "dialback_refused")
            log.info("dialback_refused", peer=remote, refused=refused, observed=observed[0] if observed else None)
        conversation.sending(TYPE_DIALBACK_RESULT)
        await stream.write(encode_frame(DialbackResult(tuple(results)).seal(self.identity)))
        await stream.close()

    def _announced_tcp_ports(self, peer_id: str) -> set[int]:
        """TCP ports a peer announces: in its signed heartbeats and capability record, and in what identify
        told the peerstore over its own authenticated connection."""
        addrs: list[str] = []
        entry = self.table.get(peer_id)
        if entry is not None:
            addrs += entry.addrs
            if entry.capability is not None:
                addrs += entry.capability.addrs
        if self.host is not None and not isinstance(self.host, MemoryHost):
            try:
                addrs += [str(a) for a in self.host.get_peerstore().addrs(ID.from_base58(peer_id))]
            except Exception as exc:  # py-libp2p raises PeerStoreError for a peer it has no addresses of
                log.debug("peerstore_addrs_missing", peer=peer_id, error=type(exc).__name__)
        ports = set()
        for addr in addrs:
            _, _, rest = addr.partition("/tcp/")
            port = rest.split("/", 1)[0]
            if port.isdigit():
                ports.add(int(port))
        return ports

    async def _probe(self, host: str, port: int) -> bool:
        """Can a fresh TCP connection reach ``host:port``? (A plain connect: the peer's host answers the socket.)"""
        with trio.move_on_after(self.settings.dial_timeout_s):
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError:
                return False
            await stream.aclose()
            return True
        return False

    async def request_dialback(self, peer_id: str) -> DialbackResult:
        """Ask a connected peer to dial our addresses (used by `doctor`)."""
        conversation = dialback_protocol.asker_side()
        with trio.fail_after(self.settings.dial_timeout_s * 3):
            stream = await self.host.new_stream(ID.from_base58(peer_id), [DIALBACK_PROTOCOL])
            # TCP only: a probe can open a TCP connection and close it, but an unanswered QUIC (UDP) packet
            # proves nothing either way. `doctor` says QUIC is not checked.
            addrs = tuple(a.rsplit("/p2p/", 1)[0] for a in self.listen_addrs() if "/tcp/" in a)
            conversation.sending(TYPE_DIALBACK_REQUEST)
            await stream.write(encode_frame(DialbackRequest(addrs).seal(self.identity)))
            data = await _read_frame(stream, MAX_DIALBACK_BYTES)
            await stream.close()
        conversation.received(TYPE_DIALBACK_RESULT, peer_id=peer_id)
        sender, result = DialbackResult.decode(data)
        if sender != peer_id:
            raise MalformedMessage("sender_mismatch", f"answer signed by {sender}, asked {peer_id}")
        return result

    # -- views -------------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        mesh = {}
        if self.pubsub is not None:
            router = self.pubsub.router
            mesh = {topic: len(peers) for topic, peers in getattr(router, "mesh", {}).items()}
        return {
            "peer_id": self.peer_id,
            "addrs": self.listen_addrs(),
            "connected": len(self.host.get_connected_peers()) if self.host else 0,
            "peers_known": len(self.table.peers),
            "peers_live": len(self.table.live_peers()),
            "dht": {
                "routing_table": self.dht.get_routing_table_size() if self.dht else 0,
                "values": self.dht.get_value_store_size() if self.dht else 0,
            },
            "mesh": mesh,
            "stats": self.stats.to_json(),
            "advertised": [dataclasses.asdict(o) for o in self._advertised or ()],
        }


def dialback_target(addr: str, observed_ip: str, ports: set[int]) -> tuple[str, int] | None:
    """Where a dial-back of ``addr`` may go: ``(host, port)`` when it is ``/ip4|ip6/<observed IP>/tcp/<port>``
    with a port the asker announces, else None (the dial-back was a port scan of someone else, or of us)."""
    parts = addr.split("/")
    if len(parts) != 5 or parts[0] or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp" or not parts[4].isdigit():
        return None
    try:
        if ipaddress.ip_address(parts[2]) != ipaddress.ip_address(observed_ip):
            return None
    except ValueError:
        return None
    port = int(parts[4])
    return (parts[2], port) if port in ports else None


def _signed_origin(msg: Any) -> str | None:
    """The origin whose signature py-libp2p has already checked over this message (STRICT_SIGNING), else
    None: then the envelope's own signature is checked."""
    return (_origin(msg) or None) if STRICT_SIGNING else None


def _origin(msg: Any) -> str:
    try:
        return str(peer_id_from_bytes(msg.from_id)) if msg.from_id else ""
    except Exception:  # a malformed origin field is treated as no origin
        return ""


async def _read_frame(stream: INetStream, max_bytes: int) -> bytes:
    """Read one varint-length-prefixed frame, refusing anything over ``max_bytes``."""
    buffer = bytearray()
    while True:
        header = decode_varint(buffer)
        if header is not None:
            length, used = header
            if length > max_bytes:
                raise MalformedMessage("oversized", f"frame of {length} bytes > {max_bytes}")
            if len(buffer) >= used + length:
                return bytes(buffer[used : used + length])
        chunk = await stream.read(max_bytes + 8 - len(buffer))
        if not chunk:
            raise MalformedMessage("truncated", "stream closed inside a frame")
        buffer += chunk
