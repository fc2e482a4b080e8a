"""``hyperion-node start --demo``: start the virtual nodes, run the seeded workload and the scripted events
against them while the live view redraws, then stop and print the summary.

Lifetimes, outermost first: the nodes (and their stores, left open for the summary); the task followers,
which outlive the workload by a short grace so that tasks in flight at the end can finish; the workload,
script and view, which stop at ``--duration`` or at the first SIGINT/SIGTERM (a second one exits at once).
"""

from __future__ import annotations

import functools
import gc
import os
import random
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

import structlog
import trio

from hyperion_demo.fabric import MemoryFabric
from hyperion_demo.network import REAL_NODE, DemoNode, run_demo_node
from hyperion_demo.script import Script
from hyperion_demo.summary import node_rewards, report
from hyperion_demo.view import LiveView
from hyperion_demo.workload import Outcome, Tracker, plan_real_task, plan_task
from hyperion_node.daemon import EXIT_SECOND_SIGNAL, EXIT_SHUTDOWN_OVERRUN, _hard_exit_after
from hyperion_node.errors import UserError
from hyperion_node.store import Store
from hyperion_node.tasks.service import Job

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT_S = 60.0  # a 50-node network on two cores takes tens of seconds to mesh
GRACE_S = 5.0  # after --duration, for tasks in flight (longer ones are reported unfinished)
SHUTDOWN_BUDGET_S = 15.0  # after a signal: summary from every ledger, then every node down
NETWORKS = ("auto", "libp2p", "memory")
# --network auto: libp2p (the real wire) while nodes x tasks/s stays within what one core carries over it
# (8 nodes at 5 tasks/s took 0.75 of a core; 16 at 16 completed ~70 %, the core full), the fabric beyond.
LIBP2P_NODE_TASKS = 40.0
GC_THRESHOLDS = (14_000, 20, 20)  # see run_demo


@dataclass(frozen=True)
class DemoOptions:
    nodes: int = 8
    rate: float = 5.0
    duration: float = 60.0
    seed: int = 0
    web: bool = False
    real_inference: bool = False  # node REAL_NODE serves the packaged GGUF model with llama.cpp
    network: str = "auto"  # libp2p, or memory: the nodes share an in-process fabric (hyperion_demo/fabric.py)

    def check(self) -> None:
        if self.network not in NETWORKS:
            raise UserError(f"--network {self.network!r} is not one of {', '.join(NETWORKS)}")
        if not 1 <= self.nodes <= 200:
            raise UserError(f"--nodes {self.nodes} is not between 1 and 200")
        if not 0 < self.rate <= 1000:
            raise UserError(f"--rate {self.rate} is not above 0 and at most 1000 tasks/s")
        if not 0 < self.duration <= 86400:
            raise UserError(f"--duration {self.duration} is not above 0 and at most a day")

    def resolved(self) -> DemoOptions:
        """These options with --network auto replaced by the network chosen for this size."""
        if self.network != "auto":
            return self
        fits = self.nodes * self.rate <= LIBP2P_NODE_TASKS
        return replace(self, network="libp2p" if fits else "memory")


