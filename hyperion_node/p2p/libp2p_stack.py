"""The libp2p side of the P2P layer: the host and Kademlia DHT that ``P2PNetwork`` runs on (the demo puts its
in-memory fabric under the same interfaces instead), and what we change in how py-libp2p runs them.

* host: TCP (and QUIC when enabled), Noise only, Yamux, the node's Ed25519 key, TCP addresses advertised first;
  every incoming stream and connection of a banned peer is refused before any protocol reads it, and a peer
  that crosses the ban line has its connections closed at once;
* connections kept between watermarks set by ``p2p.target_connections`` (each node's liveness cost is its
  connection count, so it must not grow with the network);
* DHT in server mode, random walk unless ``p2p.dht_random_walk`` is off, our namespace only (no ``pk`` or
  ``ipns`` records: nothing of ours reads them, and each would be memory a stranger fills);
* no gossipsub: no topic carries per-node traffic any more (presence.py, ledger/dealings.py, protocols/cases.py);
* mDNS, started in a worker thread;
* inbound DHT streams bounded per peer and in time (``guard_dht_streams``);
* process-wide, when the host is built: yamux's receive-window setting, ``libp2p_costs`` and
  ``libp2p_fixes`` (``adjust_py_libp2p``).
"""

from __future__ import annotations

import os
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import multiaddr
import structlog
import trio
from libp2p import new_host
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.discovery.mdns.mdns import create_mdns_discovery
from libp2p.host.ping import ID as PING_PROTOCOL_ID
from libp2p.host.ping import PING_LENGTH
from libp2p.kad_dht.common import PROTOCOL_ID as KAD_PROTOCOL_ID
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.records.validator import NamespacedValidator, Validator
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service

from hyperion_node.errors import EnvironmentProblem
from hyperion_node.identity import Identity
from hyperion_node.p2p import libp2p_costs, libp2p_fixes
from hyperion_node.p2p.peer_table import PeerTable
from hyperion_node.p2p.records import SENDER
from hyperion_node.p2p.settings import P2PSettings
from hyperion_node.trio_types import run_sync_abandoning

if TYPE_CHECKING:
    from hyperion_node.p2p.network import P2PStats


log = structlog.get_logger(__name__)


def adjust_py_libp2p() -> None:
    """The node's changes to py-libp2p's per-message costs, applied when it builds its host (process-wide:
    py-libp2p reads them at each call; idempotent).

    py-libp2p's yamux returns receive credit with a WINDOW_UPDATE frame after every partial read unless
    PY_YAMUX_RELEASE_ON_READ is off (it reads the variable at each call). A frame read in pieces (the length
    varint, then the body) cost its receiver two or three extra frames, each written (Noise-encrypted) and
    awaited, before the message was delivered. Off, credit goes back with go-yamux's half-window hysteresis.
    Measured with gossip, six hosts in one process, both settings side by side: delivery p50 28 -> 19 ms,
    p95 81 -> 34 ms, CPU per published message 0.71x. A user's setting wins. What that setting still left (a
    credit frame after about every other small read) is ``libp2p_costs``. HYPERION_LIBP2P_AS_SHIPPED=1 leaves
    py-libp2p as it is (to compare side by side, or should a py-libp2p release disagree with it).
    """
    libp2p_fixes.install()  # faults, not costs: mended whatever the setting below
    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
    if os.environ.get("HYPERION_LIBP2P_AS_SHIPPED", "") not in ("1", "true", "yes"):
        libp2p_costs.install()


TRIM_EVERY_S = 10.0  # connections past 1.5 times p2p.target_connections are closed this often ...
GRACE_S = 20.0  # ... once they are this old

class ConnectionEvents(INotifee):
    """Tells ``on_change(peer, connected)`` of every connection the host opens and closes, and closes at once
    a connection from a peer that ``banned(peer)`` says is banned (it may dial us again; each try costs it a
    handshake and us nothing more)."""

    def __init__(self, on_change: Callable[[ID, bool], None], banned: Callable[[str], bool],
                 on_refused: Callable[[str], None]) -> None:
        self._on_change = on_change
        self._banned = banned
        self._on_refused = on_refused

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer_id = conn.muxed_conn.peer_id
        if self._banned(str(peer_id)):
            log.info("banned_peer_disconnected", peer=str(peer_id))
            self._on_refused(str(peer_id))
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


