"""The requester side: choose a worker, dispatch, stream the result, fail over, check, countersign.

For one task (see DESIGN.md, "one inference request, end to end")::

    candidates (peer table + this node; a DHT provider lookup when none is known)
      -> Scheduler.choose -> ranked workers, best first
      -> for each: open /hyperion/task/1 straight to it (or run here if it is this node)
           BUSY, REJECTED, unreachable, or failed before any output -> record the outcome, try the next
           failed after output started -> the task fails: the client already has part of an answer,
                                            and a silent restart elsewhere would hand it a spliced one
      -> FINAL: check the receipt (signature, names, hashes), countersign, send it back, append it

The deadline holds across every attempt. Events go to the caller through a memory channel; a caller that
stops listening (its HTTP client went away) cancels the task, which closes the stream to the worker, which
stops the work.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol

from hyperion_node.clock import now_ms
from hyperion_node.errors import HyperionError, RemoteError, UserError
from hyperion_node.identity import Identity
from hyperion_node.ledger.exceptions import ReceiptRejected
from hyperion_node.ledger.money import credits_to_atto
from hyperion_node.ledger.receipt import SignedReceipt, content_hash, countersign
from hyperion_node.ledger.service import LedgerService
from hyperion_node.protocols import task as task_protocol
from hyperion_node.scheduler.candidates import Candidate, CandidateSet, TaskRequirements
from hyperion_node.scheduler.scheduler import Decision, DecisionStatus, Outcome, OutcomeKind, Scheduler, ScoredCandidate
from hyperion_node.tasks.checks import check_result
from hyperion_node.tasks.events import Assigned, Final, Partial, TaskEvent
from hyperion_node.tasks.exceptions import NoWorker, TaskFailed, TaskRejected
from hyperion_node.tasks.history import HistoryWriter
from hyperion_node.tasks.inputs import BlobInputs, by_address, fetch_seconds
from hyperion_node.tasks.messages import (
    MAX_RESPONSE_BYTES,
    T_COUNTERSIGN,
    T_TASK,
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
    decode_worker,
    encode_countersign,
    encode_request,
    wire_type,
)
from hyperion_node.tasks.model import FINAL_STATES, Attempt, TaskRecord, TaskSpec, TaskState, new_task_id
from hyperion_node.tasks.settings import TaskSettings
from hyperion_node.tasks.streams import STREAM_ERRORS, STREAM_ERRORS_OR_TIMEOUT, read_frame, reset_quietly
from hyperion_node.tasks.worker import Execution, Ticket, Worker
from runtimes.interface import Partial as RuntimePartial
from runtimes.interface import Tally

log = structlog.get_logger(__name__)

TASK_PROTOCOL = TProtocol(task_protocol.PROTOCOL_ID)


Send = Callable[[TaskEvent], Awaitable[None]]
# The candidates for a task: a kept CandidateSet (what a daemon passes) or any list of Candidate.
class RequesterNode(Protocol):
    """What the requester needs of the node around it, and what it tells it (``Orchestrator`` implements it)."""

    async def candidates(self, spec: TaskSpec, req: TaskRequirements) -> CandidateSet | list[Candidate]:
        """The peers (and this node) that may run the task: a kept ``CandidateSet`` or a plain list."""
        ...

    async def open_task_stream(self, peer_id: str, first: bytes) -> INetStream:
        """A ``/hyperion/task/1`` stream to the peer, ``first`` (the request frame) already written."""
        ...

    def shortlisted(self, decision: Decision) -> None:
        """The peers this node is about to route to (presence subscribes to them)."""
        ...

    def peer_failed(self, peer_id: str) -> None:
        """The peer could not be reached or failed the task."""
        ...

    def below_tier(self, spec: TaskSpec) -> frozenset[str]:
        """Peers (this node included) whose advertised tier is below what the task asks for."""
        ...

    def peer_misbehaved(self, peer_id: str, reason: str) -> None:
        """The peer broke the protocol or sent a wrong result or bill: scored down."""
        ...

    def task_settled(self, request: TaskRequest, output: dict[str, Any], settled: SignedReceipt,
                     sample: dict[str, Any] | None) -> None:
        """A peer's work for this node settled (its final output, the receipt, one of its partial results)."""
        ...


