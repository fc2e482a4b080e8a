"""The P2P layer at scale: N real daemon processes on 127.0.0.1, one of them the only bootstrap peer.

For each network size it reports:
  * convergence: seconds from launching the N-1 joiners until every node lists every other as alive;
  * gossip propagation: heartbeat publish-to-receive delay across all node pairs, p50 / p95;
  * DHT provider lookups for a model key from nodes that do not serve it, p50 / p95, beside the same
    node's /api/health round trip (the HTTP cost both share), measured side by side;
  * gossip sent per node per heartbeat interval (frames, messages, control entries), and the same divided
    by the N messages published per interval: sends per node per message must stay bounded by the mesh
    degree D as N grows (flooding would send each message to N-1 peers);
  * resident memory per node process.

Providers: the first 3 joiners serve the packaged model; all others disable the inference runtime.

``--baseline`` runs each size a second time with py-libp2p as shipped (``HYPERION_LIBP2P_AS_SHIPPED=1``:
without ``hyperion_node/p2p/libp2p_costs.py``), the two runs in alternating order, and prints both rows.

    .venv/bin/python scripts/bench_p2p.py                 # sizes 10, 20, 30
    .venv/bin/python scripts/bench_p2p.py --sizes 5 --lookups 10
    .venv/bin/python scripts/bench_p2p.py --sizes 10,20 --lookups 30 --baseline
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from hyperion_node.p2p.network import LATENCY_WINDOW_S
from hyperion_node.testing.process import NodeProcess, stop_all, wait_until

MODEL = "inference/gemma-3-270m-q4_k_m"
PROVIDERS = 3
WINDOW_HEARTBEATS = 10  # heartbeat intervals over which per-node send rates are measured
HEARTBEAT_S = 5.0  # the default


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def base_sets(serve: bool) -> list[str]:
    sets = ["p2p.mdns=false", "hardware.benchmark_on_start=false", f"p2p.heartbeat_interval_s={HEARTBEAT_S}",
            "hardware.telemetry_interval_s=30"]
    others = '"zk-groth16", "render-blender"'
    return [*sets, f"runtimes.disabled=[{others}]" if serve else f'runtimes.disabled=["inference", {others}]']


def run_size(n: int, root: Path, lookups: int, env: dict[str, str]) -> dict[str, Any]:
    seed = NodeProcess(root / "n00", sets=base_sets(False), quiet=True, env=env).start()
    bootstrap = f'p2p.bootstrap=["{seed.p2p_addr()}"]'
    joiners = [NodeProcess(root / f"n{i:02d}", sets=[*base_sets(i <= PROVIDERS), bootstrap], quiet=True, env=env)
               for i in range(1, n)]
    nodes = [seed, *joiners]
    try:
        launched = time.monotonic()
        for node in joiners:
            node.launch()
        for node in joiners:
            node.wait_ready(timeout=300)
        ids = {node.peer_id for node in nodes}
        pending = set(range(n))

        def everyone_knows_everyone() -> bool:
            for i in list(pending):
                if nodes[i].live_peers() >= ids - {nodes[i].peer_id}:
                    pending.discard(i)
            return not pending

        wait_until(everyone_knows_everyone, timeout=600, interval=0.5, what=f"{n} nodes converge")
        converged = time.monotonic() - launched

        time.sleep(LATENCY_WINDOW_S)  # let start-up fall out of the nodes' latency window
        before = [node.get("/api/p2p")["stats"] for node in nodes]
        time.sleep(WINDOW_HEARTBEATS * HEARTBEAT_S)
        after = [node.get("/api/p2p")["stats"] for node in nodes]
        pairs = list(zip(after, before, strict=True))
        per_hb = {key: statistics.mean((a[key] - b[key]) / WINDOW_HEARTBEATS for a, b in pairs)
                  for key in ("rpc_frames_out", "messages_out", "control_out")}
        p50s = [s["heartbeat_latency_ms"]["p50"] for s in after if s["heartbeat_latency_ms"]["n"]]
        p95s = [s["heartbeat_latency_ms"]["p95"] for s in after if s["heartbeat_latency_ms"]["n"]]

        lookup_ms, health_ms, found_some = [], [], 0
        askers = [node for node in nodes[PROVIDERS + 1 :]] or [seed]
        with httpx.Client(timeout=30) as client:  # one client: a new one per call costs ~35 ms of set-up
            for i in range(lookups):
                asker = askers[i % len(askers)]
                headers = {"Authorization": f"Bearer {asker.token}"}
                started = time.perf_counter()
                client.get(asker.api_url + "/api/health").raise_for_status()
                health_ms.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                found = client.get(f"{asker.api_url}/api/providers/{MODEL}", headers=headers).json()
                lookup_ms.append((time.perf_counter() - started) * 1000)
                found_some += bool(found)
        rss = [psutil.Process(node.proc.pid).memory_info().rss / 2**20 for node in nodes if node.proc]
        return {
            "n": n, "converged_s": converged, "gossip_p50_ms": statistics.median(p50s),
            "gossip_p95_ms": statistics.median(p95s), "gossip_p95_worst_node_ms": max(p95s),
            "lookups_found": f"{found_some}/{lookups}",
            "lookup_p50_ms": pct(lookup_ms, 0.5), "lookup_p95_ms": pct(lookup_ms, 0.95),
            "health_p50_ms": pct(health_ms, 0.5), **{f"{k}_per_heartbeat": v for k, v in per_hb.items()},
            "messages_out_per_message": per_hb["messages_out"] / n,
            "rss_mib_median": statistics.median(rss), "rss_mib_max": max(rss),
        }
    finally:
        stop_all(nodes, timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,20,30")
    parser.add_argument("--lookups", type=int, default=50)
    parser.add_argument("--baseline", action="store_true", help="also run each size with py-libp2p as shipped")
    args = parser.parse_args()
    settings = [("node", {})]
    if args.baseline:
        settings.append(("shipped", {"HYPERION_LIBP2P_AS_SHIPPED": "1"}))
    rows = []
    for k, n in enumerate(int(x) for x in args.sizes.split(",")):
        for name, env in settings if k % 2 == 0 else settings[::-1]:
            with tempfile.TemporaryDirectory() as tmp:
                row = {"libp2p": name, **run_size(n, Path(tmp), args.lookups, env)}
            rows.append(row)
            print({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    print(f"\nmachine: {psutil.cpu_count()} logical cores; heartbeat every {HEARTBEAT_S} s; gossip degree 6")
    print("| N | libp2p | converge s | gossip p50/p95 ms | lookup p50/p95 ms (health p50) | "
          "frames/msgs/control per node per heartbeat | sends per node per message | RSS MiB median (max) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['libp2p']} | {r['converged_s']:.1f} | "
              f"{r['gossip_p50_ms']:.1f} / {r['gossip_p95_ms']:.1f} | "
              f"{r['lookup_p50_ms']:.1f} / {r['lookup_p95_ms']:.1f} "
              f"({r['health_p50_ms']:.1f}; found {r['lookups_found']}) | "
              f"{r['rpc_frames_out_per_heartbeat']:.1f} / {r['messages_out_per_heartbeat']:.1f} / "
              f"{r['control_out_per_heartbeat']:.1f} | {r['messages_out_per_message']:.2f} | "
              f"{r['rss_mib_median']:.0f} ({r['rss_mib_max']:.0f}) |")


if __name__ == "__main__":
    main()
