"""Liveness pings between real py-libp2p hosts on 127.0.0.1: one kept stream per peer, not one per ping.

Each ping used to open a yamux stream, negotiate ``/ipfs/ping/1.0.0`` with multistream-select and close
it: about four times the frames of the ping itself, on every connection every heartbeat interval. The
pinging side now keeps the stream (``Libp2pHost.ping``) and the answering side echoes every ping on it
(``PingAnswerer``), counting each, since a kept stream opens no new one.
"""

from __future__ import annotations

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.host.ping import ID as PING_PROTOCOL_ID
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from hyperion_node.identity import Identity
from hyperion_node.p2p.libp2p_stack import Libp2pHost, PingAnswerer, security_options

LISTEN = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]


def _host() -> IHost:
    keys = create_new_key_pair()
    identity = Identity(key_pair=keys, peer_id=ID.from_pubkey(keys.public_key))
    return new_host(key_pair=keys, listen_addrs=LISTEN, muxer_preference="YAMUX",
                    sec_opt=security_options(identity))


async def test_pings_share_one_stream_and_each_is_counted() -> None:
    pinger, answerer = _host(), _host()
    pings: list[int] = []
    opened: list[INetStream] = []
    handler = PingAnswerer(lambda: pings.append(1))

    async def counting(stream: INetStream) -> None:
        opened.append(stream)
        await handler.handle(stream)

    answerer.set_stream_handler(PING_PROTOCOL_ID, counting)
    async with pinger.run(listen_addrs=LISTEN), answerer.run(listen_addrs=LISTEN):
        await pinger.connect(PeerInfo(answerer.get_id(), answerer.get_addrs()))
        host = Libp2pHost(pinger)
        with trio.fail_after(30):
            rtts = [await host.ping(answerer.get_id()) for _ in range(5)]
        assert all(len(r) == 1 and r[0] > 0 for r in rtts)
        assert len(pings) == 5
        assert len(opened) == 1
        # The answering side resets the kept stream (a restart, an idle timeout): the next ping opens another.
        await opened[0].reset()
        with trio.fail_after(30):
            await host.ping(answerer.get_id())
        assert len(opened) == 2
        assert len(pings) == 6


async def test_a_new_ping_stream_replaces_the_peers_oldest_beyond_two() -> None:
    """A peer pings on its newest stream (it opens one when the last failed, perhaps before this side saw that
    one end): the answering side keeps two per peer and closes the oldest, never the new one."""
    pinger, answerer = _host(), _host()
    answerer.set_stream_handler(PING_PROTOCOL_ID, PingAnswerer(lambda: None).handle)
    async with pinger.run(listen_addrs=LISTEN), answerer.run(listen_addrs=LISTEN):
        await pinger.connect(PeerInfo(answerer.get_id(), answerer.get_addrs()))
        hosts = [Libp2pHost(pinger) for _ in range(3)]  # three callers, each keeping a stream of its own
        with trio.fail_after(30):
            for host in hosts:
                await host.ping(answerer.get_id())  # the third is answered: it closed the first's stream
            await hosts[2].ping(answerer.get_id())  # the newest stream still works
            await hosts[0].ping(answerer.get_id())  # the first's kept stream is gone: it opens another, answered
