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

from hyperion_node.errors import HyperionError, UserError
from hyperion_node.identity import Identity
from hyperion_node.ledger.exceptions import ReceiptRejected
from hyperion_node.ledger.money import credits_to_atto
from hyperion_node.ledger.receipt import SignedReceipt, receipt_from_final, sign_receipt, with_countersignature
from hyperion_node.ledger.service import LedgerService
from hyperion_node.runtime_registry import RuntimeRegistry
from hyperion_node.tasks.checks import path_fields
from hyperion_node.tasks.history import HistoryWriter, now_ms
from hyperion_node.tasks.messages import (
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
)
from hyperion_node.tasks.metrics import TaskMetrics
from hyperion_node.tasks.model import TaskRecord, TaskState
from hyperion_node.tasks.settings import TaskSettings
from hyperion_node.tasks.streams import STREAM_ERRORS, STREAM_ERRORS_OR_TIMEOUT, read_frame, reset_quietly
from runtimes.interface import Final, Offer, Partial, Task

log = structlog.get_logger(__name__)


@dataclass
class Admission:
    """Tasks admitted per offer (runtime, item): running ones up to the offer's capacity, then a bounded queue."""

    queue_depth: int
    admitted: Counter[tuple[str, str]] = field(default_factory=Counter)
    capacity: dict[tuple[str, str], int] = field(default_factory=dict)

    def try_admit(self, key: tuple[str, str], capacity: int) -> int | None:
        """The task's queue position (0: it runs now), or None when slots and queue are full."""
        self.capacity[key] = capacity
        if self.admitted[key] >= capacity + self.queue_depth:
            return None
        self.admitted[key] += 1
        return max(0, self.admitted[key] - capacity)

    def release(self, key: tuple[str, str]) -> None:
        self.admitted[key] -= 1
        if self.admitted[key] <= 0:
            del self.admitted[key]

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
                 on_settled: Callable[[SignedReceipt], Awaitable[None]]) -> None:
        self.identity = identity
        self.peer_id = str(identity.peer_id)
        self.runtimes = runtimes
        self.ledger = ledger
        self.history = history
        self.settings = settings
        self._hardware = hardware
        self._on_malformed = on_malformed
        self._on_settled = on_settled
        self.admission = Admission(settings.queue_depth)
        self.served: Counter[str] = Counter()  # outcome -> count, for /api/tasks/stats
        self.metrics = TaskMetrics()  # the orchestrator shares its own, for /metrics

    # -- admission -------------------------------------------------------------------------------------

    def admit(self, req: TaskRequest) -> Ticket | Busy | Rejected:
        loaded = self.runtimes.loaded.get(req.runtime)
        offer = next((o for o in self.runtimes.offers() if o.runtime == req.runtime and o.item == req.item), None)
        if loaded is None or offer is None:
            return Rejected(f"this node does not offer {req.runtime}/{req.item}")
        if req.max_price_per_unit is not None and offer.price_per_unit > req.max_price_per_unit:
            return Rejected(f"price {offer.price_per_unit} per {offer.unit} is above the {req.max_price_per_unit} "
                            "asked for")
        estimate = loaded.runtime.estimate(self._task(req))
        if not estimate.accepted:
            return Rejected(estimate.reason or "the runtime refused the task")
        position = self.admission.try_admit((req.runtime, req.item), offer.capacity)
        if position is None:
            return Busy(f"all {offer.capacity} slot(s) and {self.settings.queue_depth} queue place(s) taken",
                        retry_after_s=self.settings.busy_retry_after_s)
        return Ticket(req, offer, loaded.runtime.version, position)

    def release(self, ticket: Ticket) -> None:
        self.admission.release((ticket.request.runtime, ticket.request.item))

    def _task(self, req: TaskRequest) -> Task:
        return Task(task_id=req.task_id, runtime=req.runtime, payload=req.payload,
                    requirements={"item": req.item, "min_memory_bytes": req.min_memory_bytes},
                    deadline=trio.current_time() + req.deadline_s)

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
        reader = FrameReader(MAX_REQUEST_BYTES)
        try:
            with trio.fail_after(self.settings.request_timeout_s):
                msg = decode_requester(await read_frame(stream, reader))
            if not isinstance(msg, TaskRequest):
                raise MalformedFrame("wrong_type", "a stream starts with a task")
            if msg.requester != remote:
                raise MalformedFrame("sender_mismatch", f"task names requester {msg.requester}, stream is {remote}")
        except (MalformedFrame, trio.TooSlowError) as exc:
            reason = exc.reason if isinstance(exc, MalformedFrame) else "timeout"
            self._on_malformed(remote, reason)
            log.info("task_stream_rejected", peer=remote, reason=reason)
            await reset_quietly(stream)
            return
        except STREAM_ERRORS:
            return  # the requester went away before it asked anything
        with structlog.contextvars.bound_contextvars(task_id=msg.task_id[:12], requester=remote[-8:]):
            await self._serve(stream, reader, msg)

    async def _send(self, stream: INetStream, msg: WorkerMessage) -> None:
        await stream.write(encode_worker(msg))

    async def _serve(self, stream: INetStream, reader: FrameReader, req: TaskRequest) -> None:
        paths = path_fields(req.payload)
        answer = (Rejected(f"payload fields {', '.join(paths)} name files; a peer must send the bytes")
                  if paths else self.admit(req))
        if not isinstance(answer, Ticket):
            refused = "busy" if isinstance(answer, Busy) else "rejected"
            self.served[refused] += 1
            self.metrics.record(req.runtime, "worker", refused, None)
            log.info("task_refused", answer=type(answer).__name__.lower(), reason=answer.reason)
            try:
                await self._send(stream, answer)
                await stream.close()
            except STREAM_ERRORS:
                pass  # the requester left; it asked and got no answer, nothing to undo
            return
        record = TaskRecord(task_id=req.task_id, role="worker", runtime=req.runtime, item=req.item,
                            requester=req.requester, worker=self.peer_id, created_ms=now_ms(), updated_ms=now_ms())
        record.move(TaskState.RUNNING, now_ms())
        started = trio.current_time()
        try:
            await self._send(stream, Accepted(answer.queue_position))
            self.history.save_soon(record)  # not waited for: only final states are (tasks/history.py)
            outcome = await self._run_watched(stream, answer)
        except STREAM_ERRORS:
            outcome = TaskError("cancelled", "the requester closed the stream")
        finally:
            self.release(answer)
        if isinstance(outcome, Execution):
            self.metrics.record(req.runtime, "worker", "completed", trio.current_time() - started)
            await self._finish(stream, reader, record, outcome)
            return
        self.served[outcome.code] += 1
        self.metrics.record(req.runtime, "worker", outcome.code, trio.current_time() - started)
        record.error = f"{outcome.code}: {outcome.message}"
        record.move(TaskState.CANCELLED if outcome.code == "cancelled" else TaskState.FAILED, now_ms())
        with trio.CancelScope(shield=True):
            await self.history.save(record)
        if outcome.code != "cancelled":
            try:
                await self._send(stream, outcome)
                await stream.close()
            except STREAM_ERRORS:
                pass  # nobody is left to tell

    async def _run_watched(self, stream: INetStream, ticket: Ticket) -> Execution | TaskError:
        """Run the task while watching the stream: the requester closing it cancels the work."""
        gone = False

        async def emit(partial: Partial) -> None:
            await self._send(stream, PartialResult(partial.data))

        async def watch(scope: trio.CancelScope) -> None:
            nonlocal gone
            try:
                await stream.read(1)  # a well-behaved requester sends nothing until FINAL
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
                result = TaskError("deadline", f"the deadline of {ticket.request.deadline_s:.1f} s passed")
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

    async def _finish(self, stream: INetStream, reader: FrameReader, record: TaskRecord, done: Execution) -> None:
        """Receipt on disk, then the final frame, then wait for the countersignature."""
        signed = done.signed
        with trio.CancelScope(shield=True):
            await self.ledger.append(signed)
        record.result = {"receipt_id": signed.id.hex(), "units": signed.receipt.units,
                         "total_atto": str(signed.receipt.total)}
        record.move(TaskState.COMPLETED, now_ms())
        await self.history.save(record)
        self.served["completed"] += 1
        try:
            await self._send(stream, FinalResult(dict(done.final.output), signed.encode()))
            with trio.fail_after(self.settings.countersign_timeout_s):
                msg = decode_requester(await read_frame(stream, reader))
            if not isinstance(msg, Countersign):
                raise MalformedFrame("wrong_type", "expected a countersignature")
            settled = with_countersignature(signed, msg.countersignature)
        except STREAM_ERRORS_OR_TIMEOUT as exc:
            log.info("receipt_pending", receipt=signed.id.hex()[:16], why=type(exc).__name__)
            return  # it stays pending; `rewards` shows it and warns when it stays so for long
        except (MalformedFrame, ReceiptRejected) as exc:
            self._on_malformed(record.requester, getattr(exc, "reason", "bad_countersignature"))
            log.info("countersignature_rejected", error=str(exc)[:200])
            return
        await self.ledger.settle(settled)
        log.info("receipt_settled", receipt=signed.id.hex()[:16], units=signed.receipt.units)
        await self._on_settled(settled)
        try:
            await stream.close()
        except STREAM_ERRORS:
            pass
