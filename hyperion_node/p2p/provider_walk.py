"""Provider lookups that stop as soon as they have an answer (``ProviderWalk``).

py-libp2p's ``KadDHT.find_providers`` first walks all the way to the key's closest peers (an iterative
FIND_NODE, each query under a 10 s timeout), only then asks them for providers, and goes on asking until it
holds ``count`` providers or runs out of peers; and each provider's capability record is then a ``get_value``,
another whole walk. Measured on a 2-core machine at N = 20: a new node's provider lookup took 2.4 s, and its
first task failed (404) after 3.4-4.1 s, ``tasks.lookup_timeout_s`` being 3 s.

Kademlia asks for providers at every hop: a peer that holds provider records for the key answers them, and
every peer answers with the peers it knows closer to the key. So the walk here:

* starts from the routing table's peers closest to the key, and the peers this node is connected to (a new
  node's bootstrap peer is both);
* asks GET_PROVIDERS of ALPHA peers at a time (at the start, of up to START_WAVE connected peers), connected
  peers first, then closest first, a new query as each one ends, each under QUERY_TIMEOUT_S, and ALPHA more
  whenever HEDGE_S passes without an answer; adding the closer peers each answer names (with their addresses,
  so they can be dialled);
* stops once ``enough`` providers are named, MAX_QUERIES peers were asked, or no peer is left to ask; and
  GRACE_S after the first provider is named, starting no query in between (in a network with fewer providers
  than ``enough``, the walk would otherwise ask every peer).

A provider's capability record is then asked of the provider itself (``record_from``: one GET_VALUE to the peer
the task will go to anyway, on a connection opened at the addresses its provider record gave); the caller
checks it with the same validator as any DHT record, since a peer may answer anything.

The memory fabric and the simulation have DHTs of their own; this walk is for py-libp2p's (``supports``).
"""

from __future__ import annotations

import math
from typing import Any

import structlog
import trio
from libp2p.kad_dht.common import MAX_DHT_MESSAGE_SIZE
from libp2p.kad_dht.common import PROTOCOL_ID as KAD_PROTOCOL
from libp2p.kad_dht.kad_dht import _encode_key
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from libp2p.kad_dht.utils import sort_peer_ids_by_distance
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.peer.peerstore import env_to_send_in_RPC
from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes_limited
from multiaddr import Multiaddr

log = structlog.get_logger(__name__)

ALPHA = 3  # queries in flight at once (Kademlia's alpha) ...
START_WAVE = 8  # ... or as many of the connected peers, up to this, at the start (no dial to wait for)
# Without any answer for this long, ALPHA more queries may start beside the ones in flight (a hedge: on a loaded
# machine one GET_PROVIDERS took over 1 s, and the closest peers are not always the quickest).
HEDGE_S = 0.4
QUERY_TIMEOUT_S = 1.5  # one peer's answer; py-libp2p waits 10 s
MAX_QUERIES = 20  # peers asked in one walk, at most
# Once a provider is named, the queries in flight have this long to name more, and no new one starts: a task
# waits on the walk, and the scheduler's background refresh finds the rest.
GRACE_S = 0.3
START_PEERS = 20  # the routing table's closest peers the walk starts from
ADDR_TTL_S = 600  # how long addresses learned from answers stay in the peerstore (py-libp2p's own figure)


def supports(dht: Any) -> bool:
    """Whether ``dht`` is py-libp2p's (the walk speaks its wire messages through its host)."""
    return hasattr(dht, "routing_table") and hasattr(dht, "host")


def dht_key(key: str) -> bytes:
    """A provider or value key as py-libp2p puts it on the wire (a hex multihash becomes its bytes)."""
    return _encode_key(key)


