"""Provider lookups from established nodes, one by one, with what each lookup's walk did.

Starts N real daemons on 127.0.0.1 as `scripts/bench_p2p.py` does (one bootstrap, 3 of them serving the
packaged model), lets them settle, then asks `/api/providers` of the model from the last K nodes in turn
(``--lookups`` in all: each asker looks several times, as an established node does). The askers log at debug
level, so each lookup's line shows the walk that served it, read from the asker's log: every GET_PROVIDERS
query (ms since the walk started, providers and closer peers named), the walk's end (ms, the first provider's
ms, peers asked) and the provider records' fetch (ms). A lookup that needed no walk (the asker stores the
provider records itself) shows only the records.

    .venv/bin/python scripts/bench_lookups.py [--nodes 30] [--lookups 40] [--askers 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_p2p import MODEL, pct, start_network

from hyperion_node.testing.process import NodeProcess, stop_all

WALK_EVENTS = ("provider_query", "provider_query_failed", "provider_walk", "provider_records", "record_query_failed")


def walk_of(node: NodeProcess, t0: float, t1: float) -> str:
    """The walk events ``node`` logged between ``t0`` and ``t1``, in one line."""
    parts = []
    for line in (node.data_dir / "test-stderr.log").read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
            at = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        if event.get("event") not in WALK_EVENTS or not t0 - 0.01 <= at <= t1 + 0.01:
            continue
        if event["event"] == "provider_query":
            parts.append(f"q{event.get('ms')}({event.get('providers')},{event.get('closer')})")
        elif event["event"] == "provider_walk":
            parts.append(f"walk {event.get('ms')} ms, first {event.get('first_ms')}, asked {event.get('asked')};")
        elif event["event"] == "provider_records":
            parts.append(f"records {event.get('ms')} ms")
        else:
            parts.append(event["event"])
    return " ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=30)
    parser.add_argument("--lookups", type=int, default=40)
    parser.add_argument("--askers", type=int, default=8)
    parser.add_argument("--settle", type=float, default=20.0)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-lookups"))
    nodes: list[NodeProcess] = []
    try:
        nodes = start_network(root, args.nodes,
                              lambda i: ['logging.level="debug"'] if i >= args.nodes - args.askers else [])
        time.sleep(args.settle)
        askers = nodes[-args.askers:]
        done = []
        for i in range(args.lookups):
            node = askers[i % len(askers)]
            t0 = time.time()
            found = len(node.get(f"/api/providers/inference/{MODEL}"))
            done.append((node, t0, time.time(), found))
        time.sleep(1)  # the askers' last log lines reach their files
        spent = []
        for node, t0, t1, found in done:
            spent.append((t1 - t0) * 1000)
            print(f"{spent[-1]:8.1f} ms  {found} found  {node.data_dir.name}: {walk_of(node, t0, t1)}")
        print(f"N = {args.nodes}, {args.lookups} lookups from {args.askers} askers: "
              f"p50 / p95 {pct(spent, 0.5):.1f} / {pct(spent, 0.95):.1f} ms, max {max(spent):.1f}")
    finally:
        stop_all(nodes)


if __name__ == "__main__":
    main()
