"""Thousands of virtual nodes on the simulated network (``simnet.py``), with providers, requesters and churn,
under trio's virtual clock: what ``scripts/bench_sim.py`` runs and measures.

Every node is a real ``P2PNetwork`` (liveness, presence, advertiser, census, dialler, record validator) on
the simulated stack, with the shipped ``[p2p]`` defaults (5 s heartbeats and pings, 8 target connections, a
census every 300 s, records republished every 200 s) except mDNS and the DHT random walk, which are off.
Nodes join one after another over ``join_s``, each bootstrapping from two of the first eight (the
deployment's bootstrap nodes).

* providers (``provider_share`` of the nodes) offer one of ``models`` models (their ``LocalState``'s offers,
  so the advertiser publishes a signed capability record and a provider record for it) and answer a
  simulated task protocol: a task holds one of ``capacity`` slots for ``task_s`` (a full provider answers
  BUSY), and each change of load nudges presence, as the worker's admission does.
* requesters (``requester_share``) each route to one model and submit a task every ``task_every_s``. Each task
  does what ``Orchestrator``/``Requester`` do, with the same functions: candidates from the node's own peer
  table (``scheduler.candidates.TableCandidates``); with no live candidate a DHT lookup first
  (``P2PNetwork.find_providers``, bounded by ``tasks.lookup_timeout_s``), else one in the background every
  ``PROVIDER_REFRESH_S``; ``Scheduler.choose``; presence subscriptions to the shortlist
  (``presence.want``); then down the ranked list (``Scheduler.begin``/``record_outcome``): a stream to the
  provider on the task protocol (``open_with_first_frame``), a failed open marking it unreachable
  (``P2PNetwork.unreachable``) before the next candidate is tried.
* churn: ``kills`` providers die during the measured window (no leave announcement: their process is gone)
  and a replacement provider of the same model joins ``replace_after_s`` later. A victim is never the last
  live provider of its model: a task with no live provider anywhere says nothing of routing.

What is not the product's code: the task protocol (one frame each way, no receipts, ledger, payment or spot
checks), the requester's loop (a copy of ``Requester._run``'s failover without the reputation view: every
peer gets the prior's reliability), and the store: one in-memory SQLite store shared by every node
(``SharedStore``), whose event log is emptied each minute and whose peer cache reads back empty (a node's
cache is its own, and every node here starts fresh). Every node checks every signature it receives, as a
daemon does. ``time.time`` follows the virtual clock during a run
(record expiry and heartbeat ages are read from it), so a run slower than real time ages nothing.

Cost (one core of the reference machine, the defaults of ``scripts/bench_sim.py``: 180 virtual seconds):
N = 100 in 5 s and 130 MiB, N = 1,000 in ~90 s and 380 MiB (~230 KiB a node beyond the interpreter's
~120 MiB). N = 10,000 takes ~12 CPU-minutes to reach t = 60 s (every node's joining lookup, its first
census -- one FIND_NODE and up to 20 record reads, 10 s after it joins -- and the advertiser's re-publication
as its routing table grows) and 6 to 11 CPU-seconds a virtual second after that, in 2.3 GiB: memory would
hold ten times more nodes, the CPU is what stops it. Almost all of it is our P2P code and trio's scheduling
of it; the simulated network's own share was under a quarter (py-spy).
"""

from __future__ import annotations

import dataclasses
import gc
import math
import random
import resource
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import trio
import trio.testing
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from hyperion_demo.simnet import SimFabric
from hyperion_node.config import load_config
from hyperion_node.identity import Identity
from hyperion_node.p2p.messages import OfferAd
from hyperion_node.p2p.network import LocalState, P2PNetwork
from hyperion_node.p2p.peer_table import PeerState
from hyperion_node.p2p.settings import P2PSettings
from hyperion_node.scheduler.candidates import UNKNOWN_RELIABILITY, CandidateSet, TableCandidates, TaskRequirements
from hyperion_node.scheduler.scheduler import Outcome, OutcomeKind, Scheduler
from hyperion_node.scheduler.settings import SchedulerSettings
from hyperion_node.store import Store
from hyperion_node.tasks.service import PROVIDER_REFRESH_S
from hyperion_node.tasks.settings import TaskSettings
from hyperion_node.tasks.streams import STREAM_ERRORS_OR_TIMEOUT, open_with_first_frame, reset_quietly
from hyperion_node.trio_types import TaskStatus

