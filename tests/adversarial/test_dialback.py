"""Dial-back as a port scanner -- no more: only the asker's observed IP and the ports it announces, a few
times an hour, and the answer is open or closed, no error text.

Before: any connected peer made the node TCP-connect to any /ip4/ address and learn open or closed: 160 ports
in 0.29 s, the node's own loopback-only API port among them.
"""

from __future__ import annotations

import socket
from functools import partial
from urllib.parse import urlparse

import pytest
import trio
from libp2p.exceptions import BaseLibp2pError

from hyperion_node.p2p.messages import DialbackRequest, DialbackResult, encode_frame
from hyperion_node.testing.hostile import DIALBACK, hostile_host
from tests.adversarial.conftest import Net, ask, call, peer

pytestmark = pytest.mark.process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_dialback_only_to_the_askers_own_announced_ports(net: Net) -> None:
    w_id = await call(lambda: net.w.peer_id)
    api_port = urlparse(net.w.api_url).port
    mine, closed = free_port(), free_port()
    connections: list[int] = []

    async def count(stream: trio.SocketStream) -> None:
        connections.append(1)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        # A port the test opens and the attacker does not announce: W must never touch it.
        [listener] = await nursery.start(partial(trio.serve_tcp, count, 0, host="127.0.0.1"))
        unannounced = listener.socket.getsockname()[1]
        announce = [f"/ip4/127.0.0.1/tcp/{mine}", f"/ip4/127.0.0.1/tcp/{closed}"]
        async with hostile_host(announce=announce, listen_port=mine) as attacker:
            await attacker.connect(await call(net.w.p2p_addr))

            async def dialback(addrs: list[str]) -> DialbackResult | None:
                """W's answer, or None when W resets the stream (as soon as it opens, when rate-limited)."""
                try:
                    stream = await attacker.stream(w_id, DIALBACK)
                    await stream.write(encode_frame(DialbackRequest(tuple(addrs)).seal(attacker.identity)))
                except BaseLibp2pError:
                    return None
                frame = await attacker.answer(stream, max_bytes=4096)
                return None if frame is None else DialbackResult.decode(frame)[1]

            asked = [f"/ip4/127.0.0.1/tcp/{unannounced}", f"/ip4/127.0.0.1/tcp/{api_port}",
                     f"/ip4/127.0.0.1/tcp/{mine}", f"/ip4/127.0.0.1/tcp/{closed}"]
            result = await dialback(asked)
            assert result is not None
            outcome = {addr: ok for addr, ok, _ in result.results}
            assert outcome == {f"/ip4/127.0.0.1/tcp/{mine}": True, f"/ip4/127.0.0.1/tcp/{closed}": False}
            assert all(error == "" for _, _, error in result.results)  # open or closed, nothing more
            assert not connections, "W connected to a port the asker does not announce"
            # Another host's IP, with the asker's own port: not the asker's address, and nothing of its own asked
            # for -- an attempt to aim W's dials elsewhere, scored down. (The first request held addresses of its
            # own beside the refused ones, as an honest node listing loopback, LAN and public addresses does.)
            result = await dialback([f"/ip4/10.1.2.3/tcp/{mine}"])
            assert result is not None
            assert result.results == ()
            # The asker's budget was a burst of two, then one a minute.
            assert await dialback(asked[-2:]) is None  # reset: rate-limited
            view = await call(peer, net.w, attacker.peer_id)
            assert view["offences"].get("dialback_refused", 0) == 1
        nursery.cancel_scope.cancel()
    status, _ = await call(ask, net.r)
    assert status == 200