def refuse_banned_streams(host: Any, banned: Callable[[str], bool], on_refused: Callable[[str], None],
                          on_stream: Callable[[str], None] = lambda protocol: None) -> None:
    """Reset every incoming stream of a banned peer before protocol negotiation, whatever its protocol
    (ours, Kademlia, identify, ping): the host hands every new stream to the swarm's one
    ``common_stream_handler``, which is wrapped here. ``on_stream(protocol)`` counts every incoming stream, by
    the protocol it negotiated ("" for none), once it ends."""
    network = host.get_network()
    negotiate = network.common_stream_handler

    async def gated(stream: INetStream) -> None:
        peer = str(stream.muxed_conn.peer_id)
        if banned(peer):
            on_stream("")
            on_refused(peer)
            with trio.move_on_after(1.0):
                try:
                    await stream.reset()
                except Exception as exc:  # the stream may already be gone; nothing is left to refuse
                    log.debug("banned_stream_reset_failed", peer=peer, error=type(exc).__name__)
            return
        try:
            await negotiate(stream)
        finally:
            on_stream(str(stream.get_protocol() or ""))

    network.set_stream_handler(gated)


# A ping stream with no ping for this long is closed (peers ping every p2p.heartbeat_interval_s, 5 s by
# default; py-libp2p's own handler closes after 10 s, which a longer interval would hit at every ping).
PING_IDLE_S = 60.0
PING_STREAMS_PER_PEER = 2  # a peer pings on one stream; a second while the first is replaced


