"""Presence: a node's load and health, pushed straight to the peers that route work to it, and no one else.

Before, every node gossiped a heartbeat to every other node on one topic: each node received N-1 heartbeats
per interval, relayed by up to D_high mesh peers, so its idle CPU grew with N and the network's with N²
(2.5 % of a core per idle daemon at N = 10, 4.1 % at N = 20; issue #22). Load matters only to a requester
choosing among the providers of what it asks for, and liveness only between peers that hold a connection.
So (``/hyperion/presence/2``)::

    requester (subscriber)                 provider
    open /hyperion/presence/2 ──────────▶  up to MAX_SUBSCRIBERS at once; BUSY beyond (the stream is reset)
                     ◀──────────────────── HEARTBEAT now, then every p2p.heartbeat_interval_s, and within
                                           NUDGE_S of a change of its load (a task admitted or finished)
    close the stream ──────────────────▶   when it no longer routes there (SUBSCRIPTION_TTL_S after its last
                                           use), or the provider is leaving: a last LEAVING heartbeat

A requester subscribes to the providers of each capability it routes to, the scheduler's shortlist of them at
most (``want``), so a node's presence traffic is set by its own requests and its subscribers (both bounded),
never by N; an idle network sends none. Liveness between connected peers comes from the connection and libp2p
ping (``P2PNetwork``'s liveness loop), which costs each node its connection count, itself bounded by the
connection watermarks.

Frames: varint-length-prefixed signed heartbeats (``p2p/messages.Heartbeat``). The stream's remote is
authenticated by Noise, so a heartbeat must be the remote's own, and the signer's sequence numbers and
timestamps still decide what is new (``limits.HeartbeatGate``): a stale one is dropped and charged to nobody.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import structlog
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from hyperion_node.p2p.limits import Freshness, HeartbeatGate, PeerSlots
from hyperion_node.p2p.messages import MAX_HEARTBEAT_BYTES, Heartbeat, MalformedMessage, encode_frame
from hyperion_node.p2p.peer_table import PeerTable, PresenceEvent
from hyperion_node.tasks.messages import FrameReader, MalformedFrame
from hyperion_node.tasks.streams import STREAM_ERRORS, read_frame, reset_quietly

log = structlog.get_logger(__name__)

PRESENCE_PROTOCOL = TProtocol("/hyperion/presence/2")
# One frame, a LEAVING heartbeat, to each connected peer that is not a subscriber, when a node stops: they mark
# it "left" at once instead of dead after a timeout (a connection that closes proves nothing: peer_table.py).
GOODBYE_PROTOCOL = TProtocol("/hyperion/goodbye/1")
# Subscribers one provider feeds at once: every requester routing to it, in any network this software has run;
# past it a subscriber is refused and routes on the provider's record (its load at publication time).
MAX_SUBSCRIBERS = 128
# A subscription outlives its last use by this long: a requester sending a task a minute keeps its providers'
# load fresh, one that stopped asking lets the streams go.
SUBSCRIPTION_TTL_S = 60.0
# A change of load is pushed at most this soon after the last heartbeat (a burst of tasks: one heartbeat).
NUDGE_S = 0.25
WRITE_TIMEOUT_S = 2.0
# A subscription whose stream broke is opened again after this long (doubling up to the heartbeat interval).
RESUBSCRIBE_S = 0.5
# A subscriber gone: its stream broke, or it stopped reading (_write).
_GONE: tuple[type[BaseException], ...] = (*STREAM_ERRORS, trio.ClosedResourceError)
_GONE_OR_SLOW: tuple[type[BaseException], ...] = (*_GONE, trio.TooSlowError)


class Presence:
    """Both sides of ``/hyperion/presence/2`` for one node (a trio component, started by ``P2PNetwork``).

    ``heartbeat()`` builds this node's signed heartbeat; ``deliver(hb)`` takes a checked heartbeat of a peer
    (the peer table and the scheduler's health trends read it); ``emit`` persists presence events.
    """

    def __init__(self, *, peer_id: str, table: PeerTable, gate: HeartbeatGate, interval_s: float,
                 heartbeat: Callable[[], bytes], deliver: Callable[[Heartbeat], None],
                 emit: Callable[[list[PresenceEvent]], None], reject: Callable[[str, str], None]) -> None:
        self.peer_id = peer_id
        self.table = table
        self.gate = gate
        self.interval_s = interval_s
        self._heartbeat = heartbeat
        self._deliver = deliver
        self._emit = emit
        self._reject = reject  # (peer, reason): counted and scored down
        self.host: Any = None
        self._subscribers: dict[str, Any] = {}  # peer -> the stream we push heartbeats on
        self._places = PeerSlots(per_peer=1, total=MAX_SUBSCRIBERS)
        self._subscriptions: OrderedDict[str, float] = OrderedDict()  # peer -> wanted until (trio clock)
        self._streams: dict[str, trio.CancelScope] = {}  # peer -> the scope of our reader of its heartbeats
        self._nursery: trio.Nursery | None = None
        self._nudged = trio.Event()
        self._latest = b""  # the newest heartbeat for the subscribers' writers
        self._fresh = trio.Event()  # set (and replaced) when there is a newer one
        self._final: bytes | None = None  # the LEAVING heartbeat, once the node stops
        self._emptied = trio.Event()  # set when the last subscriber's stream ends
        self._leaving = False
        self.received = 0  # heartbeats taken, for the message-count tests and benches

    # -- the component -----------------------------------------------------------------------------------

    async def run(self, host: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.host = host
        host.set_stream_handler(PRESENCE_PROTOCOL, self._serve)
        host.set_stream_handler(GOODBYE_PROTOCOL, self._goodbye)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._push_loop)
                nursery.start_soon(self._expire_loop)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def nudge(self) -> None:
        """This node's load changed: push a heartbeat to the subscribers soon (within NUDGE_S)."""
        self._nudged.set()

    def subscribers(self) -> list[str]:
        return sorted(self._subscribers)

    def subscriptions(self) -> list[str]:
        return sorted(self._streams)

    # -- provider side: pushing this node's heartbeats ---------------------------------------------------

    async def _serve(self, stream: Any) -> None:
        """One subscriber: its own writer (the latest heartbeat, whenever there is a newer one), so that a slow
        subscriber delays nobody else's heartbeats and is dropped once a write takes WRITE_TIMEOUT_S; and a
        reader that ends the subscription when the subscriber closes (it sends nothing)."""
        peer = str(stream.muxed_conn.peer_id)
        if self._leaving or not self._places.take(peer):
            await reset_quietly(stream)  # over the cap, or already subscribed on another stream
            return
        self._subscribers[peer] = stream
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch, peer, stream, nursery.cancel_scope)
                frame = self._heartbeat()
                while True:
                    await self._write(peer, stream, frame)
                    if self._final is not None:
                        return
                    sent = self._latest
                    while self._latest is sent and self._final is None:
                        await self._fresh.wait()
                    frame = self._final if self._final is not None else self._latest
        except _GONE:
            return
        finally:
            self._subscribers.pop(peer, None)
            self._places.give(peer)
            if not self._subscribers:
                self._emptied.set()
            with trio.CancelScope(shield=True):
                await reset_quietly(stream)

    async def _watch(self, peer: str, stream: Any, scope: trio.CancelScope) -> None:
        try:
            if await stream.read(1):  # until the subscriber closes or goes away: it sends nothing
                self._reject(peer, "out_of_order")
        except _GONE:
            pass
        scope.cancel()

    async def _write(self, peer: str, stream: Any, frame: bytes) -> None:
        with trio.move_on_after(WRITE_TIMEOUT_S) as scope:
            await stream.write(encode_frame(frame))
        if scope.cancelled_caught:  # a subscriber that does not read is dropped, not waited for
            raise trio.ClosedResourceError(f"subscriber {peer} does not read")

    async def _push_loop(self) -> None:
        while True:
            with trio.move_on_after(self.interval_s):
                await self._nudged.wait()
                await trio.sleep(NUDGE_S)  # a burst of changes: one heartbeat
            self._nudged = trio.Event()
            if self._leaving:
                return
            await self.push()

    async def push(self) -> None:
        """A new heartbeat for every subscriber: each one's writer sends it as soon as it can."""
        await trio.lowlevel.checkpoint()
        if not self._subscribers:
            return
        self._latest = self._heartbeat()
        self._fresh.set()
        self._fresh = trio.Event()

    async def leave(self, final: bytes) -> None:
        """Tell every subscriber this node is leaving (its last heartbeat), and every other connected peer with
        a goodbye; then stop pushing."""
        self._leaving = True
        self._final = final  # each subscriber's writer sends it last
        self._emptied = trio.Event()
        self._fresh.set()
        with trio.move_on_after(1.0):
            async with trio.open_nursery() as nursery:
                for peer_id in list(self.host.get_connected_peers()) if self.host is not None else []:
                    if str(peer_id) not in self._subscribers:
                        nursery.start_soon(self._say_goodbye, peer_id, final)
            if self._subscribers:  # their writers sending the last heartbeat
                await self._emptied.wait()

    async def _say_goodbye(self, peer_id: ID, final: bytes) -> None:
        try:
            stream = await self.host.new_stream(peer_id, [GOODBYE_PROTOCOL])
            await stream.write(encode_frame(final))
            await stream.close()
        except Exception as exc:  # it left first, or does not speak goodbye: a timeout will tell it
            log.debug("goodbye_not_sent", peer=str(peer_id), error=type(exc).__name__)

    async def _goodbye(self, stream: Any) -> None:
        peer = str(stream.muxed_conn.peer_id)
        try:
            with trio.fail_after(5.0):
                self._take(peer, await read_frame(stream, FrameReader(MAX_HEARTBEAT_BYTES)))
        except (MalformedFrame, MalformedMessage) as exc:
            self._reject(peer, getattr(exc, "reason", "bad_frame"))
        except _GONE_OR_SLOW:
            pass
        finally:
            await reset_quietly(stream)

    # -- requester side: subscribing to the providers it routes to ---------------------------------------

    def want(self, peers: Iterable[str], now: float) -> None:
        """This node routes to these peers now: keep (or open) a subscription to each for SUBSCRIPTION_TTL_S."""
        for peer in peers:
            if peer == self.peer_id:
                continue
            self._subscriptions.pop(peer, None)
            self._subscriptions[peer] = now + SUBSCRIPTION_TTL_S
            if peer not in self._streams and self._nursery is not None:
                scope = trio.CancelScope()
                self._streams[peer] = scope
                self._nursery.start_soon(self._subscribe, peer, scope)

    async def _subscribe(self, peer: str, scope: trio.CancelScope) -> None:
        """Hold a subscription while it is wanted. A stream that breaks is opened again (after RESUBSCRIBE_S,
        doubling up to the heartbeat interval): a provider that crashed fails that dial and is dead at once
        here, one whose connection was only pruned answers it."""
        try:
            with scope:
                delay = RESUBSCRIBE_S
                while peer in self._subscriptions and await self._read_heartbeats(peer):
                    entry = self.table.get(peer)
                    if entry is not None and entry.state.value in ("left", "dead"):
                        return
                    await trio.sleep(delay)
                    delay = min(2 * delay, max(self.interval_s, RESUBSCRIBE_S))
        finally:
            if self._streams.get(peer) is scope:
                del self._streams[peer]

    async def _read_heartbeats(self, peer: str) -> bool:
        """Read the peer's heartbeats until its stream ends; False when no stream could be opened (the peer
        is then dead here) or it sent something it must not."""
        try:
            with trio.fail_after(5.0):
                stream = await self.host.new_stream(ID.from_base58(peer), [PRESENCE_PROTOCOL])
        except Exception as exc:  # py-libp2p raises many types for a peer it cannot reach or that refuses
            log.debug("presence_subscribe_failed", peer=peer, error=type(exc).__name__)
            self._emit(self.table.unreachable(peer, trio.current_time(), "no presence stream"))
            return False
        reader = FrameReader(MAX_HEARTBEAT_BYTES)
        try:
            while True:
                data = await read_frame(stream, reader)
                self._take(peer, data)
        except (MalformedFrame, MalformedMessage) as exc:
            self._reject(peer, getattr(exc, "reason", "bad_frame"))
            return False
        except STREAM_ERRORS:
            return True  # the provider went away, or dropped us: the caller tries again
        finally:
            with trio.CancelScope(shield=True):
                await reset_quietly(stream)

    def _take(self, peer: str, data: bytes) -> None:
        hb = Heartbeat.decode(data, signed_by=peer)  # sealed by the stream's authenticated remote, or refused
        if hb.peer_id != peer:
            raise MalformedMessage("sender_mismatch", f"{hb.peer_id} over a stream from {peer}")
        fresh = self.gate.check(peer, hb.seq, hb.time, time.time())
        if fresh is not Freshness.NEW:
            if fresh is not Freshness.STALE:
                self._reject(peer, fresh.value)
            return
        self.received += 1
        self._deliver(hb)

    async def _expire_loop(self) -> None:
        while True:
            await trio.sleep(min(self.interval_s, SUBSCRIPTION_TTL_S / 4))
            now = trio.current_time()
            while self._subscriptions:
                peer, until = next(iter(self._subscriptions.items()))
                if until > now:
                    break
                del self._subscriptions[peer]
                scope = self._streams.pop(peer, None)
                if scope is not None:
                    scope.cancel()
