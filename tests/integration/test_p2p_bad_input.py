"""A hostile peer against a real daemon: a forged capability record, a replayed older record, an oversized
gossip message and garbage bytes on our stream protocol. Each is rejected and counted, the peer is scored
down, and the daemon keeps serving.

The attacker is a real py-libp2p host in this test process, speaking the same protocols the daemon does.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.records.validator import BlankValidator
from libp2p.tools.anyio_service import background_trio_service

from hyperion_node.identity import Identity
from hyperion_node.p2p.messages import CapabilityRecord, Heartbeat, canonical, record_key
from hyperion_node.p2p.network import DIALBACK_PROTOCOL, PRESENCE_TOPIC
from hyperion_node.testing.process import NodeProcess

pytestmark = pytest.mark.process
WAIT_S = 20.0  # generous: a loaded 2-core machine; each wait normally ends in well under a second


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[NodeProcess]:
    node = NodeProcess(tmp_path / "victim", sets=[
        "p2p.mdns=false", "hardware.benchmark_on_start=false",
        'runtimes.disabled=["inference", "zk-groth16", "render-blender"]',
        "p2p.heartbeat_interval_s=0.5",
    ]).start()
    yield node
    node.stop()


def record(identity: Identity, seq: int) -> CapabilityRecord:
    return CapabilityRecord(peer_id=str(identity.peer_id), seq=seq, expires_at=time.time() + 600, name="rogue",
                            addrs=("/ip4/127.0.0.1/tcp/9",), hardware={"cpu": "x"}, offers=())


async def api(node: NodeProcess, path: str) -> Any:
    return await trio.to_thread.run_sync(node.get, path)


async def wait_for(check: Any, what: str) -> Any:
    with trio.fail_after(WAIT_S):
        while True:
            result = await check()
            if result:
                return result
            await trio.sleep(0.1)
    raise AssertionError(what)


async def test_hostile_peer_is_rejected_counted_and_scored_down(daemon: NodeProcess) -> None:
    target = info_from_p2p_addr(multiaddr.Multiaddr(await trio.to_thread.run_sync(daemon.p2p_addr)))
    key_pair = create_new_key_pair()
    rogue = Identity(key_pair=key_pair, peer_id=ID.from_pubkey(key_pair.public_key))
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    host = new_host(key_pair=key_pair, listen_addrs=listen, muxer_preference="YAMUX")
    dht = KadDHT(host, DHTMode.SERVER)
    dht.register_validator("hyperion", BlankValidator())  # the attacker checks nothing before sending
    gossipsub = GossipSub(protocols=[PROTOCOL_ID_V11, PROTOCOL_ID], degree=3, degree_low=2, degree_high=6,
                          heartbeat_interval=1, spam_protection_enabled=False)
    pubsub = Pubsub(host, gossipsub, strict_signing=True)

    async with host.run(listen_addrs=listen), background_trio_service(pubsub), \
            background_trio_service(gossipsub), background_trio_service(dht):
        await pubsub.wait_until_ready()
        await pubsub.subscribe(PRESENCE_TOPIC)
        await host.connect(target)
        await dht.add_peer(target.peer_id)

        async def rejected() -> dict[str, int]:
            return dict((await api(daemon, "/api/p2p"))["stats"]["rejected"])

        # 1. A forged capability record: our own record with its signature broken.
        envelope = cbor2.loads(record(rogue, seq=5).seal(rogue))
        envelope["s"] = bytes([envelope["s"][0] ^ 0xFF]) + envelope["s"][1:]
        await dht.put_value(record_key(str(rogue.peer_id)), canonical(envelope))
        await wait_for(lambda: _has(rejected, "dht:bad_signature"), "forged record rejected")

        # 2. A replay: a valid record with seq 10 is accepted, then an older one (seq 7) is refused.
        await dht.put_value(record_key(str(rogue.peer_id)), record(rogue, seq=10).seal(rogue))
        await wait_for(lambda: _peer_has_capability(daemon, str(rogue.peer_id)), "valid record accepted")
        await dht.put_value(record_key(str(rogue.peer_id)), record(rogue, seq=7).seal(rogue))
        await wait_for(lambda: _has(rejected, "dht:replayed"), "replayed record rejected")

        # 3. An oversized gossip message on the presence topic, signed at the pubsub layer.
        await wait_for(lambda: _subscribed(pubsub, target.peer_id), "daemon subscription seen")
        await pubsub.publish(PRESENCE_TOPIC, os.urandom(8 * 1024))
        await wait_for(lambda: _has(rejected, "presence:oversized"), "oversized gossip rejected")

        # A heartbeat claiming to be another peer's is refused too (the pubsub origin is the rogue).
        impostor = Heartbeat(peer_id=str(target.peer_id), seq=1, time=time.time(), name="x", addrs=(),
                             health="ok", queue_depth=0, active_tasks=0, ram_available_bytes=0)
        await pubsub.publish(PRESENCE_TOPIC, impostor.seal(rogue))  # signed by the rogue: envelope says rogue
        # An envelope naming the daemon, sent (and signed at the gossip layer) by the rogue: the daemon opens
        # gossip envelopes without checking their signature a second time, so this must still be refused.
        forged = cbor2.loads(impostor.seal(rogue))
        forged["p"] = target.peer_id.to_bytes()
        await pubsub.publish(PRESENCE_TOPIC, canonical(forged))
        await wait_for(lambda: _has(rejected, "presence:sender_mismatch"), "impersonating envelope rejected")
        honest = Heartbeat(peer_id=str(rogue.peer_id), seq=1, time=time.time(), name="rogue", addrs=(),
                           health="ok", queue_depth=0, active_tasks=0, ram_available_bytes=0)
        await pubsub.publish(PRESENCE_TOPIC, honest.seal(rogue))

        # Garbage on the gossip protocol itself: a length-prefixed frame that is no pubsub RPC. py-libp2p's
        # handler let the decode error out and it stopped the whole host; ours resets the stream.
        garbage = await host.new_stream(target.peer_id, [PROTOCOL_ID_V11])
        await garbage.write(b"\x07" + b"\xff" * 7)
        await wait_for(lambda: _has(rejected, "gossip:undecodable"), "undecodable gossip rejected")

        # 4. Garbage bytes on our stream protocol.
        stream = await host.new_stream(target.peer_id, [DIALBACK_PROTOCOL])
        await stream.write(b"\xff\xff\xff\xff\x0fgarbage" + os.urandom(32))
        with trio.move_on_after(5):
            try:
                await stream.read(100)
            except Exception:  # the daemon resets the stream: exactly what we expect
                pass
        await wait_for(lambda: _has(rejected, "dialback:"), "garbage stream rejected")

    counts = await rejected()
    assert counts["dht:bad_signature"] >= 1
    assert counts["dht:replayed"] >= 1
    assert counts["presence:oversized"] >= 1

    # The daemon keeps serving and has scored the attacker down, naming the offences.
    assert (await api(daemon, "/api/health"))["status"] == "ok"
    entry = next(p for p in await api(daemon, "/api/peers") if p["peer_id"] == str(rogue.peer_id))
    assert entry["score"] < 0
    assert entry["offences"].get("bad_signature", 0) >= 1
    status = await api(daemon, "/api/p2p")
    before = status["stats"]["gossip_out"]["/hyperion/presence/1"]
    await wait_for(lambda: _heartbeats_above(daemon, before), "the daemon still publishes heartbeats")


async def _has(rejected: Any, prefix: str) -> bool:
    return any(key.startswith(prefix) for key in await rejected())


async def _peer_has_capability(daemon: NodeProcess, peer_id: str) -> bool:
    peers = await api(daemon, "/api/peers")
    return any(p["peer_id"] == peer_id and p["hardware"] is not None for p in peers)


async def _subscribed(pubsub: Pubsub, peer_id: ID) -> bool:
    return peer_id in pubsub.peer_topics.get(PRESENCE_TOPIC, set())


async def _heartbeats_above(daemon: NodeProcess, count: int) -> bool:
    return int((await api(daemon, "/api/p2p"))["stats"]["gossip_out"]["/hyperion/presence/1"]) > count
