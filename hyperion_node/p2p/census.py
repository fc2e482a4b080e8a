"""The network as one node can estimate it: how many nodes, how many GPUs, how much capacity per model.

A node knows its connected peers exactly (the peer table); of the rest of the network it knows nothing unless
it asks, and asking everyone is what issue #22 took out. So these figures are estimates from a sample, shown
as estimates with their age (``peers``, the dashboards):

* size: every ``EVERY_S`` the node looks up the ``SAMPLE`` peers closest to a random key (one Kademlia
  lookup, O(log N) queries). In a network of N uniformly placed IDs the i-th closest of them lies at a
  normalised XOR distance near i/(N+1), so N is fitted to the distances found (least squares through the
  origin, ``estimate_size``); a lookup that finds fewer than ``SAMPLE`` peers has found the whole network.
  The last ``ROUNDS`` estimates are averaged (the median): one lookup's error is about 1/sqrt(SAMPLE).
* GPUs and capacity per model: the signed capability records of the sampled peers (from the peer table's
  cache or the DHT), per node, averaged over the last ``ROUNDS`` samples and scaled by N.

The cost is one lookup and up to ``SAMPLE`` record reads per ``EVERY_S``, whatever the network's size.
"""

from __future__ import annotations

import hashlib
import random
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from hyperion_node.p2p.messages import CapabilityRecord

log = structlog.get_logger(__name__)

SAMPLE = 20  # Kademlia's k
EVERY_S = 300.0
FIRST_AFTER_S = 10.0
ROUNDS = 5
KEYSPACE = float(2**256)


def estimate_size(distances: list[float]) -> float:
    """Nodes in the network (this one included) from the normalised XOR distances (0..1) of the peers closest
    to a random key, all of them the closest ones (module docstring)."""
    ordered = sorted(distances)
    squares = sum(d * d for d in ordered)
    if not ordered or squares <= 0.0:
        return float(len(ordered) + 1)
    # The N - 1 other IDs, uniform on [0, 1): the i-th closest expected at i / N, a slope of 1 / N.
    return max(float(len(ordered) + 1), sum((i + 1) * d for i, d in enumerate(ordered)) / squares)


def distance(key: bytes, peer_id_bytes: bytes) -> float:
    """The normalised XOR distance py-libp2p's Kademlia uses: between SHA-256 of the key and of the peer ID."""
    a = int.from_bytes(hashlib.sha256(key).digest(), "big")
    b = int.from_bytes(hashlib.sha256(peer_id_bytes).digest(), "big")
    return (a ^ b) / KEYSPACE


@dataclass
class Estimate:
    nodes: float
    gpus: float
    capacity: dict[str, float]  # "runtime/item" -> concurrent tasks, network-wide
    sampled: int
    at: float  # wall clock

    def to_json(self, now: float) -> dict[str, Any]:
        return {"estimate": True, "nodes": round(self.nodes), "gpus": round(self.gpus),
                "capacity": {k: round(v) for k, v in sorted(self.capacity.items())},
                "sampled_peers": self.sampled, "age_s": round(max(0.0, now - self.at), 1)}


@dataclass
class Census:
    """A trio component (started by ``P2PNetwork``): ``closest(key, count)`` finds the peers closest to a key
    (their IDs, binary), ``record(peer)`` a peer's capability record, ``me`` this node's own."""

    closest: Callable[[bytes, int], Awaitable[list[bytes]]]
    record: Callable[[bytes], Awaitable[CapabilityRecord | None]]
    me: Callable[[], CapabilityRecord | None]
    every_s: float = EVERY_S
    rng: random.Random = field(default_factory=random.SystemRandom)  # the random keys sampled
    sizes: deque[float] = field(default_factory=lambda: deque(maxlen=ROUNDS))
    # Per sampled node, one entry per round: GPUs, and capacity per "runtime/item".
    per_node: deque[tuple[float, dict[str, float]]] = field(default_factory=lambda: deque(maxlen=ROUNDS))
    latest: Estimate | None = None

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep(min(FIRST_AFTER_S, self.every_s))
        while True:
            with trio.move_on_after(60):
                try:
                    await self.sample()
                except Exception as exc:  # a lookup that fails on the network: try again next round
                    log.info("census_failed", error=f"{type(exc).__name__}: {exc}"[:200])
            await trio.sleep(self.every_s)

    async def sample(self) -> Estimate:
        key = self.rng.randbytes(32)
        found = await self.closest(key, SAMPLE)
        if len(found) < SAMPLE:
            self.sizes.clear()  # the lookup saw every node there is: older estimates say less than this
            self.sizes.append(float(len(found) + 1))
        else:
            self.sizes.append(estimate_size([distance(key, p) for p in found]))
        nodes = statistics.median(self.sizes)
        records = [r for r in [self.me(), *[await self.record(p) for p in found]] if r is not None]
        sampled = len(found) + 1
        capacity: dict[str, float] = {}
        for r in records:
            for offer in r.offers:
                name = f"{offer.runtime}/{offer.item}"
                capacity[name] = capacity.get(name, 0.0) + offer.capacity / sampled
        self.per_node.append((sum(len(r.hardware.get("gpus") or ()) for r in records) / sampled, capacity))
        rounds = len(self.per_node)
        gpus = nodes * sum(g for g, _ in self.per_node) / rounds
        names = {name for _, c in self.per_node for name in c}
        total = {name: nodes * sum(c.get(name, 0.0) for _, c in self.per_node) / rounds for name in names}
        self.latest = Estimate(nodes, gpus, total, sampled, time.time())
        log.info("census", nodes=round(nodes), sampled=sampled)
        return self.latest

    def to_json(self) -> dict[str, Any] | None:
        return self.latest.to_json(time.time()) if self.latest is not None else None
