"""Internet scale, simulated (issue #22, item 7): N virtual nodes running our P2P code (``P2PNetwork``: liveness,
presence, advertiser, census, DHT provider flow) and the scheduler's routing on a simulated wide-area network
with per-node Kademlia routing, bounded connections and per-link latency, under a virtual clock
(``hyperion_demo/simnet.py``, ``simdht.py``, ``simrun.py``: what is simulated and what is left out).

Each size runs in a process of its own (its memory is its own), one after the other. For each N it prints:

* messages received per node per second over the measured window (after ``--warmup``): every stream opened to
  the node, every frame written to it (heartbeats, task frames), every ping and every DHT RPC it answers;
  median and p99 over the nodes alive through the window, and the network-wide mean by kind;
* the census's cost, amortised: it runs 10 s after a node joins and every 300 s after that, so a window
  shorter than 300 s does not hold it; its lookups (one FIND_NODE, up to 20 record reads) are counted over
  the whole run and spread over the interval (an upper bound: a record the peer table holds is not read);
* DHT provider lookups (GET_PROVIDERS, from requesters): rounds ("hops") and virtual ms, p50 / p95, and the
  whole ``P2PNetwork.find_providers`` (records fetched too) as the requester waited for it;
* tasks submitted in the window: the share routed to a live provider on the first try and in the end;
* connections per node (median, max), resident memory at the end and the run's wall and CPU time.

The issue's figures: per-node messages/s at N = 10,000 within 1.5x of N = 100, and >= 99 % of tasks routed to a
live provider. The script prints the ratio of the largest N to the smallest.

Run time (``simrun.py`` says why): N = 100 ~5 s, N = 1,000 ~90 s; N = 10,000 ~12 minutes to the end of the
warm-up and 6 to 11 s per virtual second after it, so the default window (120 s) takes it past half an hour:
``--max-wall`` stops a size and says how far it got.

    .venv/bin/python scripts/bench_sim.py                                   # N = 100, 1,000, 10,000
    .venv/bin/python scripts/bench_sim.py --sizes 100,1000 --window 120
    .venv/bin/python scripts/bench_sim.py --sizes 10000 --max-wall 600      # stop a size after 10 minutes
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import threading
import time
from typing import Any

import psutil
import structlog

from hyperion_demo.simrun import SimConfig, SimResult, median, percentile, run_simulation
from hyperion_node.p2p.census import EVERY_S as CENSUS_EVERY_S
from hyperion_node.p2p.census import SAMPLE as CENSUS_SAMPLE


def summary(result: SimResult) -> dict[str, Any]:
    lookups = result.provider_lookups
    tasks = result.tasks
    dht = result.dht
    # Census: one FIND_NODE lookup and up to SAMPLE record reads per round (fewer when the peer table holds
    # the records), once per CENSUS_EVERY_S; every RPC sent is one received somewhere.
    census_rpcs = dht.get("closest", {}).get("rpcs", 0.0) + CENSUS_SAMPLE * dht.get("get", {}).get("rpcs", 0.0)
    return {
        "n": result.config.nodes, "measured_nodes": len(result.rates), "window_s": result.window_s,
        "msgs_p50": median(result.rates), "msgs_p99": percentile(result.rates, 0.99),
        "msgs_mean": sum(result.rates) / len(result.rates) if result.rates else float("nan"),
        "kinds": result.kinds, "census_msgs_s": census_rpcs / CENSUS_EVERY_S,
        "conns_p50": median([float(c) for c in result.connections]), "conns_max": max(result.connections, default=0),
        "subscriptions_p50": median([float(c) for c in result.subscriptions]),
        "subscriptions_max": max(result.subscriptions, default=0),
        "subscribers_p50": median([float(c) for c in result.subscribers]),
        "subscribers_max": max(result.subscribers, default=0),
        "lookups": len(lookups),
        "hops_p50": percentile([float(r) for r, _, _ in lookups], 0.5),
        "hops_p95": percentile([float(r) for r, _, _ in lookups], 0.95),
        "lookup_ms_p50": percentile([ms for _, ms, _ in lookups], 0.5),
        "lookup_ms_p95": percentile([ms for _, ms, _ in lookups], 0.95),
        "found_p50": percentile([float(f) for _, _, f in lookups], 0.5),
        "find_ms_p50": percentile(result.find_ms, 0.5), "find_ms_p95": percentile(result.find_ms, 0.95),
        "finds": len(result.find_ms), "find_timeouts": result.find_timeouts,
        "tasks": len(tasks), "first_live": sum(t.first_live for t in tasks) / len(tasks) if tasks else float("nan"),
        "live_in_end": sum(t.done for t in tasks) / len(tasks) if tasks else float("nan"),
        "killed": result.killed, "dht": dht,
        "rss_mib": result.rss_bytes / 2**20, "peak_rss_mib": result.peak_rss_bytes / 2**20,
        "wall_s": result.wall_s, "cpu_s": result.cpu_s,
    }


def config_from(args: argparse.Namespace, n: int) -> SimConfig:
    return SimConfig(nodes=n, seed=args.seed, provider_share=args.providers, requester_share=args.requesters,
                     models=args.models, task_every_s=args.task_every, join_s=args.join, warmup_s=args.warmup,
                     duration_s=args.warmup + args.window, kills=args.kills,
                     keep_found_providers=args.libp2p_provider_cache)


def run_one(args: argparse.Namespace) -> None:
    """The child: one size, its progress on stderr, its summary as the last line of stdout."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                        cache_logger_on_first_use=True)
    result = run_simulation(config_from(args, args.one), progress=lambda line: print(line, file=sys.stderr,
                                                                                     flush=True))
    print(json.dumps(summary(result)))


