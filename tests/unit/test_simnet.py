"""The simulated wide-area network (``hyperion_demo/simnet.py``, ``simdht.py``) and a small run of our P2P code on it
(``simrun.py``): latency where a node's peers would see it, connections bounded, Kademlia lookups that find what
was stored at the nodes closest to its key, and requesters that route to live providers through churn."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
import trio.testing
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from hyperion_demo.simdht import K, key_of, provider_key
from hyperion_demo.simnet import SimFabric, SimHost, SimStream
from hyperion_demo.simrun import SimConfig, run_simulation
from hyperion_node.tasks.streams import STREAM_ERRORS

PROTOCOL = "/hyperion/test/1"


_SEEDS = itertools.count(1)


def _peer() -> ID:
    """Peer IDs from fixed seeds: the network's shape (who is closest to whom) is then the same on every run."""
    return ID.from_pubkey(create_new_key_pair(next(_SEEDS).to_bytes(32, "big")).public_key)


@asynccontextmanager
async def _hosts(fabric: SimFabric, count: int) -> AsyncIterator[list[SimHost]]:
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        await nursery.start(fabric.run)
        hosts = [(await stack.enter_async_context(fabric.attach(_peer(), lambda p, c: None, None)))[0]
                 for _ in range(count)]
        yield hosts
        nursery.cancel_scope.cancel()


async def test_frames_and_pings_take_the_links_latency_and_a_close_arrives_after_the_data(
        autojump_clock: trio.testing.MockClock) -> None:
    fabric = SimFabric(seed=7, target_connections=8)
    got: list[tuple[float, bytes]] = []

    async def echo(stream: SimStream) -> None:
        got.append((trio.current_time(), await stream.read()))
        await stream.write(b"pong")
        await stream.close()

    async with _hosts(fabric, 2) as (a, b):
        b.set_stream_handler(PROTOCOL, echo)
        one_way = fabric.one_way(a, b)
        assert one_way >= 0.005  # a region's own delay and two last miles at least
        with trio.fail_after(5):
            rtt_ms = (await a.ping(b.get_id()))[0]  # dials first (connect: two round trips), then one round trip
            assert rtt_ms == pytest.approx(2000 * one_way)
            sent = trio.current_time()
            stream = await a.new_stream(b.get_id(), [PROTOCOL])
            await stream.write(b"ping")
            assert await stream.read() == b"pong"
            assert trio.current_time() - sent == pytest.approx(2 * one_way, abs=0.0021)  # whole-ms ticks
            with pytest.raises(STREAM_ERRORS):
                await stream.read()
        assert got[0][1] == b"ping"
        assert got[0][0] - sent == pytest.approx(one_way, abs=0.0011)
        assert b.peer_id in {str(p) for p in a.get_connected_peers()}
        assert fabric.received[b.index] == 3  # the ping, the stream opened, its one frame


async def test_connections_stay_within_twice_the_target(autojump_clock: trio.testing.MockClock) -> None:
    fabric = SimFabric(seed=3, target_connections=4)
    async with _hosts(fabric, 20) as hosts:
        hub = hosts[0]
        with trio.fail_after(30):
            for other in hosts[1:]:
                await other.link_to(hub.peer_id)
                assert len(hub.links) <= 2 * fabric.low_water
        assert len(hub.links) < len(hosts) - 1  # the pruner closed some: the hub did not keep them all
        assert all(hub in h.links or h not in hub.links for h in hosts[1:])  # both ends agree


async def test_kademlia_lookups_find_the_closest_nodes_and_the_providers_stored_there(
        autojump_clock: trio.testing.MockClock) -> None:
    global _SEEDS
    _SEEDS = itertools.count(1000)  # the same 80 peers whichever tests ran before
    fabric = SimFabric(seed=11, target_connections=8)
    async with _hosts(fabric, 80) as hosts:
        with trio.fail_after(60):
            for i, host in enumerate(hosts[1:], start=1):  # each joins through an earlier node, then looks itself up
                await host.dht.add_peer(hosts[i // 2].id)
            while fabric.dht_stats.lookups["join"] < len(hosts) - 1:  # noqa: ASYNC110
                await trio.sleep(0.1)
            key = "1220" + "ab" * 32
            raw = provider_key(key)
            truth = {h.peer_id for h in sorted(hosts, key=lambda h: h.key ^ key_of(raw))[:K]}
            closest = {str(p) for p in await hosts[5].dht.find_closest_peers_network(raw)}
            assert len(closest & truth) >= K - 2  # lookups converge on (nearly) the true closest
            provider = next(h for h in hosts if h.peer_id not in truth)
            await provider.dht.provide(key)
            assert len([h for h in hosts if h.peer_id in truth and h.dht.providers.get(raw)]) >= K - 2
            asker = next(h for h in hosts if h is not provider and not h.dht.providers.get(raw))
            found = await asker.dht.find_providers(key)
        assert [str(p.peer_id) for p in found] == [provider.peer_id]
        rounds, _ms, providers = fabric.dht_stats.provider_lookups[-1]
        assert rounds >= 1
        assert providers == 1
        assert fabric.dht_stats.rpcs["providers"] >= rounds


def test_requesters_route_to_live_providers_through_churn_on_a_small_network() -> None:
    result = run_simulation(SimConfig(nodes=40, join_s=10.0, warmup_s=40.0, duration_s=100.0, task_every_s=5.0,
                                      provider_share=0.1, models=2, kills=1))
    assert result.killed == 1
    assert len(result.tasks) >= 40
    assert sum(t.done for t in result.tasks) / len(result.tasks) >= 0.95
    assert max(result.connections) <= 16  # 2 x p2p.target_connections
    assert result.provider_lookups  # requesters asked the DHT
    median_rate = sorted(result.rates)[len(result.rates) // 2]
    assert 0.5 < median_rate < 10  # pings to ~8 connections every 5 s, and little else
