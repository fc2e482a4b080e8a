"""Anyone can be any peer -- no more: only Noise is offered and accepted, and a banned peer gets no stream.

Before: py-libp2p's ``new_host`` offered plaintext and secio beside Noise, and a plaintext peer's ID is whatever
it claims (the handshake sends a public key and never proves the private one). An attacker claiming W's ID
took R's tasks for W, prompts included.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.peer.id import ID

from hyperion_node.p2p.settings import P2PSettings
from hyperion_node.testing.hostile import DIALBACK, TASK, VERIFY, hostile_host, raw_frame
from tests.adversarial.conftest import Net, ask, call, peer, polled, rejected, until

pytestmark = pytest.mark.process
PING = TProtocol("/ipfs/ping/1.0.0")


def claiming(peer_id: str) -> KeyPair:
    """A key pair that claims ``peer_id``: its public key, and a private key of our own (plaintext never asks)."""
    return KeyPair(create_new_key_pair().private_key, ID.from_base58(peer_id).extract_public_key())


@pytest.mark.parametrize("kind", ["plaintext", "secio"])
async def test_a_peer_that_cannot_prove_its_key_cannot_connect(net: Net, kind: str) -> None:
    w_id = await call(lambda: net.w.peer_id)
    claim = claiming(w_id) if kind == "plaintext" else None
    r_addr = await call(net.r.p2p_addr)
    async with hostile_host(kind=kind, claim=claim) as attacker:
        with pytest.raises(BaseLibp2pError):  # the security upgrade finds nothing in common
            await attacker.connect(r_addr)
        assert not attacker.host.get_connected_peers()
    # R still reaches the real W (or X), and answers its client.
    status, worker = await call(ask, net.r)
    assert status == 200
    assert worker in (w_id, await call(lambda: net.x.peer_id))


async def test_a_banned_peer_gets_no_stream_on_any_protocol(net: Net) -> None:
    w_id = await call(lambda: net.w.peer_id)
    w_addr = await call(net.w.p2p_addr)
    async with hostile_host(kind="noise") as attacker:
        await attacker.connect(w_addr)
        for _ in range(25):  # malformed tasks, 5 points each: banned at -100
            try:
                stream = await attacker.stream(w_id, TASK)
                await stream.write(raw_frame({"v": 1, "t": "task", "id": 7}))
                await attacker.answer(stream)
            except Exception:  # once banned, opening a stream fails: the point of the test
                break
        view = await call(peer, net.w, attacker.peer_id)
        # Banned at -100; the score starts fading at once (it was -99.94 when read once), the ban holds.
        assert view["banned"], view
        assert view["score"] <= -90, view
        before = await call(rejected, net.w)
        refused_before = before.get("stream:banned", 0) + before.get("connection:banned", 0)
        protocols = [TASK, VERIFY, DIALBACK, TProtocol("/ipfs/kad/1.0.0"), TProtocol("/meshsub/1.1.0"),
                     TProtocol("/ipfs/ping/1.0.0"), TProtocol("/ipfs/id/1.0.0")]
        for protocol in protocols:
            try:
                stream = await attacker.stream(w_id, protocol)
                await stream.write(b"\x00")
                got = await stream.read(1)
            except Exception:  # refused: the stream is reset or never opens
                continue
            assert not got, f"a banned peer was answered on {protocol}"
        # W closed the banned peer's connection as it crossed the line; a stream asked for since either
        # redialled (and the connection was closed as it opened), was reset before negotiation, or found no
        # connection at all.
    # A new connection from the banned peer's key is closed at once, and counted.
    async with hostile_host(kind="noise", identity=attacker.identity) as again:
        try:
            await again.connect(w_addr)
        except Exception:  # refusing the connection outright is as good
            pass
        await polled(lambda: ID.from_base58(w_id) not in again.host.get_connected_peers(),
                     "W closes a banned peer's connection as soon as it is up", seconds=30)
    after = await call(rejected, net.w)
    assert after.get("stream:banned", 0) + after.get("connection:banned", 0) >= refused_before + 1
    status, _ = await call(ask, net.r)
    assert status == 200
    await until(lambda: w_id in net.r.live_peers(), "W still alive at R")


class _Connections:
    """A notifee on the silent peer's host: each connection to it opened or closed, in order."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str]] = []

    async def opened_stream(self, network: object, stream: object) -> None:
        return None

    async def closed_stream(self, network: object, stream: object) -> None:
        return None

    async def connected(self, network: object, conn: Any) -> None:
        self.changes.append(("opened", str(conn.muxed_conn.peer_id)))

    async def disconnected(self, network: object, conn: Any) -> None:
        self.changes.append(("closed", str(conn.muxed_conn.peer_id)))

    async def listen(self, network: object, multiaddr: object) -> None:
        return None

    async def listen_close(self, network: object, multiaddr: object) -> None:
        return None


async def test_a_connection_that_carries_no_answer_is_closed_and_dialled_again(net: Net) -> None:
    """A peer that reads W's pings and never answers, on a connection kept open: a wedged connection, as seen
    between two honest daemons after a burst of DHT streams. W marks the peer dead after p2p.dead_after_s,
    closes the connection p2p.suspect_after_s later, and dials the peer again at once; the fresh connection
    is W's own dial."""
    w_addr = await call(net.w.p2p_addr)
    connections = _Connections()

    async def unanswered(stream: Any) -> None:
        try:
            while await stream.read(64):
                pass
        except Exception:  # W gives up on the ping and resets the stream
            return

    async with hostile_host(kind="noise") as silent:
        silent.host.get_network().register_notifee(connections)
        silent.host.set_stream_handler(PING, unanswered)
        w_id = await silent.connect(w_addr)
        await until(lambda: peer(net.w, silent.peer_id).get("state") == "dead", "the silent peer dead at W")
        await polled(lambda: ("closed", w_id) in connections.changes,
                     "W closes a connection on which the peer stays silent", seconds=20)
        closed_at = connections.changes.index(("closed", w_id))
        await polled(lambda: ("opened", w_id) in connections.changes[closed_at:],
                     "W dials the peer again", seconds=20)
        assert ID.from_base58(w_id) in silent.host.get_connected_peers()


async def test_connections_that_came_and_went_leave_room_for_the_next(net: Net) -> None:
    """A stranger connects to W and leaves, again and again, more times than W holds connections. py-libp2p held
    an inbound connection's place until the whole host stopped, not until the connection closed: W refused
    every connection after the 56th, honest peers' included (``libp2p_fixes``). Now each place is freed as its
    connection ends, and a new peer still gets in."""
    w_addr = await call(net.w.p2p_addr)
    most = next(f.default for f in dataclasses.fields(P2PSettings) if f.name == "max_connections")
    for _ in range(int(most) + 4):  # W runs on the default (64): py-libp2p's cap was 64 - 8
        async with hostile_host() as stranger:
            await stranger.connect(w_addr)
    async with hostile_host() as newcomer:
        assert await newcomer.connect(w_addr) == await call(lambda: net.w.peer_id)
    status, _ = await call(ask, net.r)
    assert status == 200
