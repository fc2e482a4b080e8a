"""A simulated wide-area network for thousands of ``P2PNetwork`` nodes in one process (issue #22, item 7).

``SimFabric.stack`` is what ``P2PNetwork(stack=...)`` takes, as ``MemoryFabric.stack`` is, so every node runs
our P2P code unchanged: liveness pings to its connections, presence subscriptions and heartbeats, the
advertiser's signed capability record and provider records, the census, the dialler, the record validator.
What this module simulates is only what lies under the host and DHT interfaces:

* **connections**: a node is connected to a bounded set of peers. ``connect`` and ``new_stream`` dial a peer
  that is not connected (two round trips: TCP, then Noise XX, rounded) and the connection stays open; above
  ``2 x p2p.target_connections`` the connections without an open stream are closed, least recently used
  first, down to the target (the libp2p stack's watermarks, ``libp2p_stack.py``); a node under its target
  dials peers from its routing table (the stack's ``min_connections``). ``get_connected_peers()`` is bounded
  by this, whatever the network's size.
* **latency**: every node sits in one of ``REGIONS`` with a last-mile delay of its own
  (``ACCESS_MS``); a stream's opening, each frame, its end of stream, a ping and a DHT RPC each wait the
  link's one-way latency (rounded up to the millisecond, ``Timer``), so what the code above sees in round
  trips and timeouts is the network's, in virtual time.
* **the DHT**: per-node Kademlia routing tables and iterative lookups (``simdht.py``).

Run under ``trio.testing.MockClock(autojump_threshold=0)`` (``simrun.py``), a simulated second costs only the
CPU of what happens in it. ``SimFabric.run`` (the fabric's timer) must be running before a node attaches.

What is left out, and so not measured: bytes (bandwidth, Noise, yamux framing and windows: a frame takes the
same time whatever its size), packet loss, NAT, and a machine that vanishes silently (a killed node's
connections close at once, as when its process dies and its OS answers with a reset; one whose power is cut
would leave its peers waiting for timeouts). Resets are not delayed. A DHT RPC's connection is not one of
the node's connections (as if the pruner closed it at once: its cost is counted as an RPC, not in the
liveness pings). Messages are counted per receiving node in ``SimFabric.received`` (every stream opened to
the node, every frame written to it, every ping and every DHT RPC it answers).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import random
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import structlog
import trio
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamReset
from libp2p.peer.id import ID

from hyperion_demo.fabric import NoSuchPeer, ProtocolNotSupported
from hyperion_demo.simdht import DHTStats, SimDHT
from hyperion_node.trio_types import TaskStatus

log = structlog.get_logger(__name__)

StreamHandler = Callable[[Any], Awaitable[None]]

# Where a node sits, and the one-way delay between region centres in ms: roughly half the round trips that
# public inter-region ping tables show (e.g. WonderNetwork's, AWS's inter-region figures), rounded. What
# matters here is the spread (5 ms within a region, up to 130 ms between continents), not the exact figures.
REGIONS = ("us-east", "us-west", "europe", "asia", "south-america")
REGION_WEIGHTS = (0.25, 0.15, 0.30, 0.22, 0.08)
ONE_WAY_MS = (
    (5, 32, 40, 85, 60),
    (32, 5, 70, 55, 85),
    (40, 70, 5, 115, 95),
    (85, 55, 115, 5, 130),
    (60, 85, 95, 130, 5),
)
ACCESS_MS = (1.0, 10.0)  # each node's own last mile, one way, uniform in this range
DIAL_ROUND_TRIPS = 2  # TCP's handshake, then Noise XX's three messages (1.5 round trips), rounded
MAINTAIN_EVERY_S = 10.0  # how often a node under its connection target dials more peers


# Simulated delays end on whole milliseconds, so that what happens in the same millisecond runs in one batch
# of the event loop: with every delay its own instant, trio's per-sleep cost (a cancel scope, a Cancelled
# raised and caught) and a clock jump per instant were most of a run's CPU (measured at N = 1,000).
TICK_S = 0.001


class Timer:
    """Where the fabric's waits park (a trio component): one task sleeps until the earliest of them and wakes
    every waiter due by then, so that a wait costs a heap entry, not a cancel scope of its own."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, list[trio.lowlevel.Task | None]]] = []
        self._seq = itertools.count()
        self._scope: trio.CancelScope | None = None

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        heap = self._heap
        task_status.started()
        try:
            while True:
                with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as scope:
                    self._scope = scope
                    await trio.sleep_forever()
                self._scope = None
                due = trio.current_time() + TICK_S / 2
                while heap and heap[0][0] <= due:
                    task = heapq.heappop(heap)[2][0]
                    if task is not None:
                        trio.lowlevel.reschedule(task)
        finally:
            self._scope = None

    async def sleep_until(self, when: float) -> None:
        if self._scope is None:
            raise RuntimeError("the fabric's timer is not running: start SimFabric.run first")
        when = math.ceil(when / TICK_S - 1e-6) * TICK_S
        waiter: list[trio.lowlevel.Task | None] = [trio.lowlevel.current_task()]
        heapq.heappush(self._heap, (when, next(self._seq), waiter))
        if when < self._scope.deadline:
            self._scope.deadline = when

        def abort(_: Any) -> trio.lowlevel.Abort:
            waiter[0] = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(trio.current_time() + seconds)


