"""Per-node cost set by the protocol's constants, not by the network's size (issue #22), with real daemons on
127.0.0.1, one bootstrap peer for all of them.

One network grows from 4 nodes to 12 (the first two serve the packaged model, the rest serve nothing), then a
13th joins and routes a task. The traffic each idle node receives is measured at 4 and at 12 nodes: every
incoming stream (liveness pings, DHT queries, presence subscriptions) and every heartbeat. With gossip each
node heard every other node's heartbeats, so its traffic grew with N; now it is set by its connection count,
which the connection target bounds (``p2p.target_connections``, here 3: lookups may open more for a while, the
pruner trims them back).

py-libp2p's DHT random walk (every two minutes, each of its lookups dialling every node it meets: in a network
this small, every node) is off, so that the connection count can settle within the test's minutes.
Timings are shortened through config (liveness every 0.5 s, dead after 4 s); every wait is a poll under a
deadline.
"""

from __future__ import annotations

import signal
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from hyperion_node.testing.process import NodeProcess, stop_all, wait_until

pytestmark = pytest.mark.process

TARGET = 3  # p2p.target_connections: a node keeps 3 connections, more for a while after DHT lookups
MODEL = "gemma-3-270m-q4_k_m"
# tasks.lookup_timeout_s: a node's first provider lookup in this network takes 3-4 s on a loaded 2-core machine
# (seen: it found both providers a moment after a task's 3 s lookup gave up), and what these tests check is
# that the route is found, not in what time: scripts/bench_p2p.py measures that against the 3 s goal.
FAST = ["p2p.mdns=false", "p2p.heartbeat_interval_s=0.5", "p2p.suspect_after_s=2.0", "p2p.dead_after_s=4.0",
        "hardware.benchmark_on_start=false", f"p2p.target_connections={TARGET}", "p2p.dht_random_walk=false",
        "tasks.lookup_timeout_s=10.0"]
OFF = '"zk-groth16", "render-blender"'
PROVIDER = [*FAST, f"runtimes.disabled=[{OFF}]", "runtimes.inference.n_ctx=512"]
IDLE = [*FAST, f'runtimes.disabled=["inference", {OFF}]']
SETTLE_S = 15.0  # after the last node joined: start-up lookups and advertising done
WINDOW_S = 30.0  # traffic measured over this long


@dataclass
class Growing:
    root: Path
    nodes: list[NodeProcess] = field(default_factory=list)
    traffic: dict[int, list[dict[str, float]]] = field(default_factory=dict)  # N -> per node

    def add(self, count: int) -> None:
        boot = [f'p2p.bootstrap=["{self.nodes[0].p2p_addr()}"]'] if self.nodes else []
        fresh = []
        for _ in range(count):
            i = len(self.nodes)
            sets = PROVIDER if i in (1, 2) else IDLE
            fresh.append(NodeProcess(self.root / f"n{i}", sets=[*sets, *boot]).launch())
            self.nodes.append(fresh[-1])
            if not boot:  # the first node is everyone's bootstrap: wait for its address
                fresh[-1].wait_ready(timeout=120)
                boot = [f'p2p.bootstrap=["{fresh[-1].p2p_addr()}"]']
        for node in fresh:
            if not node.api_url:
                node.wait_ready(timeout=180)

    def settle(self) -> None:
        """Wait until the nodes hold 1..2*TARGET connections (the median; each node at most 2 more, since a
        connection younger than 20 s or with an open stream is spared): start-up lookups connect a new node to
        every node they meet, and others to it; the excess is closed once it is 20 s old."""
        seen: list[float] = []

        def within() -> bool:
            seen[:] = [_counts(n)["connections"] for n in self.nodes]
            return statistics.median(seen) <= 2 * TARGET and all(1 <= c <= 2 * TARGET + 2 for c in seen)

        try:
            wait_until(within, timeout=90, what=f"the nodes within 1..{2 * TARGET} connections")
        except TimeoutError as exc:
            raise AssertionError(f"connections per node: {seen}") from exc

    def measure(self) -> list[dict[str, float]]:
        """Each node's traffic received per minute over WINDOW_S, and its connections (the mean of the two ends
        of the window)."""
        before = [(time.monotonic(), _counts(n)) for n in self.nodes]
        time.sleep(WINDOW_S)
        rows = []
        for node, (t0, c0) in zip(self.nodes, before, strict=True):
            c1 = _counts(node)
            minutes = (time.monotonic() - t0) / 60
            per_min = (c1["messages"] - c0["messages"]) / minutes
            connections = (c0["connections"] + c1["connections"]) / 2
            rows.append({"per_min": per_min, "connections": connections,
                         "per_connection": per_min / max(connections, 1)})
        return rows


def _counts(node: NodeProcess) -> dict[str, float]:
    status = node.get("/api/p2p")
    received = status["stats"]["received"]
    # A ping on a kept ping stream opens no stream: pings are counted on their own.
    return {"messages": received.get("streams_in", 0) + received.get("pings_in", 0)
            + received.get("/hyperion/presence/2", 0),
            "connections": status["connected"]}


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Growing]:
    net = Growing(tmp_path_factory.mktemp("scale"))
    try:
        net.add(4)
        time.sleep(SETTLE_S)
        net.settle()
        net.traffic[4] = net.measure()
        net.add(8)
        time.sleep(SETTLE_S)
        net.settle()
        net.traffic[12] = net.measure()
        yield net
    finally:
        stop_all(net.nodes)