class PingAnswerer:
    """``/ipfs/ping/1.0.0``, answering side: echo each 32-byte ping on a stream for as long as the peer keeps
    it, counting each one (``on_ping``: a ping on a kept stream opens no stream, so stream counts miss it).
    Replaces py-libp2p's handler, whose idle timeout is shorter than a slow heartbeat interval.

    At most ``PING_STREAMS_PER_PEER`` streams per peer: a new one closes the peer's oldest, since a peer pings
    on its newest (it opens one when the last failed, perhaps before this side saw that one end). Refusing the
    new one instead failed the pings of a peer whose old stream was still being torn down: on a loaded machine
    that read as silence, and silent peers lose their connections."""

    def __init__(self, on_ping: Callable[[], None]) -> None:
        self._on_ping = on_ping
        self._open: dict[ID, list[trio.CancelScope]] = {}

    async def handle(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        scopes = self._open.setdefault(peer, [])
        while len(scopes) >= PING_STREAMS_PER_PEER:
            scopes.pop(0).cancel()
        scope = trio.CancelScope()
        scopes.append(scope)
        try:
            with scope:
                while True:
                    with trio.move_on_after(PING_IDLE_S):
                        payload = await _read_ping(stream)
                        if payload is None:
                            break  # the peer closed the stream between pings
                        self._on_ping()
                        await stream.write(payload)
                        continue
                    break  # idle for PING_IDLE_S
                with trio.move_on_after(1.0):
                    await stream.close()
            if scope.cancelled_caught:  # a newer stream of the peer's replaced this one
                await _close_quietly(stream, peer)
        except Exception as exc:  # a reset, a broken connection, a short read: the stream is done
            log.debug("ping_stream_ended", peer=str(peer), error=type(exc).__name__)
            await _close_quietly(stream, peer)
        finally:
            if scope in scopes:
                scopes.remove(scope)
            if not scopes and self._open.get(peer) is scopes:
                del self._open[peer]


async def _read_ping(stream: INetStream) -> bytes | None:
    """The next ping's 32 bytes, or None when the stream ends cleanly before one begins."""
    data = b""
    while len(data) < PING_LENGTH:
        chunk = await stream.read(PING_LENGTH - len(data))
        if not chunk:
            if not data:
                return None
            raise ConnectionError("the ping stream ended inside a ping")
        data += chunk
    return data


async def _close_quietly(stream: INetStream, peer_id: ID) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
        try:
            await stream.reset()
        except Exception as exc:  # the stream is gone already: nothing to close
            log.debug("ping_stream_close_failed", peer=str(peer_id), error=type(exc).__name__)


class Libp2pHost:
    """The py-libp2p host as ``P2PNetwork`` uses it: its own methods, plus ``ping`` and ``disconnect`` (on the
    network object), so that the in-memory fabric's host, which has the same methods, can stand in for it."""

    def __init__(self, host: Any) -> None:
        self._host = host
        # One ping stream per connected peer, kept between pings (the ping protocol echoes any number of
        # 32-byte pings on one stream): a new stream per ping cost a yamux open, a multistream-select
        # negotiation and a close each way, about four times the frames of the ping itself.
        self._ping_streams: dict[ID, INetStream] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)

    async def ping(self, peer_id: ID) -> list[float]:
        """One libp2p ping (``/ipfs/ping/1.0.0``: 32 random bytes echoed); the round trip in ms. The peer's
        ping stream is reused while it works; a ping that fails on it closes it and tries once on a new one
        (the peer may have closed an idle stream). py-libp2p's ``PingService`` opens each peer's ping stream
        under one lock shared by every peer, so one connection whose stream hangs stalled the pings of all
        others (seen: healthy providers declared dead during a flood of one of them): each peer's stream is
        its own here. A peer no longer connected is not dialled: liveness pings the connections that are,
        and a ping that raced the pruner must not open the connection again."""
        if not self._host.get_network().connections.get(peer_id):
            self.drop_ping_stream(peer_id)
            raise ConnectionError("not connected")
        kept = self._ping_streams.pop(peer_id, None)  # taken: a concurrent ping opens a stream of its own
        if kept is not None:
            try:
                return await self._ping_on(peer_id, kept)
            except (trio.TooSlowError, trio.Cancelled):
                raise
            except Exception as exc:  # a stream the peer closed or reset while idle: a fresh one below
                log.debug("ping_stream_renewed", peer=str(peer_id), error=type(exc).__name__)
        stream = await self._host.new_stream(peer_id, [PING_PROTOCOL_ID])
        return await self._ping_on(peer_id, stream)

    async def _ping_on(self, peer_id: ID, stream: INetStream) -> list[float]:
        """A ping on ``stream``, kept for the next one when it succeeds and closed when it does not
        (cancellation included: a stream left mid-ping would pair the next ping with this one's echo)."""
        ok = False
        try:
            payload = secrets.token_bytes(PING_LENGTH)
            start = time.perf_counter()
            await stream.write(payload)
            echoed = b""
            while len(echoed) < PING_LENGTH:
                chunk = await stream.read(PING_LENGTH - len(echoed))
                if not chunk:
                    raise ConnectionError("the ping stream closed before the echo")
                echoed += chunk
            if echoed != payload:
                raise ConnectionError("the ping echo does not match")
            rtt = (time.perf_counter() - start) * 1000
            ok = True
        finally:
            if ok and peer_id not in self._ping_streams:
                self._ping_streams[peer_id] = stream
            else:
                await _close_quietly(stream, peer_id)
        return [rtt]

    def drop_ping_stream(self, peer_id: ID) -> None:
        """A connection of the peer closed: its ping stream may have gone with it (if it did not, the next
        ping opens another, and the old one ends with its connection)."""
        self._ping_streams.pop(peer_id, None)

    def peer_addrs(self, peer_id: ID) -> tuple[str, ...]:
        """The addresses the peerstore holds for a peer (what it told identify it listens on, or what we
        dialled), TCP first."""
        try:
            addrs = self._host.get_peerstore().addrs(peer_id)
        except Exception:  # py-libp2p raises PeerStoreError for a peer it holds no address of
            return ()
        return tuple(str(a) for a in tcp_first(list(addrs)))

    async def disconnect(self, peer_id: ID) -> None:
        await self._host.get_network().close_peer(peer_id)


