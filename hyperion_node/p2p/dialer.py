"""The dialler: the bootstrap peers and the peer cache dialled at start, and the cache kept up to date.

A restarted node redials the peers it knew (the peer cache, in the data dir) along with its bootstrap list,
so it rejoins even when every bootstrap peer is down. Each dial is bounded by ``p2p.dial_timeout_s``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import multiaddr
import structlog
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr

from hyperion_node.p2p.liveness import cache_peer
from hyperion_node.p2p.peer_table import PeerEntry, PeerTable, PresenceEvent
from hyperion_node.p2p.settings import P2PSettings
from hyperion_node.store import Store

log = structlog.get_logger(__name__)

# A node with no connection dials its bootstrap peers and peer cache again after this long, doubling up to the max.
REJOIN_MIN_S = 1.0
REJOIN_MAX_S = 60.0


class Dialer:
    def __init__(self, peer_id: str, settings: P2PSettings, store: Store, table: PeerTable,
                 emit: Callable[[list[PresenceEvent]], None]) -> None:
        self.peer_id = peer_id
        self.settings = settings
        self.store = store
        self.table = table
        self._emit = emit
        self.host: Any = None
        self.dht: Any = None
        # What the peer cache holds, per peer, this run (bounded: peers come and go for weeks).
        self._cached_addrs: OrderedDict[str, tuple[str, ...]] = OrderedDict()

    async def dial(self, info: PeerInfo) -> bool:
        if str(info.peer_id) == self.peer_id:
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

    async def dial_known_peers(self, host: Any, dht: Any, *, again: bool = False) -> None:
        """Bootstrap peers and the peer cache, in parallel; each bounded by dial_timeout_s. ``again``: a retry
        while this node is alone, past py-libp2p's negative cache (a peer whose addresses all failed is not
        dialled for 60 s): the caller's backoff paces these dials."""
        self.host, self.dht = host, dht
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

        unblock = getattr(host.get_network(), "unblock_peer", None) if again and hasattr(host, "get_network") else None

        async def dial(key: str, info: PeerInfo) -> None:
            if unblock is not None:
                unblock(info.peer_id)
            results[key] = await self.dial(info)

        async with trio.open_nursery() as nursery:
            for key, info in infos.items():
                nursery.start_soon(dial, key, info)
        log.info("dialled_known_peers", reached=sum(results.values()), tried=len(results))

    async def rejoin_loop(self, host: Any) -> None:
        """While this node holds no connection, dial the bootstrap peers and the peer cache again, after
        REJOIN_MIN_S, doubling to REJOIN_MAX_S. Seen: a node whose one bootstrap peer was too loaded to answer at
        start stayed alone for good (nothing else dials a peer the table does not know), and every task it was
        asked for failed."""
        wait = REJOIN_MIN_S
        while True:
            await trio.sleep(wait)
            if host.get_connected_peers():
                wait = REJOIN_MIN_S
                continue
            await self.dial_known_peers(host, self.dht, again=True)
            wait = min(2 * wait, REJOIN_MAX_S)

    def addresses_changed(self, peer_id: str, addrs: tuple[str, ...]) -> bool:
        """Whether a peer's addresses (from its heartbeat) are new to the cache this run, remembering them."""
        if not addrs or self._cached_addrs.get(peer_id) == addrs:
            return False
        self._cached_addrs.pop(peer_id, None)
        self._cached_addrs[peer_id] = addrs
        if len(self._cached_addrs) > 4 * self.settings.peer_cache_size:
            self._cached_addrs.popitem(last=False)
        return True

    async def remember(self, entry: PeerEntry) -> None:
        await cache_peer(self.store, entry, self.settings.peer_cache_size)
