"""Hostile peers against real daemons: what gets through, what a flood costs honest clients, what strangers'
records and messages cost in memory. Figures for docs/performance.md and docs/security.md.

Three parts (``--parts``):

* ``attacks``: runs ``tests/adversarial`` (each test is one attack on real daemons by a real py-libp2p host and
  asserts that it fails and that an honest task completes) and lists every attack by name: tried, and
  succeeded (a failed test). Goal: 0 succeeded.
* ``latency``: a worker W (the packaged model) and a gateway R; an honest client asks R for short completions,
  first with nobody else around, then while one hostile peer floods W at its maximum rate on every protocol
  it may use: task streams (each a valid task: one runs, its share; the rest are answered BUSY), verify
  streams (opened and left silent), and DHT records (valid capability records of fresh peer IDs, stored
  straight into W's DHT as fast as the connection takes them). Quiet and flooded rounds alternate; the
  figure is p95 flooded / p95 quiet, same run. Goal: <= 1.5.
* ``memory``: W alone and a hostile peer that sends ``--messages`` records and messages from ``--fresh-ids``
  fresh peer IDs (each ID's signed capability record stored straight into W's DHT, then newer versions of it);
  W's resident memory after / before. Goal: <= 1.2.

    .venv/bin/python scripts/bench_adversarial.py [--parts attacks,latency,memory] [--rounds 3] [--requests 20]
        [--fresh-ids 10000] [--messages 100000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import trio
import trio.lowlevel

from hyperion_node.p2p.messages import CapabilityRecord, OfferAd, record_key
from hyperion_node.tasks.messages import TaskRequest, encode_request
from hyperion_node.tasks.model import new_task_id
from hyperion_node.testing.hostile import TASK, VERIFY, hostile_host, new_identity
from hyperion_node.testing.process import NodeProcess, stop_all, wait_until

ROOT = Path(__file__).resolve().parents[1]
MODEL = "gemma-3-270m-q4_k_m"
QUICK = ["p2p.mdns=false", "hardware.benchmark_on_start=false", "runtimes.inference.n_ctx=512",
         "verify.budget=0.0"]
NOTHING = 'runtimes.disabled=["inference", "zk-groth16", "render-blender"]'
ONLY_INFERENCE = 'runtimes.disabled=["zk-groth16", "render-blender"]'


# -- attacks ---------------------------------------------------------------------------------------------------


def attacks() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "adversarial.xml"
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "pytest", "tests/adversarial", "-q", "-p", "no:cacheprovider",
                        f"--junitxml={report}"], cwd=ROOT, check=False)
        seconds = time.monotonic() - started
        cases = ElementTree.parse(report).getroot().iter("testcase")
        rows = [(case.get("name", ""), Path(case.get("file", "") or case.get("classname", "")).name,
                 "succeeded" if case.find("failure") is not None or case.find("error") is not None else "refused")
                for case in cases]
    print(f"\n## attacks: {len(rows)} tried, {sum(r[2] == 'succeeded' for r in rows)} succeeded ({seconds:.0f} s)\n")
    print("| attack (test) | outcome |\n|---|---|")
    for name, _, outcome in rows:
        print(f"| {name} | {outcome} |")


# -- latency under a flood -------------------------------------------------------------------------------------


class PinnedNode(NodeProcess):
    """A daemon on CPU 0 alone, so that on a small machine the attacker (this process, pinned to the other
    CPUs) floods from cores of its own, as it would from a machine of its own: the figure is then what the
    flood costs the node, not what the attacker's Python costs the machine."""

    def command(self) -> list[str]:
        return ["taskset", "-c", "0", *super().command()]


def pin_attacker() -> bool:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return False
    os.sched_setaffinity(0, set(cpus[1:]))
    return True


def honest(node: NodeProcess) -> float:
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    started = time.monotonic()
    answer = httpx.post(node.api_url + "/v1/completions", json=body, timeout=120,
                        headers={"Authorization": f"Bearer {node.token}"})
    answer.raise_for_status()
    return time.monotonic() - started


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def flood_records(count: int) -> list[tuple[str, bytes]]:
    """Valid capability records signed by ``count`` fresh peer IDs (DHT key, sealed record), made just before a
    flooded round: on this 2-core machine the attacker's own key generation would otherwise take CPU from the
    node under test, which an attacker on another machine would not. Valid records cost the node most: each is
    decoded, its signature checked and the record kept (within the DHT's bounds)."""
    records = []
    for _ in range(count):
        fresh = new_identity()
        records.append((record_key(str(fresh.peer_id)), sybil_record(fresh, 1)))
    return records


