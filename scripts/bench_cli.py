"""How long the CLI takes to answer: `hyperion-node --help`, `id`, `status`, `peers` against a running node.

Each command runs ``--rounds`` times interleaved with the baseline, ``python -c pass`` on the same
interpreter (start-up of Python itself, which no CLI written in Python beats); the figure is the median wall
time and its ratio to the baseline's median. The daemon is a real one on a fresh data dir (runtimes off, no
mDNS), so that `status` and `peers` make their real requests.

    .venv/bin/python scripts/bench_cli.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hyperion_node.testing.process import NodeProcess, hyperion_executable

COMMANDS = (["--help"], ["id"], ["status"], ["peers"], ["rewards"], ["config", "show"])
NODE_SETS = ["p2p.mdns=false", "hardware.benchmark_on_start=false",
             'runtimes.disabled=["inference", "zk-groth16", "render-blender"]']


def wall(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    exe = hyperion_executable()
    with tempfile.TemporaryDirectory() as tmp:
        node = NodeProcess(Path(tmp) / "node", sets=NODE_SETS).start()
        env = {**os.environ, "HYPERION_DATA_DIR": str(node.data_dir)}
        try:
            for argv in COMMANDS:  # once, unmeasured: byte-code caches written, files in the page cache
                wall([exe, *argv], env)
            times: dict[str, list[float]] = {"python -c pass": []}
            for _ in range(args.rounds):
                times["python -c pass"].append(wall([sys.executable, "-c", "pass"], env))
                for argv in COMMANDS:
                    times.setdefault(" ".join(argv), []).append(wall([exe, *argv], env))
        finally:
            node.stop()
    base = statistics.median(times["python -c pass"])
    print(f"{'command':<16} {'median s':>9} {'÷ python -c pass':>17}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:<16} {median:>9.3f} {median / base:>17.1f}")


if __name__ == "__main__":
    main()
