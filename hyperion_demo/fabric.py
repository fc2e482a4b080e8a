"""An in-memory network for many nodes in one process: the demo's ``--network memory``.

``P2PNetwork`` runs on two py-libp2p objects: a host (streams by protocol, connections, ping) and a Kademlia
DHT (signed values, provider records). A ``MemoryFabric`` stands in for the wire under both, with the same
methods the node calls (``MemoryFabric.stack`` is what ``P2PNetwork(stack=...)`` takes), so that everything
above them -- the signed heartbeats on presence streams and records, the peer table, admission, the task and
spot-check stream protocols with their frames, receipts and ledgers -- runs unchanged.

What it does not do, by design: encryption and multiplexing (Noise and yamux; nothing leaves the process)
and Kademlia's routing. Every node is connected to every other node on the fabric; the DHT is one table.

Why: a 16-node demo over libp2p spent its one core on libp2p's own layers (yamux frames, Noise, gossipsub's
relaying: README, *Demo*), and heartbeats arrived seconds late, which the scheduler then read as failing
peers. On the fabric the same nodes run the product's code and not the transport's.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamError, StreamReset
from libp2p.peer.id import ID

from hyperion_node.p2p.census import distance

log = structlog.get_logger(__name__)

StreamHandler = Callable[[Any], Awaitable[None]]  # called with a MemoryStream; typed as the INetStream handlers it runs


class NoSuchPeer(StreamError):
    """Dialling a peer that is not (or no longer) on the fabric."""


class ProtocolNotSupported(StreamError):
    """The peer has no handler for the protocol (on the wire: multistream-select answers ``na``)."""


# -- streams ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Pipe:
    """One direction of a stream: bytes written by one end, read by the other."""

    buffer: bytearray = field(default_factory=bytearray)
    closed: bool = False  # the writer closed its side: the reader gets EOF once the buffer is empty
    readable: trio.Event = field(default_factory=trio.Event)

    def wake(self) -> None:
        self.readable.set()
        self.readable = trio.Event()


@dataclass(frozen=True)
class _Conn:
    peer_id: ID  # the other end, as ``INetStream.muxed_conn.peer_id``


class MemoryStream:
    """One end of a bidirectional stream: ``read``, ``write``, ``close`` (our side only) and ``reset``
    (both), raising py-libp2p's own stream errors so that callers handle it as they handle a yamux stream."""

    def __init__(self, remote: ID, protocol: str, incoming: _Pipe, outgoing: _Pipe, state: _StreamState) -> None:
        self.muxed_conn = _Conn(remote)
        self._protocol = protocol
        self._in, self._out, self._state = incoming, outgoing, state

    def get_protocol(self) -> str:
        return self._protocol

    def set_protocol(self, protocol: str) -> None:
        self._protocol = protocol

    async def read(self, n: int | None = -1) -> bytes:
        while True:
            if self._state.reset:
                raise StreamReset("stream was reset")
            if self._in.buffer:
                size = len(self._in.buffer) if n is None or n < 0 else n
                data = bytes(self._in.buffer[:size])
                del self._in.buffer[:size]
                await trio.lowlevel.checkpoint()
                return data
            if self._in.closed:
                raise StreamEOF("stream is closed for receiving")
            await self._in.readable.wait()

    async def write(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if self._state.reset:
            raise StreamReset("stream was reset")
        if self._out.closed:
            raise StreamClosed("stream is closed for sending")
        self._out.buffer += data
        self._out.wake()

    async def close(self) -> None:
        if not self._out.closed:
            self._out.closed = True
            self._out.wake()
            self._state.closing(self)
        await trio.lowlevel.checkpoint()

    async def reset(self) -> None:
        self._state.reset_now()
        await trio.lowlevel.checkpoint()


class _StreamState:
    """What both ends of a stream share: whether it was reset, and which hosts track it."""

    def __init__(self, hosts: tuple[MemoryHost, MemoryHost]) -> None:
        self.reset = False
        self.pipes: tuple[_Pipe, _Pipe] = (_Pipe(), _Pipe())
        self.hosts = hosts
        self._closed_ends = 0

    def ends(self, dialler: ID, listener: ID, protocol: str) -> tuple[MemoryStream, MemoryStream]:
        to_listener, to_dialler = self.pipes
        return (MemoryStream(listener, protocol, to_dialler, to_listener, self),
                MemoryStream(dialler, protocol, to_listener, to_dialler, self))

    def closing(self, _end: MemoryStream) -> None:
        self._closed_ends += 1
        if self._closed_ends == 2:
            self._forget()

    def reset_now(self) -> None:
        if self.reset:
            return
        self.reset = True
        for pipe in self.pipes:
            pipe.buffer.clear()
            pipe.wake()
        self._forget()

    def _forget(self) -> None:
        for host in self.hosts:
            host.streams.discard(self)


# -- DHT -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderInfo:
    peer_id: ID


class MemoryDHT:
    """Kademlia's put/get of validated values and provider records, in one table shared by the fabric.

    A value is checked by the putting node's registered validator (on the wire, each of the k peers that
    store it checks it; here all nodes run the same code), and ``select`` keeps the better of old and new."""

    def __init__(self, fabric: MemoryFabric, host: MemoryHost) -> None:
        self.fabric, self.host = fabric, host
        self.validators: dict[str, Any] = {}

    def register_validator(self, namespace: str, validator: Any) -> None:
        self.validators[namespace] = validator

    async def put_value(self, key: str, value: bytes) -> None:
        await trio.lowlevel.checkpoint()
        namespace = key.strip("/").split("/", 1)[0]
        validator = self.validators.get(namespace)
        if validator is not None:
            validator.validate(key, value)
            old = self.fabric.values.get(key)
            if old is not None and validator.select(key, [value, old]) != 0:
                return
        self.fabric.values[key] = value

    async def get_value(self, key: str) -> bytes | None:
        await trio.lowlevel.checkpoint()
        return self.fabric.values.get(key)

    async def provide(self, key: str) -> bool:
        await trio.lowlevel.checkpoint()
        self.fabric.providers[key][self.host.peer_id] = None
        return True

    async def find_providers(self, key: str, count: int = 20) -> list[ProviderInfo]:
        await trio.lowlevel.checkpoint()
        return [ProviderInfo(ID.from_base58(p)) for p in list(self.fabric.providers.get(key, {}))[:count]]

    async def find_closest_peers_network(self, key: bytes, count: int = 20) -> list[ID]:
        """The ``count`` nodes on the fabric closest to ``key``, by Kademlia's distance (``census.distance``)."""
        await trio.lowlevel.checkpoint()
        others = [h.id for h in self.fabric.hosts.values() if h is not self.host]
        return sorted(others, key=lambda p: distance(key, p.to_bytes()))[:count]

    async def add_peer(self, peer_id: ID) -> None:
        await trio.lowlevel.checkpoint()

    def get_routing_table_size(self) -> int:
        return max(0, len(self.fabric.hosts) - 1)

    def get_value_store_size(self) -> int:
        return len(self.fabric.values)


# -- hosts ---------------------------------------------------------------------------------------------------


class MemoryHost:
    negotiates_protocols = False  # a stream opens on its protocol: nothing to pipeline (tasks/streams.py)

    """A node's place on the fabric: its stream handlers and open streams, and every other node as a peer."""

    def __init__(self, fabric: MemoryFabric, peer_id: ID, index: int, nursery: trio.Nursery,
                 on_connection: Callable[[ID, bool], None]) -> None:
        self.fabric, self.id, self.index = fabric, peer_id, index
        self.peer_id = str(peer_id)
        self.handlers: dict[str, StreamHandler] = {}
        self.streams: set[_StreamState] = set()
        self.on_connection = on_connection
        self._nursery = nursery

    def get_id(self) -> ID:
        return self.id

    def get_transport_addrs(self) -> list[str]:
        return [f"/memory/{self.index}"]

    def get_addrs(self) -> list[str]:
        return [f"/memory/{self.index}/p2p/{self.peer_id}"]

    def get_connected_peers(self) -> list[ID]:
        return [host.id for host in self.fabric.hosts.values() if host is not self]

    async def connect(self, info: Any) -> None:
        await trio.lowlevel.checkpoint()
        if str(info.peer_id) not in self.fabric.hosts:
            raise NoSuchPeer(f"{info.peer_id} is not on the fabric")

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        self.handlers[protocol] = handler

    async def new_stream(self, peer_id: ID, protocols: list[str]) -> MemoryStream:
        """A stream to ``peer_id`` on the first of ``protocols`` it handles; its handler runs in the
        listener's nursery, so it ends with the listener."""
        await trio.lowlevel.checkpoint()
        remote = self.fabric.hosts.get(str(peer_id))
        if remote is None:
            raise NoSuchPeer(f"{peer_id} is not on the fabric")
        protocol = next((p for p in protocols if p in remote.handlers), None)
        if protocol is None:
            raise ProtocolNotSupported(f"{peer_id} speaks none of {', '.join(protocols)}")
        state = _StreamState((self, remote))
        ours, theirs = state.ends(self.id, remote.id, protocol)
        self.streams.add(state)
        remote.streams.add(state)
        remote._nursery.start_soon(remote._serve, remote.handlers[protocol], theirs)
        return ours

    async def _serve(self, handler: StreamHandler, stream: MemoryStream) -> None:
        try:
            await handler(stream)
        except Exception:  # as py-libp2p does: a handler's failure resets its stream, the host goes on
            log.exception("memory_stream_handler_failed", protocol=stream.get_protocol())
            await stream.reset()

    async def disconnect(self, peer_id: ID) -> None:
        """Nothing to close: on the fabric every node is connected to every other while both are on it."""
        await trio.lowlevel.checkpoint()

    def peer_addrs(self, peer_id: ID) -> tuple[str, ...]:
        host = self.fabric.hosts.get(str(peer_id))
        return (f"/memory/{host.index}",) if host is not None else ()

    async def ping(self, peer_id: ID) -> list[float]:
        """Round-trip time to the peer in ms: a hand-over through the event loop and back."""
        start = trio.current_time()
        await trio.lowlevel.checkpoint()
        if str(peer_id) not in self.fabric.hosts:
            raise NoSuchPeer(f"{peer_id} is not on the fabric")
        return [(trio.current_time() - start) * 1000]


class MemoryFabric:
    """The wire between the nodes of one process. Nodes join for the lifetime of their P2P component
    (``attach``); leaving resets every stream they had open, as a host going away does."""

    def __init__(self) -> None:
        self.hosts: dict[str, MemoryHost] = {}
        self.values: dict[str, bytes] = {}
        self.providers: dict[str, dict[str, None]] = defaultdict(dict)  # key -> peer IDs, in arrival order
        self._index = itertools.count()

    @asynccontextmanager
    async def attach(self, peer_id: ID, on_connection: Callable[[ID, bool], None], validator: Any
                     ) -> AsyncIterator[tuple[MemoryHost, MemoryDHT]]:
        """Join as ``peer_id`` until the block ends; ``on_connection(peer, connected)`` hears of every other
        node joining and leaving, ``validator`` checks the values it puts under ``/hyperion/``."""
        if str(peer_id) in self.hosts:
            raise ValueError(f"{peer_id} is already on the fabric")
        async with trio.open_nursery() as nursery:
            host = MemoryHost(self, peer_id, next(self._index), nursery, on_connection)
            dht = MemoryDHT(self, host)
            dht.register_validator("hyperion", validator)
            others = list(self.hosts.values())
            self.hosts[host.peer_id] = host
            for other in others:
                other.on_connection(peer_id, True)
                on_connection(other.id, True)
            try:
                yield host, dht
            finally:
                del self.hosts[host.peer_id]
                for state in list(host.streams):
                    state.reset_now()
                for other in list(self.hosts.values()):
                    other.on_connection(peer_id, False)
                nursery.cancel_scope.cancel()

    def stack(self, identity: Any, settings: Any, validator: Any, stats: Any, table: Any,
              on_connection: Callable[[ID, bool], None]) -> AbstractAsyncContextManager[tuple[MemoryHost, MemoryDHT]]:
        """``P2PNetwork``'s ``stack``: this fabric in place of the libp2p host and DHT."""
        return self.attach(identity.peer_id, on_connection, validator)
