"""Presence that punishes the sender, not the signer; records that cannot poison or frame; reputation that a
ring of fresh keys cannot mint.

Before (gossip): replaying 235 of W's own heartbeats took W to -100 at R, and a node joining a network with
1 s heartbeats banned every peer from its relays' backlog; one capability record with ``vram_bytes = +inf``
made R and X answer every inference request with a 500; receipts traded between keys of one operator counted
like any others. Now heartbeats travel only on a provider's own presence stream (p2p/presence.py), records
are charged to whoever sent them (p2p/records.py), and others' dealings count as far as this node's own
dealings with them (ledger/reputation.py).
"""

from __future__ import annotations

import time
from typing import Any

import cbor2
import pytest
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from multiaddr import Multiaddr

from hyperion_node.ledger.dealings import Dealings, sign_dealings
from hyperion_node.ledger.signing import DOMAIN_DEALINGS, sign
from hyperion_node.p2p.messages import CapabilityRecord, Heartbeat, OfferAd, capability_key, record_key
from hyperion_node.p2p.provider_walk import dht_key
from hyperion_node.p2p.records import dealings_key
from hyperion_node.testing.hostile import Hostile, hostile_host, new_identity
from hyperion_node.testing.process import NodeProcess
from tests.adversarial.conftest import FAST, MODEL, Net, ask, call, now_ms, peer, polled, rejected, until

pytestmark = pytest.mark.process


def heartbeat(attacker: Hostile, **changes: Any) -> Heartbeat:
    fields: dict[str, Any] = {"peer_id": attacker.peer_id, "seq": now_ms(), "time": time.time(), "name": "rogue",
                              "addrs": (), "health": "ok", "queue_depth": 0, "active_tasks": 0,
                              "ram_available_bytes": 1}
    return Heartbeat(**{**fields, **changes})


async def test_anothers_heartbeats_replayed_are_charged_to_the_replayer(net: Net) -> None:
    w_id, r_id = await call(lambda: net.w.peer_id), await call(lambda: net.r.peer_id)
    before = await call(rejected, net.r)
    async with hostile_host() as attacker, trio.open_nursery() as nursery:
        for node in (net.w, net.r):
            await attacker.connect(await call(node.p2p_addr))
        # A subscriber of W, as any requester may be: W pushes it W's own signed heartbeats.
        await nursery.start(attacker.subscribe, w_id)
        await polled(lambda: len(attacker.heartbeats.get(w_id, [])) >= 3, "three of W's heartbeats", seconds=30)
        replayed = list(attacker.heartbeats[w_id])
        # Replayed to R as a leaving node's goodbye, and as a provider's presence when R subscribes to it
        # (R's doctor subscribes to its connected peers to compare clocks).
        for frame in replayed:
            await attacker.goodbye(r_id, frame)
        attacker.serve_presence(replayed)
        await call(lambda: net.r.get("/api/doctor"))
        await until(lambda: rejected(net.r).get("presence:sender_mismatch", 0)
                    >= before.get("presence:sender_mismatch", 0) + len(replayed) + 1,
                    "R refused W's heartbeats from the attacker, on both paths")
        nursery.cancel_scope.cancel()
    w_at_r = await call(peer, net.r, w_id)
    assert w_at_r["state"] == "alive"
    assert w_at_r["score"] >= 0, w_at_r  # W signed them, and is charged nothing
    assert not w_at_r["offences"], w_at_r
    them = await call(peer, net.r, attacker.peer_id)
    assert them["offences"].get("sender_mismatch", 0) >= len(replayed), them
    assert them["score"] < 0
    status, _ = await call(ask, net.r)
    assert status == 200


async def test_a_poisoned_record_or_heartbeat_is_refused_at_decode(net: Net) -> None:
    before = {n: await call(rejected, node) for n, node in (("r", net.r), ("x", net.x))}
    r_id = await call(lambda: net.r.peer_id)
    async with hostile_host(dht=True) as attacker:
        for node in (net.r, net.x):
            await attacker.connect(await call(node.p2p_addr))
        offer = OfferAd(runtime="inference", item=MODEL, unit="token", price_per_unit=0.0, capacity=8,
                        throughput=1000.0)
        infinite = {"cpu": "x", "cores": 8, "gpus": [{"name": "g", "vram_bytes": float("inf")}]}
        record = CapabilityRecord(peer_id=attacker.peer_id, seq=now_ms(), expires_at=time.time() + 600,
                                  name="poison", addrs=(), offers=(offer,), hardware=infinite)
        await attacker.put_value(record_key(attacker.peer_id), record.seal(attacker.identity))
        await attacker.goodbye(r_id, heartbeat(attacker, gpus=({"vram_free": float("inf")},)).seal(attacker.identity))
        for name, node in (("r", net.r), ("x", net.x)):
            await until(lambda node=node, name=name: rejected(node).get("dht:non_finite", 0)
                        > before[name].get("dht:non_finite", 0), f"{name} refused the poisoned record")
        await until(lambda: rejected(net.r).get("presence:non_finite", 0) > before["r"].get("presence:non_finite", 0),
                    "R refused the poisoned heartbeat")
        charged = await call(peer, net.r, attacker.peer_id)
        assert charged["offences"].get("non_finite", 0) >= 2, charged
        for _ in range(3):
            status, _ = await call(ask, net.r)
            assert status == 200