def sybil_record(fresh: Any, seq: int) -> bytes:
    offer = OfferAd(runtime="inference", item=MODEL, unit="token", price_per_unit=0.0, capacity=1, throughput=None)
    record = CapabilityRecord(peer_id=str(fresh.peer_id), seq=seq, expires_at=time.time() + 600, name="sybil",
                              addrs=(), hardware={"cpu": "x", "cores": 1, "gpus": []}, offers=(offer,))
    return record.seal(fresh)


async def flood(w: str, w_addr: str, counts: dict[str, int], records: list[Any], kinds: list[str], *,
                task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """One hostile peer at its maximum rate on ``kinds`` of task, verify and dht (PUT_VALUE of strangers' records
    straight to W); returns when cancelled.
    The attacker's own host may fail as it is torn down mid-dial (py-libp2p's LifecycleError): its problem."""
    started = False

    class Status:
        def started(self, value: Any = None) -> None:
            nonlocal started
            started = True
            task_status.started()

    try:
        await _flood(w, w_addr, counts, records, kinds, task_status=Status())
    except Exception as exc:  # the attacker's host, not the node under test
        print(f"(the attacker's host ended with {type(exc).__name__})", flush=True)
        if not started:
            task_status.started()


async def _flood(w: str, w_addr: str, counts: dict[str, int], records: list[Any], kinds: list[str], *,
                 task_status: Any) -> None:
    async with hostile_host(dht=True) as attacker:
        await attacker.connect(w_addr)

        async def tasks() -> None:
            while True:
                payload = {"model": MODEL, "prompt": "Tell me everything.", "max_tokens": 64, "temperature": 0.8}
                request = TaskRequest(new_task_id("inference", MODEL, payload, attacker.peer_id,
                                                  int(time.time() * 1000)), "inference", MODEL, payload,
                                      attacker.peer_id, 1e9)
                try:
                    stream = await attacker.stream(w, TASK)
                    await stream.write(encode_request(request))
                    await attacker.answer(stream)  # ACCEPTED (its share, then it waits) or BUSY
                except Exception:
                    await trio.lowlevel.checkpoint()
                counts["task"] += 1

        async def verifies() -> None:
            while True:
                try:
                    stream = await attacker.stream(w, VERIFY)
                    await stream.write(b"\x05")  # a frame announced, never sent
                    await attacker.answer(stream, max_bytes=16 << 10)
                except Exception:
                    await trio.lowlevel.checkpoint()
                counts["verify"] += 1

        async def dht() -> None:
            n = 0
            while True:
                key, record = records[n % len(records)]
                n += 1
                try:
                    await attacker.store_at(w, key, record)
                except Exception:
                    await trio.sleep(0.05)
                    continue
                counts["dht"] += 1

        async with trio.open_nursery() as nursery:
            for name, job in (("task", tasks), ("verify", verifies), ("dht", dht)):
                if name in kinds:
                    nursery.start_soon(job)
            task_status.started()
            await trio.sleep_forever()


async def latency(rounds: int, requests: int, kinds: list[str]) -> None:
    pinned = pin_attacker()
    node_class = PinnedNode if pinned else NodeProcess
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        w = node_class(root / "w", sets=[*QUICK, ONLY_INFERENCE], quiet=True).start()
        nodes = [w]
        try:
            r = node_class(root / "r", sets=[*QUICK, NOTHING, f'p2p.bootstrap=["{w.p2p_addr()}"]'], quiet=True)
            nodes.append(r.start())
            wait_until(lambda: any(m["id"] == MODEL for m in r.get("/v1/models")["data"]), timeout=60,
                       what="R knows W's model")
            w_id, w_addr = w.peer_id, w.p2p_addr()
            quiet: list[float] = []
            flooded: list[float] = []
            counts = {"task": 0, "verify": 0, "dht": 0}
            await trio.to_thread.run_sync(honest, r)  # the model loaded and warm before anything is timed
            for n in range(rounds):
                quiet += [await trio.to_thread.run_sync(honest, r) for _ in range(requests)]
                records = await trio.to_thread.run_sync(flood_records, 5_000)  # fresh for each round
                async with trio.open_nursery() as nursery:
                    await nursery.start(flood, w_id, w_addr, counts, records, kinds)
                    flooded += [await trio.to_thread.run_sync(honest, r) for _ in range(requests)]
                    nursery.cancel_scope.cancel()
                print(f"round {n + 1}: quiet p95 {p95(quiet):.3f} s, flooded p95 {p95(flooded):.3f} s; this round's "
                      f"flooded: {' '.join(f'{x:.2f}' for x in flooded[-requests:])}", flush=True)
            offences = {p["peer_id"][-8:]: p["offences"] for p in w.get("/api/peers") if p["offences"]}
        finally:
            stop_all(nodes)
    where = "daemons on CPU 0, the attacker on the others" if pinned else "daemons and attacker sharing the CPUs"
    print(f"\n## honest latency under a flood of {'+'.join(kinds)} ({rounds} rounds x {requests} requests each "
          f"way; {where})\n")
    print(f"| | p50 | p95 |\n|---|---|---|\n| quiet | {statistics.median(quiet):.3f} s | {p95(quiet):.3f} s |")
    print(f"| flooded | {statistics.median(flooded):.3f} s | {p95(flooded):.3f} s |")
    print(f"\np95 flooded / quiet: **{p95(flooded) / p95(quiet):.2f}** (goal <= 1.5); the flood sent "
          f"{counts['task']} task streams, {counts['verify']} verify streams, {counts['dht']} records; "
          f"W's offences by peer: {offences}")


# -- memory under strangers' records and messages ----------------------------------------------------------------


def rss(node: NodeProcess) -> int:
    assert node.proc is not None
    return int(psutil.Process(node.proc.pid).memory_info().rss)


async def memory(fresh_ids: int, messages: int, hosts: int = 10) -> None:
    """``hosts`` hostile connections share the fresh IDs. For each ID: its signed capability record stored straight
    into W's DHT, then newer ones (seq 2, 3, ...) up to ``messages / fresh_ids`` in all, each replacing the last:
    every one a valid message W must decode, verify and keep or drop. There is no gossip for strangers to fill:
    presence reaches a node only from the peer it describes, over that peer's own stream."""
    with tempfile.TemporaryDirectory() as tmp:
        w = NodeProcess(Path(tmp) / "w", sets=[*QUICK, ONLY_INFERENCE], quiet=True).start()
        try:
            await trio.to_thread.run_sync(honest, w)  # the model loaded: the node as it serves
            w_id, w_addr = w.peer_id, w.p2p_addr()
            before = rss(w)
            sent = {"records": 0, "refused": 0}
            per_id = max(1, messages // fresh_ids)
            started = time.monotonic()

            async def attack(share: int) -> None:
                async with hostile_host(dht=True) as attacker:
                    await attacker.connect(w_addr)
                    for _ in range(share):
                        fresh = new_identity()
                        key = record_key(str(fresh.peer_id))
                        for seq in range(1, per_id + 1):
                            stored = await attacker.store_at(w_id, key, sybil_record(fresh, seq))
                            sent["records" if stored else "refused"] += 1

            async with trio.open_nursery() as nursery:
                for n in range(hosts):
                    nursery.start_soon(attack, fresh_ids // hosts + (1 if n < fresh_ids % hosts else 0))
                while nursery.child_tasks:
                    await trio.sleep(10)
                    print(f"{sent['records']} records stored, {sent['refused']} refused, W at "
                          f"{rss(w) / 2**20:.0f} MiB", flush=True)
            seconds = time.monotonic() - started
            await trio.sleep(10)
            soon = rss(w)
            await trio.sleep(130)  # what W still holds once the flood has passed
            after = rss(w)
            status = await trio.to_thread.run_sync(honest, w)
            peers = len(w.get("/api/peers"))
            stats = w.get("/api/p2p")
        finally:
            stop_all([w])
    print(f"\n## memory under {fresh_ids} fresh peer IDs ({sent['records']} records stored and {sent['refused']} "
          f"refused in {seconds:.0f} s over {hosts} connections)\n")
    print(f"W's RSS: before {before / 2**20:.0f} MiB, 10 s after {soon / 2**20:.0f} MiB, 140 s after "
          f"{after / 2**20:.0f} MiB: **{after / before:.2f}x** "
          f"(goal <= 1.2); peers in its table: {peers}; DHT values: {stats['dht']['values']}; an honest task "
          f"afterwards took {status:.2f} s; rejected: {stats['stats']['rejected_total']}")


async def _wait(condition: Callable[[], bool], what: str) -> None:
    with trio.fail_after(30):
        for _ in iter(int, 1):
            if condition():
                return
            await trio.sleep(0.05)
    raise TimeoutError(what)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="attacks,latency,memory")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--fresh-ids", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--flood", default="task,verify,dht", help="what the latency part's attacker floods")
    args = parser.parse_args()
    parts = args.parts.split(",")
    if "attacks" in parts:
        await trio.to_thread.run_sync(attacks)
    if "latency" in parts:
        await latency(args.rounds, args.requests, args.flood.split(","))
    if "memory" in parts:
        await memory(args.fresh_ids, args.messages)


if __name__ == "__main__":
    trio.run(main)