@dataclass
class Demo:
    options: DemoOptions
    root: Path
    out: TextIO
    terminal: bool
    nodes: list[DemoNode] = field(default_factory=list)
    stores: list[Store] = field(default_factory=list)
    tracker: Tracker = field(default_factory=Tracker)
    stop: trio.CancelScope = field(default_factory=trio.CancelScope)
    interrupted: bool = False
    idle: trio.Event = field(default_factory=trio.Event)
    fabric: MemoryFabric | None = None  # --network memory
    inline_stores: bool = False  # root is RAM-backed: the stores run their calls on the loop (Store.inline)

    def live(self) -> list[DemoNode]:
        return [n for n in self.nodes if n.alive]

    def requesters(self) -> list[DemoNode]:
        """Live nodes whose orchestrator takes tasks (a node that has just started, or restarted, may not yet)."""
        return [n for n in self.live() if n.node.orchestrator is not None and n.node.orchestrator.running]

    async def add_node(self, nursery: trio.Nursery, index: int) -> DemoNode:
        # Over libp2p every node bootstraps from the first; on the fabric every node is every node's peer.
        bootstrap = self.nodes[0].node.p2p.listen_addrs()[0] if self.nodes and self.fabric is None else None
        start = functools.partial(run_demo_node, self.root, index, self.options.seed, bootstrap, self.stores,
                                  self.options.web and index == 0,
                                  self.options.real_inference and index == REAL_NODE, fabric=self.fabric,
                                  inline_store=self.inline_stores)
        node: DemoNode = await nursery.start(start)
        self.nodes.append(node)
        return node

    async def watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for _ in signals:
            if self.interrupted:
                sys.stderr.write("hyperion-node demo: second signal, exiting now\n")
                os._exit(EXIT_SECOND_SIGNAL)
            self.interrupted = True
            _hard_exit_after(SHUTDOWN_BUDGET_S, EXIT_SHUTDOWN_OVERRUN)
            self.stop.cancel()

    async def wait_meshed(self) -> None:
        """Until the first node sees every other one alive (each knows the network from it)."""
        want = len(self.nodes) - 1
        with trio.move_on_after(CONNECT_TIMEOUT_S):
            # The peer table has no change notification to wait on; a poll under a deadline is the way.
            while len(self.nodes[0].node.p2p.table.live_peers()) < want:  # noqa: ASYNC110
                await trio.sleep(0.1)
            return
        log.warning("demo_not_meshed", seen=len(self.nodes[0].node.p2p.table.live_peers()), want=want)

    async def workload(self, followers: trio.Nursery) -> None:
        rng = random.Random(self.options.seed)
        start, seq = trio.current_time(), 0
        while True:
            # Every task due by now, then sleep to the next: a fixed rate, whatever the loop's lag. (One task a
            # wake-up capped the rate at the event loop's turns a second, ~55 at 50 nodes.)
            while seq <= (trio.current_time() - start) * self.options.rate:
                planned = plan_task(rng, seq)
                live = self.requesters()
                if not live:
                    await trio.sleep(0.05)  # none takes tasks this moment: this one is due again then
                    continue
                requester = live[planned.requester % len(live)]
                assert requester.node.orchestrator is not None
                job = requester.node.orchestrator.submit(planned.spec)
                outcome = Outcome(seq, planned.spec.runtime, requester.name, job.task_id, trio.current_time())
                self.tracker.add(outcome)
                followers.start_soon(self.follow, outcome, job)
                seq += 1
            await trio.sleep_until(start + seq / self.options.rate)

    async def real_workload(self, followers: trio.Nursery) -> None:
        """Tasks for the packaged model, one at a time, each from another live node than the one that serves
        it (so it crosses the network: provider lookup, the task stream, a receipt from a peer)."""
        rng = random.Random(f"{self.options.seed}:real")
        real = self.nodes[REAL_NODE]
        seq = 0
        while True:
            planned = plan_real_task(rng, seq)
            others = [n for n in self.requesters() if n is not real] or [real]
            requester = others[planned.requester % len(others)]
            assert requester.node.orchestrator is not None
            job = requester.node.orchestrator.submit(planned.spec)
            outcome = Outcome(seq, "inference", requester.name, job.task_id, trio.current_time(), real=True,
                              payload=dict(planned.spec.payload))
            self.tracker.add(outcome)
            done = trio.Event()
            followers.start_soon(self._follow_then, outcome, job, done)
            await done.wait()
            seq += 1

    async def _follow_then(self, outcome: Outcome, job: Job, done: trio.Event) -> None:
        try:
            await self.follow(outcome, job)
        finally:
            done.set()

    async def follow(self, outcome: Outcome, job: Job) -> None:
        await self.tracker.follow(outcome, job)
        if self.stop.cancel_called and not self.tracker.running:  # a count: this ran once per task at the end
            self.idle.set()

    async def rewards(self) -> list[str]:
        dead = {n.peer_id for n in self.nodes if not n.alive}
        rewards = []
        for n in self.nodes:
            rows = await n.node.store.run(n.node.store.execute,
                                          "SELECT role, status, total FROM ledger_receipts")
            rewards.append(node_rewards(n.name, n.machine.profile.name, n.alive,
                                        [(r, s, int(t)) for r, s, t in rows]))
        real = self.nodes[REAL_NODE].name if self.options.real_inference else None
        return report(self.tracker.outcomes, rewards, self.script_lines, dead, real_node=real,
                      elapsed_s=self.elapsed, interrupted=self.interrupted)

    script_lines: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    async def run(self) -> list[str]:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.watch_signals, signals)
                with self.stop:
                    for index in range(self.options.nodes):
                        await self.add_node(nursery, index)
                    self.out.write(f"demo: {len(self.nodes)} nodes started on {self.options.network}; meshing\n")
                    self.out.flush()
                    await self.wait_meshed()
                    # What start-up built (every node's code, stores, tables) lives until the end: out of the
                    # collector's way, so that its full passes do not walk it again (GC_THRESHOLDS).
                    gc.collect()
                    gc.freeze()
                started = trio.current_time()
                script = Script(self, nursery)
                self.script_lines = script.lines
                async with trio.open_nursery() as followers:
                    if not self.stop.cancel_called:
                        self.stop = trio.CancelScope(deadline=started + self.options.duration)
                        view = LiveView(self, self.out, terminal=self.terminal)
                        with self.stop:
                            async with trio.open_nursery() as work:
                                work.start_soon(self.workload, followers)
                                if self.options.real_inference:
                                    work.start_soon(self.real_workload, followers)
                                work.start_soon(script.run)
                                work.start_soon(view.run)
                        view.close()
                    if not self.interrupted and self.tracker.running:
                        with trio.move_on_after(GRACE_S):
                            await self.idle.wait()
                    followers.cancel_scope.cancel()
                self.elapsed = trio.current_time() - started
                with trio.CancelScope(shield=True):
                    lines = await self.rewards()
                nursery.cancel_scope.cancel()
        return lines


