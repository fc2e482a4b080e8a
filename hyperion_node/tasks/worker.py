"""The worker side of ``/hyperion/task/1``: admission, the runtime, the result stream, the receipt.

Admission answers at once: a task this node cannot run as asked is REJECTED (the requester's fault), one
that finds every slot and the bounded queue behind them full is BUSY (load: the requester tries the next
peer), anything else is ACCEPTED and runs. Nothing is buffered without bound: a runtime's slots plus
``tasks.queue_depth`` tasks per offer, no more.

While the task runs, one task watches the stream: the requester closing or resetting it (its client went
away) cancels the work, and the runtimes stop within a decode step (``runtimes/inference`` polls trio's
cancellation between tokens). The receipt is appended to the ledger, pending, *before* the final frame
leaves, so a crash after the requester has its result still leaves the receipt on disk; the
countersignature, when it comes back, settles it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio
from libp2p.abc import INetStream

from hyperion_node.clock import now_ms
from hyperion_node.errors import HyperionError, UserError
from hyperion_node.identity import Identity
from hyperion_node.ledger.exceptions import ReceiptRejected
from hyperion_node.ledger.money import credits_to_atto
from hyperion_node.ledger.receipt import SignedReceipt, receipt_from_final, sign_receipt, with_countersignature
from hyperion_node.ledger.service import LedgerService
from hyperion_node.p2p.limits import PaidPeers, PeerSlots, Unpaid
from hyperion_node.protocols import task as task_protocol
from hyperion_node.protocols.machine import Conversation, ProtocolViolation
from hyperion_node.runtime_registry import RuntimeRegistry
from hyperion_node.tasks.checks import path_fields
from hyperion_node.tasks.history import HistoryWriter
from hyperion_node.tasks.inputs import BlobInputs, fetch_bytes, resolve
from hyperion_node.tasks.messages import (
    MAX_COUNTERSIGN_BYTES,
    MAX_REQUEST_BYTES,
    Accepted,
    Busy,
    Countersign,
    FinalResult,
    FrameReader,
    MalformedFrame,
    PartialResult,
    Rejected,
    TaskError,
    TaskRequest,
    WorkerMessage,
    decode_requester,
    encode_worker,
    wire_type,
)
from hyperion_node.tasks.metrics import TaskMetrics
from hyperion_node.tasks.model import TaskRecord, TaskState
from hyperion_node.tasks.settings import TaskSettings
from hyperion_node.tasks.streams import (
    STREAM_ERRORS,
    STREAM_ERRORS_OR_TIMEOUT,
    BigFrames,
    Overloaded,
    read_frame,
    reset_quietly,
)
from runtimes.interface import Final, Offer, Partial, Task

log = structlog.get_logger(__name__)


@dataclass
class Admission:
    """Tasks admitted per offer (runtime, item): running ones up to the offer's capacity, then a bounded queue,
    and of those at most a share per peer (``share``), so that one peer cannot hold every slot and queue place
    while others wait (seen: two streams with huge deadlines starved every honest client of a worker)."""

    queue_depth: int
    admitted: Counter[tuple[str, str]] = field(default_factory=Counter)
    capacity: dict[tuple[str, str], int] = field(default_factory=dict)
    by_peer: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (runtime, item, peer) -> held
    on_change: Callable[[], None] | None = None  # the load changed (presence pushes it to subscribers)

    def share(self, capacity: int, *, paid: bool = True) -> int:
        """Places of one offer a single peer may hold: half of slots and queue together, at least one; one
        for a peer that has not yet paid this node (countersigned a result since it started)."""
        return max(1, (capacity + self.queue_depth) // 2) if paid else 1

    def try_admit(self, key: tuple[str, str], capacity: int, peer: str = "", *, paid: bool = True) -> int | None:
        """The task's queue position (0: it runs now), or None when slots and queue are full, or the peer
        holds its share of them already."""
        self.capacity[key] = capacity
        if self.admitted[key] >= capacity + self.queue_depth:
            return None
        if peer and self.by_peer[(*key, peer)] >= self.share(capacity, paid=paid):
            return None
        self.admitted[key] += 1
        if peer:
            self.by_peer[(*key, peer)] += 1
        if self.on_change is not None:
            self.on_change()
        return max(0, self.admitted[key] - capacity)

    def release(self, key: tuple[str, str], peer: str = "") -> None:
        self.admitted[key] -= 1
        if self.admitted[key] <= 0:
            del self.admitted[key]
        if peer:
            self.by_peer[(*key, peer)] -= 1
            if self.by_peer[(*key, peer)] <= 0:
                del self.by_peer[(*key, peer)]
        if self.on_change is not None:
            self.on_change()

    def load(self) -> tuple[int, int]:
        """(queued, running) over every offer, for heartbeats."""
        running = sum(min(n, self.capacity.get(k, 1)) for k, n in self.admitted.items())
        return sum(self.admitted.values()) - running, running


@dataclass
class Ticket:
    """An admitted task: holding one makes a slot or queue place ours until ``release``."""

    request: TaskRequest
    offer: Offer
    runtime_version: str
    queue_position: int


@dataclass(frozen=True)
class Execution:
    final: Final
    signed: SignedReceipt  # signed by this node; not yet in the ledger


Emit = Callable[[Partial], Awaitable[None]]


def item_hash(evidence: Mapping[str, Any], item: str) -> str:
    """The content hash of what the task ran on, from the runtime's evidence (a model file, a key, a scene)."""
    for key in ("model_sha256", "zkey_sha256", "scene_sha256", "item_hash"):
        value = evidence.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