RUNTIME = "inference"
SIM_TASK_PROTOCOL = TProtocol("/hyperion/sim-task/1")
TASK_DEADLINE_S = 30.0
BOOTSTRAP_NODES = 8
STORE_TRIM_S = 60.0
# Python's cyclic garbage collector scans every object it tracks at each full collection, and a run's heap is
# millions of long-lived objects (peer tables, tasks, records): at N = 10,000 nearly half the CPU went to it
# (py-spy). So automatic full collections are off for the run, and every GC_FREEZE_S the heap is collected
# and what survives is frozen (``gc.freeze``): later collections scan only younger objects. Cyclic garbage
# among the frozen objects is never freed, so the memory figures are, if anything, high.
GC_FREEZE_S = 30.0
HARDWARE: dict[str, Any] = {"cpu": "sim", "cores": 8, "ram_bytes": 32 << 30, "gpus": [{"vram_bytes": 24 << 30}]}
TELEMETRY: dict[str, Any] = {"ram_available_bytes": 16 << 30, "gpus": [{"vram_free": 20 << 30}]}


@dataclass(frozen=True)
class SimConfig:
    nodes: int = 100
    seed: int = 1
    provider_share: float = 0.05
    requester_share: float = 0.10
    models: int = 3
    task_every_s: float = 10.0
    task_s: float = 2.0
    capacity: int = 4
    join_s: float = 30.0
    warmup_s: float = 60.0  # the measured window starts here...
    duration_s: float = 240.0  # ...and ends here (virtual seconds)
    kills: int | None = None  # providers killed in the window; None: a tenth of them, at least one
    replace_after_s: float = 10.0
    keep_found_providers: bool = False  # py-libp2p keeps what its lookups found: simdht.SimDHT.find_providers


@dataclass
class TaskResult:
    first_live: bool  # the first provider tried was alive and took the task
    done: bool  # a live provider took it in the end
    attempts: int
    at: float


@dataclass
class SimResult:
    config: SimConfig
    window_s: float
    rates: list[float]  # messages received per second, per node alive through the window
    kinds: dict[str, float]  # messages per node per second, by kind (network-wide, over the window)
    connections: list[int]  # per node alive at the end
    subscriptions: list[int]  # presence subscriptions per requester at the end
    subscribers: list[int]  # presence subscribers per provider at the end
    provider_lookups: list[tuple[int, float, int]]  # DHT GET_PROVIDERS lookups: (rounds, ms, providers found)
    local_provider_answers: int
    find_ms: list[float]  # P2PNetwork.find_providers as a requester waited for it (records included)
    find_timeouts: int  # ...cut by tasks.lookup_timeout_s
    tasks: list[TaskResult]
    dht: dict[str, dict[str, float]]  # per lookup kind: count, RPCs and rounds per lookup
    killed: int
    rss_bytes: int
    peak_rss_bytes: int
    wall_s: float
    cpu_s: float


class SharedStore(Store):
    """One in-memory store for every virtual node: their presence events and peer caches land in one
    database. A node's peer cache reads back empty: another node's cache is not its own."""

    def known_peers(self) -> list[dict[str, Any]]:
        return []


@contextmanager
def virtual_wall_clock(clock: trio.testing.MockClock) -> Iterator[None]:
    """``time.time()`` as the virtual clock's time since the run began, added to the real time it began."""
    real = time.time
    base = real()
    time.time = lambda: base + clock.current_time()
    try:
        yield
    finally:
        time.time = real


@dataclass(eq=False)
class SimNode:
    index: int  # the fabric's index of its host, once it has joined
    p2p: P2PNetwork
    offers: tuple[OfferAd, ...]
    joined: float
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    alive: bool = True
    active: int = 0  # tasks it is running (a provider)
    requester: bool = False
    left_at: float = math.inf

    def load(self) -> tuple[int, int]:
        return 0, self.active

    def kill(self) -> None:
        self.alive = False
        self.left_at = trio.current_time()
        self.scope.cancel()


