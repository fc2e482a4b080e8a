"""The node's changes to py-libp2p's per-message costs (``hyperion_node/p2p/libp2p_costs.py``), between real
py-libp2p hosts on 127.0.0.1: yamux credit goes back at half a window (many small messages send no credit
frame; a multi-megabyte stream still flows both ways), and a pubsub RPC's signed peer record is checked once
per distinct record, while a forged or foreign one is still refused."""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
from contextlib import AsyncExitStack
from typing import Any

import libp2p.pubsub.utils as pubsub_utils
import multiaddr
import pytest
import trio
import trio.lowlevel
import trio.testing
from libp2p import new_host
from libp2p.abc import IHost, INetStream, ISubscriptionAPI
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.peer.peerstore import create_signed_peer_record
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb.rpc_pb2 import RPC
from libp2p.pubsub.pubsub import Pubsub
from libp2p.stream_muxer.yamux.yamux import YamuxStream
from libp2p.tools.anyio_service import background_trio_service

import hyperion_node.p2p.network  # noqa: F401  (installs the changes, as the daemon does)
from hyperion_node.p2p import libp2p_costs

PROTOCOL = TProtocol("/hyperion/test-credit/1")
LISTEN = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]


def _host() -> IHost:
    return new_host(key_pair=create_new_key_pair(), listen_addrs=LISTEN, muxer_preference="YAMUX")