class ProviderWalk:
    def __init__(self, dht: Any) -> None:
        self._dht = dht
        self._host = dht.host

    async def providers(self, key: str, enough: int) -> list[PeerInfo]:
        """Providers of ``key`` (each once, with the addresses their provider records gave), as soon as
        ``enough`` are named or the walk ends; those this node stores itself, if it stores any."""
        started = trio.current_time()
        target = dht_key(key)
        local_id = self._host.get_id()
        found: dict[ID, PeerInfo] = {}
        for info in self._dht.provider_store.get_providers(target):
            found.setdefault(info.peer_id, info)
        if found:  # as py-libp2p's lookup does: the advertiser keeps provider records at their closest peers
            return list(found.values())
        connected = [p for p in self._host.get_connected_peers() if p != local_id]
        skip = {local_id, *connected}
        known = [p for p in self._dht.routing_table.find_local_closest_peers(target, START_PEERS) if p not in skip]
        # The connected peers closest to the key first (no dial to wait for), then the rest, closest first.
        candidates = sort_peer_ids_by_distance(target, connected) + sort_peer_ids_by_distance(target, known)
        limit = max(ALPHA, min(START_WAVE, len(connected)))  # queries in flight at once
        asked: set[ID] = set()
        answers_in, answers_out = trio.open_memory_channel[tuple[list[PeerInfo], list[PeerInfo]]](math.inf)

        async def ask(peer: ID) -> None:
            answer: tuple[list[PeerInfo], list[PeerInfo]] = ([], [])
            with trio.move_on_after(QUERY_TIMEOUT_S):
                try:
                    answer = await self._get_providers(peer, target)
                except Exception as exc:  # a peer that fails or answers garbage names no one
                    log.debug("provider_query_failed", peer=str(peer), error=type(exc).__name__)
            log.debug("provider_query", peer=str(peer), providers=len(answer[0]), closer=len(answer[1]),
                      ms=round((trio.current_time() - started) * 1000))
            answers_in.send_nowait(answer)

        async with trio.open_nursery() as nursery:
            in_flight = 0
            grace: float | None = None  # from the first provider named: GRACE_S for the queries in flight
            first_ms: float | None = None
            while True:
                while (in_flight < limit and candidates and len(asked) < MAX_QUERIES and len(found) < enough
                       and grace is None):
                    peer = candidates.pop(0)
                    asked.add(peer)
                    in_flight += 1
                    nursery.start_soon(ask, peer)
                if in_flight == 0 or len(found) >= enough:
                    break
                with trio.move_on_at(trio.current_time() + HEDGE_S if grace is None else grace) as waited:
                    providers, closer = await answers_out.receive()
                if waited.cancelled_caught:
                    if grace is not None:
                        break
                    limit += ALPHA  # no answer for HEDGE_S: ask more peers beside the slow ones
                    continue
                in_flight -= 1
                for info in providers:
                    if info.peer_id not in found:
                        found[info.peer_id] = info
                        self._remember(info)
                if found and grace is None:  # set before the refill at the top: no new query starts from here
                    grace = trio.current_time() + GRACE_S
                    first_ms = (trio.current_time() - started) * 1000
                fresh = [c.peer_id for c in closer
                         if c.peer_id != local_id and c.peer_id not in asked and c.peer_id not in candidates]
                for info in closer:
                    self._remember(info)
                if fresh:
                    candidates = sort_peer_ids_by_distance(target, candidates + fresh)
            nursery.cancel_scope.cancel()
        log.debug("provider_walk", key=key[:16], named=len(found), asked=len(asked),
                  ms=round((trio.current_time() - started) * 1000), first_ms=first_ms and round(first_ms))
        return list(found.values())

    async def record_from(self, peer: ID, key: str) -> bytes | None:
        """The value ``peer`` itself holds under ``key`` (a provider's own capability record), unchecked: the
        caller validates it. None when the peer holds none or does not answer within QUERY_TIMEOUT_S."""
        with trio.move_on_after(QUERY_TIMEOUT_S):
            try:
                value: bytes | None = await self._dht.value_store._get_from_peer(peer, dht_key(key))
                return value
            except Exception as exc:  # py-libp2p raises many types for a peer that fails
                log.debug("record_query_failed", peer=str(peer), error=type(exc).__name__)
        return None

    def _remember(self, info: PeerInfo) -> None:
        if info.addrs:
            self._host.get_peerstore().add_addrs(info.peer_id, info.addrs, ADDR_TTL_S)

    async def _get_providers(self, peer: ID, target: bytes) -> tuple[list[PeerInfo], list[PeerInfo]]:
        """One GET_PROVIDERS: the providers ``peer`` holds for ``target``, and the peers it knows closer, each
        with the addresses it gave (py-libp2p's own call drops the closer peers' addresses)."""
        stream = await self._host.new_stream(peer, [KAD_PROTOCOL])
        try:
            message = Message()
            message.type = Message.MessageType.GET_PROVIDERS
            message.key = target
            envelope, _ = env_to_send_in_RPC(self._host)
            message.senderRecord = envelope
            await stream.write(encode_varint_prefixed(message.SerializeToString()))
            response = Message()
            response.ParseFromString(await read_varint_prefixed_bytes_limited(stream, MAX_DHT_MESSAGE_SIZE))
        finally:
            await stream.close()
        if response.type != Message.MessageType.GET_PROVIDERS:
            return [], []
        return _infos(response.providerPeers), _infos(response.closerPeers)


def _infos(peers: Any) -> list[PeerInfo]:
    out = []
    for peer in peers:
        try:
            addrs = []
            for raw in peer.addrs:
                try:
                    addrs.append(Multiaddr(raw))
                except Exception:  # an address we cannot parse is one we cannot dial
                    continue
            out.append(PeerInfo(ID(peer.id), addrs))
        except Exception:  # not a peer ID
            continue
    return out