class Simulation:
    def __init__(self, config: SimConfig, settings: P2PSettings, tasks: TaskSettings, scheduler: SchedulerSettings,
                 store: Store) -> None:
        self.config = config
        self.settings, self.task_settings, self.scheduler_settings = settings, tasks, scheduler
        self.store = store
        self.rng = random.Random(config.seed)
        self.fabric = SimFabric(seed=config.seed + 1, target_connections=settings.target_connections,
                                keep_found_providers=config.keep_found_providers)
        self.nodes: list[SimNode] = []
        self.tasks: list[TaskResult] = []
        self.find_ms: list[float] = []
        self.find_timeouts = 0
        self.killed = 0
        self.models = [f"sim-model-{chr(97 + m)}" for m in range(config.models)]
        self.kinds_window: dict[str, int] = {}
        self.connections: list[int] = []
        self.subscriptions: list[int] = []
        self.subscribers: list[int] = []

    # -- nodes ---------------------------------------------------------------------------------------------

    def offer(self, model: str) -> OfferAd:
        return OfferAd(runtime=RUNTIME, item=model, unit="token", price_per_unit=1e-6, capacity=self.config.capacity,
                       throughput=50.0)

    def _bootstrap(self) -> tuple[str, ...]:
        seeds = [n for n in self.nodes[:BOOTSTRAP_NODES] if n.alive and n.p2p.host is not None]
        return tuple(f"{n.p2p.host.addr}/p2p/{n.p2p.peer_id}" for n in self.rng.sample(seeds, min(2, len(seeds))))

    async def run_node(self, offers: tuple[OfferAd, ...], *,
                       task_status: TaskStatus[SimNode] = trio.TASK_STATUS_IGNORED) -> None:
        key_pair = create_new_key_pair(self.rng.randbytes(32))  # the same network for the same seed
        identity = Identity(key_pair=key_pair, peer_id=ID.from_pubkey(key_pair.public_key))
        index = len(self.nodes)
        holder: list[SimNode] = []
        local = LocalState(offers=lambda: offers, hardware=lambda: HARDWARE, telemetry=lambda: TELEMETRY,
                           load=lambda: holder[0].load())
        settings = dataclasses.replace(self.settings, bootstrap=self._bootstrap())
        p2p = P2PNetwork(identity, settings, self.store, local, name=f"sim-{index}", stack=self.fabric.stack)
        node = SimNode(index, p2p, offers, trio.current_time())
        holder.append(node)
        self.nodes.append(node)
        with node.scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(p2p.run)
                node.index = p2p.host.index  # where the fabric counts its messages
                if offers:
                    p2p.host.set_stream_handler(SIM_TASK_PROTOCOL, lambda stream: self._serve_task(node, stream))
                task_status.started(node)
                await trio.sleep_forever()

    async def _serve_task(self, node: SimNode, stream: Any) -> None:
        """The provider's side of a task: BUSY when every slot is taken, else OK and a slot for ``task_s``."""
        try:
            with trio.fail_after(self.task_settings.admission_timeout_s):
                await stream.read()
                busy = node.active >= self.config.capacity
                await stream.write(b"busy" if busy else b"ok")
                await stream.close()
        except STREAM_ERRORS_OR_TIMEOUT:
            await reset_quietly(stream)
            return
        if busy:
            return
        node.active += 1
        node.p2p.presence.nudge()  # as the worker's admission does (Worker: on_load_change)
        try:
            await trio.sleep(self.config.task_s)
        finally:
            node.active -= 1
            node.p2p.presence.nudge()

    # -- the run -------------------------------------------------------------------------------------------

    async def main(self, progress: Callable[[str], None] | None) -> tuple[list[int], float]:
        config = self.config
        n = config.nodes
        first = min(BOOTSTRAP_NODES, n - 1)  # the bootstrap nodes neither provide nor request
        providers = sorted(self.rng.sample(range(first, n), max(1, round(config.provider_share * n))))
        self.models = self.models[:len(providers)]  # every model has a provider
        model_of = {i: self.models[j % len(self.models)] for j, i in enumerate(providers)}
        others = [i for i in range(first, n) if i not in model_of]
        requester_ids = set(self.rng.sample(others, max(1, min(len(others), round(config.requester_share * n)))))
        before: list[int] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(self.fabric.run)
            nursery.start_soon(self._trim_store)
            nursery.start_soon(self._collect_garbage)
            if progress is not None:
                nursery.start_soon(self._progress, progress)
            for i in range(n):
                await trio.sleep_until(i * config.join_s / n)
                offers = (self.offer(model_of[i]),) if i in model_of else ()
                if i in requester_ids:
                    nursery.start_soon(self._requester_node, self.models[self.rng.randrange(len(self.models))])
                else:
                    nursery.start_soon(self.run_node, offers)
            await trio.sleep_until(config.warmup_s)
            before = list(self.fabric.received)
            kinds_before = dict(self.fabric.kinds)
            kills = config.kills if config.kills is not None else max(1, len(providers) // 10)
            window = config.duration_s - config.warmup_s
            times = sorted(config.warmup_s + self.rng.uniform(0.1, 0.7) * window for _ in range(kills))
            for at in times:
                await trio.sleep_until(at)
                live = Counter(node.offers[0].item for node in self.nodes if node.alive and node.offers)
                victims = [node for node in self.nodes if node.alive and node.offers and live[node.offers[0].item] > 1]
                if victims:
                    victim = self.rng.choice(victims)
                    victim.kill()
                    self.killed += 1
                    nursery.start_soon(self._replace, victim.offers)
            await trio.sleep_until(config.duration_s)
            self.kinds_window = {k: v - kinds_before.get(k, 0) for k, v in self.fabric.kinds.items()}
            alive = [node for node in self.nodes if node.alive and node.p2p.host is not None]
            self.connections = [len(node.p2p.host.links) for node in alive]
            self.subscriptions = [len(node.p2p.presence.subscriptions()) for node in alive if node.requester]
            self.subscribers = [len(node.p2p.presence.subscribers()) for node in alive if node.offers]
            nursery.cancel_scope.cancel()
        return before, window

    async def _replace(self, offers: tuple[OfferAd, ...]) -> None:
        await trio.sleep(self.config.replace_after_s)
        await self.run_node(offers)

    async def _requester_node(self, model: str) -> None:
        async with trio.open_nursery() as nursery:
            node = await nursery.start(self.run_node, ())
            node.requester = True
            requester = SimRequester(self, node, model, random.Random(self.rng.random()))
            nursery.start_soon(requester.run)

    async def _collect_garbage(self) -> None:
        while True:
            await trio.sleep(GC_FREEZE_S)
            gc.collect()
            gc.freeze()

    async def _trim_store(self) -> None:
        while True:
            await trio.sleep(STORE_TRIM_S)
            self.store.execute("DELETE FROM events")

    async def _progress(self, say: Callable[[str], None]) -> None:
        started = time.perf_counter()
        while True:
            await trio.sleep(30)
            rss = psutil.Process().memory_info().rss
            say(f"  t={trio.current_time():.0f}s nodes={sum(n.alive for n in self.nodes)} tasks={len(self.tasks)} "
                f"wall={time.perf_counter() - started:.0f}s rss={rss / 2**20:.0f}MiB")


class SimRequester:
    """A requester's routing, as ``Orchestrator._candidates`` and ``Requester._run`` do it (module docstring)."""

    def __init__(self, sim: Simulation, node: SimNode, model: str, rng: random.Random) -> None:
        self.sim, self.node, self.model, self.rng = sim, node, model, rng
        self.p2p = node.p2p
        self.scheduler = Scheduler(sim.scheduler_settings, rng=rng)
        self.p2p.add_observer(self.scheduler)
        self.kept = TableCandidates(RUNTIME, model)
        self.looked_up = -math.inf
        self._nursery: trio.Nursery | None = None

    async def run(self) -> None:
        every = self.sim.config.task_every_s
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await trio.sleep(self.rng.uniform(0, every))
            while True:
                nursery.start_soon(self.task)
                await trio.sleep(every)

    def _known(self) -> CandidateSet:
        return self.kept.refresh(self.p2p.table, trio.current_time(), reliability=lambda _p: UNKNOWN_RELIABILITY,
                                 distrusted=lambda _p: False, wall_now=time.time())

    async def _candidates(self) -> CandidateSet:
        found = self._known()
        now = trio.current_time()
        if not any(c.state is PeerState.ALIVE for c in found):
            self.looked_up = now
            with trio.move_on_after(self.sim.task_settings.lookup_timeout_s) as scope:
                await self._find()
            if scope.cancelled_caught:
                self.sim.find_timeouts += 1
            found = self._known()
        elif now - self.looked_up >= PROVIDER_REFRESH_S and self._nursery is not None:
            self.looked_up = now
            self._nursery.start_soon(self._refresh)
        return found

    async def _find(self) -> None:
        start = trio.current_time()
        await self.p2p.find_providers(RUNTIME, self.model)
        self.sim.find_ms.append((trio.current_time() - start) * 1000)

    async def _refresh(self) -> None:
        with trio.move_on_after(PROVIDER_REFRESH_S):
            await self.p2p.find_providers(RUNTIME, self.model)

    async def task(self) -> None:
        start = trio.current_time()
        deadline = start + TASK_DEADLINE_S
        tried: set[str] = set()
        outcomes: list[bool] = []
        with trio.move_on_at(deadline):
            while not (outcomes and outcomes[-1]):
                req = TaskRequirements(runtime=RUNTIME, item=self.model, deadline=deadline, exclude=frozenset(tried))
                decision = self.scheduler.choose(req, await self._candidates())
                self.p2p.presence.want([c.peer_id for c in decision.ranked if not c.candidate.local],
                                       trio.current_time())
                fresh = [c for c in decision.ranked if c.peer_id not in tried]
                dispatched = False
                for choice in fresh:
                    if not self.scheduler.begin(choice.peer_id):
                        continue
                    tried.add(choice.peer_id)
                    dispatched = True
                    kind = await self._dispatch(choice.peer_id)
                    self.scheduler.record_outcome(choice.peer_id, self.model, Outcome(kind))
                    outcomes.append(kind is OutcomeKind.SUCCESS)
                    if kind is OutcomeKind.SUCCESS:
                        break
                if not dispatched:
                    break  # nobody left to try: the real requester answers 503 here
        self.sim.tasks.append(TaskResult(first_live=bool(outcomes) and outcomes[0], done=any(outcomes),
                                         attempts=len(outcomes), at=start))

    async def _dispatch(self, peer: str) -> OutcomeKind:
        host = self.p2p.host
        timeout = self.sim.task_settings.admission_timeout_s
        try:
            with trio.fail_after(timeout):
                stream = await open_with_first_frame(host, ID.from_base58(peer), SIM_TASK_PROTOCOL, b"task")
        except STREAM_ERRORS_OR_TIMEOUT as exc:
            self.p2p.unreachable(peer, type(exc).__name__)
            return OutcomeKind.UNREACHABLE
        try:
            with trio.fail_after(timeout):
                answer = await stream.read()
        except STREAM_ERRORS_OR_TIMEOUT:
            return OutcomeKind.FAILED
        finally:
            await reset_quietly(stream)
        return OutcomeKind.SUCCESS if answer == b"ok" else OutcomeKind.BUSY


def run_simulation(config: SimConfig, progress: Callable[[str], None] | None = None) -> SimResult:
    """One run under a virtual clock; blocks until it ends (wall time: what the CPU takes)."""
    defaults = load_config(data_dir=Path("/nonexistent/hyperion-sim"), environ={},
                           sets=["p2p.mdns=false", "p2p.dht_random_walk=false"])
    store = SharedStore.open(Path(":memory:"))
    store.inline = True
    sim = Simulation(config, defaults.p2p, defaults.tasks, defaults.scheduler, store)
    clock = trio.testing.MockClock(autojump_threshold=0)
    wall, cpu = time.perf_counter(), time.process_time()
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], 1 << 30)  # no automatic full collections: GC_FREEZE_S
    try:
        with virtual_wall_clock(clock):
            before, window = trio.run(sim.main, progress, clock=clock)
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    store.close()
    end = config.duration_s
    whole = [n for n in sim.nodes if n.joined <= config.warmup_s and n.left_at >= end]
    rates = [(sim.fabric.received[n.index] - before[n.index]) / window for n in whole]
    stats = sim.fabric.dht_stats
    alive = [n for n in sim.nodes if n.alive]
    return SimResult(
        config=config, window_s=window, rates=rates,
        kinds={k: v / window / max(1, len(alive)) for k, v in sim.kinds_window.items()},
        connections=sim.connections, subscriptions=sim.subscriptions, subscribers=sim.subscribers,
        provider_lookups=list(stats.provider_lookups), local_provider_answers=stats.local_provider_answers,
        find_ms=sim.find_ms, find_timeouts=sim.find_timeouts,
        tasks=[t for t in sim.tasks if t.at >= config.warmup_s], killed=sim.killed,
        dht={kind: {"lookups": count, "rpcs": stats.rpcs[kind] / count, "rounds": stats.rounds[kind] / count}
             for kind, count in stats.lookups.items()},
        rss_bytes=psutil.Process().memory_info().rss,
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        wall_s=wall, cpu_s=cpu,
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.nan


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan
