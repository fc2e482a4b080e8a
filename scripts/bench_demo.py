"""How large a demo this machine sustains: the installed ``hyperion-node start --demo`` as a real process,
one configuration after another (nodes x tasks/s), each against the small baseline run beside it.

"Keeps up" means: the workload's tasks finish at the rate they are submitted (completed/s over submitted/s),
latency stays near the baseline's (p50 ratio), and the live view still prints its line once a second. CPU is
the process's user+system time over its wall time (1.0 = one core busy), memory its peak RSS.

    .venv/bin/python scripts/bench_demo.py [--duration 30] [--configs 8x5,20x20,50x50,50x100]
        [--networks libp2p,memory] [--against DIR]

``--against DIR`` runs each configuration a second time, right after, with the ``hyperion_node`` package of
another source tree first on PYTHONPATH (e.g. ``git archive HEAD~3 | tar -x -C DIR``), so a change is
measured against the code before it under the same load.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from hyperion_node.testing.process import hyperion_executable


def run(nodes: int, rate: float, duration: float, tree: str | None = None, network: str = "libp2p"
        ) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        out_path, err_path = Path(tmp) / "out.txt", Path(tmp) / "err.txt"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            started = time.monotonic()
            proc = subprocess.Popen([hyperion_executable(), "start", "--demo", "--nodes", str(nodes), "--rate",
                                     str(rate), "--duration", str(duration), "--seed", "7",
                                     "--network", network],
                                    stdout=out, stderr=err,
                                    env={**os.environ, "PYTHONPATH": tree} if tree else None)
            ps = psutil.Process(proc.pid)
            peak_rss, cpu = 0, 0.0
            workload_started: float | None = None
            cpu_at_start = 0.0
            while proc.poll() is None:
                try:
                    peak_rss = max(peak_rss, ps.memory_info().rss)
                    times = ps.cpu_times()
                    cpu = times.user + times.system
                except psutil.NoSuchProcess:
                    break
                if workload_started is None and "| demo seed=" in out_path.read_text():
                    workload_started = time.monotonic()
                    cpu_at_start = cpu
                time.sleep(0.5)
            ended = time.monotonic()
        text = out_path.read_text()
        errors = err_path.read_text(errors="replace")
    if proc.returncode != 0 or workload_started is None:
        raise SystemExit(f"demo {nodes}x{rate} failed (rc {proc.returncode}):\n{text[-2000:]}\n{errors[-3000:]}")
    tasks = re.search(r"tasks\s+(\d+) submitted, (\d+) completed, (\d+) failed", text)
    p50 = re.findall(r"latency p50 ([\d.]+) (ms|s)", text)
    assert tasks is not None
    submitted, completed, failed = (int(g) for g in tasks.groups())
    p50_ms = [float(v) * (1 if unit == "ms" else 1000) for v, unit in p50]
    lines = text.count("| demo seed=")
    work_s = ended - workload_started
    return {"tree": tree or ".", "network": network, "nodes": nodes, "rate": rate,
            "startup_s": workload_started - started,
            "submitted": submitted,
            "completed": completed, "failed": failed, "kept_up": completed / max(submitted, 1),
            "p50_ms": sum(p50_ms) / len(p50_ms) if p50_ms else float("nan"),
            "view_lines_per_s": lines / duration, "cpu_cores": (cpu - cpu_at_start) / work_s,
            "peak_rss_mib": peak_rss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--configs", default="8x5,20x20,50x50,50x100")
    parser.add_argument("--against", help="another source tree, run after each configuration")
    parser.add_argument("--networks", default="libp2p",
                        help="the demo's --network for each configuration, in turn: libp2p, memory or both "
                        "(libp2p,memory)")
    args = parser.parse_args()
    configs = [(int(n), float(r)) for n, r in (c.split("x") for c in args.configs.split(","))]
    trees = [None, args.against] if args.against else [None]
    rows = []
    for n, r in configs:
        for network in args.networks.split(","):
            for tree in trees:
                try:
                    rows.append(run(n, r, args.duration, tree, network))
                except SystemExit as exc:  # one configuration failing still leaves the others' rows
                    print(f"tree {tree or '.'} on {network}: {exc}", file=sys.stderr)
    if not rows:
        raise SystemExit("no configuration finished")
    base = rows[0]
    print(f"{'tree':>12} {'network':>7} {'nodes':>5} {'tasks/s':>7} {'start s':>7} {'submit':>6} {'done%':>6} "
          f"{'fail':>5} "
          f"{'p50 ms':>7} {'p50/base':>8} {'view/s':>6} {'cores':>5} {'RSS MiB':>7}")
    for r in rows:
        print(f"{str(r['tree'])[-12:]:>12} {r['network']:>7} {r['nodes']:>5.0f} {r['rate']:>7.0f} "
              f"{r['startup_s']:>7.1f} "
              f"{r['submitted']:>6.0f} "
              f"{100 * r['kept_up']:>5.1f}% {r['failed']:>5.0f} {r['p50_ms']:>7.0f} "
              f"{r['p50_ms'] / base['p50_ms']:>8.2f} {r['view_lines_per_s']:>6.2f} {r['cpu_cores']:>5.2f} "
              f"{r['peak_rss_mib']:>7.0f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