def run_size(n: int, args: argparse.Namespace, passthrough: list[str]) -> dict[str, Any]:
    """One size in a child process, stopped past ``--max-wall`` seconds or ``--max-rss-gib``."""
    command = [sys.executable, __file__, "--one", str(n), *passthrough]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last: list[str] = []

    def relay() -> None:
        assert child.stderr is not None
        for line in child.stderr:
            print(line, end="", file=sys.stderr, flush=True)
            last[:] = [line.strip()]

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    stopped, peak = "", 0
    while child.poll() is None:
        time.sleep(1.0)
        try:
            peak = max(peak, psutil.Process(child.pid).memory_info().rss)
        except psutil.NoSuchProcess:
            break
        if args.max_wall and time.perf_counter() - started > args.max_wall:
            stopped = f"stopped past --max-wall {args.max_wall:.0f} s"
        elif peak > args.max_rss_gib * 2**30:
            stopped = f"stopped past --max-rss-gib {args.max_rss_gib}"
        if stopped:
            child.kill()
            break
    out = child.communicate()[0]
    reader.join(timeout=5)
    if stopped or child.returncode != 0:
        why = stopped or f"exit status {child.returncode}"
        return {"n": n, "stopped": f"{why}; last progress: {last[0] if last else 'none'}",
                "wall_s": time.perf_counter() - started, "peak_rss_mib": peak / 2**20}
    return dict(json.loads(out.strip().splitlines()[-1]))


