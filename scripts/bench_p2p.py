"""The P2P layer at scale (issue #22): N real daemon processes on 127.0.0.1, one of them the only bootstrap peer.

For each network size N it reports, in this order (idle first, then with work):
  * idle CPU per daemon (% of one core, median and max over the daemons) over ``--window`` seconds, once
    every daemon has started and ``--settle`` seconds have passed;
  * messages received per node per minute over the same window: every liveness ping, every incoming stream
    (DHT queries, presence subscriptions) and every heartbeat; and connections per node (median, max);
  * DHT provider lookups of the model from nodes that do not serve it, p50 / p95, beside the same node's
    /api/health round trip (the HTTP cost both share), measured side by side;
  * heartbeat propagation to the nodes that need it: a few requesters route tasks (so they subscribe to the
    providers' presence), then the provider-clock-to-subscriber delay of the heartbeats they receive, p50/p95;
  * fast joining: ``--joiners`` fresh nodes, one at a time, each bootstrapping from one random idle node and
    sending its first task as soon as it is up: seconds from the request to the answer, p50 / p95.

Providers: the first 3 joiners serve the packaged model; all others disable the inference runtime. Every
figure is a ratio within one run or an absolute bound: the per-node figures at N = 40 against N = 10.

    .venv/bin/python scripts/bench_p2p.py                      # sizes 10, 20, 30, 40
    .venv/bin/python scripts/bench_p2p.py --sizes 10 --window 20 --joiners 3
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from hyperion_node.testing.process import NodeProcess, stop_all, wait_until

MODEL = "gemma-3-270m-q4_k_m"
PROVIDERS = 3
HEARTBEAT_S = 5.0  # the shipped default (--heartbeat): liveness pings and presence pushes at this interval


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def base_sets(serve: bool) -> list[str]:
    sets = ["p2p.mdns=false", "hardware.benchmark_on_start=false", f"p2p.heartbeat_interval_s={HEARTBEAT_S}",
            f"p2p.suspect_after_s={3 * HEARTBEAT_S}", f"p2p.dead_after_s={6 * HEARTBEAT_S}",
            "logging.level=\"warning\""]
    off = '"zk-groth16", "render-blender"'
    sets.append(f"runtimes.disabled=[{off}]" if serve else f'runtimes.disabled=["inference", {off}]')
    if serve:
        sets.append("runtimes.inference.n_ctx=512")
    return sets


def start_network(root: Path, n: int, extra: Callable[[int], list[str]] = lambda i: []) -> list[NodeProcess]:
    """N daemons as this bench starts them: node 0 the only bootstrap peer, nodes 1 to PROVIDERS serving the
    model, ``extra(i)`` added to node i's settings; returned once every node is connected. The caller stops
    them (``stop_all``)."""
    nodes = [NodeProcess(root / "n0", sets=[*base_sets(False), *extra(0)], quiet=True).start()]
    boot = f'p2p.bootstrap=["{nodes[0].p2p_addr()}"]'
    try:
        for i in range(1, n):
            nodes.append(NodeProcess(root / f"n{i}", sets=[*base_sets(i <= PROVIDERS), boot, *extra(i)],
                                     quiet=True).launch())
        for node in nodes[1:]:
            node.wait_ready(timeout=600)
        wait_until(lambda: all(counts(node)[1] >= 1 for node in nodes), timeout=120, what="every node connected")
    except BaseException:
        stop_all(nodes)
        raise
    return nodes


def complete(node: NodeProcess, prompt: str, max_tokens: int = 1) -> httpx.Response:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    return httpx.post(node.api_url + "/v1/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {node.token}"})


def counts(node: NodeProcess) -> tuple[float, int]:
    status = node.get("/api/p2p")
    received = status["stats"]["received"]
    # Pings on a kept ping stream open no stream: each is counted on its own (pings_in).
    messages = received.get("streams_in", 0) + received.get("pings_in", 0) + received.get("/hyperion/presence/2", 0)
    return messages, int(status["connected"])


def idle(nodes: list[NodeProcess], window: float) -> dict[str, Any]:
    procs = [psutil.Process(n.proc.pid) for n in nodes if n.proc is not None]
    cpu0 = [sum(p.cpu_times()[:2]) for p in procs]
    msgs0 = [counts(n)[0] for n in nodes]
    t0 = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - t0
    cpu = [100 * (sum(p.cpu_times()[:2]) - c) / elapsed for p, c in zip(procs, cpu0, strict=True)]
    after = [counts(n) for n in nodes]
    per_min = [(m - m0) * 60 / elapsed for (m, _), m0 in zip(after, msgs0, strict=True)]
    conns = [c for _, c in after]
    return {"cpu_median_pct": statistics.median(cpu), "cpu_max_pct": max(cpu),
            "msgs_per_min_median": statistics.median(per_min), "msgs_per_min_max": max(per_min),
            "connections_median": statistics.median(conns), "connections_max": max(conns)}


def lookups(askers: list[NodeProcess], count: int) -> dict[str, Any]:
    found, spent, health = 0, [], []
    for i in range(count):
        node = askers[i % len(askers)]
        t0 = time.perf_counter()
        providers = node.get(f"/api/providers/inference/{MODEL}")
        spent.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        node.get("/api/health")
        health.append((time.perf_counter() - t0) * 1000)
        found += bool(providers)
    return {"lookup_p50_ms": pct(spent, 0.5), "lookup_p95_ms": pct(spent, 0.95), "health_p50_ms": pct(health, 0.5),
            "lookups_found": f"{found}/{count}"}


def propagation(requesters: list[NodeProcess], wait_s: float) -> dict[str, Any]:
    for i, node in enumerate(requesters):
        for k in range(2):
            complete(node, f"Say {i} {k}.")
    time.sleep(wait_s)  # the subscriptions stay up for a minute after the last task: heartbeats keep coming
    p50s, p95s = [], []
    for node in requesters:
        latency = node.get("/api/p2p")["stats"]["heartbeat_latency_ms"]
        if latency["n"]:
            p50s.append(latency["p50"])
            p95s.append(latency["p95"])
    return {"heartbeat_p50_ms": statistics.median(p50s) if p50s else float("nan"),
            "heartbeat_p95_ms": max(p95s) if p95s else float("nan")}


def joining(root: Path, idle_nodes: list[NodeProcess], joiners: int, rng: random.Random) -> dict[str, Any]:
    took: list[float] = []
    failures: list[str] = []  # why a first task failed (status and message): printed with the row
    for j in range(joiners):
        seed = rng.choice(idle_nodes)
        node = NodeProcess(root / f"joiner{j}", sets=[*base_sets(False), f'p2p.bootstrap=["{seed.p2p_addr()}"]'],
                           quiet=True).start()
        try:
            t0 = time.perf_counter()
            answer = complete(node, f"Hello {j}.")
            took.append(time.perf_counter() - t0 if answer.status_code == 200 else float("inf"))
            if answer.status_code != 200:
                lookups = node.get("/api/p2p")["stats"].get("lookups")  # what answered its lookups, if any did
                failures.append(f"{answer.status_code} after {time.perf_counter() - t0:.1f} s: {answer.text[:120]}"
                                f" lookups {lookups}")
        finally:
            node.stop()
    return {"join_first_task_p50_s": pct(took, 0.5), "join_first_task_p95_s": pct(took, 0.95),
            "join_failures": failures}


def run_size(n: int, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(n)
    nodes: list[NodeProcess] = []
    try:
        seed = NodeProcess(root / "n0", sets=base_sets(False), quiet=True).start()
        nodes.append(seed)
        boot = f'p2p.bootstrap=["{seed.p2p_addr()}"]'
        started = time.monotonic()
        for i in range(1, n):
            nodes.append(NodeProcess(root / f"n{i}", sets=[*base_sets(i <= PROVIDERS), boot], quiet=True).launch())
        for node in nodes[1:]:
            node.wait_ready(timeout=600)
        wait_until(lambda: all(counts(node)[1] >= 1 for node in nodes), timeout=120, what="every node connected")
        up_s = time.monotonic() - started
        time.sleep(args.settle)
        row: dict[str, Any] = {"n": n, "all_up_s": up_s, **idle(nodes, args.window)}
        idle_nodes = nodes[PROVIDERS + 1:]
        row.update(lookups(idle_nodes, args.lookups))
        row.update(propagation(idle_nodes[:3], wait_s=20.0))
        row.update(joining(root, idle_nodes, args.joiners, rng))
        rss = [psutil.Process(node.proc.pid).memory_info().rss / 2**20 for node in nodes if node.proc is not None]
        row.update({"rss_mib_median": statistics.median(rss)})
        return row
    finally:
        stop_all(nodes)


def main() -> None:
    global HEARTBEAT_S
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,20,30,40")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds after start-up before measuring")
    parser.add_argument("--window", type=float, default=40.0, help="seconds of idle measurement")
    parser.add_argument("--lookups", type=int, default=30)
    parser.add_argument("--joiners", type=int, default=6)
    parser.add_argument("--heartbeat", type=float, default=HEARTBEAT_S,
                        help="p2p.heartbeat_interval_s (suspect after 3x, dead after 6x, as the defaults are)")
    args = parser.parse_args()
    HEARTBEAT_S = args.heartbeat
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            row = run_size(n, Path(tmp), args)
        rows.append(row)
        print({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    print(f"\nmachine: {psutil.cpu_count()} logical cores; liveness every {HEARTBEAT_S} s; "
          f"p2p.target_connections default (8)")
    print("| N | idle CPU % median (max) | msgs/node/min median (max) | connections median (max) | "
          "lookup p50/p95 ms (health p50) | heartbeat p50/p95 ms | first task of a new node p50/p95 s | RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['cpu_median_pct']:.2f} ({r['cpu_max_pct']:.2f}) | "
              f"{r['msgs_per_min_median']:.0f} ({r['msgs_per_min_max']:.0f}) | "
              f"{r['connections_median']:.0f} ({r['connections_max']}) | "
              f"{r['lookup_p50_ms']:.1f} / {r['lookup_p95_ms']:.1f} ({r['health_p50_ms']:.1f}; {r['lookups_found']}) | "
              f"{r['heartbeat_p50_ms']:.1f} / {r['heartbeat_p95_ms']:.1f} | "
              f"{r['join_first_task_p50_s']:.2f} / {r['join_first_task_p95_s']:.2f} | {r['rss_mib_median']:.0f} |")
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        print(f"\nN={last['n']} / N={first['n']}: idle CPU {last['cpu_median_pct'] / first['cpu_median_pct']:.2f}x, "
              f"messages {last['msgs_per_min_median'] / first['msgs_per_min_median']:.2f}x")


if __name__ == "__main__":
    main()