class Worker:
    def __init__(self, *, identity: Identity, runtimes: RuntimeRegistry, ledger: LedgerService,
                 history: HistoryWriter, settings: TaskSettings, hardware: Callable[[], dict[str, Any]],
                 on_malformed: Callable[[str, str], None],
                 on_settled: Callable[[SignedReceipt], Awaitable[None]], metrics: TaskMetrics | None = None,
                 blobs: BlobInputs | None = None, on_load_change: Callable[[], None] | None = None) -> None:
        self.identity = identity
        self.peer_id = str(identity.peer_id)
        self.runtimes = runtimes
        self.ledger = ledger
        self.history = history
        self.settings = settings
        self._hardware = hardware
        self._on_malformed = on_malformed
        self._on_settled = on_settled
        self.blobs = blobs  # fetches task inputs sent by address; None: inline only
        # on_load_change: the load changed (presence pushes it to the requesters that subscribe at once)
        self.admission = Admission(settings.queue_depth, on_change=on_load_change)
        self.unpaid = Unpaid(settings.max_unpaid, settings.unpaid_window_s)
        # Requesters that countersigned a result since this node started: a stranger holds one place of an offer
        # until it has paid once (a flood of a fresh key's tasks then takes one stream, not half of them).
        self.paid = PaidPeers()
        # Checked when a stream opens, before a byte of it is read: per peer, and for everyone together.
        # The total bounds the small frames being read at once (a big one needs a big-frame place as well).
        self.streams = PeerSlots(settings.max_streams_per_peer, total=256)
        self.big_frames = BigFrames(2)
        self.served: Counter[str] = Counter()  # outcome -> count, for /api/tasks/stats
        self.metrics = metrics or TaskMetrics()  # the orchestrator shares its own, for /metrics

    # -- admission -------------------------------------------------------------------------------------

    def admit(self, req: TaskRequest) -> Ticket | Busy | Rejected:
        loaded = self.runtimes.loaded.get(req.runtime)
        closed = self.runtimes.closed(req.runtime) if loaded is not None else None
        if closed is not None:  # the operator's control (control.py): the requester tries another worker
            return Busy(closed, retry_after_s=self.settings.busy_retry_after_s)
        offer = next((o for o in self.runtimes.offers() if o.runtime == req.runtime and o.item == req.item), None)
        if loaded is None or offer is None:
            return Rejected(f"this node does not offer {req.runtime}/{req.item}")
        if req.max_price_per_unit is not None and offer.price_per_unit > req.max_price_per_unit:
            return Rejected(f"price {offer.price_per_unit} per {offer.unit} is above the {req.max_price_per_unit} "
                            "asked for")
        peer = self._peer(req)
        unpaid = self.unpaid.count(peer, trio.current_time()) if peer else 0
        if unpaid >= self.settings.max_unpaid:
            return Rejected(f"{unpaid} results this node sent you in the last {self.settings.unpaid_window_s:.0f} s "
                            "were never countersigned; countersign results to get more work here")
        estimate = loaded.runtime.estimate(self._task(req))
        if not estimate.accepted:
            return Rejected(estimate.reason or "the runtime refused the task")
        paid = peer in self.paid
        position = self.admission.try_admit((req.runtime, req.item), offer.capacity, peer, paid=paid)
        if position is None:
            share = self.admission.share(offer.capacity, paid=paid)
            if peer and self.admission.by_peer[(req.runtime, req.item, peer)] >= share:
                why = "your share" if paid else "your share until you have countersigned a result here"
                return Busy(f"you hold {share} of this offer's places, {why}",
                            retry_after_s=self.settings.busy_retry_after_s)
            return Busy(f"all {offer.capacity} slot(s) and {self.settings.queue_depth} queue place(s) taken",
                        retry_after_s=self.settings.busy_retry_after_s)
        return Ticket(req, offer, loaded.runtime.version, position)

    def _peer(self, req: TaskRequest) -> str:
        """Whose share a task counts against: the requester, unless it is this node (the owner's own work)."""
        return "" if req.requester == self.peer_id else req.requester

    def release(self, ticket: Ticket) -> None:
        self.admission.release((ticket.request.runtime, ticket.request.item), self._peer(ticket.request))

    def _deadline_s(self, req: TaskRequest) -> float:
        """A peer's deadline is capped: its work stops at tasks.max_deadline_s whatever it asked for."""
        return min(req.deadline_s, self.settings.max_deadline_s) if self._peer(req) else req.deadline_s

    def _task(self, req: TaskRequest) -> Task:
        peer = self._peer(req)
        return Task(task_id=req.task_id, runtime=req.runtime, payload=req.payload,
                    requirements={"item": req.item, "min_memory_bytes": req.min_memory_bytes},
                    deadline=trio.current_time() + self._deadline_s(req),
                    background=bool(peer) and peer not in self.paid)

    # -- running -----------------------------------------------------------------------------------------

    async def execute(self, ticket: Ticket, emit: Emit) -> Execution:
        """Run an admitted task under its deadline and sign its receipt. Raises ``trio.TooSlowError`` past
        the deadline, the runtime's errors otherwise."""
        req = ticket.request
        loaded = self.runtimes.loaded[req.runtime]
        task = self._task(req)
        started = now_ms()
        assert task.deadline is not None
        with trio.fail_at(task.deadline):
            final = await loaded.runtime.run(task, emit)
        receipt = receipt_from_final(
            task, final, runtime_version=ticket.runtime_version, item=req.item,
            item_hash=item_hash(final.evidence, req.item), unit=ticket.offer.unit,
            price_per_unit=credits_to_atto(ticket.offer.price_per_unit), started_at_ms=started,
            finished_at_ms=now_ms(), hardware=self._hardware(), worker=self.peer_id, requester=req.requester)
        return Execution(final, sign_receipt(receipt, self.identity))

    # -- the stream protocol -----------------------------------------------------------------------------

    async def handle_stream(self, stream: INetStream) -> None:
        remote = str(stream.muxed_conn.peer_id)
        if not self.streams.take(remote):
            # Before a byte is read: a peer's share of open streams is bounded, and everyone's together.
            self._on_malformed(remote, "too_many_streams")
            log.info("task_stream_rejected", peer=remote, reason="too_many_streams")
            await reset_quietly(stream)
            return
        try:
            await self._handle(stream, remote)
        finally:
            self.streams.give(remote)

    async def _handle(self, stream: INetStream, remote: str) -> None:
        reader = FrameReader(MAX_REQUEST_BYTES)
        conversation = task_protocol.worker_side()
        try:
            with trio.fail_after(self.settings.request_timeout_s):
                msg = decode_requester(await read_frame(stream, reader, self.big_frames))
            conversation.received(wire_type(msg), peer_id=remote)
            assert isinstance(msg, TaskRequest)  # the only message the table allows first
            if msg.requester != remote:
                raise MalformedFrame("sender_mismatch", f"task names requester {msg.requester}, stream is {remote}")
        except Overloaded:
            self.served["busy"] += 1
            with trio.move_on_after(1.0):
                try:
                    await self._send(stream, Busy("too many large tasks arriving at once",
                                                  retry_after_s=self.settings.busy_retry_after_s))
                    await stream.close()
                except STREAM_ERRORS:
                    return
            return
        except (MalformedFrame, ProtocolViolation, trio.TooSlowError) as exc:
            reason = "timeout" if isinstance(exc, trio.TooSlowError) else exc.reason
            self._on_malformed(remote, reason)
            log.info("task_stream_rejected", peer=remote, reason=reason)
            await reset_quietly(stream)
            return
        except STREAM_ERRORS:
            return  # the requester went away before it asked anything
        with structlog.contextvars.bound_contextvars(task_id=msg.task_id[:12], requester=remote[-8:]):
            await self._serve(stream, reader, conversation, msg)

    async def _send(self, stream: INetStream, msg: WorkerMessage, conversation: Conversation | None = None) -> None:
        if conversation is not None:
            conversation.sending(wire_type(msg))
        await stream.write(encode_worker(msg))

    async def _serve(self, stream: INetStream, reader: FrameReader, conversation: Conversation,
                     req: TaskRequest) -> None:
        paths = path_fields(req.payload)
        answer: Ticket | Busy | Rejected | None = None
        if paths:
            answer = Rejected(f"payload fields {', '.join(paths)} name files; a peer must send the bytes")
        elif req.blobs and req.requester not in self.paid and fetch_bytes(req) > MAX_REQUEST_BYTES:
            # Fetched before admission can weigh the task: a peer that never paid gets what a frame could carry.
            answer = Rejected(f"a requester that has not paid this node sends at most {MAX_REQUEST_BYTES} bytes "
                              "of inputs")
        elif req.blobs:
            try:  # the inputs sent by address, from the requester or this node's cache (tasks/inputs.py)
                req = await resolve(self.blobs, req)
            except UserError as exc:
                answer = Rejected(f"cannot take the task's inputs: {exc.message}")
        answer = answer or self.admit(req)
        if not isinstance(answer, Ticket):
            refused = "busy" if isinstance(answer, Busy) else "rejected"
            self.served[refused] += 1
            self.metrics.record(req.runtime, "worker", refused, None)
            log.info("task_refused", answer=type(answer).__name__.lower(), reason=answer.reason)
            try:
                await self._send(stream, answer, conversation)
                await stream.close()
            except STREAM_ERRORS:
                pass  # the requester left; it asked and got no answer, nothing to undo
            return
        record = TaskRecord(task_id=req.task_id, role="worker", runtime=req.runtime, item=req.item,
                            requester=req.requester, worker=self.peer_id, created_ms=now_ms(), updated_ms=now_ms())
        record.move(TaskState.RUNNING, now_ms())
        started = trio.current_time()
        try:
            await self._send(stream, Accepted(answer.queue_position), conversation)
            self.history.save_soon(record)  # not waited for: only final states are (tasks/history.py)
            outcome = await self._run_watched(stream, conversation, answer)
        except STREAM_ERRORS:
            outcome = TaskError("cancelled", "the requester closed the stream")
        finally:
            self.release(answer)
        if isinstance(outcome, Execution):
            self.metrics.record(req.runtime, "worker", "completed", trio.current_time() - started)
            await self._finish(stream, reader, conversation, record, outcome)
            return
        self.served[outcome.code] += 1
        self.metrics.record(req.runtime, "worker", outcome.code, trio.current_time() - started)
        record.error = f"{outcome.code}: {outcome.message}"
        record.move(TaskState.CANCELLED if outcome.code == "cancelled" else TaskState.FAILED, now_ms())
        with trio.CancelScope(shield=True):
            await self.history.save(record)
        if outcome.code != "cancelled":
            try:
                await self._send(stream, outcome, conversation)
                await stream.close()
            except STREAM_ERRORS:
                pass  # nobody is left to tell

    async def _run_watched(self, stream: INetStream, conversation: Conversation,
                           ticket: Ticket) -> Execution | TaskError:
        """Run the task while watching the stream: the requester closing it cancels the work, and so does a
        requester that sends anything before FINAL (the protocol allows it nothing then: counted against it)."""
        gone = False

        async def emit(partial: Partial) -> None:
            await self._send(stream, PartialResult(partial.data), conversation)

        async def watch(scope: trio.CancelScope) -> None:
            nonlocal gone
            try:
                if await stream.read(1):
                    self._on_malformed(ticket.request.requester, "out_of_order")
                    log.info("task_stream_rejected", reason="out_of_order", detail="data before FINAL")
            except STREAM_ERRORS:
                pass
            gone = True
            scope.cancel()

        result: Execution | TaskError = TaskError("cancelled", "the requester closed the stream")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, nursery.cancel_scope)
            try:
                result = await self.execute(ticket, emit)
            except trio.TooSlowError:
                result = TaskError("deadline", f"the deadline of {self._deadline_s(ticket.request):.1f} s passed")
            except UserError as exc:
                result = TaskError("bad_request", exc.one_line())
            except HyperionError as exc:
                result = TaskError("failed", exc.one_line())
            except STREAM_ERRORS:
                gone = True
            nursery.cancel_scope.cancel()
        if gone:
            return TaskError("cancelled", "the requester closed the stream")
        return result

    async def _finish(self, stream: INetStream, reader: FrameReader, conversation: Conversation, record: TaskRecord,
                      done: Execution) -> None:
        """Receipt on disk, then the final frame, then wait for the countersignature; a result never
        countersigned counts against its requester (``tasks.max_unpaid``)."""
        signed = done.signed
        with trio.CancelScope(shield=True):
            await self.ledger.append(signed)
        record.result = {"receipt_id": signed.id.hex(), "units": signed.receipt.units,
                         "total_atto": str(signed.receipt.total)}
        record.move(TaskState.COMPLETED, now_ms())
        await self.history.save(record)
        self.served["completed"] += 1
        try:
            await self._send(stream, FinalResult(dict(done.final.output), signed.encode()), conversation)
            reader.max_bytes = MAX_COUNTERSIGN_BYTES  # all the requester may send now
            with trio.fail_after(self.settings.countersign_timeout_s):
                msg = decode_requester(await read_frame(stream, reader))
            conversation.received(wire_type(msg), peer_id=record.requester)
            assert isinstance(msg, Countersign)  # the only message the table allows here
            settled = with_countersignature(signed, msg.countersignature)
        except STREAM_ERRORS_OR_TIMEOUT as exc:
            unpaid = self.unpaid.add(record.requester, trio.current_time())
            log.info("receipt_pending", receipt=signed.id.hex()[:16], why=type(exc).__name__, unpaid=unpaid)
            return  # it stays pending; `rewards` shows it and warns when it stays so for long
        except (MalformedFrame, ProtocolViolation, ReceiptRejected) as exc:
            self.unpaid.add(record.requester, trio.current_time())
            self._on_malformed(record.requester, getattr(exc, "reason", "bad_countersignature"))
            log.info("countersignature_rejected", error=str(exc)[:200])
            return
        await self.ledger.settle(settled)
        self.paid.add(record.requester)
        log.info("receipt_settled", receipt=signed.id.hex()[:16], units=signed.receipt.units)
        await self._on_settled(settled)
        try:
            await stream.close()
        except STREAM_ERRORS:
            pass