def ram_directory() -> str | None:
    """Where the demo keeps its nodes' data: /dev/shm (tmpfs on Linux) when writable, else the default
    temporary directory. Everything there is deleted when the demo ends; in RAM the demo's 50 stores
    neither wait for one shared disk, which no real node shares, nor need a thread each (Store.inline)."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


async def run_demo(options: DemoOptions, out: TextIO, *, terminal: bool) -> None:
    options.check()
    asked, options = options.network, options.resolved()
    if asked == "auto" and options.network == "memory":
        out.write(f"demo: {options.nodes} nodes at {options.rate:g} tasks/s are more than one core carries over "
                  "libp2p; running them on the in-process fabric (--network libp2p to insist)\n")
    ram = ram_directory()
    with tempfile.TemporaryDirectory(prefix="hyperion-demo-", dir=ram) as tmp:
        # The nodes allocate small objects at a high rate (messages, tuples, coroutines); with Python's
        # default thresholds (700, 10, 10) a 50-node, 75 tasks/s demo collected 500 times in 20 s, 1.5 s of
        # its 27 s of CPU, with full passes of ~200 ms each. Collections 20x rarer, and start-up frozen.
        previous = gc.get_threshold()
        gc.set_threshold(*GC_THRESHOLDS)
        demo = Demo(options, Path(tmp), out, terminal,
                    fabric=MemoryFabric() if options.network == "memory" else None, inline_stores=ram is not None)
        try:
            lines = await demo.run()
        finally:
            gc.set_threshold(*previous)
            gc.unfreeze()
            for store in demo.stores:
                store.close()
    out.write("\n".join(lines) + "\n")
    out.flush()
