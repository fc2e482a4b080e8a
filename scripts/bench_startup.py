"""Start-up time and idle memory of a real `hyperion-node start` process.

Measures, side by side in one run (this machine is noisy, so each figure comes with its baseline):
  * baseline: a bare interpreter importing the node's heavy dependencies (libp2p, trio, fastapi, hypercorn,
    llama_cpp) -- the floor no daemon written in Python on these libraries can beat;
  * cold start to ready: a fresh data dir (key created, packaged model assembled, benchmark run);
  * warm start to ready: the same data dir again (cached benchmark, model already assembled);
  * idle resident memory of the daemon after it has been ready for a few seconds.

"Ready" is what the test helper waits for: api.json written by the daemon and /api/health answering.

    .venv/bin/python scripts/bench_startup.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from hyperion_node.testing.process import NodeProcess

IMPORT_FLOOR = "import libp2p, trio, fastapi, hypercorn, llama_cpp"
IDLE_SETTLE_S = 5.0  # let the first telemetry sample and any lazy imports happen before reading RSS


def baseline_seconds() -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", IMPORT_FLOOR], check=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    base, cold, warm, rss = [], [], [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            data_dir = Path(tmp) / "node"
            base.append(baseline_seconds())
            node = NodeProcess(data_dir).start()
            cold.append(node.ready_seconds)
            assert node.stop() == 0
            node = NodeProcess(data_dir).start()
            warm.append(node.ready_seconds)
            time.sleep(IDLE_SETTLE_S)
            assert node.proc is not None
            rss.append(psutil.Process(node.proc.pid).memory_info().rss)
            assert node.stop() == 0

    b, c, w = statistics.median(base), statistics.median(cold), statistics.median(warm)
    m = statistics.median(rss) / 2**20
    print(f"machine: {psutil.cpu_count()} logical cores, {psutil.virtual_memory().total / 2**30:.1f} GiB RAM")
    print(f"rounds: {args.rounds} (medians)")
    print(f"baseline import floor ({IMPORT_FLOOR}): {b:.2f} s")
    print(f"cold start to ready: {c:.2f} s  ({c / b:.2f}x the import floor)")
    print(f"warm start to ready: {w:.2f} s  ({w / b:.2f}x the import floor; target <= 3 s)")
    print(f"idle daemon RSS: {m:.0f} MiB  (target <= 150 MB)")


if __name__ == "__main__":
    main()
