"""The node's changes to py-libp2p's per-message costs (``hyperion_node/p2p/libp2p_costs.py``), between real
py-libp2p hosts on 127.0.0.1: yamux credit goes back at half a window (many small messages send no credit
frame; a multi-megabyte stream still flows both ways)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import multiaddr
import pytest
import trio
import trio.lowlevel
import trio.testing
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import PeerInfo
from libp2p.stream_muxer.yamux.yamux import YamuxStream

from hyperion_node.p2p import libp2p_costs
from hyperion_node.p2p.libp2p_stack import adjust_py_libp2p

PROTOCOL = TProtocol("/hyperion/test-credit/1")
LISTEN = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]


@pytest.fixture(autouse=True)
def _adjusted() -> None:
    adjust_py_libp2p()  # as the daemon does when it builds its host


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


@pytest.mark.parametrize(("value", "expected"), [("", "True"), ("1", "False")])
def test_hyperion_libp2p_as_shipped_leaves_py_libp2p_unchanged(value: str, expected: str) -> None:
    # In a fresh interpreter: importing the P2P layer changes nothing; building the host (which applies the
    # adjustments) does, unless the variable says otherwise.
    code = ("import hyperion_node.p2p.network; from hyperion_node.p2p import libp2p_costs, libp2p_stack; "
            "before = libp2p_costs.installed(); libp2p_stack.adjust_py_libp2p(); "
            "print(before, libp2p_costs.installed())")
    env = {**os.environ, "HYPERION_LIBP2P_AS_SHIPPED": value}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"False {expected}"