async def test_records_a_stranger_stores_for_fresh_keys_list_no_provider(net: Net) -> None:
    """A stranger storing valid records of fresh keys (each offering the model for nothing, at the attacker's
    address) does not list them as providers: X keeps the records for the DHT, but only its own lookups and a
    peer's own record reach its peer table. Before, each such record was a live peer at X (3,822 after one 12 s
    flood of W), a `joined` event written to the store, and a provider the scheduler could pick."""
    x_id = await call(lambda: net.x.peer_id)
    before = await call(rejected, net.x)
    fresh = [new_identity() for _ in range(12)]
    async with hostile_host(dht=True) as attacker:
        await attacker.connect(await call(net.x.p2p_addr))
        offer = OfferAd(runtime="inference", item=MODEL, unit="token", price_per_unit=0.0, capacity=8,
                        throughput=1000.0)
        hardware = {"cpu": "x", "cores": 8, "gpus": []}

        def record(identity: Any) -> bytes:
            return CapabilityRecord(peer_id=str(identity.peer_id), seq=now_ms(), expires_at=time.time() + 600,
                                    name="sybil", addrs=(attacker.addr(),), offers=(offer,),
                                    hardware=hardware).seal(identity)

        for identity in fresh:
            assert await attacker.store_at(x_id, record_key(str(identity.peer_id)), record(identity))
        assert await attacker.store_at(x_id, record_key(attacker.peer_id), record(attacker.identity))
        await until(lambda: peer(net.x, attacker.peer_id).get("name") == "sybil", "X took the attacker's own record")
        # X keeps what it was given, as a DHT server does: the records read back from it.
        assert attacker.dht is not None
        kept = await attacker.dht.value_store._get_from_peer(ID.from_base58(x_id),
                                                             record_key(str(fresh[0].peer_id)).encode())
        assert isinstance(kept, bytes)
        assert CapabilityRecord.decode(kept).peer_id == str(fresh[0].peer_id)
    listed = {p["peer_id"] for p in await call(lambda: net.x.get("/api/peers"))}
    assert not listed & {str(identity.peer_id) for identity in fresh}
    after = await call(rejected, net.x)
    assert {k: v for k, v in after.items() if k.startswith("dht:")} == {
        k: v for k, v in before.items() if k.startswith("dht:")}  # valid records: refused nothing
    status, _ = await call(ask, net.r)
    assert status == 200


async def test_a_forged_record_in_anothers_name_frames_no_one(net: Net) -> None:
    """A record that names W but is not W's (a broken signature, a summary W never signed) is charged to the
    peer that stored it, never to W."""
    w_id = await call(lambda: net.w.peer_id)
    before = await call(rejected, net.x)
    async with hostile_host(dht=True) as attacker:
        await attacker.connect(await call(net.x.p2p_addr))
        x_id = await call(lambda: net.x.peer_id)
        body = sign_dealings([(attacker.peer_id, 1000)], now_ms(), attacker.identity).body.replace(
            attacker.peer_id.encode(), w_id.encode(), 1)  # "W vouches for the attacker", signed by the attacker
        forged_dealings = Dealings(w_id, now_ms(), ((attacker.peer_id, 1000),), body,
                                   sign(attacker.identity, DOMAIN_DEALINGS, body))
        await attacker.store_at(x_id, dealings_key(w_id), forged_dealings.encode())
        await until(lambda: rejected(net.x).get("dht:bad_dealings", 0) > before.get("dht:bad_dealings", 0),
                    "X refused the forged summary")
    w_at_x = await call(peer, net.x, w_id)
    assert not w_at_x.get("offences"), w_at_x
    them = await call(peer, net.x, attacker.peer_id)
    assert them["offences"].get("bad_dealings", 0) >= 1, them