class _Link:
    """One connection between two hosts, shared by both; kept open while it carries a stream."""

    __slots__ = ("a", "b", "last_used", "streams")

    def __init__(self, a: SimHost, b: SimHost, now: float) -> None:
        self.a, self.b = a, b
        self.last_used = now
        self.streams = 0

    def other(self, host: SimHost) -> SimHost:
        return self.b if host is self.a else self.a


# -- streams ---------------------------------------------------------------------------------------------


class _Pipe:
    """One direction of a stream: chunks in flight with the time each arrives, then the bytes that have."""

    __slots__ = ("chunks", "eof_at", "readable", "ready")

    def __init__(self) -> None:
        self.chunks: deque[tuple[float, bytes]] = deque()
        self.ready = bytearray()
        self.eof_at: float | None = None  # the writer closed: the end of stream arrives at this time
        self.readable = trio.Event()

    def wake(self) -> None:
        self.readable.set()
        self.readable = trio.Event()


class _StreamState:
    __slots__ = ("_done", "delay", "ends_closed", "hosts", "link", "pipes", "reset")

    def __init__(self, dialler: SimHost, listener: SimHost, link: _Link, delay: float) -> None:
        self.hosts = (dialler, listener)
        self.link = link
        self.delay = delay
        self.reset = False
        self.pipes = (_Pipe(), _Pipe())  # to the listener, to the dialler
        self.ends_closed = 0
        self._done = False
        link.streams += 1
        for host in self.hosts:
            host.streams.add(self)

    def reset_now(self) -> None:
        if self.reset:
            return
        self.reset = True
        for pipe in self.pipes:
            pipe.chunks.clear()
            pipe.ready.clear()
            pipe.wake()
        self.forget()

    def forget(self) -> None:
        if self._done:
            return
        self._done = True
        self.link.streams -= 1
        for host in self.hosts:
            host.streams.discard(self)


