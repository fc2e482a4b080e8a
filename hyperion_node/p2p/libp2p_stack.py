"""The libp2p side of the P2P layer: the host, Kademlia DHT and gossipsub that ``P2PNetwork`` runs on when it
is not on the demo's in-memory fabric (``memory.py``), and what we change in how py-libp2p runs them.

* host: TCP (and QUIC when enabled), Noise only, Yamux, the node's Ed25519 key, TCP addresses advertised first;
  every incoming stream and connection of a banned peer is refused before any protocol reads it;
* DHT in server mode, random walk unless ``p2p.dht_random_walk`` is off, our namespace only (no ``pk`` or
  ``ipns`` records: nothing of ours reads them, and each would be memory a stranger fills);
* gossipsub with strict signing, its RPC writes counted (and the signed peer record left out), its stream
  handler guarded against undecodable RPCs;
* mDNS, started in a worker thread;
* process-wide: yamux's receive-window setting and ``libp2p_costs`` (module comments below).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import multiaddr
import structlog
import trio
from google.protobuf.message import DecodeError
from libp2p import new_host
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.discovery.mdns.mdns import create_mdns_discovery
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.records.validator import NamespacedValidator, Validator
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service

from hyperion_node.config.loader import P2PSettings
from hyperion_node.errors import EnvironmentProblem
from hyperion_node.identity import Identity
from hyperion_node.p2p import libp2p_costs
from hyperion_node.p2p.limits import RateLimiter
from hyperion_node.p2p.peer_table import PeerTable
from hyperion_node.trio_types import run_sync_abandoning

if TYPE_CHECKING:
    from hyperion_node.p2p.network import P2PStats

# py-libp2p's yamux returns receive credit with a WINDOW_UPDATE frame after every partial read unless
# PY_YAMUX_RELEASE_ON_READ is off (it reads the variable at each call). Pubsub reads each RPC in pieces (the
# length varint, then the body), so every gossip message cost its receiver two or three extra frames, each
# written (Noise-encrypted) and awaited, before the message was delivered. Off, credit goes back with
# go-yamux's half-window hysteresis. scripts/bench_gossip.py (six hosts in one process, both settings side by
# side): delivery p50 28 -> 19 ms, p95 81 -> 34 ms, CPU per published message 0.71x. A user's setting wins.
os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
# What that setting still left (a credit frame after about every other small read) and the signed peer record
# built and checked for every pubsub RPC: see libp2p_costs.py. HYPERION_LIBP2P_AS_SHIPPED=1 leaves py-libp2p
# as it is (to compare, scripts/bench_p2p.py --baseline, or should a py-libp2p release disagree with it).
if os.environ.get("HYPERION_LIBP2P_AS_SHIPPED", "") not in ("1", "true", "yes"):
    libp2p_costs.install()

log = structlog.get_logger(__name__)

# Gossipsub's strict signing: every message carries the origin's signature over its data, topic, origin and
# sequence number, checked by py-libp2p before our topic validators run (Pubsub.push_msg), for our own
# publishes too. It is what makes the origin field (which our rate limits and penalties key on) and the
# message ID trustworthy. Our envelopes inside are signed by the same key, so a message whose envelope names
# its origin is opened without checking that second signature again (``open_envelope(signed_by=...)``): one
# Ed25519 check per message instead of three (libp2p, our validator, our consumer), which was ~5% of a
# 16-node demo's CPU (cProfile). Turning this off would make every envelope signature checked again.
STRICT_SIGNING = True


class ConnectionEvents(INotifee):
    """Tells ``on_change(peer, connected)`` of every connection the host opens and closes, and closes at once
    a connection from a peer that ``banned(peer)`` says is banned (it may dial us again; each try costs it a
    handshake and us nothing more)."""

    def __init__(self, on_change: Callable[[ID, bool], None], banned: Callable[[str], bool]) -> None:
        self._on_change = on_change
        self._banned = banned

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer_id = conn.muxed_conn.peer_id
        if self._banned(str(peer_id)):
            log.info("banned_peer_disconnected", peer=str(peer_id))
            await conn.close()
            return
        self._on_change(peer_id, True)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._on_change(conn.muxed_conn.peer_id, False)

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


def security_options(identity: Identity) -> dict[TProtocol, Any]:
    """The security transports the host offers and accepts: Noise, and nothing else.

    py-libp2p's ``new_host`` without ``sec_opt`` also offers and accepts ``/plaintext/2.0.0`` and secio. The
    plaintext handshake takes the peer ID the remote claims without proof that it holds the key, so anyone
    could be any peer (seen: an attacker claiming a worker's ID took the tasks meant for it, prompts
    included). Noise XX proves the remote's Ed25519 identity key by a signature over its static key and, on
    a dial, checks it against the peer ID dialled (``libp2p/security/noise/patterns.py``). TLS is left out
    too: py-libp2p 0.8.1 authenticates its TLS clients through workarounds of Python's ``ssl`` module (a
    server that accepts a missing client certificate, a patched OpenSSL verify callback), and go-, rust- and
    js-libp2p all speak Noise, so it would add attack surface and no peer.
    """
    static_key = new_x25519_key_pair().private_key  # Noise's per-run static key, signed by the identity key
    return {NOISE_PROTOCOL_ID: NoiseTransport(identity.key_pair, noise_privkey=static_key)}


def refuse_banned_streams(host: Any, banned: Callable[[str], bool], on_refused: Callable[[str], None]) -> None:
    """Reset every incoming stream of a banned peer before protocol negotiation, whatever its protocol
    (ours, gossipsub, Kademlia, identify, ping): the host hands every new stream to the swarm's one
    ``common_stream_handler``, which is wrapped here."""
    network = host.get_network()
    negotiate = network.common_stream_handler

    async def gated(stream: INetStream) -> None:
        peer = str(stream.muxed_conn.peer_id)
        if banned(peer):
            on_refused(peer)
            with trio.move_on_after(1.0):
                try:
                    await stream.reset()
                except Exception as exc:  # the stream may already be gone; nothing is left to refuse
                    log.debug("banned_stream_reset_failed", peer=peer, error=type(exc).__name__)
            return
        await negotiate(stream)

    network.set_stream_handler(gated)


@asynccontextmanager
async def libp2p_stack(identity: Identity, settings: P2PSettings, validator: Validator, stats: P2PStats,
                       table: PeerTable, on_connection: Callable[[ID, bool], None]
                       ) -> AsyncIterator[tuple[Any, KadDHT, Pubsub]]:
    """The running libp2p host, DHT (``validator`` checks our namespace) and pubsub, subscribed to nothing.
    ``stats`` and ``table`` count and score what the pubsub wrappers see; ``on_connection(peer, connected)``
    hears of every connection opened and closed; the table's bans close connections and refuse streams."""
    proto = "ip6" if ":" in settings.listen_host else "ip4"
    listen = [multiaddr.Multiaddr(f"/{proto}/{settings.listen_host}/tcp/{settings.tcp_port}")]
    if settings.quic:
        listen.append(multiaddr.Multiaddr(f"/{proto}/{settings.listen_host}/udp/{settings.quic_port}/quic-v1"))
    announce = [multiaddr.Multiaddr(a) for a in settings.announce_addrs] or None
    # libp2p's defaults aim at ~200 connections and dial every peer learned of; we keep a bounded set.
    most = settings.max_connections
    connections = ConnectionConfig(max_connections=most, high_watermark=most, low_watermark=most // 2,
                                   min_connections=most // 4)
    # Advertise TCP before QUIC: peers dial the first address that works, and py-libp2p's QUIC is pure
    # Python (aioquic): measured ~10% of a core per idle node in a 20-node network over QUIC. QUIC still
    # listens for peers that choose it. Announce addresses, when set, are advertised as given.
    order = None if announce else tcp_first
    host = new_host(key_pair=identity.key_pair, listen_addrs=listen, muxer_preference="YAMUX",
                    announce_addrs=announce, addrs_factory=order, connection_config=connections,
                    enable_quic=settings.quic, sec_opt=security_options(identity))
    refuse_banned_streams(host, table.banned, lambda peer: stats.reject("stream", "banned"))
    namespaces = NamespacedValidator({"hyperion": validator}, strict_validation=True)
    dht = KadDHT(host, DHTMode.SERVER, enable_random_walk=settings.dht_random_walk, validator=namespaces,
                 validator_changed=True, strict_validation=True)
    if libp2p_costs.installed():
        libp2p_costs.throttle_on_demand_refresh(dht)
    bound_value_store(dht)
    degree = settings.gossip_degree
    gossipsub = GossipSub(
        protocols=[PROTOCOL_ID_V11, PROTOCOL_ID], degree=degree, degree_low=max(2, degree - 2),
        degree_high=2 * degree, heartbeat_interval=1, heartbeat_initial_delay=0.1,
        # Our validators rate-limit per origin; gossipsub's own limit counts per forwarding peer, which
        # in a mesh of D peers relaying everyone's heartbeats trips on honest traffic.
        spam_protection_enabled=False,
    )
    pubsub = Pubsub(host, gossipsub, strict_signing=STRICT_SIGNING)
    count_sends(pubsub, stats)
    guard_pubsub_streams(host, pubsub, gossipsub.get_protocols(), stats, table)
    limit_forwarders(pubsub, stats, table)
    try:
        async with host.run(listen_addrs=listen):
            bound = [str(a) for a in host.get_transport_addrs()]
            for wanted, key in zip(listen, ("p2p.tcp_port", "p2p.quic_port"), strict=False):
                transport = "/quic-v1" if "quic" in str(wanted) else "/tcp/"
                if not any(transport in a for a in bound):
                    raise EnvironmentProblem(f"the P2P host could not listen on {wanted}",
                                             hint=f"is the port in use? set {key} (0 picks a free one)")
            host.get_network().register_notifee(ConnectionEvents(on_connection, table.banned))
            async with background_trio_service(pubsub), background_trio_service(gossipsub), \
                    background_trio_service(dht):
                await pubsub.wait_until_ready()
                yield host, dht, pubsub
    except OSError as exc:
        raise EnvironmentProblem(
            f"the P2P host could not listen on {listen[0]}: {exc.strerror or exc}",
            hint="is the port in use? set p2p.tcp_port (0 picks a free one)",
        ) from exc

def guard_pubsub_streams(host: Any, pubsub: Pubsub, protocols: Sequence[TProtocol], stats: P2PStats,
                         table: PeerTable) -> None:
    """py-libp2p's pubsub stream handler catches its own ParseError but not protobuf's DecodeError, so one
    undecodable RPC from a peer escaped into the host's connection service and stopped the node (seen in
    a 50-node demo, whose every node then went down with it; any peer could send such bytes). Pubsub
    registers its handler in its constructor; ours wraps it: the stream is reset, the peer scored down."""
    handler = pubsub.stream_handler

    async def guarded(stream: INetStream) -> None:
        try:
            await handler(stream)
        except DecodeError:
            peer = str(stream.muxed_conn.peer_id)
            stats.reject("gossip", "undecodable")
            table.penalize(peer, "undecodable")
            log.info("gossip_rejected", reason="undecodable", forwarder=peer)
            await stream.reset()

    for protocol in protocols:
        host.set_stream_handler(protocol, guarded)

# Messages one connected peer may hand us per second (and in a burst), whatever their origins. An honest relay
# forwards what its mesh carries: heartbeats of the peers it hears (one per p2p.heartbeat_interval_s each) and
# settled receipts in batches, tens a second in the largest networks we run, and a joining node's backlog
# (gossipsub's three-heartbeat history: 72 messages from a 12-node test network at 0.5 s heartbeats). A peer
# relaying messages signed by ten thousand keys it minted is the flood this bounds: past it, py-libp2p's
# signature check and our decoding never run. Measured (scripts/bench_adversarial.py): such a flood took an
# honest task's p95 from 0.5 s to over 4 s before; the burst's messages, fully checked before the budget
# runs out, are what a flood still costs (a burst of 400: +0.4 s to the one task under way then).
FORWARDER_RATE = 100.0
FORWARDER_BURST = 100.0


def limit_forwarders(pubsub: Pubsub, stats: P2PStats, table: PeerTable) -> None:
    """A token bucket per forwarding peer in front of py-libp2p's ``push_msg`` (which every received message
    goes through, in a task of its own, before its signature is checked). Over budget, a message is dropped,
    counted, and costs the forwarder a little (400 dropped messages ban it)."""
    push = pubsub.push_msg
    own = pubsub.my_id
    buckets = RateLimiter(rate=FORWARDER_RATE, burst=FORWARDER_BURST, max_keys=4096)

    async def limited(forwarder: ID, msg: Any) -> None:
        if forwarder != own and not buckets.allow(str(forwarder), trio.current_time()):
            stats.reject("gossip", "forwarder_rate")
            table.penalize(str(forwarder), "forwarder_rate")
            return
        await push(forwarder, msg)

    pubsub.push_msg = limited  # type: ignore[method-assign,assignment]


def count_sends(pubsub: Pubsub, stats: P2PStats) -> None:
    """py-libp2p keeps no send counters; every gossipsub send goes through ``Pubsub.write_msg``, so wrap
    it on our own instance to count frames, messages and control entries.

    The wrapper also leaves out the signed peer record that py-libp2p 0.8 attaches to every pubsub RPC
    (``senderRecord``; go-libp2p sends none): each receiver checks its Ed25519 signature again per RPC,
    ~3% of a 16-node demo's CPU (cProfile: 5,100 records opened in a 20 s run), for the same record
    that identify and the DHT already hand over when peers connect. A receiver treats the field as
    optional (``maybe_consume_signed_record``)."""
    write_msg = pubsub.write_msg

    async def counted(stream: INetStream, rpc: Any) -> bool:
        if rpc.HasField("senderRecord"):
            rpc.ClearField("senderRecord")
        stats.rpc_frames_out += 1
        stats.messages_out += len(rpc.publish)
        if rpc.HasField("control"):
            control = rpc.control
            stats.control_out += (len(control.ihave) + len(control.iwant) + len(control.graft)
                                  + len(control.prune))
        return await write_msg(stream, rpc)

    pubsub.write_msg = counted  # type: ignore[method-assign,assignment]


async def run_mdns(host: Any) -> None:
    """mDNS discovery, started here rather than by libp2p's host: py-libp2p registers the service
    synchronously inside the event loop, and zeroconf's conflict probing then blocks every task of the
    node for ~1.7 s (measured at start-up). In a worker thread it costs the loop nothing."""
    mdns = await trio.to_thread.run_sync(lambda: create_mdns_discovery(host.get_network(), host=host))
    try:
        await run_sync_abandoning(mdns.broadcaster.register)
        log.info("mdns_announced")
        await trio.sleep_forever()
    finally:
        with trio.move_on_after(1.0) as scope:
            scope.shield = True
            await run_sync_abandoning(mdns.stop)


# Records a node stores for the DHT at most: py-libp2p keeps 50,000 (``kad_dht.common.MAX_VALUE_STORE_SIZE``,
# oldest dropped first), which at our 8 KiB record cap is 400 MiB that any stranger may fill. 4,096 records
# are 32 MiB at worst, and each record lives on the 20 peers closest to its key, so a node stores its share
# of a network far larger than that.
MAX_DHT_VALUES = 4096


def bound_value_store(dht: KadDHT) -> None:
    """Cap this DHT's value store at ``MAX_DHT_VALUES``. py-libp2p calls ``_evict_if_full`` before each put and
    reads its own cap from a module constant; this host's store gets its own, and drops the record stored
    longest ago (dict order), in place of py-libp2p's scan that parses every record's time at each put."""
    store = dht.value_store

    def evict_if_full() -> None:
        while len(store.store) >= MAX_DHT_VALUES:
            del store.store[next(iter(store.store))]

    store._evict_if_full = evict_if_full  # type: ignore[method-assign]


def tcp_first(addrs: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
    return sorted(addrs, key=lambda a: "/quic" in str(a))
