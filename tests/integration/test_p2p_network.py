"""The P2P layer with real daemons on 127.0.0.1: discovery through one bootstrap peer, DHT provider lookup,
connections dropped after SIGKILL, and rejoining from the peer cache with the bootstrap peer gone.

Timings are shortened through config (heartbeats every 0.5 s, dead after 4 s) so the tests are quick;
every wait is a poll under a deadline, never a fixed sleep.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperion_node.datadir import DataDir
from hyperion_node.identity import load_identity
from hyperion_node.testing.process import NodeProcess, stop_all, wait_until

pytestmark = pytest.mark.process

FAST = [
    "p2p.mdns=false",  # discovery here must come from bootstrap and the DHT, not from the LAN
    "p2p.heartbeat_interval_s=0.5",
    "p2p.suspect_after_s=2.0",
    "p2p.dead_after_s=4.0",
    "hardware.benchmark_on_start=false",
]
NO_MODEL = [*FAST, 'runtimes.disabled=["inference", "zk-groth16", "render-blender"]']
MODEL = ("inference", "gemma-3-270m-q4_k_m")


@pytest.fixture
def nodes() -> Iterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    yield started
    stop_all(started)


def start(nodes: list[NodeProcess], path: Path, sets: list[str], bootstrap: list[str] = ()) -> NodeProcess:
    extra = [f"p2p.bootstrap={list(bootstrap)!r}".replace("'", '"')] if bootstrap else []
    node = NodeProcess(path, sets=[*sets, *extra]).start()
    nodes.append(node)
    return node


def test_five_nodes_one_bootstrap_all_know_each_other(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    seed = start(nodes, tmp_path / "n0", NO_MODEL)
    others = [start(nodes, tmp_path / f"n{i}", NO_MODEL, [seed.p2p_addr()]) for i in range(1, 5)]
    everyone = [seed, *others]
    ids = {node.peer_id for node in everyone}
    for node in everyone:
        expected = ids - {node.peer_id}
        wait_until(lambda n=node, e=expected: n.live_peers() >= e, timeout=30,
                   what=f"{node.data_dir.name} lists the other four as alive")
    # Discovery went through the DHT: the four never had each other's addresses from config.
    events = [e["kind"] for e in others[0].get("/api/events") if e["kind"].startswith("peer.")]
    assert events.count("peer.joined") >= 4


def test_provider_found_by_a_node_that_never_connected_to_it(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    seed = start(nodes, tmp_path / "seed", NO_MODEL)
    worker = start(nodes, tmp_path / "worker", FAST, [seed.p2p_addr()])
    # The asker keeps to one connection, so libp2p's auto-connector does not dial the worker on its own.
    asker = start(nodes, tmp_path / "asker", [*NO_MODEL, "p2p.max_connections=1"], [seed.p2p_addr()])
    worker_id = worker.peer_id
    wait_until(lambda: any(r["peer_id"] == worker_id for r in seed.get(f"/api/providers/{MODEL[0]}/{MODEL[1]}")),
               timeout=30, what="the seed stores the worker's provider record")
    before = next((p for p in asker.get("/api/peers") if p["peer_id"] == worker_id), None)
    assert before is None or before["connected"] is False, "the asker must not have dialled the worker"

    found = wait_until(lambda: asker.get(f"/api/providers/{MODEL[0]}/{MODEL[1]}"), timeout=30,
                       what="the asker finds a provider of the model")
    assert [r["peer_id"] for r in found] == [worker_id]
    offer = found[0]["offers"][0]
    assert offer["item"] == MODEL[1]
    assert offer["unit"] == "token"
    assert offer["capacity"] >= 1
    assert found[0]["addrs"], "the signed record carries the worker's addresses"
    # Every lookup of a record went over the network as a key that the peers' FIND_NODE takes: py-libp2p resets
    # the stream of a FIND_NODE whose key is over 50 bytes (our keys were 62-71 before they named peers by digest).
    for node in (seed, worker, asker):
        assert "FIND_NODE key is not a valid PeerId" not in node.stderr_text(), node.data_dir.name


def test_a_node_whose_bootstrap_peer_is_down_at_start_joins_when_it_comes_up(tmp_path: Path,
                                                                             nodes: list[NodeProcess]) -> None:
    """The bootstrap peer is not up yet when the node starts (nothing listens on its address): the node starts
    alone, keeps dialling its bootstrap list with backoff while it holds no connection, and joins once the
    bootstrap peer listens. Before, nothing dialled it again: the node stayed alone until restarted."""
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    seed_id = str(load_identity(DataDir(seed_dir), create=True).peer_id)
    with socket.socket() as probe:  # a port nothing listens on, for the seed to take later
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    alone = start(nodes, tmp_path / "alone", NO_MODEL, [f"/ip4/127.0.0.1/tcp/{port}/p2p/{seed_id}"])
    assert alone.get("/api/p2p")["connected"] == 0
    seed = start(nodes, seed_dir, [*NO_MODEL, f"p2p.tcp_port={port}"])
    assert seed.peer_id == seed_id
    wait_until(lambda: seed_id in alone.live_peers(), timeout=60, what="the node dialled its bootstrap peer again")


def test_sigkill_drops_the_connections_and_restart_rejoins_from_the_peer_cache(
        tmp_path: Path, nodes: list[NodeProcess]) -> None:
    seed = start(nodes, tmp_path / "seed", NO_MODEL)
    a = start(nodes, tmp_path / "a", NO_MODEL, [seed.p2p_addr()])
    victim_dir = tmp_path / "victim"
    victim = start(nodes, victim_dir, NO_MODEL, [seed.p2p_addr()])
    victim_id = victim.peer_id
    for node in (seed, a):
        wait_until(lambda n=node: victim_id in n.live_peers(), timeout=30, what="victim seen alive")
    wait_until(lambda: {seed.peer_id, a.peer_id} <= victim.live_peers(), timeout=30,
               what="the victim knows both peers (and caches them)")

    victim.signal(signal.SIGKILL)
    victim.wait(timeout=10)
    for node in (seed, a):
        # A closed connection is no proof of death (a pruner closes them too), so the victim is not declared
        # dead here: it is no longer connected, and the next dial to it would tell (test_p2p_scale.py has a
        # killed provider found dead by the requesters that route to it).
        wait_until(lambda n=node: not _connected(n, victim_id), timeout=15, what="victim's connection gone")

    seed_id = seed.peer_id
    assert seed.stop() == 0  # every bootstrap peer is gone now
    reborn = start(nodes, victim_dir, NO_MODEL, [f"/ip4/127.0.0.1/tcp/1/p2p/{seed_id}"])
    assert reborn.peer_id == victim_id
    wait_until(lambda: _connected(reborn, a.peer_id) and reborn.peer_state(a.peer_id) == "alive", timeout=30,
               what="the restarted node reaches its cached peer")
    wait_until(lambda: _connected(a, victim_id), timeout=30, what="its peer sees it connected again")


def _connected(node: NodeProcess, peer_id: str) -> bool:
    return any(p["peer_id"] == peer_id and p["connected"] for p in node.get("/api/peers"))


def test_graceful_stop_is_seen_as_left_at_once(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    seed = start(nodes, tmp_path / "seed", [*NO_MODEL, "p2p.dead_after_s=60"])
    other = start(nodes, tmp_path / "other", NO_MODEL, [seed.p2p_addr()])
    other_id = other.peer_id
    wait_until(lambda: other_id in seed.live_peers(), timeout=30, what="other seen alive")
    assert other.stop() == 0
    # Well before dead_after_s (60 s): the leaving heartbeat says so.
    wait_until(lambda: seed.peer_state(other_id) == "left", timeout=10, what="other marked left")


def test_doctor_asks_a_peer_to_dial_back(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    seed = start(nodes, tmp_path / "seed", NO_MODEL)
    node = start(nodes, tmp_path / "node", NO_MODEL, [seed.p2p_addr()])
    wait_until(lambda: seed.peer_id in node.live_peers(), timeout=30, what="connected to the seed")
    checks = {c["name"]: c for c in node.get("/api/doctor")}
    reach = checks["reachable from peers"]
    assert reach["ok"] is True, reach
    assert node.p2p_addr().rsplit("/p2p/", 1)[0] in reach["detail"]
    assert checks[f"bootstrap {seed.peer_id[-8:]}"]["ok"] is True
    assert checks["clock skew"]["ok"] is True
    # Listening on loopback only is reported with the key that fixes it.
    assert checks["listen addresses"]["ok"] is False
    assert "p2p.listen_host" in checks["listen addresses"]["fix"]


def test_a_node_joins_over_quic(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    seed = start(nodes, tmp_path / "seed", [*NO_MODEL, "p2p.quic=true"])
    addrs = seed.get("/api/p2p")["addrs"]
    quic = next(a for a in addrs if "/udp/" in a and "/quic-v1/" in a)
    assert any("/tcp/" in a for a in addrs), "TCP and QUIC listen side by side"
    # The joiner's only bootstrap address is the seed's QUIC one.
    joiner = start(nodes, tmp_path / "joiner", [*NO_MODEL, "p2p.quic=true"], [quic])
    wait_until(lambda: seed.peer_id in joiner.live_peers() and joiner.peer_id in seed.live_peers(),
               timeout=30, what="seed and joiner see each other over QUIC")


def test_mdns_finds_a_peer_on_the_local_network_without_bootstrap(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    # mDNS announces the node's interface addresses, so these nodes listen on all interfaces.
    lan = [*[s for s in NO_MODEL if s != "p2p.mdns=false"], "p2p.mdns=true", 'p2p.listen_host="0.0.0.0"']
    a = start(nodes, tmp_path / "a", lan)
    b = start(nodes, tmp_path / "b", lan)
    wait_until(lambda: a.peer_id in b.live_peers() and b.peer_id in a.live_peers(), timeout=30,
               what="the two nodes find each other through mDNS alone")