@dataclass
class _Try:
    """How one attempt went, for the scheduler and the failover decision."""

    kind: OutcomeKind
    detail: str = ""
    output_started: bool = False
    rejected: str = ""  # the worker said the task cannot run as asked
    ttft_s: float | None = None
    units_per_s: float | None = None
    final: Final | None = None  # sent to the caller once the task's completion is on disk


class Requester:
    def __init__(self, *, identity: Identity, scheduler: Scheduler, worker: Worker, ledger: LedgerService,
                 history: HistoryWriter, settings: TaskSettings, node: RequesterNode,
                 blobs: BlobInputs | None = None) -> None:
        self.identity = identity
        self.peer_id = str(identity.peer_id)
        self.scheduler = scheduler
        self.worker = worker
        self.ledger = ledger
        self.history = history
        self.settings = settings
        self.node = node
        self.blobs = blobs  # large payload fields by address; None: all inline

    def new_record(self, spec: TaskSpec) -> TaskRecord:
        created = now_ms()
        task_id = new_task_id(spec.runtime, spec.item, spec.payload, self.peer_id, created)
        return TaskRecord(task_id=task_id, role="requester", runtime=spec.runtime, item=spec.item,
                          requester=self.peer_id, created_ms=created, updated_ms=created)

    async def run(self, spec: TaskSpec, record: TaskRecord, send: Send) -> None:
        """Run the task to its end; raises ``NoWorker``, ``TaskRejected``, ``TaskFailed`` or ``trio.TooSlowError``.

        States before the end are saved without waiting for the disk, final ones durably (``HistoryWriter``)."""
        self.history.save_soon(record)
        deadline = trio.current_time() + spec.timeout_s
        try:
            with trio.fail_at(deadline):
                await self._run(spec, record, send, deadline)
        except BaseException as exc:
            if record.state not in FINAL_STATES:
                record.error = _describe(exc)
                record.move(TaskState.CANCELLED if isinstance(exc, trio.Cancelled | trio.BrokenResourceError)
                            else TaskState.FAILED, now_ms())
                with trio.CancelScope(shield=True):
                    await self.history.save(record)
            raise

    async def _run(self, spec: TaskSpec, record: TaskRecord, send: Send, deadline: float) -> None:
        below = self.node.below_tier(spec)  # they would refuse it: passed over without a try
        tried: set[str] = set(below)
        rejections: list[str] = []
        while True:
            req = TaskRequirements(runtime=spec.runtime, item=spec.item, min_memory_bytes=spec.min_memory_bytes,
                                   max_price_per_unit=spec.max_price_per_unit, deadline=deadline,
                                   expected_units=spec.expected_units, exclude=frozenset(tried))
            decision = self.scheduler.choose(req, await self.node.candidates(spec, req))
            self.node.shortlisted(decision)
            fresh = [c for c in decision.ranked if c.peer_id not in tried]
            if not fresh and below and not record.attempts:
                raise TaskRejected(f"the {len(below)} peer(s) that serve {spec.item} serve a tier below the "
                                   f"payload's min_tier {spec.payload.get('min_tier')!r}")
            if not fresh:
                raise self._no_worker(decision, rejections, record)
            for choice in fresh:
                if not self.scheduler.begin(choice.peer_id):
                    continue
                tried.add(choice.peer_id)
                result = await self._attempt(choice, spec, record, send, deadline)
                self.scheduler.record_outcome(choice.peer_id, spec.item, Outcome(
                    result.kind, ttft_s=result.ttft_s, units_per_s=result.units_per_s))
                if result.kind is OutcomeKind.SUCCESS:
                    return
                if result.kind in (OutcomeKind.FAILED, OutcomeKind.TIMEOUT, OutcomeKind.UNREACHABLE):
                    self.node.peer_failed(choice.peer_id)
                if result.rejected:
                    rejections.append(result.rejected)
                if result.output_started:
                    raise TaskFailed(f"worker {choice.peer_id} failed after its output had started: {result.detail}",
                                     hint="the partial output was not completed; submit the task again")
                log.info("task_failover", worker=choice.peer_id[-8:], outcome=result.kind.value, detail=result.detail)

    def _no_worker(self, decision: Decision, rejections: list[str], record: TaskRecord) -> HyperionError:
        tried = ", ".join(f"{a.peer_id[-8:]}: {a.outcome}" for a in record.attempts)
        if rejections and all(a.outcome == "rejected" for a in record.attempts):
            return TaskRejected(rejections[0])
        if decision.status is DecisionStatus.DEADLINE:
            return NoWorker(decision.message, status=decision.status.value)
        if record.attempts:
            return NoWorker(f"every worker tried failed or was busy ({tried})", status="all-busy",
                            retry_after_s=self.settings.busy_retry_after_s)
        return NoWorker(decision.message, status=decision.status.value, retry_after_s=decision.retry_after_s)

    async def _attempt(self, choice: ScoredCandidate, spec: TaskSpec, record: TaskRecord, send: Send,
                       deadline: float) -> _Try:
        peer = choice.peer_id
        attempt = Attempt(peer, started_ms=now_ms())
        record.attempts.append(attempt)
        record.worker = peer
        record.move(TaskState.ASSIGNED, now_ms())
        self.history.save_soon(record)
        await send(Assigned(record.task_id, peer, local=choice.candidate.local, score=choice.score))
        request = TaskRequest(task_id=record.task_id, runtime=spec.runtime, item=spec.item, payload=spec.payload,
                              requester=self.peer_id, deadline_s=max(0.0, deadline - trio.current_time()),
                              max_price_per_unit=spec.max_price_per_unit, min_memory_bytes=spec.min_memory_bytes)
        if choice.candidate.local:
            result = await self._run_here(request, record, send)
        else:
            result = await self._run_remote(peer, request, record, send, choice.candidate.price_per_unit)
        attempt.outcome = "rejected" if result.rejected else result.kind.value
        attempt.detail, attempt.ended_ms = result.detail[:300], now_ms()
        if result.kind is OutcomeKind.SUCCESS:
            record.move(TaskState.COMPLETED, now_ms())
            await self.history.save(record)  # on disk before the client hears the task is done
        else:
            self.history.save_soon(record, event=False)  # the attempt's outcome; the task goes on or fails
        if result.final is not None:
            await send(result.final)
        return result

    # -- this node as the worker ---------------------------------------------------------------------------

    async def _run_here(self, request: TaskRequest, record: TaskRecord, send: Send) -> _Try:
        answer = self.worker.admit(request)
        if isinstance(answer, Busy):
            return _Try(OutcomeKind.BUSY, answer.reason)
        if isinstance(answer, Rejected):
            return _Try(OutcomeKind.FAILED, answer.reason, rejected=answer.reason)
        return await self._execute_here(answer, record, send)

    async def _execute_here(self, ticket: Ticket, record: TaskRecord, send: Send) -> _Try:
        clock = _Clock()
        record.move(TaskState.RUNNING, now_ms())
        self.history.save_soon(record)

        async def emit(partial: RuntimePartial) -> None:
            clock.partial()
            await send(Partial(record.task_id, self.peer_id, dict(partial.data)))

        try:
            done: Execution = await self.worker.execute(ticket, emit)
        except UserError as exc:
            return _Try(OutcomeKind.FAILED, exc.one_line(), output_started=clock.started, rejected=exc.one_line())
        except HyperionError as exc:
            return _Try(OutcomeKind.FAILED, exc.one_line(), output_started=clock.started)
        finally:
            self.worker.release(ticket)
        settled = countersign(done.signed, self.identity)
        final = await self._settle(settled, record, dict(done.final.output), clock)
        return _Try(OutcomeKind.SUCCESS, ttft_s=clock.ttft(), units_per_s=clock.rate(), final=final)

    # -- a peer as the worker ------------------------------------------------------------------------------

    async def _run_remote(self, peer: str, request: TaskRequest, record: TaskRecord, send: Send,
                          offered_price: float) -> _Try:
        """``offered_price``: credits per unit in the worker's signed capability record, what its bill may ask."""
        clock = _Clock()
        tally = self.worker.runtimes.tally(request.runtime, request.payload)
        # Large fields go by address (tasks/inputs.py); ``request`` keeps the whole payload for every check.
        wire = await by_address(self.blobs, request)
        try:
            with trio.fail_after(self.settings.admission_timeout_s):
                # The task goes with the stream.
                stream = await self.node.open_task_stream(peer, encode_request(wire))
        except STREAM_ERRORS_OR_TIMEOUT as exc:
            return _Try(OutcomeKind.UNREACHABLE, f"cannot open a stream: {_describe(exc)}")
        except Exception as exc:  # py-libp2p's dialler raises assorted types for an unreachable peer
            return _Try(OutcomeKind.UNREACHABLE, f"cannot open a stream: {_describe(exc)}")
        reader = FrameReader(MAX_RESPONSE_BYTES)
        conversation = task_protocol.requester_side()
        conversation.sending(T_TASK)
        done = False

        async def receive() -> WorkerMessage:
            msg = decode_worker(await read_frame(stream, reader))
            conversation.received(wire_type(msg), peer_id=peer)  # out of order: ProtocolViolation
            return msg

        try:
            with trio.fail_after(self.settings.admission_timeout_s + fetch_seconds(wire)):  # inputs come first
                first = await receive()
            if isinstance(first, Busy):
                return _Try(OutcomeKind.BUSY, first.reason)
            if isinstance(first, Rejected):
                return _Try(OutcomeKind.FAILED, first.reason, rejected=first.reason)
            record.move(TaskState.RUNNING, now_ms())
            self.history.save_soon(record)
            sample: dict[str, Any] | None = None  # one partial, uniformly chosen, for a spot check
            partials = 0
            while True:
                msg = await receive()
                if isinstance(msg, PartialResult):
                    clock.partial()
                    partials += 1
                    if tally is not None:
                        tally.partial(msg.data)
                    if secrets.randbelow(partials) == 0:  # a reservoir of one: the worker cannot tell which
                        sample = dict(msg.data)
                    await send(Partial(record.task_id, peer, dict(msg.data)))
                elif isinstance(msg, FinalResult):
                    signed = self._check_final(peer, request, msg)
                    self._check_bill(signed, msg, tally, offered_price, request.max_price_per_unit)
                    await check_result(self.worker.runtimes, request.runtime, request.payload, msg.output,
                                       signed.receipt.evidence)
                    settled = countersign(signed, self.identity)
                    conversation.sending(T_COUNTERSIGN)
                    await stream.write(encode_countersign(Countersign(settled.countersignature or b"")))
                    done = True
                    final = await self._settle(settled, record, dict(msg.output), clock)
                    self.node.task_settled(request, dict(msg.output), settled, sample)
                    return _Try(OutcomeKind.SUCCESS, ttft_s=clock.ttft(), units_per_s=clock.rate(), final=final)
                else:  # the table allows nothing else here: an ERROR
                    assert isinstance(msg, TaskError)
                    kind = OutcomeKind.TIMEOUT if msg.code == "deadline" else OutcomeKind.FAILED
                    rejected = msg.message if msg.code == "bad_request" and not clock.started else ""
                    return _Try(kind, f"{msg.code}: {msg.message}", output_started=clock.started, rejected=rejected)
        except (MalformedFrame, ReceiptRejected, RemoteError) as exc:
            reason = getattr(exc, "reason", "bad_result")
            self.node.peer_misbehaved(peer, reason if isinstance(reason, str) else "bad_result")
            return _Try(OutcomeKind.FAILED, f"malformed answer: {_describe(exc)}", output_started=clock.started)
        except trio.TooSlowError:
            return _Try(OutcomeKind.TIMEOUT, "no admission answer in time", output_started=clock.started)
        except STREAM_ERRORS as exc:
            kind = OutcomeKind.FAILED if clock.started or done else OutcomeKind.UNREACHABLE
            return _Try(kind, f"the stream broke: {_describe(exc)}", output_started=clock.started)
        finally:
            if not done:
                with trio.CancelScope(shield=True):
                    await reset_quietly(stream)

    def _check_final(self, peer: str, request: TaskRequest, msg: FinalResult) -> SignedReceipt:
        """The worker's receipt must be its own, for this task, of this output; else the result is refused."""
        signed = SignedReceipt.decode(msg.receipt)
        receipt = signed.receipt
        problems = []
        if receipt.worker != peer:
            problems.append(f"names worker {receipt.worker}")
        if receipt.requester != self.peer_id or receipt.task_id != request.task_id:
            problems.append("is for another requester or task")
        if receipt.output_hash != content_hash(msg.output):
            problems.append("does not match the output")
        if receipt.input_hash != content_hash(request.payload):
            problems.append("does not match the task's input")
        if problems:
            raise MalformedFrame("bad_receipt", "the receipt " + ", ".join(problems))
        return signed  # countersign() checks the worker's signature

    def _check_bill(self, signed: SignedReceipt, msg: FinalResult, tally: Tally | None, offered_price: float,
                    max_price: float | None) -> None:
        """The bill before the countersignature: units against what this node received (``Tally``), the price
        per unit against the worker's signed offer and this task's limit; the total is units x price by the
        receipt's own construction. A wrong bill is refused (``bad_bill``): the worker is scored down and paid
        nothing. (Seen before this check: a bill of 1,000x the units at 1 credit per token, countersigned.)"""
        receipt = signed.receipt
        problems = []
        ceiling = credits_to_atto(offered_price)
        if max_price is not None:
            ceiling = min(ceiling, credits_to_atto(max_price))
        if receipt.price_per_unit > ceiling:
            problems.append(f"{receipt.price_per_unit} atto-credits per {receipt.unit} is above the {ceiling} offered")
        if tally is not None:
            expected = tally.units(msg.output)
            if isinstance(expected, str):
                problems.append(expected)
            elif not expected[0] <= receipt.units <= expected[1]:
                low, high = expected
                problems.append(f"{receipt.units} units billed for a result of {low}"
                                + (f" to {high}" if high != low else "") + " units")
        if problems:
            raise MalformedFrame("bad_bill", "the bill: " + "; ".join(problems))

    async def _settle(self, settled: SignedReceipt, record: TaskRecord, output: dict[str, Any],
                      clock: _Clock) -> Final:
        with trio.CancelScope(shield=True):
            await self.ledger.append(settled)
        receipt = settled.receipt
        record.result = {"receipt_id": settled.id.hex(), "units": receipt.units, "total_atto": str(receipt.total),
                         "ttft_ms": None if clock.ttft() is None else round((clock.ttft() or 0) * 1000, 1),
                         "partials": clock.count}
        return Final(record.task_id, receipt.worker, output, receipt_id=settled.id.hex(), units=receipt.units,
                     total_atto=receipt.total, evidence=dict(receipt.evidence))


@dataclass
class _Clock:
    """Time to first partial and partials per second after it, for the scheduler's adaptive layer."""

    start: float = field(default_factory=time.monotonic)
    first: float | None = None
    last: float | None = None
    count: int = 0

    @property
    def started(self) -> bool:
        return self.count > 0

    def partial(self) -> None:
        now = time.monotonic()
        self.first = now if self.first is None else self.first
        self.last = now
        self.count += 1

    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.start

    def rate(self) -> float | None:
        if self.first is None or self.last is None or self.count < 2 or self.last <= self.first:
            return None
        return (self.count - 1) / (self.last - self.first)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, HyperionError):
        return exc.one_line()
    if isinstance(exc, trio.TooSlowError):
        return "the task's deadline passed"
    if isinstance(exc, trio.Cancelled):
        return "cancelled: the client went away"
    text = str(exc)
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
