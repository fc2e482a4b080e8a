"""The simulated network's Kademlia DHT (``simnet.py``): what ``P2PNetwork`` asks of py-libp2p's ``KadDHT``,
answered by per-node routing tables and iterative lookups over the simulated links.

* IDs and distance: SHA-256 of the peer ID's bytes, and of the key, XORed (``census.distance``, as
  py-libp2p's Kademlia does).
* routing table: k-buckets (k = 20) by the length of the XOR distance; a peer is added when it answers one
  of our queries, queries us, or connects to us. A full bucket keeps its peers (Kademlia prefers long-lived
  ones) unless its least recently seen one is gone, which a ping would have shown; a peer that fails a query
  is dropped.
* lookups: in rounds of up to alpha = 3 parallel queries to the closest peers known and not yet asked, each
  answer bringing the k closest peers the remote knows, until the k closest known have all answered
  (the Kademlia paper's termination). A round takes the round trip of its slowest query (libp2p keeps alpha
  queries in flight instead: latency here is, if anything, an upper bound). GET_PROVIDERS stops once
  ``count`` providers are known, GET_VALUE at the first value that passes our validator (quorum 1). Each
  lookup's rounds ("hops"), RPCs and virtual time are recorded in ``DHTStats``.
* records: a value, or a provider record, is stored at the k closest nodes to its key (a lookup, then one
  STORE / ADD_PROVIDER RPC to each, in parallel); each storing node checks a value with its own registered
  validator (``records.SENDER`` names the sender, as ``libp2p_stack.guard_dht_streams`` does), keeps the
  better of old and new (``select``) and at most ``MAX_DHT_VALUES``. A node with providers of the key
  answers from its own store without a lookup (py-libp2p does so: ``advertiser.py`` says why).

Left out: bucket refreshes and the random walk (``p2p.dht_random_walk`` is off in the simulation), provider
record expiry (48 h, longer than any run), a per-RPC timeout (a departed node refuses at once: ``simnet.py``),
and py-libp2p's two-phase lookups (FIND_NODE to the end, then GET_PROVIDERS / GET_VALUE in a second pass):
the lookups here are the spec's single pass, so they take fewer RPCs than py-libp2p 0.x would.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from libp2p.peer.id import ID

from hyperion_demo.fabric import ProviderInfo
from hyperion_node.p2p.libp2p_stack import MAX_DHT_VALUES
from hyperion_node.p2p.messages import MalformedMessage
from hyperion_node.p2p.records import SENDER

if TYPE_CHECKING:
    from hyperion_demo.simnet import SimFabric, SimHost

K = 20  # bucket size and replication (the Kademlia paper; py-libp2p's BUCKET_SIZE)
ALPHA = 3  # parallel queries per round (the Kademlia paper; py-libp2p uses 10)
MAX_PROVIDERS_PER_MSG = 20  # py-libp2p's kad_dht.common


def key_of(data: bytes) -> int:
    return int.from_bytes(hashlib.sha256(data).digest(), "big")


def provider_key(key: str) -> bytes:
    """A provider key as py-libp2p encodes it (``kad_dht._encode_key``): a hex multihash, else the text."""
    try:
        return bytes.fromhex(key)
    except ValueError:
        return key.encode()


@dataclass
class DHTStats:
    """What the lookups cost, network-wide: per kind, how many, their RPCs and rounds; for provider lookups
    each one's (rounds, virtual ms, providers found)."""

    lookups: Counter[str] = field(default_factory=Counter)
    rpcs: Counter[str] = field(default_factory=Counter)
    rounds: Counter[str] = field(default_factory=Counter)
    provider_lookups: list[tuple[int, float, int]] = field(default_factory=list)
    local_provider_answers: int = 0  # find_providers answered from the node's own store