async def test_a_ring_of_fresh_keys_mints_no_more_than_its_sponsors_own_dealings(net: Net) -> None:
    """The attacker settles one real task with W (so W reads its dealings summary), then claims 1,000 receipts
    with each of ten fresh keys, whose own summaries vouch for each other: W lends the ring at most the one
    receipt it holds with the attacker."""
    w_id = await call(lambda: net.w.peer_id)
    ring = [new_identity() for _ in range(10)]
    ids = {str(r.peer_id) for r in ring}
    async with hostile_host(dht=True) as attacker:
        for node in (net.w, net.x, net.r):
            await attacker.connect(await call(node.p2p_addr))
        from tests.adversarial.test_disputes import real_task

        await real_task(attacker, w_id)
        claims = sign_dealings([(p, 1000) for p in ids], now_ms(), attacker.identity)
        await attacker.put_value(dealings_key(attacker.peer_id), claims.encode())
        for member in ring:
            others = [(p, 1000) for p in ids if p != str(member.peer_id)]
            await attacker.put_value(dealings_key(str(member.peer_id)),
                                     sign_dealings(others, now_ms(), member).encode())

        def lent() -> list[dict[str, Any]]:
            return [net.w.get(f"/api/reputation/{p}") for p in sorted(ids)]

        def read() -> bool:
            # The ring's own summaries vouch for each member before the attacker's may be read, and W's trust
            # is recomputed at most every few seconds: wait for the attacker's word and the credit it lends.
            views = lent()
            return (all(attacker.peer_id in v["vouchers"] for v in views)
                    and sum(v["credited"] for v in views) > 0)

        await until(read, "W read the attacker's summary and lent on it",
                    seconds=150)  # W's standing loop reads it again each minute when the first reads came early
        views = lent()
    total = sum(v["credited"] for v in views)
    assert 0 < total <= 1.0 + 1e-6, views  # one receipt's worth in all, however much was claimed
    status, worker = await call(ask, net.r)
    assert status == 200
    assert worker not in ids


async def test_a_peer_naming_itself_a_provider_with_a_forged_record_is_charged_and_skipped(net: Net) -> None:
    """A new node J whose first peers are W and an attacker looks the model up by the provider walk
    (p2p/provider_walk.py): the attacker names itself a provider and answers J's request for its record with
    a record whose signature does not check. J charges the attacker (the provider answered it: Noise
    authenticated the answer), lists no offer from it, and its first task goes to W or X, whose records it
    asked of them and checked."""
    w_addr = await call(net.w.p2p_addr)
    providers = {await call(lambda: net.w.peer_id), await call(lambda: net.x.peer_id)}
    async with hostile_host(dht=True) as attacker:
        assert attacker.dht is not None
        offer = OfferAd(runtime="inference", item=MODEL, unit="token", price_per_unit=0.0, capacity=8,
                        throughput=1000.0)
        sealed = CapabilityRecord(peer_id=attacker.peer_id, seq=now_ms(), expires_at=time.time() + 600,
                                  name="forger", addrs=(attacker.addr(),), offers=(offer,),
                                  hardware={"cpu": "x", "cores": 8, "gpus": []}).seal(attacker.identity)
        envelope = cbor2.loads(sealed)
        envelope["s"] = bytes(b ^ 0xFF for b in envelope["s"])  # the attacker's own record, signature broken
        attacker.dht.value_store.put(record_key(attacker.peer_id).encode(), cbor2.dumps(envelope))
        listen = [Multiaddr(str(a)) for a in attacker.host.get_transport_addrs()]
        attacker.dht.provider_store.add_provider(dht_key(capability_key("inference", MODEL)),
                                                 PeerInfo(attacker.identity.peer_id, listen))
        boot = f'p2p.bootstrap=["{attacker.addr()}", "{w_addr}"]'
        joiner = NodeProcess(net.root / "j-forged", sets=[*FAST, boot, 'runtimes.disabled=["inference", '
                                                           '"zk-groth16", "render-blender"]'])
        try:
            await call(joiner.start)
            status, worker = await call(ask, joiner)
            assert status == 200
            assert worker in providers
            stats = await call(lambda: joiner.get("/api/p2p")["stats"])
            assert stats["lookups"].get("walk", 0) >= 1, stats["lookups"]
            assert stats["rejected"].get("dht:bad_signature", 0) >= 1, stats["rejected"]
            charged = await call(peer, joiner, attacker.peer_id)
            assert charged["offences"].get("bad_signature", 0) >= 1, charged
            assert MODEL not in {o.get("item") for o in (charged.get("offers") or [])}
        finally:
            await call(joiner.stop)
