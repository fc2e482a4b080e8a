"""The orchestrator as a daemon component: it owns the worker and requester sides and every running job.

``submit(spec)`` starts a job in the orchestrator's nursery and hands back a :class:`Job`: a bounded channel
of :class:`TaskEvent` (``tasks/events.py``: a slow client slows the stream down instead of filling memory)
and a cancel scope.
The API reads the channel; when its client goes away it calls ``job.cancel()``, and the stream to the
worker is closed, which stops the work there.

It also feeds the scheduler (heartbeats, RTTs) and the reputation view (its own settled receipts, its
counterparts' signed dealings and epoch roots read from the DHT, confirmed disputes; failures this node saw
itself), which the scheduler reads as reliability.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from hyperion_node.clock import now_ms
from hyperion_node.errors import HyperionError, InternalError
from hyperion_node.identity import Identity
from hyperion_node.ledger.chain import Ledger
from hyperion_node.ledger.dealings import Dealings, sign_dealings, verify_dealings
from hyperion_node.ledger.epochs import SignedEpoch
from hyperion_node.ledger.exceptions import ReceiptRejected, Replayed
from hyperion_node.ledger.receipt import SignedReceipt
from hyperion_node.ledger.reputation import ReputationView
from hyperion_node.ledger.service import LedgerService
from hyperion_node.p2p.messages import OfferAd
from hyperion_node.p2p.network import P2PNetwork, dealings_key, epoch_key
from hyperion_node.protocols import cases as cases_protocol
from hyperion_node.protocols import verify as verify_protocol
from hyperion_node.runtime_registry import RuntimeRegistry
from hyperion_node.scheduler.candidates import (
    Candidate,
    CandidateSet,
    TableCandidates,
    TaskRequirements,
    candidates_from_peer_table,
    local_candidate,
)
from hyperion_node.scheduler.scheduler import Decision, Scheduler, SchedulerEvent
from hyperion_node.scheduler.settings import SchedulerSettings
from hyperion_node.store import Store
from hyperion_node.tasks.events import TaskEvent, failed
from hyperion_node.tasks.exceptions import NoWorker
from hyperion_node.tasks.history import HistoryWriter, TaskHistory
from hyperion_node.tasks.inputs import BlobInputs
from hyperion_node.tasks.messages import TaskRequest
from hyperion_node.tasks.metrics import TaskMetrics
from hyperion_node.tasks.model import TaskSpec
from hyperion_node.tasks.requester import TASK_PROTOCOL, Requester
from hyperion_node.tasks.settings import TaskSettings
from hyperion_node.tasks.spending import Spending
from hyperion_node.tasks.streams import open_with_first_frame, reset_quietly
from hyperion_node.tasks.worker import Worker
from hyperion_node.trio_types import TaskStatus
from hyperion_node.verify.cases import rendezvous
from hyperion_node.verify.service import SpotChecker
from hyperion_node.verify.settings import VerifySettings

log = structlog.get_logger(__name__)

VERIFY_PROTOCOL = TProtocol(verify_protocol.PROTOCOL_ID)

EVENT_BUFFER = 64  # partial results a job holds for a client that reads slowly
# How stale this node's view of who serves an item may get before it asks the DHT again. Peers learn each
# other's capability records only from the DHT (heartbeats carry no offers), so a node that serves an item
# itself, or knows one other provider, would otherwise never learn of the rest: in a 16-node demo every task
# then ran on its own requester. Half the heartbeat-driven health trend's default window (30 s).
PROVIDER_REFRESH_S = 15.0
# A task that waits on a provider lookup goes ahead with this many providers found; the background refresh finds
# the rest for the tasks after it.
FIRST_PROVIDERS = 3
# Dealings summaries (this node's, signed; its counterparts', read) are refreshed at least this often.
STANDING_EVERY_S = 60.0


@dataclass
class Job:
    task_id: str
    events: trio.MemoryReceiveChannel[TaskEvent]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    started: float = field(default_factory=trio.current_time)

    def cancel(self) -> None:
        self.scope.cancel()
        self.events.close()


# Capabilities whose candidate set is kept between requests (``TableCandidates``), least recently used dropped.
MAX_KEPT_CAPABILITIES = 64


class Orchestrator:
    def __init__(self, *, identity: Identity, store: Store, runtimes: RuntimeRegistry, p2p: P2PNetwork,
                 ledger: LedgerService, tasks: TaskSettings, scheduler: SchedulerSettings,
                 hardware: Callable[[], dict[str, Any]], free_memory: Callable[[], int | None],
                 verify: VerifySettings | None = None, dealings_interval_s: float = 5.0,
                 blobs: BlobInputs | None = None, spending: Spending | None = None) -> None:
        self.identity = identity
        self.peer_id = str(identity.peer_id)
        self.store = store
        self.runtimes = runtimes
        self.p2p = p2p
        self.settings = tasks
        self.spending = spending  # this node's limits as a requester (spending.py); None: none
        self.history = TaskHistory(store, limit=tasks.history_limit)
        self.history_writer = HistoryWriter(self.history, store.run)
        self.ledger = ledger
        self.reputation = ReputationView(self.peer_id, clock=trio.current_time)
        self.scheduler = Scheduler(scheduler, on_event=self._scheduler_event)
        self._free_memory = free_memory
        self.stats: Counter[str] = Counter()
        self.metrics = TaskMetrics()
        # Task inputs too large for a frame go by address (blobs); subscribers hear of load changes at once.
        self.worker = Worker(identity=identity, runtimes=runtimes, ledger=ledger, history=self.history_writer,
                             settings=tasks, hardware=hardware,
                             on_malformed=self.peer_misbehaved, on_settled=self._settled, metrics=self.metrics,
                             blobs=blobs, on_load_change=self.p2p.presence.nudge)
        self.requester = Requester(identity=identity, scheduler=self.scheduler, worker=self.worker, ledger=ledger,
                                   history=self.history_writer, settings=tasks, node=self, blobs=blobs)
        self.verify = verify or VerifySettings()
        self.spot_checker = SpotChecker(identity=identity, runtimes=runtimes, settings=self.verify,
                                        verifiers=self._verifiers, network=self.p2p, reputation=self.reputation,
                                        ledger=ledger, penalize=self.peer_misbehaved, event=self._event,
                                        on_contested=self._want_standing)
        self.p2p.add_observer(self.scheduler)  # the scheduler's health trends read heartbeats and round trips
        self._dealings_interval_s = dealings_interval_s
        self._standing_wanted = trio.Event()  # the ledger's counterparts changed, or a case wants standing now
        self._nursery: trio.Nursery | None = None
        self._looked_up: dict[tuple[str, str], float] = {}  # (runtime, item) -> when the DHT was last asked
        self._kept_candidates: dict[tuple[str, str], TableCandidates] = {}

    # -- the component ---------------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        stale = await self.store.run(self.history.fail_unfinished, "the node stopped before the task finished")
        if stale:
            log.info("tasks_marked_failed", count=stale, why="left unfinished by the previous run")
        if self.p2p.host is None:
            raise InternalError("the orchestrator starts after the P2P layer")
        # The roots of this node's trust are its own dealings: every receipt in its ledger.
        for summary in await self.store.run(Ledger(self.store, self.peer_id).summaries):
            if summary.status == "settled" and summary.worker != summary.requester:
                self.reputation.trust.dealt(summary.requester, summary.worker)
        self.p2p.host.set_stream_handler(TASK_PROTOCOL, self._handle_stream)
        self.p2p.host.set_stream_handler(VERIFY_PROTOCOL, self.spot_checker.handle_stream)
        cases = TProtocol(cases_protocol.PROTOCOL_ID)
        self.p2p.host.set_stream_handler(cases, self.spot_checker.cases.handle_cases_stream)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.history_writer.run)
                await nursery.start(self.spot_checker.run)
                nursery.start_soon(self._standing_loop)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    @property
    def running(self) -> bool:
        """Whether tasks can be submitted: the orchestrator's service has started and not yet stopped."""
        return self._nursery is not None

    def submit(self, spec: TaskSpec) -> Job:
        if self._nursery is None:
            raise InternalError("submit() before the orchestrator started")
        send, receive = trio.open_memory_channel[TaskEvent](EVENT_BUFFER)
        record = self.requester.new_record(spec)
        job = Job(record.task_id, receive)
        self._nursery.start_soon(self._run_job, spec, record, send, job)
        return job

    async def _run_job(self, spec: TaskSpec, record: Any, send: trio.MemorySendChannel[TaskEvent], job: Job) -> None:
        try:
            await self._job(spec, record, send, job)
        finally:
            self.metrics.record(spec.runtime, "requester", record.state.value, trio.current_time() - job.started)

    async def _job(self, spec: TaskSpec, record: Any, send: trio.MemorySendChannel[TaskEvent], job: Job) -> None:
        with job.scope, structlog.contextvars.bound_contextvars(task_id=record.task_id[:12]):
            async with send:
                try:
                    binding = None
                    if self.spending is not None:
                        await self.spending.check_budget(time.time())
                        spec, binding = self.spending.limit(spec)
                    try:
                        await self.requester.run(spec, record, send.send)
                    except NoWorker as exc:
                        if binding is None or exc.status != "no-match":
                            raise
                        raise NoWorker(f"{exc}; this node's spending limit {binding} credits per unit",
                                       status=exc.status, retry_after_s=exc.retry_after_s) from exc
                    self.stats["completed"] += 1
                except (HyperionError, trio.TooSlowError) as exc:
                    self.stats["failed"] += 1
                    log.info("task_failed", error=str(exc) or type(exc).__name__)
                    try:
                        await send.send(failed(record.task_id, exc))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return  # nobody is listening any more
                except trio.BrokenResourceError:
                    self.stats["cancelled"] += 1  # the client went away; requester.run recorded it
                except Exception as exc:
                    # A bug in one request must not stop a node that serves many: its client gets a 500 and
                    # the traceback goes to the log, loudly.
                    self.stats["crashed"] += 1
                    log.exception("task_crashed")
                    with trio.move_on_after(1):
                        try:
                            await send.send(failed(record.task_id, exc))
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            return

    def load(self) -> tuple[int, int]:
        return self.worker.admission.load()

    # -- inputs ----------------------------------------------------------------------------------------------

    async def candidates(self, spec: TaskSpec, req: TaskRequirements) -> CandidateSet | list[Candidate]:
        found = self._known_candidates(spec)
        key, now = (spec.runtime, spec.item), trio.current_time()
        if not any(c.state.value == "alive" for c in found):
            # Nobody known serves it: ask the DHT (O(log N) hops) and wait; what it finds lands in the peer table.
            self._looked_up[key] = now
            with trio.move_on_after(self.settings.lookup_timeout_s):
                await self.p2p.find_providers(spec.runtime, spec.item, enough=FIRST_PROVIDERS)
            found = self._known_candidates(spec)
        elif now - self._looked_up.get(key, -PROVIDER_REFRESH_S) >= PROVIDER_REFRESH_S and self._nursery is not None:
            # Someone can take it now (maybe only this node); who else serves it is for the next tasks to use,
            # so this task does not wait for the answer (and the lookup may take longer than a waiting one).
            self._looked_up[key] = now
            self._nursery.start_soon(self._refresh_providers, spec.runtime, spec.item)
        return found

    async def _refresh_providers(self, runtime: str, item: str) -> None:
        with trio.move_on_after(PROVIDER_REFRESH_S):
            await self.p2p.find_providers(runtime, item)

    def _known_candidates(self, spec: TaskSpec) -> CandidateSet | list[Candidate]:
        """Every known peer offering the task's capability, and this node if it does: the kept set of that
        capability (``TableCandidates``, rewritten where the peer table changed), or a list when the task is
        pinned to some peers (``spec.only``, a render job's chunks)."""
        local = self._local_candidate(spec)
        if spec.only:
            out = [dataclasses.replace(c, banned=True) if self._distrusted(c.peer_id) else c
                   for c in candidates_from_peer_table(self.p2p.table, spec.runtime, spec.item, trio.current_time(),
                                                       reliability=self.reputation.reliability, wall_now=time.time())
                   if c.peer_id in spec.only]
            return [*out, local] if local is not None and local.peer_id in spec.only else out
        key = (spec.runtime, spec.item)
        kept = self._kept_candidates.pop(key, None) or TableCandidates(spec.runtime, spec.item)
        self._kept_candidates[key] = kept  # last: the least recently asked for is first
        if len(self._kept_candidates) > MAX_KEPT_CAPABILITIES:  # model names come from API users: bounded
            del self._kept_candidates[next(iter(self._kept_candidates))]
        return kept.refresh(self.p2p.table, trio.current_time(), reliability=self.reputation.reliability,
                            distrusted=self._distrusted, wall_now=time.time(), local=local)

    def shortlisted(self, decision: Decision) -> None:
        """The scheduler's shortlist for a request: the providers whose load this node needs fresh."""
        peers = [c.peer_id for c in decision.ranked if not c.candidate.local]
        self.p2p.presence.want(peers, trio.current_time())
        self.spot_checker.cases.weigh_soon(peers)  # what others proved against them, fetched once in a while

    def _local_candidate(self, spec: TaskSpec) -> Candidate | None:
        offer = next((o for o in self.runtimes.offers() if o.runtime == spec.runtime and o.item == spec.item), None)
        if offer is None:
            return None
        queued, running = self.worker.admission.load()
        ad = OfferAd(runtime=offer.runtime, item=offer.item, unit=offer.unit, price_per_unit=offer.price_per_unit,
                     capacity=offer.capacity, throughput=offer.throughput)
        # Never distrusted: what others say of this node's work is theirs to act on, and its owner's own
        # requests must not be refused because a stranger accused it (seen: two forged disputes did that).
        return local_candidate(self.peer_id, ad, free_memory_bytes=self._free_memory(), active_tasks=running,
                               queue_depth=queued)

    def _distrusted(self, peer_id: str) -> bool:
        """A worker with confirmed disputes, or whose checked results together failed this node's sequential
        test, gets no more work from this node (the scheduler skips banned peers)."""
        return peer_id != self.peer_id and (
            self.reputation.get(peer_id).disputed >= self.verify.distrust_after_disputes
            or self.spot_checker.evidence.condemned(peer_id))

    async def live_providers(self, runtime: str, item: str) -> list[Candidate]:
        """The live peers (this node included) that offer runtime/item, for a job that splits its work
        across several of them and pins each part with ``TaskSpec.only`` (a render job's chunks)."""
        spec = TaskSpec(runtime=runtime, item=item, payload={}, timeout_s=self.settings.lookup_timeout_s)
        found = await self.candidates(spec, TaskRequirements(runtime=runtime, item=item))
        return [c for c in found if c.state.value == "alive" and not c.banned]

    def served_models(self, *, include_gone: bool = False, runtime: str = "inference") -> dict[str, list[str]]:
        """Every model this node knows to be served by ``runtime`` (generation; or ``embedding``), with who
        serves it (this node included); with ``include_gone``, also those whose providers are all dead or gone
        (a 503, not a 404)."""
        models: dict[str, list[str]] = {}
        for offer in self.runtimes.offers():
            if offer.runtime == runtime:
                models.setdefault(offer.item, []).append(self.peer_id)
        for entry in self.p2p.table.peers.values():
            if entry.capability is None or (entry.state.value in ("dead", "left") and not include_gone):
                continue
            for ad in entry.capability.offers:
                if ad.runtime == runtime:
                    models.setdefault(ad.item, []).append(entry.peer_id)
        return models

    # -- spot checks ---------------------------------------------------------------------------------------

    def task_settled(self, request: TaskRequest, output: dict[str, Any], settled: SignedReceipt,
                   sample: dict[str, Any] | None) -> None:
        self.reputation.observe_own(settled, now_ms())
        self._standing_wanted.set()  # this node's dealings changed: its summary is signed again soon
        self.spot_checker.after_task(request.runtime, request.item, request.payload, output, settled, sample)

    async def _verifiers(self, runtime: str, item: str, receipt_id: bytes, exclude: frozenset[str]) -> list[str]:
        """Who may check a receipt's work on runtime/item, in the protocol's order: this node first when it
        serves the item (it trusts itself), then the live providers in rendezvous order of the receipt's ID
        (``verify.cases.rendezvous``: the requester does not pick), those with standing here before strangers
        so that a dispute is confirmed by peers this node's own dealings vouch for; never a peer in
        ``exclude`` (the worker, verifiers already asked)."""
        spec = TaskSpec(runtime=runtime, item=item, payload={}, timeout_s=self.verify.timeout_s)
        req = TaskRequirements(runtime=runtime, item=item, exclude=exclude)
        candidates = [c for c in await self.candidates(spec, req) if c.peer_id not in exclude]
        local = [c.peer_id for c in candidates if c.local]
        peers = [c.peer_id for c in candidates if not c.local and not c.banned and c.state.value == "alive"]
        ordered = rendezvous(receipt_id, peers)
        floor = self.verify.standing_floor
        return local + sorted(ordered, key=lambda p: self.reputation.standing(p) < floor)

    async def _event(self, kind: str, data: dict[str, Any]) -> None:
        await self.store.run(self.store.append_event, kind, data)

    def _scheduler_event(self, event: SchedulerEvent) -> None:
        log.info("scheduler_" + type(event).__name__.lower(), **event.to_json())

    def peer_misbehaved(self, peer_id: str, reason: str) -> None:
        self.stats[f"rejected:{reason}"] += 1
        self.p2p.stats.reject("task", reason)
        self.p2p.table.penalize(peer_id, reason)

    def below_tier(self, spec: TaskSpec) -> frozenset[str]:
        """Peers whose offer of the task's item advertises a memory tier below the payload's ``min_tier`` (an
        inference request's): they would refuse it at admission, so the requester does not try them."""
        wanted = spec.payload.get("min_tier")
        if not isinstance(wanted, str) or not wanted:
            return frozenset()
        from runtimes.inference.tiers import tier_rank

        floor = tier_rank(wanted)
        below = {peer_id for peer_id, entry in self.p2p.table.peers.items() if entry.capability is not None
                 for offer in entry.capability.offers
                 if offer.runtime == spec.runtime and offer.item == spec.item and offer.tier is not None
                 and tier_rank(offer.tier) < floor}
        return frozenset(below)

    def peer_failed(self, peer_id: str) -> None:
        self.reputation.observe_failure(peer_id, now_ms())

    # -- streams ---------------------------------------------------------------------------------------------

    async def open_task_stream(self, peer_id: str, first: bytes) -> INetStream:
        assert self.p2p.host is not None
        try:
            return await open_with_first_frame(self.p2p.host, ID.from_base58(peer_id), TASK_PROTOCOL, first)
        except Exception as exc:  # cannot reach it: the peer table marks it dead (tried again later)
            self.p2p.unreachable(peer_id, type(exc).__name__)
            raise

    async def _handle_stream(self, stream: INetStream) -> None:
        try:
            await self.worker.handle_stream(stream)
        except Exception:  # a bug here must not take the node's listener down with it; it is logged loudly
            log.exception("task_stream_crashed", peer=str(stream.muxed_conn.peer_id))
            self.stats["worker_crashed"] += 1
            await reset_quietly(stream)

    # -- settled work, epochs and standing --------------------------------------------------------------------

    def _want_standing(self) -> None:
        self._standing_wanted.set()  # the loop replaces the event each round: set the current one

    async def _settled(self, settled: SignedReceipt) -> None:
        self.reputation.observe_own(settled, now_ms())
        self._standing_wanted.set()  # this node's dealings changed: its summary is signed again soon

    async def publish_epoch(self, epoch: SignedEpoch) -> None:
        """This node's latest signed epoch root, in the DHT (``epoch_key``), where others read it."""
        await self.p2p.put_record(epoch_key(self.peer_id), epoch.encode())

    async def _standing_loop(self) -> None:
        """Sign and store this node's dealings when they changed, and read those of the peers it dealt with,
        so that its trust graph reaches one step past its own dealings (ledger/dealings.py). At most once per
        ``ledger.dealings_interval_s`` when woken (a receipt settled, a contested case), else every minute:
        the cost is set by this node's own counterparts (at most 64), never by the size of the network."""
        ledger = Ledger(self.store, self.peer_id)
        published: list[tuple[str, int]] = []
        wait_s, misses = STANDING_EVERY_S, 0
        while True:
            with trio.move_on_after(wait_s):
                await self._standing_wanted.wait()
            await trio.sleep(self._dealings_interval_s)
            self._standing_wanted = trio.Event()
            counterparts = await self.store.run(ledger.counterparts)
            if counterparts != published:
                dealings = sign_dealings(counterparts, now_ms(), self.identity)
                await self.p2p.put_record(dealings_key(self.peer_id), dealings.encode())
                published = counterparts
            found = [await self._read_counterpart(peer) for peer, _ in counterparts]
            # A counterpart that settled with us at the same moment may publish its summary just after we
            # looked: try again soon (three times) rather than in a minute.
            misses = 0 if all(found) else misses + 1
            wait_s = max(2 * self._dealings_interval_s, 1.0) if 0 < misses <= 3 else STANDING_EVERY_S

    async def _read_counterpart(self, peer: str) -> bool:
        """A counterpart's signed dealings (what it vouches for) and its latest epoch root (a peer that signs
        two roots for one epoch is caught: ``ReputationView.observe_epoch``), from the DHT. Both arrive
        checked by the record validator; they are checked again here, where they are used. Whether its
        dealings were found."""
        data = await self.p2p.get_record(dealings_key(peer))
        found = data is not None
        if data is not None:
            try:
                theirs = Dealings.decode(data)
                verify_dealings(theirs)
            except ReceiptRejected as exc:
                log.info("dealings_refused", peer=peer[-8:], why=str(exc)[:200])
            else:
                if theirs.peer == peer:
                    self.reputation.trust.vouched(peer, theirs.counts)
                    self.stats["dealings_read"] += 1
        data = await self.p2p.get_record(epoch_key(peer))
        if data is not None:
            try:
                epoch = SignedEpoch.decode(data)
                if epoch.header.signer == peer:
                    self.reputation.observe_epoch(epoch, now_ms())
                    self.stats["epochs_read"] += 1
            except Replayed:
                pass  # the root we read last time: nothing new
            except ReceiptRejected as exc:
                self.stats["epoch_refused"] += 1
                log.info("epoch_refused", peer=peer[-8:], why=str(exc)[:200])
        return found

    def describe(self) -> dict[str, Any]:
        queued, running = self.load()
        return {"queued": queued, "running": running, "requested": dict(self.stats),
                "verify": dict(self.spot_checker.stats),
                "served": dict(self.worker.served),
                "reputation": {p: dataclasses.asdict(r) for p, r in list(self.reputation.snapshot().items())[:100]}}