class SimStream:
    """One end of a stream, as ``MemoryStream`` but every chunk, and the end of stream, arrives one link
    latency after it was written. Raises py-libp2p's stream errors, as a yamux stream does."""

    __slots__ = ("_in", "_out", "_protocol", "_remote", "_state", "muxed_conn")

    def __init__(self, remote: SimHost, protocol: str, incoming: _Pipe, outgoing: _Pipe, state: _StreamState
                 ) -> None:
        self.muxed_conn = remote.conn  # .peer_id: the other end
        self._remote = remote
        self._protocol = protocol
        self._in, self._out, self._state = incoming, outgoing, state

    def get_protocol(self) -> str:
        return self._protocol

    def set_protocol(self, protocol: str) -> None:
        self._protocol = protocol

    async def read(self, n: int | None = -1) -> bytes:
        pipe = self._in
        while True:
            if self._state.reset:
                raise StreamReset("stream was reset")
            now = trio.current_time()
            while pipe.chunks and pipe.chunks[0][0] <= now:
                pipe.ready += pipe.chunks.popleft()[1]
            if pipe.ready:
                size = len(pipe.ready) if n is None or n < 0 else n
                data = bytes(pipe.ready[:size])
                del pipe.ready[:size]
                await trio.lowlevel.checkpoint()
                return data
            if pipe.chunks:
                await self._remote.fabric.timer.sleep_until(pipe.chunks[0][0])  # a reset is seen after it
            elif pipe.eof_at is None:
                await pipe.readable.wait()
            elif pipe.eof_at <= now:
                raise StreamEOF("stream is closed for receiving")
            else:
                with trio.move_on_at(pipe.eof_at):
                    await pipe.readable.wait()

    async def write(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if self._state.reset:
            raise StreamReset("stream was reset")
        if self._out.eof_at is not None:
            raise StreamClosed("stream is closed for sending")
        self._out.chunks.append((trio.current_time() + self._state.delay, bytes(data)))
        self._out.wake()
        self._remote.fabric.count(self._remote, "frame")

    async def close(self) -> None:
        state = self._state
        if self._out.eof_at is None:
            self._out.eof_at = trio.current_time() + state.delay
            self._out.wake()
            state.ends_closed += 1
            if state.ends_closed == 2:
                state.forget()
        await trio.lowlevel.checkpoint()

    async def reset(self) -> None:
        self._state.reset_now()
        await trio.lowlevel.checkpoint()


# -- hosts -------------------------------------------------------------------------------------------------


class _Conn:
    __slots__ = ("peer_id",)

    def __init__(self, peer_id: ID) -> None:
        self.peer_id = peer_id


class SimHost:
    """A node's host on the simulated network: the methods ``P2PNetwork`` and its components call."""

    negotiates_protocols = False  # a stream opens on its protocol (tasks/streams.py: open_with_first_frame)

    def __init__(self, fabric: SimFabric, peer_id: ID, index: int, nursery: trio.Nursery,
                 on_connection: Callable[[ID, bool], None], rng: random.Random) -> None:
        self.fabric, self.id, self.index = fabric, peer_id, index
        self.peer_id = str(peer_id)
        self.conn = _Conn(peer_id)
        self.key = int.from_bytes(hashlib.sha256(peer_id.to_bytes()).digest(), "big")
        self.region = rng.choices(range(len(REGIONS)), REGION_WEIGHTS)[0]
        self.access_s = rng.uniform(*ACCESS_MS) / 1000
        self.addr = f"/ip4/10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}/tcp/4001"
        self.handlers: dict[str, StreamHandler] = {}
        self.links: dict[SimHost, _Link] = {}
        self.streams: set[_StreamState] = set()
        self.on_connection = on_connection
        self.alive = True
        self.nursery = nursery
        self.dht: SimDHT = SimDHT(fabric, self)

    def __repr__(self) -> str:
        return f"SimHost({self.index})"

    def get_id(self) -> ID:
        return self.id

    def get_transport_addrs(self) -> list[str]:
        return [self.addr]

    def get_addrs(self) -> list[str]:
        return [f"{self.addr}/p2p/{self.peer_id}"]

    def get_connected_peers(self) -> list[ID]:
        return [other.id for other in self.links]

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        self.handlers[protocol] = handler

    def peer_addrs(self, peer_id: ID) -> tuple[str, ...]:
        host = self.fabric.hosts.get(str(peer_id))
        return (host.addr,) if host is not None else ()

    async def connect(self, info: Any) -> None:
        await self.link_to(str(info.peer_id))

    async def disconnect(self, peer_id: ID) -> None:
        await trio.lowlevel.checkpoint()
        remote = self.fabric.hosts.get(str(peer_id))
        link = self.links.get(remote) if remote is not None else None
        if link is not None:
            self.fabric.unlink(link)

    async def link_to(self, peer_id: str) -> _Link:
        """The connection to ``peer_id``, dialling it if there is none (``NoSuchPeer`` if it is gone)."""
        remote = self.fabric.hosts.get(peer_id)
        if remote is not None:
            link = self.links.get(remote)
            if link is not None:
                return link  # no checkpoint: the caller's own wait (a latency) follows at once
        if remote is None:
            await self.fabric.timer.sleep(2 * DIAL_ROUND_TRIPS * ACCESS_MS[1] / 1000)  # no answer there
            raise NoSuchPeer(f"{peer_id} is not on the network")
        await self.fabric.timer.sleep(2 * DIAL_ROUND_TRIPS * self.fabric.one_way(self, remote))
        if not remote.alive or not self.alive:
            raise NoSuchPeer(f"{peer_id} refused the connection")  # its process is gone: a reset
        link = self.links.get(remote)  # another task of ours may have dialled it meanwhile
        return link if link is not None else self.fabric.link(self, remote)

    async def new_stream(self, peer_id: ID, protocols: list[str]) -> SimStream:
        """A stream to ``peer_id`` on the first of ``protocols`` it handles; its handler starts one latency
        later in the listener's nursery. Our frames may go at once (they arrive after that latency)."""
        link = await self.link_to(str(peer_id))
        remote = link.other(self)
        delay = self.fabric.one_way(self, remote)
        protocol = next((p for p in protocols if p in remote.handlers), None)
        if protocol is None:
            await self.fabric.timer.sleep(2 * delay)  # multistream-select's "na"
            raise ProtocolNotSupported(f"{peer_id} speaks none of {', '.join(protocols)}")
        link.last_used = trio.current_time()
        state = _StreamState(self, remote, link, delay)
        to_listener, to_dialler = state.pipes
        ours = SimStream(remote, protocol, to_dialler, to_listener, state)
        theirs = SimStream(self, protocol, to_listener, to_dialler, state)
        self.fabric.count(remote, "stream")
        remote.nursery.start_soon(remote.serve, remote.handlers[protocol], theirs, state, delay)
        return ours

    async def serve(self, handler: StreamHandler, stream: SimStream, state: _StreamState, delay: float) -> None:
        await self.fabric.timer.sleep(delay)
        if state.reset:
            return
        try:
            await handler(stream)
        except Exception:  # as py-libp2p does: a handler's failure resets its stream, the host goes on
            log.exception("sim_stream_handler_failed", protocol=stream.get_protocol())
            await stream.reset()

    async def ping(self, peer_id: ID) -> list[float]:
        """libp2p ping over the connection (dialled if need be): one round trip, counted at the peer."""
        link = await self.link_to(str(peer_id))
        remote = link.other(self)
        rtt = 2 * self.fabric.one_way(self, remote)
        self.fabric.count(remote, "ping")
        await self.fabric.timer.sleep(rtt)
        if not remote.alive:
            raise NoSuchPeer(f"{peer_id} went away")
        return [rtt * 1000]

    async def maintain(self) -> None:
        """Keep at least ``target`` connections: dial peers from the routing table when under it."""
        rng = self.fabric.rng
        await self.fabric.timer.sleep(rng.uniform(0, MAINTAIN_EVERY_S))
        while True:
            missing = self.fabric.low_water - len(self.links)
            if missing > 0:
                for peer in self.dht.sample(missing, exclude=self.links):
                    self.nursery.start_soon(self._try_link, peer)
            await self.fabric.timer.sleep(MAINTAIN_EVERY_S)

    async def _try_link(self, peer: SimHost) -> None:
        try:
            await self.link_to(peer.peer_id)
        except NoSuchPeer:
            self.dht.forget(peer)


# -- the fabric ------------------------------------------------------------------------------------------------


class SimFabric:
    """The simulated network between the nodes of one process, and what it counts."""

    def __init__(self, *, seed: int, target_connections: int, keep_found_providers: bool = True) -> None:
        self.rng = random.Random(seed)
        self.dht_stats = DHTStats()
        self.keep_found_providers = keep_found_providers  # simdht.SimDHT.find_providers
        self.hosts: dict[str, SimHost] = {}
        self.low_water = target_connections
        self.high_water = 2 * target_connections
        self.received: list[int] = []  # per host index: messages it received (module docstring)
        self.kinds: Counter[str] = Counter()  # the same, network-wide, by kind
        self.dials = 0
        self.timer = Timer()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The fabric's timer, for as long as any node is attached (start it before the first)."""
        await self.timer.run(task_status=task_status)

    def one_way(self, a: SimHost, b: SimHost) -> float:
        """The one-way latency between two hosts, in seconds."""
        return ONE_WAY_MS[a.region][b.region] / 1000 + a.access_s + b.access_s

    def count(self, host: SimHost, kind: str) -> None:
        self.received[host.index] += 1
        self.kinds[kind] += 1

    def link(self, a: SimHost, b: SimHost) -> _Link:
        link = _Link(a, b, trio.current_time())
        a.links[b] = link
        b.links[a] = link
        self.dials += 1
        a.on_connection(b.id, True)
        b.on_connection(a.id, True)
        a.dht.heard_from(b)
        b.dht.heard_from(a)
        self._prune(a)
        self._prune(b)
        return link

    def unlink(self, link: _Link) -> None:
        for host in (link.a, link.b):
            other = link.other(host)
            if host.links.get(other) is link:
                del host.links[other]
                if host.alive:
                    host.on_connection(other.id, False)
        for state in [s for s in link.a.streams if s.link is link]:
            state.reset_now()

    def _prune(self, host: SimHost) -> None:
        if len(host.links) <= self.high_water:
            return
        idle = sorted((link for link in host.links.values() if link.streams == 0), key=lambda lk: lk.last_used)
        for link in idle[: len(host.links) - self.low_water]:
            self.unlink(link)

    @asynccontextmanager
    async def attach(self, peer_id: ID, on_connection: Callable[[ID, bool], None], validator: Any
                     ) -> AsyncIterator[tuple[SimHost, SimDHT]]:
        """Join as ``peer_id`` until the block ends; leaving closes every connection and resets every stream
        of the node, and its DHT state (the records it stored for others) goes with it."""
        if str(peer_id) in self.hosts:
            raise ValueError(f"{peer_id} is already on the network")
        async with trio.open_nursery() as nursery:
            host = SimHost(self, peer_id, len(self.received), nursery, on_connection, self.rng)
            self.received.append(0)
            host.dht.register_validator("hyperion", validator)
            self.hosts[host.peer_id] = host
            nursery.start_soon(host.maintain)
            try:
                yield host, host.dht
            finally:
                host.alive = False
                del self.hosts[host.peer_id]
                for link in list(host.links.values()):
                    self.unlink(link)
                for state in list(host.streams):
                    state.reset_now()
                nursery.cancel_scope.cancel()

    def stack(self, identity: Any, settings: Any, validator: Any, stats: Any, table: Any,
              on_connection: Callable[[ID, bool], None]) -> AbstractAsyncContextManager[tuple[SimHost, SimDHT]]:
        """``P2PNetwork``'s ``stack``: this network in place of the libp2p host and DHT."""
        return self.attach(identity.peer_id, on_connection, validator)
