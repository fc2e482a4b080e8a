"""An idle network's cost window by window, to tell a steady cost from periodic bursts.

Starts N real daemons on 127.0.0.1 as `scripts/bench_p2p.py` does, then measures ``--windows`` consecutive
windows of ``--window`` seconds, each on its own line: idle CPU per daemon (median, max, % of a core), messages
received per node per minute (median, max), connections per node (median, max), and the protocols that
received the most in that window, summed over all nodes. `bench_p2p.py` reads one window after a fixed settle;
a burst that every node makes at the same moment (a periodic walk, a republish) lands in that window or not.

    .venv/bin/python scripts/bench_idle.py [--nodes 30] [--windows 8] [--window 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_p2p import start_network

from hyperion_node.testing.process import NodeProcess, stop_all


def received(status: dict[str, Any]) -> Counter[str]:
    return Counter(status["stats"]["received"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=30)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--window", type=float, default=20.0)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-idle"))
    nodes: list[NodeProcess] = []
    try:
        started = time.monotonic()
        nodes = start_network(root, args.nodes)
        print(f"N = {args.nodes}: every node connected {time.monotonic() - started:.0f} s after the first started")
        procs = [psutil.Process(node.proc.pid) for node in nodes if node.proc is not None]
        for _ in range(args.windows):
            cpu0 = [sum(p.cpu_times()[:2]) for p in procs]
            before = [node.get("/api/p2p") for node in nodes]
            t0 = time.monotonic()
            time.sleep(args.window)
            elapsed = time.monotonic() - t0
            cpu = [100 * (sum(p.cpu_times()[:2]) - c) / elapsed for p, c in zip(procs, cpu0, strict=True)]
            after = [node.get("/api/p2p") for node in nodes]
            msgs = [(counts_of(b) - counts_of(a)) * 60 / elapsed for a, b in zip(before, after, strict=True)]
            conns = [int(s["connected"]) for s in after]
            total: Counter[str] = Counter()
            for a, b in zip(before, after, strict=True):
                total.update(received(b) - received(a))
            top = ", ".join(f"{k} {v}" for k, v in total.most_common(4))
            print(f"t+{time.monotonic() - started:4.0f} s  CPU {statistics.median(cpu):5.2f} ({max(cpu):5.2f}) %  "
                  f"msgs/min {statistics.median(msgs):4.0f} ({max(msgs):4.0f})  "
                  f"connections {statistics.median(conns):4.1f} ({max(conns)})  | {top}", flush=True)
    finally:
        stop_all(nodes)


def counts_of(status: dict[str, Any]) -> float:
    """Messages as `bench_p2p.counts` counts them, from a status already read."""
    got = status["stats"]["received"]
    return float(got.get("streams_in", 0) + got.get("pings_in", 0) + got.get("/hyperion/presence/2", 0))


if __name__ == "__main__":
    main()
