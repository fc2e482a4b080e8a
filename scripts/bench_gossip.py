"""Gossip delivery on py-libp2p inside one process: what one message costs under py-libp2p's own behaviour
and under the node's changes to it, side by side: yamux's per-read credit release off
(``PY_YAMUX_RELEASE_ON_READ=0``, hyperion_node/p2p/libp2p_stack.py), then also ``hyperion_node/p2p/libp2p_costs.py``
(credit returned at half a window, the signed peer record of each RPC built and checked once).

N hosts on 127.0.0.1 in one trio loop (as the demo runs them), each connected to host 0 and to the one
before it, gossipsub with the node's mesh degree; host 1 publishes M messages 50 ms apart, each carrying
its send time. Reported per setting: delivery latency p50 / p95 to every other host, and the process's CPU
per published message (every host's receive, validate and relay work). The two settings alternate, round
by round, so that machine load hits all alike.

    .venv/bin/python scripts/bench_gossip.py [--hosts 6] [--messages 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from contextlib import AsyncExitStack

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

import hyperion_node.p2p.network  # noqa: F401  (sets the node's defaults, which the rounds then override)
from hyperion_node.p2p import libp2p_costs

TOPIC = "bench"


async def one_round(hosts: int, messages: int) -> tuple[list[float], float]:
    """(latencies in s, CPU s per published message)"""
    async with AsyncExitStack() as stack:
        nodes = []
        for _ in range(hosts):
            listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
            host = new_host(key_pair=create_new_key_pair(), listen_addrs=listen, muxer_preference="YAMUX")
            gossipsub = GossipSub(protocols=[PROTOCOL_ID_V11, PROTOCOL_ID], degree=6, degree_low=4, degree_high=12,
                                  heartbeat_interval=1, heartbeat_initial_delay=0.1, spam_protection_enabled=False)
            pubsub = Pubsub(host, gossipsub, strict_signing=True)
            await stack.enter_async_context(host.run(listen_addrs=listen))
            await stack.enter_async_context(background_trio_service(pubsub))
            await stack.enter_async_context(background_trio_service(gossipsub))
            await pubsub.wait_until_ready()
            nodes.append((host, pubsub, await pubsub.subscribe(TOPIC)))

        def info(i: int) -> PeerInfo:
            return info_from_p2p_addr(multiaddr.Multiaddr(str(nodes[i][0].get_addrs()[0])))

        for i in range(1, hosts):
            await nodes[i][0].connect(info(0))
            if i > 1:
                await nodes[i][0].connect(info(i - 1))
        await trio.sleep(3)  # a few gossipsub heartbeats: the mesh forms
        latencies: list[float] = []

        async def receive(subscription: object) -> None:
            while True:
                msg = await subscription.get()  # type: ignore[attr-defined]
                latencies.append(time.perf_counter() - float(msg.data.decode()))

        async with trio.open_nursery() as nursery:
            for i in range(hosts):
                if i != 1:
                    nursery.start_soon(receive, nodes[i][2])
            before = resource.getrusage(resource.RUSAGE_SELF)
            for _ in range(messages):
                await nodes[1][1].publish(TOPIC, f"{time.perf_counter():.6f}".encode())
                await trio.sleep(0.05)
            await trio.sleep(1.5)
            after = resource.getrusage(resource.RUSAGE_SELF)
            nursery.cancel_scope.cancel()
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if len(latencies) < messages * (hosts - 1):
        print(f"  warning: {len(latencies)} of {messages * (hosts - 1)} deliveries arrived")
    return latencies, cpu / messages


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=6)
    parser.add_argument("--messages", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # name -> (PY_YAMUX_RELEASE_ON_READ, libp2p_costs installed)
    settings = {
        "py-libp2p as shipped (release on every read)": ("1", False),
        "PY_YAMUX_RELEASE_ON_READ=0": ("0", False),
        "+ libp2p_costs (the node)": ("0", True),
    }
    results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in settings}
    for _ in range(args.rounds):
        for name, (release, patched) in settings.items():
            os.environ["PY_YAMUX_RELEASE_ON_READ"] = release  # read by yamux at each call
            if patched:
                libp2p_costs.install()
            else:
                libp2p_costs.uninstall()
            latencies, cpu = trio.run(one_round, args.hosts, args.messages)
            results[name][0].extend(latencies)
            results[name][1].append(cpu)
    print(f"{args.hosts} hosts in one process, {args.messages} messages x {args.rounds} alternating rounds")
    print(f"{'setting':45} {'p50 ms':>7} {'p95 ms':>7} {'CPU ms / message':>17}")
    base_cpu = None
    for name, (latencies, cpus) in results.items():
        cpu = statistics.median(cpus) * 1000
        base_cpu = base_cpu or cpu
        print(f"{name:45} {pct(latencies, 0.5) * 1000:7.1f} {pct(latencies, 0.95) * 1000:7.1f} {cpu:9.1f} "
              f"({cpu / base_cpu:.2f}x)")


if __name__ == "__main__":
    main()
