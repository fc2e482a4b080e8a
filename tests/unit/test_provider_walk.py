"""The provider walk's decisions (``hyperion_node/p2p/provider_walk.py``), in trio's virtual time: which peers it
asks and when it stops. Each peer's GET_PROVIDERS answer is scripted here (its delay and what it names); the
real walk over real daemons is in ``tests/integration/test_p2p_scale.py``."""

from __future__ import annotations

from typing import Any

import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from hyperion_node.p2p import provider_walk
from hyperion_node.p2p.provider_walk import ProviderWalk
from hyperion_node.testing.hostile import new_identity

KEY = "hyperion/capability/inference/gemma-3-270m-q4_k_m"


def peer() -> ID:
    return new_identity().peer_id


class _Host:
    def __init__(self, connected: list[ID]) -> None:
        self._id, self._connected = peer(), connected

    def get_id(self) -> ID:
        return self._id

    def get_connected_peers(self) -> list[ID]:
        return list(self._connected)

    def get_peerstore(self) -> Any:
        return self

    def add_addrs(self, *args: Any) -> None:
        pass


class _DHT:
    """What the walk reads of py-libp2p's DHT: its own provider store (empty here) and routing table."""

    def __init__(self, connected: list[ID], known: list[ID]) -> None:
        self.host = _Host(connected)
        self._known = known

    @property
    def provider_store(self) -> Any:
        return self

    @property
    def routing_table(self) -> Any:
        return self

    def get_providers(self, key: bytes) -> list[PeerInfo]:
        return []

    def find_local_closest_peers(self, key: bytes, count: int) -> list[ID]:
        return self._known[:count]


class ScriptedWalk(ProviderWalk):
    """The walk, with each peer's answer scripted: after ``delay[peer]`` seconds it names ``provider``."""

    def __init__(self, dht: _DHT, delay: dict[ID, float], provider: PeerInfo) -> None:
        super().__init__(dht)
        self.delay, self.provider = delay, provider
        self.asked: list[ID] = []

    async def _get_providers(self, peer: ID, target: bytes) -> tuple[list[PeerInfo], list[PeerInfo]]:
        self.asked.append(peer)
        await trio.sleep(self.delay[peer])
        return [self.provider], []


async def test_once_a_provider_is_named_no_new_query_starts(autojump_clock: Any) -> None:
    # Eight connected peers answer in 20 ms; three more, known from the routing table but not connected,
    # would each take a dial (250 ms here, as seen at N = 30 on 2 cores). The first answer names the provider:
    # the walk asks no one new after it, and ends with the answers already on their way.
    connected, far = [peer() for _ in range(provider_walk.START_WAVE)], [peer() for _ in range(3)]
    delay = {p: 0.02 for p in connected} | {p: 0.25 for p in far}
    provider = PeerInfo(peer(), [])
    walk = ScriptedWalk(_DHT(connected, far), delay, provider)
    started = trio.current_time()
    found = await walk.providers(KEY, enough=20)
    assert [info.peer_id for info in found] == [provider.peer_id]
    assert sorted(map(str, walk.asked)) == sorted(map(str, connected)), "a peer was asked after the answer"
    assert trio.current_time() - started < 0.05


async def test_a_slow_peer_in_flight_delays_the_walk_by_the_grace_at_most(autojump_clock: Any) -> None:
    connected = [peer() for _ in range(4)]
    delay = {p: 0.02 for p in connected[:3]} | {connected[3]: 5.0}  # one asked peer hangs
    walk = ScriptedWalk(_DHT(connected, []), delay, PeerInfo(peer(), []))
    started = trio.current_time()
    assert await walk.providers(KEY, enough=20)
    assert trio.current_time() - started <= 0.02 + provider_walk.GRACE_S + 1e-6