@pytest.fixture
def window_updates(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every WINDOW_UPDATE increment any yamux stream in the process sends."""
    sent: list[int] = []
    original = YamuxStream.send_window_update

    async def counting(self: YamuxStream, increment: int, skip_lock: bool = False) -> None:
        sent.append(increment)
        await original(self, increment, skip_lock)

    monkeypatch.setattr(YamuxStream, "send_window_update", counting)
    return sent


async def _transfer(messages: list[bytes], echo: bool) -> tuple[bytes, bytes]:
    """Send ``messages`` one write each over one stream; the server reads them all (and writes them back when
    ``echo``). Returns (what the server read, what the client read back)."""
    client, server = _host(), _host()
    total = sum(len(m) for m in messages)
    received = bytearray()
    all_read = trio.Event()

    async def handler(stream: INetStream) -> None:
        while len(received) < total:
            chunk = await stream.read(65536)
            received.extend(chunk)
            if echo:
                await stream.write(chunk)
        all_read.set()
        await stream.close()

    server.set_stream_handler(PROTOCOL, handler)
    back = bytearray()
    async with client.run(listen_addrs=LISTEN), server.run(listen_addrs=LISTEN):
        await client.connect(PeerInfo(server.get_id(), server.get_addrs()))
        with trio.fail_after(60):
            stream = await client.new_stream(server.get_id(), [PROTOCOL])

            async def read_back() -> None:
                while len(back) < total:
                    back.extend(await stream.read(65536))

            async with trio.open_nursery() as nursery:
                if echo:
                    nursery.start_soon(read_back)
                for message in messages:
                    await stream.write(message)
                    await trio.lowlevel.checkpoint()  # one read per message on the other side, as gossip RPCs arrive
            await all_read.wait()
            await stream.close()
    return bytes(received), bytes(back)


async def test_small_messages_send_no_credit_frame_before_half_a_window(window_updates: list[int]) -> None:
    assert libp2p_costs.installed()
    messages = [bytes([i % 256]) * 300 for i in range(200)]  # 60,000 bytes: under half of the 256 KiB window
    received, _ = await _transfer(messages, echo=False)
    assert received == b"".join(messages)
    assert window_updates == []


async def test_small_messages_cost_credit_frames_with_py_libp2ps_own_credit(window_updates: list[int]) -> None:
    # The same run without the change, so that the test above shows the change and not a quiet stream.
    libp2p_costs.uninstall()
    try:
        messages = [bytes([i % 256]) * 300 for i in range(200)]
        received, _ = await _transfer(messages, echo=False)
    finally:
        libp2p_costs.install()
    assert received == b"".join(messages)
    assert len(window_updates) >= 50


async def test_a_stream_of_megabytes_flows_both_ways_with_credit_at_half_a_window(window_updates: list[int]) -> None:
    block = hashlib.sha256(b"hyperion").digest() * 2048  # 64 KiB
    messages = [bytes([i]) + block[1:] for i in range(64)]  # 4 MiB, sixteen windows of 256 KiB
    received, back = await _transfer(messages, echo=True)
    assert received == b"".join(messages)
    assert back == received
    # Credit went back in half-window (or larger, auto-tuned) steps, not per read.
    assert window_updates
    assert min(window_updates) >= 128 * 1024


def _count_record_checks(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every signed peer record py-libp2p's pubsub opens and checks (``consume_envelope``), changed or not."""
    checked: list[bytes] = []
    original = pubsub_utils.consume_envelope

    def counting(data: bytes, domain: str) -> Any:
        checked.append(bytes(data))
        return original(data, domain)

    monkeypatch.setattr(pubsub_utils, "consume_envelope", counting)
    return checked


def _rpc_with_record(key_pair: object, peer: ID, addrs: list[multiaddr.Multiaddr]) -> RPC:
    rpc = RPC()
    rpc.senderRecord = create_signed_peer_record(peer, addrs, key_pair.private_key).marshal_envelope()  # type: ignore[attr-defined]
    return rpc


def test_a_sender_record_is_verified_once_per_distinct_record_and_forgeries_still_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    verified = _count_record_checks(monkeypatch)
    host = _host()
    sender = create_new_key_pair()
    sender_id = ID.from_pubkey(sender.public_key)
    addrs = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/4001")]
    consume = libp2p_costs._consume_once

    rpc = _rpc_with_record(sender, sender_id, addrs)
    assert consume(rpc, host, sender_id)
    assert consume(rpc, host, sender_id)  # the same bytes again: accepted without a second check
    assert len(verified) == 1
    assert host.get_peerstore().addrs(sender_id) == addrs

    forged = RPC()
    forged.senderRecord = rpc.senderRecord[:-1] + bytes([rpc.senderRecord[-1] ^ 1])  # signature changed
    assert not consume(forged, host, sender_id)
    assert len(verified) == 2
    # A rejected record also forgets the accepted one: the next valid record is checked again.
    assert consume(rpc, host, sender_id)
    assert len(verified) == 3

    other = create_new_key_pair()
    foreign = _rpc_with_record(other, ID.from_pubkey(other.public_key), addrs)
    assert not consume(foreign, host, sender_id)  # a valid record, but of another peer than the sender

    moved = _rpc_with_record(sender, sender_id, [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/4002")])
    assert consume(moved, host, sender_id)  # a changed record is checked and replaces the addresses
    assert host.get_peerstore().addrs(sender_id) == [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/4002")]
    assert consume(RPC(), host, sender_id)  # no record: nothing to check


async def test_gossip_between_three_hosts_checks_each_senders_record_once(monkeypatch: pytest.MonkeyPatch) -> None:
    verified = _count_record_checks(monkeypatch)
    hosts = [_host() for _ in range(3)]
    subs: list[ISubscriptionAPI] = []
    pubsubs: list[Pubsub] = []
    async with AsyncExitStack() as stack:
        for host in hosts:
            await stack.enter_async_context(host.run(listen_addrs=LISTEN))
        for host in hosts:
            gossipsub = GossipSub(protocols=[PROTOCOL_ID_V11, PROTOCOL_ID], degree=2, degree_low=1,
                                  degree_high=3, heartbeat_interval=1, heartbeat_initial_delay=0.1,
                                  spam_protection_enabled=False)  # as the node runs it (p2p/network.py)
            pubsub = Pubsub(host, gossipsub, strict_signing=True)
            await stack.enter_async_context(background_trio_service(pubsub))
            await stack.enter_async_context(background_trio_service(gossipsub))
            await pubsub.wait_until_ready()
            pubsubs.append(pubsub)
            subs.append(await pubsub.subscribe("t"))
        for i in (1, 2):  # 1 -- 0 -- 2: host 2 hears host 1 through host 0
            await hosts[i].connect(PeerInfo(hosts[0].get_id(), hosts[0].get_addrs()))
        with trio.fail_after(30):
            for i in (1, 2):
                await pubsubs[0].wait_for_mesh(hosts[i].get_id(), "t", timeout=20)
                await pubsubs[i].wait_for_mesh(hosts[0].get_id(), "t", timeout=20)
            got: list[bytes] = []
            for n in range(20):
                await pubsubs[1].publish("t", b"m%d" % n)
            for sub in (subs[0], subs[2]):
                for _ in range(20):
                    got.append((await sub.get()).data)
        assert sorted(got) == sorted([b"m%d" % n for n in range(20)] * 2)
    # Each (receiving host, forwarding peer) pair's record was checked about once (4 pairs here), not once
    # per RPC: py-libp2p alone checks one for each of the 40+ RPCs.
    assert len(verified) <= 3 * 2 * 2, len(verified)


@pytest.mark.parametrize(("value", "expected"), [("", "True"), ("1", "False")])
def test_hyperion_libp2p_as_shipped_leaves_py_libp2p_unchanged(value: str, expected: str) -> None:
    # The daemon's own import, in a fresh interpreter: the changes are on unless the variable says otherwise.
    code = ("import hyperion_node.p2p.network; from hyperion_node.p2p import libp2p_costs; "
            "print(libp2p_costs.installed())")
    env = {**os.environ, "HYPERION_LIBP2P_AS_SHIPPED": value}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_records_older_than_the_refresh_are_forgotten_when_many_peers_were_seen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(libp2p_costs, "time", type("Clock", (), {"monotonic": staticmethod(lambda: now[0])}))
    monkeypatch.setattr(libp2p_costs, "MAX_REMEMBERED_PEERS", 2)
    host = _host()
    addrs = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/4001")]
    senders = [create_new_key_pair() for _ in range(3)]
    ids = [ID.from_pubkey(k.public_key) for k in senders]
    for key, peer in zip(senders[:2], ids[:2], strict=True):
        assert libp2p_costs._consume_once(_rpc_with_record(key, peer, addrs), host, peer)
    now[0] += libp2p_costs.RECORD_REFRESH_S
    assert libp2p_costs._consume_once(_rpc_with_record(senders[2], ids[2], addrs), host, ids[2])
    assert set(libp2p_costs._accepted[host]) == {ids[2]}


async def test_on_demand_dht_refreshes_are_let_through_once_a_minute(autojump_clock: trio.testing.MockClock) -> None:
    dht = KadDHT(_host(), DHTMode.SERVER, enable_random_walk=True)
    assert dht.rt_refresh_manager is not None
    refreshes: list[float] = []

    async def refresh() -> None:
        refreshes.append(trio.current_time())

    dht.rt_refresh_manager.trigger_refresh = refresh  # type: ignore[method-assign]
    libp2p_costs.throttle_on_demand_refresh(dht)
    for _ in range(30):  # the auto-connector's critical checks, every 10 s for 5 minutes
        await dht.rt_refresh_manager.trigger_refresh()
        await trio.sleep(10)
    assert len(refreshes) == 5  # at 0, 60, 120, 180, 240 s instead of 30
    assert [b - a for a, b in itertools.pairwise(refreshes)] == [60.0] * 4