def fmt(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # NaN: nothing measured


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| N | msgs/node/s p50 | p99 | + census <= (mean) | lookup hops p50/p95 | lookup ms p50/p95 "
            "| find_providers ms p50/p95 | live 1st try | live in the end | conns p50/max | RSS MiB | wall s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "stopped" in r:
            lines.append(f"| {r['n']:,} | {r['stopped']} (after {r['wall_s']:.0f} s wall, peak "
                         f"{r['peak_rss_mib']:.0f} MiB) |")
            continue
        lines.append(
            f"| {r['n']:,} | {fmt(r['msgs_p50'])} | {fmt(r['msgs_p99'])} | {fmt(r['census_msgs_s'], 3)} "
            f"| {fmt(r['hops_p50'], 0)} / {fmt(r['hops_p95'], 0)} "
            f"| {fmt(r['lookup_ms_p50'], 0)} / {fmt(r['lookup_ms_p95'], 0)} "
            f"| {fmt(r['find_ms_p50'], 0)} / {fmt(r['find_ms_p95'], 0)} "
            f"| {100 * r['first_live']:.2f} % | {100 * r['live_in_end']:.2f} % "
            f"| {fmt(r['conns_p50'], 0)} / {r['conns_max']} | {r['rss_mib']:.0f} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def details(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        if "stopped" in r:
            continue
        kinds = ", ".join(f"{k} {v:.3f}" for k, v in sorted(r["kinds"].items()))
        dht = "; ".join(f"{k}: {int(v['lookups'])} x {v['rpcs']:.1f} RPCs / {v['rounds']:.1f} rounds"
                        for k, v in sorted(r["dht"].items()))
        lines.append(f"N = {r['n']:,}: {r['measured_nodes']} nodes measured over {r['window_s']:.0f} s; "
                     f"mean {r['msgs_mean']:.3f} msgs/node/s ({kinds}); {r['tasks']} tasks, {r['killed']} "
                     f"providers killed; {r['lookups']} provider lookups (providers found p50 "
                     f"{fmt(r['found_p50'], 0)}), {r['finds']} waited-for find_providers, "
                     f"{r['find_timeouts']} cut by lookup_timeout_s; presence subscriptions per requester "
                     f"p50 {fmt(r['subscriptions_p50'], 0)} / max {r['subscriptions_max']}, subscribers per "
                     f"provider p50 {fmt(r['subscribers_p50'], 0)} / max {r['subscribers_max']}; "
                     f"DHT {dht}; CPU {r['cpu_s']:.0f} s, "
                     f"peak RSS {r['peak_rss_mib']:.0f} MiB")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--providers", type=float, default=0.05, help="share of nodes that provide a model")
    parser.add_argument("--requesters", type=float, default=0.10, help="share of nodes that submit tasks")
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--task-every", type=float, default=10.0, help="seconds between a requester's tasks")
    parser.add_argument("--kills", type=int, default=None, help="providers killed (default: a tenth, >= 1)")
    parser.add_argument("--join", type=float, default=30.0, help="virtual seconds over which the nodes join")
    parser.add_argument("--warmup", type=float, default=60.0, help="virtual seconds before the window")
    parser.add_argument("--window", type=float, default=120.0, help="measured virtual seconds")
    parser.add_argument("--libp2p-provider-cache", action="store_true",
                        help="answer find_providers from what earlier lookups found, as py-libp2p 0.x does")
    parser.add_argument("--max-wall", type=float, default=0.0, help="stop a size after this many seconds")
    parser.add_argument("--max-rss-gib", type=float, default=24.0)
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args)
        return
    passthrough = list(sys.argv[1:])
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        print(f"N = {n:,} ...", file=sys.stderr, flush=True)
        rows.append(run_size(n, args, passthrough))
    print(table(rows))
    print()
    print(details(rows))
    done = [r for r in rows if "stopped" not in r]
    if len(done) >= 2:
        low, high = done[0], done[-1]
        print(f"\nN = {high['n']:,} / N = {low['n']:,}: msgs/node/s p50 {high['msgs_p50'] / low['msgs_p50']:.2f}x, "
              f"p99 {high['msgs_p99'] / low['msgs_p99']:.2f}x, mean with the census "
              f"{(high['msgs_mean'] + high['census_msgs_s']) / (low['msgs_mean'] + low['census_msgs_s']):.2f}x "
              "(issue #22: <= 1.5x)")


if __name__ == "__main__":
    main()
