"""A hostile peer against a real daemon: a forged capability record, a replayed older record, an oversized or
impersonating heartbeat and garbage bytes on our stream protocols. Each is rejected and counted, the peer is scored
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
from libp2p.peer.peerinfo import info_from_p2p_addr

from hyperion_node.identity import Identity
from hyperion_node.p2p.dialback import DIALBACK_PROTOCOL
from hyperion_node.p2p.messages import CapabilityRecord, Heartbeat, canonical, record_key
from hyperion_node.p2p.presence import PRESENCE_PROTOCOL
from hyperion_node.testing.hostile import hostile_host
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
    target_id = str(target.peer_id)
    async with hostile_host(dht=True) as attacker, trio.open_nursery() as nursery:  # its DHT checks nothing
        rogue = attacker.identity
        await attacker.connect(await trio.to_thread.run_sync(daemon.p2p_addr))
        dht, host = attacker.dht, attacker.host
        assert dht is not None

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

        # 3. An oversized heartbeat frame, where a leaving node sends its last one.
        await attacker.goodbye(target_id, os.urandom(8 * 1024))
        await wait_for(lambda: _has(rejected, "presence:oversized"), "oversized heartbeat rejected")

        # A heartbeat claiming to be the daemon's own: sealed by the rogue, the envelope names the rogue, so it
        # is the rogue's own heartbeat whatever it claims (and the daemon's name in it is ignored).
        impostor = Heartbeat(peer_id=target_id, seq=1, time=time.time(), name="x", addrs=(),
                             health="ok", queue_depth=0, active_tasks=0, ram_available_bytes=0)
        # An envelope naming the daemon, sent by the rogue: the daemon does not check a presence envelope's
        # signature (the stream's remote is authenticated), so the name must still match the remote.
        forged = cbor2.loads(impostor.seal(rogue))
        forged["p"] = target.peer_id.to_bytes()
        await attacker.goodbye(target_id, canonical(forged))
        await wait_for(lambda: _has(rejected, "presence:sender_mismatch"), "impersonating envelope rejected")

        # Garbage on the presence protocol as a subscriber: a subscriber sends nothing, so any byte is refused.
        garbage = await host.new_stream(target.peer_id, [PRESENCE_PROTOCOL])
        await garbage.write(b"\x07" + b"\xff" * 7)
        await wait_for(lambda: _has(rejected, "presence:out_of_order"), "a subscriber's garbage rejected")

        # 4. Garbage bytes on our stream protocol (over a new connection if the last one went: the attacker's
        # host, like any, redials when it needs to).
        # (The daemon has been seen closing the rogue's connection around the presence garbage above; why is not
        # known yet, and it is not what this step tests.)
        for attempt in range(5):
            try:
                await attacker.connect(await trio.to_thread.run_sync(daemon.p2p_addr))
                stream = await host.new_stream(target.peer_id, [DIALBACK_PROTOCOL])
                break
            except Exception:  # the connection went as it was used: dial again
                if attempt == 4:
                    raise
                await trio.sleep(0.5)
        await stream.write(b"\xff\xff\xff\xff\x0fgarbage" + os.urandom(32))
        with trio.move_on_after(5):
            try:
                await stream.read(100)
            except Exception:  # the daemon resets the stream: exactly what we expect
                pass
        await wait_for(lambda: _has(rejected, "dialback:"), "garbage stream rejected")

        counts = await rejected()
        nursery.cancel_scope.cancel()
    assert counts["dht:bad_signature"] >= 1
    assert counts["dht:replayed"] >= 1
    assert counts["presence:oversized"] >= 1

    # The daemon keeps serving and has scored the attacker down, naming the offences.
    assert (await api(daemon, "/api/health"))["status"] == "ok"
    entry = next(p for p in await api(daemon, "/api/peers") if p["peer_id"] == str(rogue.peer_id))
    assert entry["score"] < 0
    assert entry["offences"].get("bad_signature", 0) >= 1
    assert entry["offences"].get("sender_mismatch", 0) >= 1
    # It still feeds an honest subscriber its heartbeats.
    async with hostile_host() as honest, trio.open_nursery() as nursery:
        await honest.connect(await trio.to_thread.run_sync(daemon.p2p_addr))
        await nursery.start(honest.subscribe, target_id)
        await wait_for(lambda: _true(len(honest.heartbeats.get(target_id, [])) >= 2), "heartbeats still pushed")
        nursery.cancel_scope.cancel()


async def _true(value: bool) -> bool:
    return value


async def _has(rejected: Any, prefix: str) -> bool:
    return any(key.startswith(prefix) for key in await rejected())


async def _peer_has_capability(daemon: NodeProcess, peer_id: str) -> bool:
    peers = await api(daemon, "/api/peers")
    return any(p["peer_id"] == peer_id and p["hardware"] is not None for p in peers)
