"""Opening a task stream with its first frame in the same write as the protocol negotiation, between two real
py-libp2p hosts: the listener's handler gets the frame whole, and a peer without the protocol refuses it."""

from __future__ import annotations

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import PeerInfo
from libp2p.protocol_muxer.exceptions import MultiselectClientError

from hyperion_node.tasks.streams import open_with_first_frame

PROTOCOL = TProtocol("/hyperion/test-first-frame/1")
LISTEN = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]


def _host() -> IHost:
    return new_host(key_pair=create_new_key_pair(), listen_addrs=LISTEN, muxer_preference="YAMUX")


async def test_the_first_frame_reaches_the_handler_after_the_negotiation() -> None:
    client, server = _host(), _host()
    got: list[bytes] = []

    async def echo(stream: INetStream) -> None:
        data = b""
        while len(data) < 5000:
            data += await stream.read(5000 - len(data))
        got.append(data)
        await stream.write(b"ok:" + data[:4])
        await stream.close()

    server.set_stream_handler(PROTOCOL, echo)
    frame = bytes(range(256)) * 19 + b"tail" * 36  # 5,008 bytes: more than one read on the listener's side
    async with client.run(listen_addrs=LISTEN), server.run(listen_addrs=LISTEN):
        await client.connect(PeerInfo(server.get_id(), server.get_addrs()))
        with trio.fail_after(20):
            stream = await open_with_first_frame(client, server.get_id(), PROTOCOL, frame[:5000])
            assert stream.get_protocol() == PROTOCOL
            assert await stream.read(7) == b"ok:" + frame[:4]
        assert got == [frame[:5000]]


async def test_a_peer_without_the_protocol_refuses_the_stream() -> None:
    client, server = _host(), _host()
    async with client.run(listen_addrs=LISTEN), server.run(listen_addrs=LISTEN):
        await client.connect(PeerInfo(server.get_id(), server.get_addrs()))
        with trio.fail_after(20), pytest.raises(MultiselectClientError, match="'na'"):
            await open_with_first_frame(client, server.get_id(), PROTOCOL, b"\x05hello")
