"""The advertiser: this node's signed capability record in the DHT, and a provider record per offer, kept
fresh (a trio component, run by ``P2PNetwork``).

Published at start, at a third of the record's lifetime, when the offers change, and when the routing table
grows: provider records live on the peers closest to the key, and a node that provided before those peers
were known has its records only at home (py-libp2p's lookup stops at local providers when it has any, so
providers must push their records out).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog
import trio

from hyperion_node import __version__
from hyperion_node.identity import Identity
from hyperion_node.p2p.local import LocalState
from hyperion_node.p2p.messages import CapabilityRecord, OfferAd, record_key
from hyperion_node.p2p.settings import P2PSettings

log = structlog.get_logger(__name__)


class Advertiser:
    def __init__(self, identity: Identity, settings: P2PSettings, local: LocalState, *, name: str,
                 addrs: Callable[[], list[str]]) -> None:
        self.identity = identity
        self.peer_id = str(identity.peer_id)
        self.settings = settings
        self.local = local
        self.name = name
        self._addrs = addrs
        self._record_seq = time.time_ns() // 1_000_000  # monotonic across restarts without storing it
        self.advertised: tuple[OfferAd, ...] | None = None
        self.dht: Any = None

    def record(self, offers: tuple[OfferAd, ...] | None = None) -> CapabilityRecord:
        """This node's capability record, as it would be published now."""
        offers = tuple(self.local.offers()) if offers is None else offers
        self._record_seq += 1
        _queue, active = self.local.load()
        capacity = sum(o.capacity for o in offers) or 1
        return CapabilityRecord(
            peer_id=self.peer_id, seq=self._record_seq, expires_at=time.time() + self.settings.record_ttl_s,
            name=self.name, addrs=tuple(a.rsplit("/p2p/", 1)[0] for a in self._addrs()),
            hardware=self.local.hardware(), offers=offers, load=round(active / capacity, 3),
            node_version=__version__,
        )

    async def advertise(self) -> None:
        """Publish our signed record and one provider record per offer."""
        assert self.dht is not None
        offers = tuple(self.local.offers())
        record = self.record(offers)
        await self.dht.put_value(record_key(self.peer_id), record.seal(self.identity))
        for offer in offers:
            await self.dht.provide(offer.capability_key())
        self.advertised = offers
        log.info("advertised", offers=[f"{o.runtime}/{o.item}" for o in offers], seq=record.seq)

    async def run(self, dht: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.dht = dht
        republish = self.settings.record_ttl_s / 3
        last, table_size = -republish, 0
        task_status.started()
        while True:
            now, size = trio.current_time(), dht.get_routing_table_size()
            grew = size > table_size and (table_size < 20 or size >= 2 * table_size)
            if now - last >= republish or tuple(self.local.offers()) != self.advertised or grew:
                with trio.move_on_after(30):
                    await self.advertise()
                last, table_size = now, size
            await trio.sleep(min(self.settings.heartbeat_interval_s, republish))