def test_traffic_per_node_does_not_grow_with_the_network(grown: Growing) -> None:
    small, large = grown.traffic[4], grown.traffic[12]
    # Connections came back within the watermarks (the fixture waited for it), whatever the size.
    assert statistics.median(row["connections"] for row in large) <= 2 * TARGET, large
    assert all(1 <= row["connections"] <= 2 * TARGET + 2 for row in large), large
    # What a node receives is set by its connections: per connection it does not grow with N ...
    per_connection = (statistics.median(r["per_connection"] for r in small),
                      statistics.median(r["per_connection"] for r in large))
    assert per_connection[1] <= 1.5 * per_connection[0], (per_connection, small, large)
    # ... so per node it stays under what the most connections the watermarks allow would bring.
    ceiling = 2 * TARGET * per_connection[0] * 1.5
    assert statistics.median(r["per_min"] for r in large) <= ceiling, (small, large)


def test_every_node_is_connected_and_estimates_the_network(grown: Growing) -> None:
    for node in grown.nodes:
        assert node.get("/api/p2p")["connected"] >= 1
    # The census found every node (fewer than a sample's 20): its estimate is exact here, labelled as such.
    estimate = wait_until(lambda: grown.nodes[5].get("/api/p2p")["network_estimate"], timeout=60,
                          what="a node's first census")
    assert estimate["estimate"] is True
    assert estimate["nodes"] == 12
    assert estimate["capacity"].get(f"inference/{MODEL}", 0) >= 2


def test_a_new_node_routes_to_a_provider_it_never_heard_of(grown: Growing) -> None:
    providers = {grown.nodes[1].peer_id, grown.nodes[2].peer_id}
    seed = grown.nodes[3]  # serves nothing
    joiner = NodeProcess(grown.root / "joiner", sets=[*IDLE, f'p2p.bootstrap=["{seed.p2p_addr()}"]']).start()
    grown.nodes.append(joiner)
    # Its start-up DHT lookups may have connected it to every node of a network this small (k = 20), but it
    # holds no offer of the model: it has never heard of a provider of it.
    models = {m["id"] for m in joiner.get("/v1/models")["data"]}
    assert MODEL not in models, "the joiner must not have heard of a provider before its task"
    started = time.monotonic()
    answer = _complete(joiner, "Say hello.")
    took = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-hyperion-worker"] in providers
    # Found by the walk that stops at an answer, each provider's record asked of the provider itself
    # (provider_walk.py), not by py-libp2p's whole lookup.
    lookups = joiner.get("/api/p2p")["stats"]["lookups"]
    assert lookups.get("walk", 0) >= 1, lookups
    assert not lookups.get("dht"), lookups
    print(f"first task from a new node: {took:.2f} s")  # the figure: scripts/bench_p2p.py measures its p95


def test_a_killed_providers_load_moves_to_the_other_within_the_liveness_timeout(grown: Growing) -> None:
    asker = grown.nodes[4]
    first, second = grown.nodes[1], grown.nodes[2]
    workers = {_complete(asker, f"Count to {i}.").headers["x-hyperion-worker"] for i in range(4)}
    assert workers, "tasks ran"
    victim, survivor = (first, second) if first.peer_id in workers else (second, first)
    victim_id, survivor_id = victim.peer_id, survivor.peer_id
    victim.signal(signal.SIGKILL)
    victim.wait(timeout=10)
    killed = time.monotonic()
    # Every task from now on completes, on the survivor: the first may try the victim and fail over.
    for i in range(3):
        answer = _complete(asker, f"Name {i} colours.")
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-hyperion-worker"] == survivor_id
    wait_until(lambda: asker.peer_state(victim_id) == "dead", timeout=15, what="the asker marks the victim dead")
    print(f"victim dead at the asker after {time.monotonic() - killed:.1f} s (p2p.dead_after_s = 4)")
    grown.nodes.remove(victim)


def _complete(node: NodeProcess, prompt: str) -> Any:
    """A completion, asked once more after a 503 "all-busy" as a client honouring its Retry-After would: a node
    that joined seconds ago can see its first stream to a provider fail while its new connections settle (seen
    on the 2-core CI machine), and says so with a 503 that tells the client when to retry."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 4, "temperature": 0}
    headers = {"Authorization": f"Bearer {node.token}"}
    answer = httpx.post(node.api_url + "/v1/completions", json=body, timeout=120, headers=headers)
    if answer.status_code == 503 and answer.json()["error"].get("code") == "all-busy":
        time.sleep(min(float(answer.headers.get("retry-after", "1")), 5.0))  # the client's back-off, not a settle wait
        answer = httpx.post(node.api_url + "/v1/completions", json=body, timeout=120, headers=headers)
    return answer
