"""Gossip that punishes the sender, not the origin; records that cannot poison a requester; reputation that a
ring of fresh keys cannot mint.

Before: replaying 235 of W's own heartbeats (after the seen-cache rolled over) took W to -100 at R, and a node
joining a network with 1 s heartbeats banned every peer from its relays' backlog; one capability record with
``vram_bytes = +inf`` made R and X answer every inference request with a 500; receipts traded between keys of
one operator counted like any others.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
from libp2p.peer.id import ID

from hyperion_node.ledger.messages import pack_settled
from hyperion_node.p2p.messages import CapabilityRecord, Heartbeat, OfferAd, record_key, seal
from hyperion_node.testing.hostile import PRESENCE, RECEIPTS, hostile_host, new_identity
from hyperion_node.testing.process import NodeProcess
from hyperion_node.testing.receipts import ReceiptFactory
from tests.adversarial.conftest import FAST, MODEL, Net, ask, call, now_ms, peer, polled, rejected, until

pytestmark = pytest.mark.process

PACE_S = 0.25  # a publisher within its own rate (p2p.gossip_rate_per_peer = 5/s): the attack is the content


async def test_replayed_heartbeats_and_a_joining_nodes_backlog_ban_no_one(net: Net) -> None:
    w_id = await call(lambda: net.w.peer_id)
    async with hostile_host(gossip=True) as attacker, trio.open_nursery() as nursery:
        for node in (net.w, net.x, net.r):
            await attacker.connect(await call(node.p2p_addr))
        await nursery.start(attacker.collect, PRESENCE)
        w_raw = ID.from_base58(w_id).to_bytes()

        def of_w() -> list[Any]:
            return [m for m in attacker.collected.get(PRESENCE, []) if m.from_id == w_raw]

        await polled(lambda: len(of_w()) >= 20, "20 of W's heartbeats collected from the mesh", seconds=60)
        # A node joins now: its relays' backlog arrives at once, and its seen-cache has none of W's old messages,
        # as a node's has once the cache rolls over (the replay of the issue).
        joiner = NodeProcess(net.root / "joiner", sets=[*FAST, f'p2p.bootstrap=["{net.r.p2p_addr()}"]',
                                                        'runtimes.disabled=["inference", "zk-groth16", '
                                                        '"render-blender"]'])
        await call(joiner.start)
        try:
            await until(lambda: w_id in joiner.live_peers(), "the joining node sees W alive")
            await attacker.connect(await call(joiner.p2p_addr))
            joiner_id = ID.from_base58(await call(lambda: joiner.peer_id))
            await polled(lambda: attacker.pubsub is not None and joiner_id in attacker.pubsub.peers,
                         "the attacker has a pubsub stream to the joiner")
            replayed = of_w()
            for _ in range(10):  # 10 x ~20+ of W's own signed heartbeats, old, all at once
                await attacker.forward(str(joiner_id), replayed)
            await until(lambda: rejected(joiner).get("presence:stale", 0) >= len(replayed) // 2,
                        "the replays arrived and were dropped as stale")
            view = await call(peer, joiner, w_id)
            assert view["state"] == "alive"
            assert view["score"] >= 0, view
            for row in await call(lambda: joiner.get("/api/peers")):  # nobody was charged for the backlog
                assert not {"rate_limited", "too_frequent", "replayed"} & set(row["offences"]), row
            status, _ = await call(ask, joiner)
            assert status == 200
        finally:
            await call(joiner.stop)
        nursery.cancel_scope.cancel()


async def test_a_poisoned_record_or_heartbeat_is_refused_at_decode(net: Net) -> None:
    before = {n: await call(rejected, node) for n, node in (("r", net.r), ("x", net.x))}
    async with hostile_host(dht=True, gossip=True) as attacker:
        for node in (net.r, net.x):
            await attacker.connect(await call(node.p2p_addr))
        offer = OfferAd(runtime="inference", item=MODEL, unit="token", price_per_unit=0.0, capacity=8,
                        throughput=1000.0)
        infinite = {"cpu": "x", "cores": 8, "gpus": [{"name": "g", "vram_bytes": float("inf")}]}
        record = CapabilityRecord(peer_id=attacker.peer_id, seq=now_ms(), expires_at=time.time() + 600,
                                  name="poison", addrs=(), offers=(offer,), hardware=infinite)
        await attacker.put_value(record_key(attacker.peer_id), record.seal(attacker.identity))
        heartbeat = Heartbeat(peer_id=attacker.peer_id, seq=now_ms(), time=time.time(), name="poison", addrs=(),
                              health="ok", queue_depth=0, active_tasks=0, ram_available_bytes=1,
                              gpus=({"vram_free": float("inf")},))
        await attacker.publish(PRESENCE, seal(attacker.identity, "heartbeat", heartbeat.to_body()))
        for name, node in (("r", net.r), ("x", net.x)):
            await until(lambda node=node, name=name: rejected(node).get("dht:non_finite", 0)
                        > before[name].get("dht:non_finite", 0), f"{name} refused the poisoned record")
        await until(lambda: rejected(net.r).get("presence:non_finite", 0) > before["r"].get("presence:non_finite", 0),
                    "R refused the poisoned heartbeat")
        for _ in range(3):
            status, _ = await call(ask, net.r)
            assert status == 200


async def test_a_ring_of_fresh_keys_mints_no_reputation(net: Net) -> None:
    ring = [new_identity() for _ in range(10)]
    factory = ReceiptFactory(now_ms=now_ms() - 60_000)
    receipts = []
    for i in range(1000):
        worker, requester = ring[i % 10], ring[(i * 3 + 1) % 10]
        if worker is requester:
            requester = ring[(i + 5) % 10]
        receipts.append(factory.settled(worker=worker, requester=requester))
    async with hostile_host(gossip=True) as attacker:
        await attacker.connect(await call(net.r.p2p_addr))
        await polled(lambda: attacker.pubsub is not None and bool(attacker.pubsub.peers), "in R's mesh")
        await until(lambda: attacker.peer_id in {p["peer_id"] for p in net.r.get("/api/peers")}, "R knows us")
        for body in pack_settled(receipts):
            await attacker.publish(RECEIPTS, seal(attacker.identity, "receipt", {**body, "at_ms": now_ms()}))
            await trio.sleep(PACE_S)
        ids = {str(r.peer_id) for r in ring}

        def minted() -> dict[str, Any]:
            seen = net.r.get("/api/tasks/stats")["reputation"]
            return {p: v for p, v in seen.items() if p in ids}

        views = await until(lambda: (m := minted()) and sum(v["completed"] for v in m.values()) >= 900 and m,
                            "R took the ring's receipts")
    assert all(v["credited"] == 0 for v in views.values()), views  # counted, and worth nothing
    status, worker = await call(ask, net.r)
    assert status == 200
    assert worker not in ids