class SimDHT:
    """One node's DHT: its routing table and the records it stores for the network."""

    def __init__(self, fabric: SimFabric, host: SimHost) -> None:
        self.fabric, self.host = fabric, host
        self.buckets: dict[int, list[SimHost]] = {}  # XOR distance's bit length -> peers, least recent first
        self.size = 0
        self.values: dict[str, bytes] = {}
        self.providers: dict[bytes, dict[SimHost, None]] = {}
        self.validators: dict[str, Any] = {}

    # -- the routing table --------------------------------------------------------------------------------

    def heard_from(self, peer: SimHost) -> None:
        if peer is self.host:
            return
        index = (self.host.key ^ peer.key).bit_length()
        bucket = self.buckets.setdefault(index, [])
        if peer in bucket:
            bucket.remove(peer)
            bucket.append(peer)
        elif len(bucket) < K:
            bucket.append(peer)
            self.size += 1
        elif not bucket[0].alive:
            bucket.pop(0)
            bucket.append(peer)

    def forget(self, peer: SimHost) -> None:
        bucket = self.buckets.get((self.host.key ^ peer.key).bit_length())
        if bucket is not None and peer in bucket:
            bucket.remove(peer)
            self.size -= 1

    def closest(self, target: int, count: int = K) -> list[SimHost]:
        """The ``count`` peers of this table closest to ``target``. The peers in the bucket of the target's
        own distance are all closer than any in a lower bucket, and those closer than any in a higher one,
        so only as many buckets as needed are sorted."""
        mine = (self.host.key ^ target).bit_length()

        def dist(h: SimHost) -> int:
            return h.key ^ target

        out = sorted(self.buckets.get(mine, ()), key=dist)
        if len(out) < count:
            out += sorted((h for i, b in self.buckets.items() if i < mine for h in b), key=dist)
            for index in sorted(i for i in self.buckets if i > mine):
                if len(out) >= count:
                    break
                out += sorted(self.buckets[index], key=dist)
        return out[:count]

    def sample(self, count: int, *, exclude: Container[SimHost]) -> list[SimHost]:
        peers = [h for b in self.buckets.values() for h in b if h not in exclude]
        return self.fabric.rng.sample(peers, min(count, len(peers)))

    # -- lookups --------------------------------------------------------------------------------------------

    async def _lookup(self, kind: str, target: int, ask: Callable[[SimHost], bool] | None = None
                      ) -> tuple[list[SimHost], int]:
        """An iterative lookup of ``target``; ``ask(peer)`` runs the kind's own question at each peer that
        answers (GET_PROVIDERS, GET_VALUE) and ends the lookup by returning True. Returns the K closest
        peers that answered, and the rounds it took."""
        me, fabric = self.host, self.fabric
        known: dict[SimHost, int] = {h: h.key ^ target for h in self.closest(target)}
        asked: set[SimHost] = set()
        answered: set[SimHost] = set()
        rounds = rpcs = 0
        done = False
        while not done:
            best = sorted((h for h in known if h not in asked or h in answered), key=known.__getitem__)[:K]
            batch = [h for h in best if h not in asked][:ALPHA]
            if not batch:
                break
            rounds += 1
            slowest = 0.0
            for peer in batch:
                asked.add(peer)
                rpcs += 1
                slowest = max(slowest, 2 * fabric.one_way(me, peer))
                if not peer.alive:
                    self.forget(peer)
                    continue
                fabric.count(peer, "dht")
                answered.add(peer)
                peer.dht.heard_from(me)
                self.heard_from(peer)
                if ask is not None and ask(peer):
                    done = True
                for h in peer.dht.closest(target):
                    if h is not me and h not in known:
                        known[h] = h.key ^ target
            await fabric.timer.sleep(slowest)
        stats = fabric.dht_stats
        stats.lookups[kind] += 1
        stats.rpcs[kind] += rpcs
        stats.rounds[kind] += rounds
        return sorted(answered, key=known.__getitem__)[:K], rounds

    async def _store_at(self, peers: list[SimHost], store: Callable[[SimHost], None]) -> None:
        """One RPC to each peer, in parallel: the time of the slowest."""
        fabric, me = self.fabric, self.host
        slowest = 0.0
        for peer in peers:
            slowest = max(slowest, 2 * fabric.one_way(me, peer))
            if peer.alive:
                fabric.count(peer, "dht")
                fabric.dht_stats.rpcs["store"] += 1
                store(peer)
        await fabric.timer.sleep(slowest)

    # -- what P2PNetwork calls --------------------------------------------------------------------------------

    def register_validator(self, namespace: str, validator: Any) -> None:
        self.validators[namespace] = validator

    def _validator(self, key: str) -> Any:
        return self.validators.get(key.strip("/").split("/", 1)[0])

    def accept_value(self, key: str, value: bytes, sender: SimHost | None) -> bool:
        """Check and keep a value put by ``sender`` (None: this node's own), as a node's DHT does on a
        PUT_VALUE; whether it was kept."""
        validator = self._validator(key)
        if validator is None:
            return False  # py-libp2p's strict namespaces: an unknown namespace is refused
        token = SENDER.set(sender.peer_id if sender is not None else None)
        try:
            validator.validate(key, value)
        except MalformedMessage:
            return False
        finally:
            SENDER.reset(token)
        old = self.values.get(key)
        if old is not None and old != value and validator.select(key, [value, old]) != 0:
            return False
        self.values.pop(key, None)
        while len(self.values) >= MAX_DHT_VALUES:
            del self.values[next(iter(self.values))]
        self.values[key] = value
        return True

    async def put_value(self, key: str, value: bytes) -> None:
        validator = self._validator(key)
        if validator is None:
            raise ValueError(f"no validator for {key}")
        validator.validate(key, value)  # raises on our own bad record, as py-libp2p does
        self.accept_value(key, value, None)
        closest, _ = await self._lookup("put", key_of(key.encode()))
        def store(peer: SimHost) -> None:
            peer.dht.accept_value(key, value, self.host)

        await self._store_at(closest, store)

    async def get_value(self, key: str) -> bytes | None:
        value = self.values.get(key)
        if value is not None:
            await trio.lowlevel.checkpoint()
            return value
        validator = self._validator(key)
        found: list[bytes] = []

        def ask(peer: SimHost) -> bool:
            theirs = peer.dht.values.get(key)
            if theirs is None or validator is None:
                return False
            try:
                validator.validate(key, theirs)
            except MalformedMessage:
                return False
            found.append(theirs)
            return True

        await self._lookup("get", key_of(key.encode()), ask)
        return found[0] if found else None

    async def provide(self, key: str) -> bool:
        raw = provider_key(key)
        me = self.host
        self.providers.setdefault(raw, {})[me] = None
        closest, _ = await self._lookup("provide", key_of(raw))
        await self._store_at(closest, lambda peer: peer.dht.providers.setdefault(raw, {}).__setitem__(me, None))
        return True

    async def find_providers(self, key: str, count: int = 20) -> list[ProviderInfo]:
        raw = provider_key(key)
        local = self.providers.get(raw)
        stats = self.fabric.dht_stats
        if local:
            await trio.lowlevel.checkpoint()
            stats.local_provider_answers += 1
            return [ProviderInfo(h.id) for h in list(local)[:count]]
        found: dict[SimHost, None] = {}

        def ask(peer: SimHost) -> bool:
            for provider in list(peer.dht.providers.get(raw, ()))[:MAX_PROVIDERS_PER_MSG]:
                found[provider] = None
            return len(found) >= count

        start = trio.current_time()
        _, rounds = await self._lookup("providers", key_of(raw), ask)
        stats.provider_lookups.append((rounds, (trio.current_time() - start) * 1000, len(found)))
        if found and self.fabric.keep_found_providers:
            # py-libp2p keeps what a lookup found (48 h), and answers from it from then on.
            self.providers.setdefault(raw, {}).update(found)
        return [ProviderInfo(h.id) for h in list(found)[:count]]

    async def find_closest_peers_network(self, key: bytes, count: int = 20) -> list[ID]:
        closest, _ = await self._lookup("closest", key_of(key))
        return [h.id for h in closest[:count]]

    async def add_peer(self, peer_id: ID) -> None:
        """A peer dialled at start (a bootstrap peer): into the table, and the table's first peer starts the
        join lookup of our own ID, in the background, which fills the buckets."""
        await trio.lowlevel.checkpoint()
        peer = self.fabric.hosts.get(str(peer_id))
        if peer is None:
            return
        first = self.size == 0
        self.heard_from(peer)
        if first:
            self.host.nursery.start_soon(self._lookup, "join", self.host.key)

    def get_routing_table_size(self) -> int:
        return self.size

    def get_value_store_size(self) -> int:
        return len(self.values)