@asynccontextmanager
async def libp2p_stack(identity: Identity, settings: P2PSettings, validator: Validator, stats: P2PStats,
                       table: PeerTable, on_connection: Callable[[ID, bool], None]
                       ) -> AsyncIterator[tuple[Libp2pHost, KadDHT]]:
    """The running libp2p host and DHT (``validator`` checks our namespace). ``stats`` counts what the ban gate
    refuses; ``on_connection(peer, connected)`` hears of every connection opened and closed; the table's bans
    close connections and refuse streams."""
    adjust_py_libp2p()
    proto = "ip6" if ":" in settings.listen_host else "ip4"
    listen = [multiaddr.Multiaddr(f"/{proto}/{settings.listen_host}/tcp/{settings.tcp_port}")]
    if settings.quic:
        listen.append(multiaddr.Multiaddr(f"/{proto}/{settings.listen_host}/udp/{settings.quic_port}/quic-v1"))
    announce = [multiaddr.Multiaddr(a) for a in settings.announce_addrs] or None
    # py-libp2p's defaults aim at ~200 connections and dial every peer learned of. Ours keep each node between
    # p2p.target_connections and 1.5 times that, whatever the network's size: a node's liveness pings, and the
    # DHT's routing, are then set by this constant. Below the target, Liveness dials peers it knows; above 1.5
    # times the target, ``trim_connections`` closes the excess (DHT lookups and tasks to peers outside the set
    # open more). Nodes settle at the top of the band, so its top is what idle CPU pays for: at 2 times, 16
    # connections at N = 20 cost 1.0-1.7 % of a core per idle daemon here; at 1.5 times, 10-12 cost 0.71x that
    # (median of 4 paired runs, docs/performance.md).
    # py-libp2p's own pruner and auto-connector are kept out of it (watermarks at the hard cap; the connector
    # stopped): its pruner trims to the low watermark and its connector dials towards the midpoint, and since the
    # two ends of a connection prune independently, a node trimmed to its target pushed its peers below theirs;
    # they dialled, pushed others over, and connections never settled.
    most = settings.max_connections
    target = min(settings.target_connections, most)
    connections = ConnectionConfig(max_connections=most, high_watermark=most, low_watermark=most,
                                   min_connections=min(target, most))
    # Advertise TCP before QUIC: peers dial the first address that works, and py-libp2p's QUIC is pure
    # Python (aioquic): measured ~10% of a core per idle node in a 20-node network over QUIC. QUIC still
    # listens for peers that choose it. Announce addresses, when set, are advertised as given.
    order = None if announce else tcp_first
    raw = new_host(key_pair=identity.key_pair, listen_addrs=listen, muxer_preference="YAMUX",
                   announce_addrs=announce, addrs_factory=order, connection_config=connections,
                   enable_quic=settings.quic, sec_opt=security_options(identity))
    refuse_banned_streams(raw, table.banned, lambda peer: stats.reject("stream", "banned"),
                          on_stream=lambda protocol: stats.received.update(("streams_in", f"in {protocol}")))
    namespaces = NamespacedValidator({"hyperion": validator}, strict_validation=True)
    dht = KadDHT(raw, DHTMode.SERVER, enable_random_walk=settings.dht_random_walk, validator=namespaces,
                 validator_changed=True, strict_validation=True)
    if dht.rt_refresh_manager is not None:  # the random walk (p2p.dht_refresh_s says why not py-libp2p's 120 s)
        dht.rt_refresh_manager.refresh_interval = settings.dht_refresh_s * random.uniform(0.8, 1.2)
    guard_dht_streams(raw, dht, lambda peer: stats.reject("stream", "dht_streams"))
    bound_value_store(dht)
    raw.set_stream_handler(PING_PROTOCOL_ID, PingAnswerer(lambda: stats.received.update(("pings_in",))).handle)
    host = Libp2pHost(raw)
    try:
        async with raw.run(listen_addrs=listen):
            bound = [str(a) for a in raw.get_transport_addrs()]
            for wanted, key in zip(listen, ("p2p.tcp_port", "p2p.quic_port"), strict=False):
                transport = "/quic-v1" if "quic" in str(wanted) else "/tcp/"
                if not any(transport in a for a in bound):
                    raise EnvironmentProblem(f"the P2P host could not listen on {wanted}",
                                             hint=f"is the port in use? set {key} (0 picks a free one)")
            def connection_changed(peer: ID, connected: bool) -> None:
                if not connected:
                    host.drop_ping_stream(peer)
                on_connection(peer, connected)

            raw.get_network().register_notifee(ConnectionEvents(
                connection_changed, table.banned, lambda peer: stats.reject("connection", "banned")))
            swarm: Any = raw.get_network()
            swarm.auto_connector._started = False  # its periodic loop ends; Liveness dials instead
            async with background_trio_service(dht), trio.open_nursery() as nursery:
                nursery.start_soon(trim_connections, raw, min(target + target // 2, most))
                yield host, dht
                nursery.cancel_scope.cancel()
    except OSError as exc:
        raise EnvironmentProblem(
            f"the P2P host could not listen on {listen[0]}: {exc.strerror or exc}",
            hint="is the port in use? set p2p.tcp_port (0 picks a free one)",
        ) from exc


async def trim_connections(host: Any, most: int) -> None:
    """Every TRIM_EVERY_S, close the connections of the peers past ``most``: only the excess (the other end
    prunes on its own), oldest first, sparing connections younger than GRACE_S (a lookup or a dial that has
    just connected may still use it) and any in use (``_in_use``)."""
    network = host.get_network()
    while True:
        await trio.sleep(TRIM_EVERY_S)
        by_peer = dict(network.connections)
        excess = len(by_peer) - most
        if excess <= 0:
            continue
        now = time.time()
        idle = []
        for peer, conns in by_peer.items():
            created = min((getattr(c, "_created_at", now) for c in conns), default=now)
            if now - created >= GRACE_S and not any(_in_use(c) for c in conns):
                idle.append((created, peer))
        for _, peer in sorted(idle)[:excess]:
            try:
                await network.close_peer(peer)
            except Exception as exc:  # it went away on its own meanwhile
                log.debug("trim_failed", peer=str(peer), error=type(exc).__name__)


# Streams that do not keep a connection: one request and its answer. py-libp2p leaves some Kademlia streams open
# for good (seen: a node that joined during others' start-up lookups held 1-4 of them on each of 9 connections a
# minute and a half later), and they must not hold connections open with them.
_TRANSIENT = {str(KAD_PROTOCOL_ID), str(PING_PROTOCOL_ID), "None", ""}


def _in_use(conn: Any) -> bool:
    """A connection carries a stream that lasts: a presence subscription, a task, a verification."""
    return any(str(stream.get_protocol()) not in _TRANSIENT for stream in conn.get_streams())


# Inbound Kademlia streams. py-libp2p's handler serves 12 at once and resets any stream beyond them at once, and
# each holds its place until the remote closes the stream: py-libp2p's own clients leave some open for good, and
# a stranger may open twelve and send nothing. Seen at N = 30: a new node's only peer, its bootstrap node, reset
# the new node's first GET_PROVIDERS, and the node's first task failed. So a stream has DHT_STREAM_S for its
# requests and answers (each takes milliseconds), one peer holds at most DHT_STREAMS_PER_PEER at once (more are
# reset and counted), and the handlers' places are DHT_STREAMS (an idle handler costs a little memory, nothing
# else).
DHT_STREAM_S = 5.0
DHT_STREAMS_PER_PEER = 4
DHT_STREAMS = 48


def guard_dht_streams(host: Any, dht: KadDHT, on_refused: Callable[[str], None]) -> None:
    """Serve the DHT's inbound streams under the bounds above, with ``records.SENDER`` set to the stream's
    remote, so that a record our validator refuses is charged to the peer that sent it, not to the peer it
    names (records.py)."""
    handle = dht.handle_stream
    dht._inbound_limiter = trio.CapacityLimiter(DHT_STREAMS)
    held: dict[str, int] = {}

    async def guarded(stream: INetStream) -> None:
        peer = str(stream.muxed_conn.peer_id)
        if held.get(peer, 0) >= DHT_STREAMS_PER_PEER:
            on_refused(peer)
            await _reset(stream)
            return
        held[peer] = held.get(peer, 0) + 1
        SENDER.set(peer)  # this handler's own task: its context ends with it
        try:
            with trio.move_on_after(DHT_STREAM_S) as deadline:
                await handle(stream)
            if deadline.cancelled_caught:
                await _reset(stream)
        finally:
            held[peer] -= 1
            if not held[peer]:
                del held[peer]

    host.set_stream_handler(KAD_PROTOCOL_ID, guarded)


async def _reset(stream: INetStream) -> None:
    try:
        await stream.reset()
    except Exception as exc:  # already gone: nothing left to refuse
        log.debug("dht_stream_reset_failed", error=type(exc).__name__)


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
