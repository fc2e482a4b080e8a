"""An in-memory network for many nodes in one process: the demo's ``--network memory``.

``P2PNetwork`` runs on three py-libp2p objects: a host (streams by protocol, connections), a Kademlia DHT
(signed values, provider records) and gossipsub (topics with validators). A ``MemoryFabric`` stands in for
the wire under those three, with the same methods the node calls, so that everything above them -- our
topic validators, the signed heartbeats and records, the peer table, admission, the task and spot-check
stream protocols with their frames, receipts and ledgers -- runs unchanged.

What it does not do, by design: encryption and multiplexing (Noise and yamux; nothing leaves the process),
gossipsub's mesh and Kademlia's routing. Every node is connected to every other node on the fabric; a
publish is handed to each subscriber's validator and then its handler, once; the DHT is one table.
A message's origin is the publishing node's own peer ID, set by the fabric, which no other node can forge;
that is what gossipsub's strict signing proves on the wire, so the validators treat it the same way.

Why: a 16-node demo over libp2p spent its one core on libp2p's own layers (yamux frames, Noise, gossipsub's
relaying: README, *Demo*), and heartbeats arrived seconds late, which the scheduler then read as failing
peers. On the fabric the same nodes run the product's code and not the transport's.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamError, StreamReset
from libp2p.peer.id import ID

log = structlog.get_logger(__name__)

StreamHandler = Callable[[Any], Awaitable[None]]  # called with a MemoryStream; typed as the INetStream handlers it runs
Validator = Callable[[ID, "MemoryMessage"], bool]


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


# -- pubsub --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryMessage:
    """What a topic validator and a subscriber read: gossipsub's ``Message`` fields that our code uses."""

    data: bytes
    from_id: bytes  # the origin's peer ID, set by the fabric
    seqno: bytes
    topic: str


class MemoryRouter:
    """``status()`` reads gossipsub's mesh per topic; on the fabric every subscriber is every node's peer."""

    def __init__(self, pubsub: MemoryPubsub) -> None:
        self._pubsub = pubsub

    @property
    def mesh(self) -> dict[str, set[str]]:
        fabric, me = self._pubsub.fabric, self._pubsub.host.peer_id
        return {topic: {p for p in subs if p != me} for topic, subs in fabric.subscribers.items()
                if me in subs}


class MemoryPubsub:
    def __init__(self, fabric: MemoryFabric, host: MemoryHost) -> None:
        self.fabric, self.host = fabric, host
        self.router = MemoryRouter(self)
        self.validators: dict[str, Validator] = {}
        self.handlers: dict[str, Callable[[MemoryMessage], None]] = {}
        self.failed = 0  # messages whose handler raised
        self._seq = itertools.count(1)

    def set_topic_validator(self, topic: str, validator: Validator, is_async_validator: bool) -> None:
        if is_async_validator:
            raise ValueError("the memory fabric runs synchronous validators only")
        self.validators[topic] = validator

    def handle(self, topic: str, handler: Callable[[MemoryMessage], None]) -> None:
        """Subscribe with a synchronous handler, called as each message is delivered (after the validator):
        what gossipsub's subscription and a consumer task do on the wire, without the queue and the task
        switch per message per node. A handler that raises is logged and counted; the publisher never sees it."""
        self.handlers[topic] = handler
        self.fabric.subscribers[topic][self.host.peer_id] = self

    async def publish(self, topic: str, data: bytes) -> None:
        """Deliver to every other subscriber, through its validator, as gossipsub would deliver it once."""
        msg = MemoryMessage(data=data, from_id=self.host.id.to_bytes(),
                            seqno=next(self._seq).to_bytes(8, "big"), topic=topic)
        sent = 0
        for peer_id, pubsub in list(self.fabric.subscribers.get(topic, {}).items()):
            if peer_id != self.host.peer_id:
                pubsub.deliver(self.host.id, msg)
                sent += 1
        self.fabric.deliveries += sent
        await trio.lowlevel.checkpoint()

    def deliver(self, forwarder: ID, msg: MemoryMessage) -> None:
        validator = self.validators.get(msg.topic)
        if validator is not None and not validator(forwarder, msg):
            return
        handler = self.handlers.get(msg.topic)
        if handler is None:
            return
        try:
            handler(msg)
        except Exception:  # the subscriber's bug, not the publisher's: as a consumer task's would be
            self.failed += 1
            log.exception("memory_gossip_handler_failed", topic=msg.topic, node=self.host.peer_id[-8:])

    def leave(self) -> None:
        for subs in self.fabric.subscribers.values():
            if subs.get(self.host.peer_id) is self:
                del subs[self.host.peer_id]


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

    async def add_peer(self, peer_id: ID) -> None:
        await trio.lowlevel.checkpoint()

    def get_routing_table_size(self) -> int:
        return max(0, len(self.fabric.hosts) - 1)

    def get_value_store_size(self) -> int:
        return len(self.fabric.values)


# -- hosts ---------------------------------------------------------------------------------------------------


class MemoryHost:
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
        self.subscribers: dict[str, dict[str, MemoryPubsub]] = defaultdict(dict)
        self.values: dict[str, bytes] = {}
        self.providers: dict[str, dict[str, None]] = defaultdict(dict)  # key -> peer IDs, in arrival order
        self.deliveries = 0  # gossip messages handed to a subscriber's validator
        self._index = itertools.count()

    @asynccontextmanager
    async def attach(self, peer_id: ID, on_connection: Callable[[ID, bool], None], validator: Any
                     ) -> AsyncIterator[tuple[MemoryHost, MemoryDHT, MemoryPubsub]]:
        """Join as ``peer_id`` until the block ends; ``on_connection(peer, connected)`` hears of every other
        node joining and leaving, ``validator`` checks the values it puts under ``/hyperion/``."""
        if str(peer_id) in self.hosts:
            raise ValueError(f"{peer_id} is already on the fabric")
        async with trio.open_nursery() as nursery:
            host = MemoryHost(self, peer_id, next(self._index), nursery, on_connection)
            pubsub, dht = MemoryPubsub(self, host), MemoryDHT(self, host)
            dht.register_validator("hyperion", validator)
            others = list(self.hosts.values())
            self.hosts[host.peer_id] = host
            for other in others:
                other.on_connection(peer_id, True)
                on_connection(other.id, True)
            try:
                yield host, dht, pubsub
            finally:
                del self.hosts[host.peer_id]
                pubsub.leave()
                for state in list(host.streams):
                    state.reset_now()
                for other in list(self.hosts.values()):
                    other.on_connection(peer_id, False)
                nursery.cancel_scope.cancel()
