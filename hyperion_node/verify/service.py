"""Spot checks of other peers' work: ``/hyperion/verify/2``, verdicts, and disputes that carry their proof.

Requester side (``after_task``): a settled receipt of work a peer did for us is checked with the probability
``sampling.SamplingPolicy`` gives it (``verify.budget`` of the compute bought, more for new and drifting
workers). The check is decided after the worker has answered, from the OS's random source, so the worker
cannot tell checked work from ordinary work while doing it. Every check this node makes or receives with
its statistics from a verifier with standing here goes into ``evidence`` (``evidence.EvidenceBook``): a
worker whose checked results together fail the sequential test gets no more work from this node.

The first verifier is this node when it serves the item (it trusts itself), else the first peer in the
protocol's order for this receipt (``cases.rendezvous``) among those that serve it -- never the worker.

A failed verdict becomes a :class:`~hyperion_node.ledger.dispute.DisputeCase`: the settled receipt, the
signed disputes (the requester's own, when it checked the work itself, as the accusation; those of
independent verifiers, which alone can confirm it elsewhere), and the evidence they re-ran when it fits in a
case frame (``MAX_CASE_BYTES``). The requester asks verifiers in the protocol's order until two independent ones agree
(confirmed), one contradicts the accusation (the accuser loses standing here), or none is left (unconfirmed:
no effect, an event). Its own failed check confirms it for this node.

Every node that receives a case judges it by ``cases.judge``: its own re-check where it can make one, else
two verifiers with standing here, else nothing happens. The accused worker's own ledger shows a case it
cannot dismiss as *contested* (still earned) until it is confirmed there; a node never distrusts itself. How
cases are held, announced, fetched and judged is ``case_exchange.CaseExchange`` (``cases``); the checks it
calls for are this class's (``check_here``, ``runtime_check``).

Verifier side (``handle_stream``): a place for the check first (one per peer, ``verify.concurrent`` running
and as many waiting in all), else BUSY before reading; then the asker must be the receipt's requester (the
Noise-authenticated stream is its signed ask) and its payload and output the ones the receipt commits to,
else REFUSED and the *asker* is scored down; then the runtime's own check (``Runtime.verify``: inference: one
batched prefill against the worker's logit commitments; ZK: the proof; render: one frame rendered again). A
failed verdict is answered with a dispute signed by this node.
"""

from __future__ import annotations

import random
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
import trio
from libp2p.abc import INetStream

from hyperion_node.clock import now_ms
from hyperion_node.errors import HyperionError, UserError
from hyperion_node.identity import Identity
from hyperion_node.ledger.dispute import (
    MAX_CASE_BYTES,
    Dispute,
    DisputeCase,
    Evidence,
    sign_dispute,
)
from hyperion_node.ledger.exceptions import ReceiptRejected
from hyperion_node.ledger.receipt import SignedReceipt, content_hash, verify_receipt
from hyperion_node.ledger.reputation import ReputationView
from hyperion_node.ledger.service import LedgerService
from hyperion_node.p2p.limits import PeerSlots
from hyperion_node.protocols import verify as verify_protocol
from hyperion_node.protocols.machine import Conversation, ProtocolViolation
from hyperion_node.runtime_registry import RuntimeRegistry
from hyperion_node.tasks.checks import ResultRejected, check_result
from hyperion_node.tasks.messages import MAX_REQUEST_BYTES, FrameReader, MalformedFrame
from hyperion_node.tasks.streams import (
    STREAM_ERRORS,
    STREAM_ERRORS_OR_TIMEOUT,
    BigFrames,
    Overloaded,
    read_frame,
    reset_quietly,
)
from hyperion_node.trio_types import TaskStatus
from hyperion_node.verify.case_exchange import (
    UNANSWERED,
    CaseExchange,
    CaseNetwork,
    NotAnswered,
)
from hyperion_node.verify.evidence import FAILED_CHECK, Check, Condemnation, EvidenceBook
from hyperion_node.verify.evidence_case import (
    build,
)
from hyperion_node.verify.messages import (
    MAX_VERDICT_BYTES,
    T_CHECK,
    CheckRequest,
    Refused,
    VerdictAnswer,
    VerifierMessage,
    VerifyBusy,
    answer_type,
    decode_answer,
    decode_check,
    encode_answer,
    encode_check,
    statistics_for_answer,
)
from hyperion_node.verify.sampling import Sampler, SamplingPolicy
from hyperion_node.verify.settings import VerifySettings

log = structlog.get_logger(__name__)

RECENT_RESULTS = 256  # results kept for `audit`, newest last
MAX_KEPT_REQUESTS = 1024  # the work behind this node's latest checks, for the evidence cases it may publish
# (worker, item) pairs whose results to this node are counted for the sampler (a new worker is checked more);
# past it the least recently served pair is forgotten, and counts again from 0.
MAX_DELIVERED = 4096


_NOT_JUDGED: tuple[type[BaseException], ...] = (HyperionError, *STREAM_ERRORS_OR_TIMEOUT)
BUSY_RETRY_S = 5.0

# runtime, item, receipt id, exclude -> who may check it, in the protocol's order
Verifiers = Callable[[str, str, bytes, frozenset[str]], Awaitable[list[str]]]


class SpotChecker:
    def __init__(self, *, identity: Identity, runtimes: RuntimeRegistry, settings: VerifySettings,
                 verifiers: Verifiers, network: CaseNetwork, reputation: ReputationView, ledger: LedgerService,
                 penalize: Callable[[str, str], None], event: Callable[[str, dict[str, Any]], Awaitable[None]],
                 rng: random.Random | None = None, on_contested: Callable[[], None] | None = None) -> None:
        self.identity = identity
        self.peer_id = str(identity.peer_id)
        self.runtimes = runtimes
        self.settings = settings
        self.reputation = reputation
        self.ledger = ledger
        self._verifiers = verifiers
        self.network = network
        self._penalize = penalize
        self._event = event
        # The draws of which results to check: the OS's random source unless a test passes its own.
        self.sampler = Sampler(SamplingPolicy(settings.budget, settings.new_worker_results, settings.new_worker_boost,
                                              settings.drift_boost), rng)
        self.evidence = EvidenceBook()
        self._delivered: OrderedDict[tuple[str, str], int] = OrderedDict()  # (worker, item) -> results to us
        # The work behind this node's recent checks, by receipt id: what an evidence case carries.
        self._checked: OrderedDict[str, tuple[SignedReceipt, CheckRequest]] = OrderedDict()
        # Checks run at once on this node (its own, a peer's ask, a case's re-check): each costs a prefill.
        self.limiter = trio.CapacityLimiter(settings.concurrent)
        # Places for peers' checks, taken when a stream opens: one per peer, running and waiting together.
        self.asks = PeerSlots(per_peer=1, total=2 * settings.concurrent)
        self._big_frames = BigFrames(2)
        self._nursery: trio.Nursery | None = None
        self.stats: Counter[str] = Counter()
        # Cases: those this node makes, holds and announces, and those it receives and judges.
        self.cases = CaseExchange(peer_id=self.peer_id, settings=settings, network=network, ledger=ledger,
                                  reputation=reputation, evidence=self.evidence, runtimes=runtimes, checks=self,
                                  penalize=penalize, event=event, stats=self.stats, on_contested=on_contested)
        # This node's latest results as a requester, by task id, for `audit` (each with what a check needs).
        self.recent: OrderedDict[str, tuple[CheckRequest, SignedReceipt]] = OrderedDict()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.cases.run)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    # -- requester side ------------------------------------------------------------------------------------

    def after_task(self, runtime: str, item: str, payload: Mapping[str, Any], output: Mapping[str, Any],
                   settled: SignedReceipt, sample: Mapping[str, Any] | None = None) -> None:
        self.recent[settled.receipt.task_id] = (CheckRequest(settled.encode(), payload, output, sample), settled)
        while len(self.recent) > RECENT_RESULTS:
            self.recent.popitem(last=False)
        worker = settled.receipt.worker
        if self._nursery is None or not self.runtimes.checkable(runtime) or worker == self.peer_id:
            return
        if self.runtimes.result_check(runtime) is not None:
            # Checked whole before it was countersigned (a ZK proof): a passing check in the evidence. One that
            # failed was never countersigned, and its worker was scored down for it (``Requester``).
            self.evidence.observe(worker, item, Check(settled.id.hex(), True, {}, now_ms()))
        key = (worker, item)
        seen = self._delivered.pop(key, 0)
        self._delivered[key] = seen + 1
        while len(self._delivered) > MAX_DELIVERED:
            self._delivered.popitem(last=False)
        share = self.runtimes.check_share(runtime, payload, output)
        if not self.sampler.draw(share, float(settled.receipt.units), results_seen=seen,
                                 drift=self.evidence.drift(worker, item)):
            return
        self._nursery.start_soon(self._check, runtime, item, CheckRequest(settled.encode(), payload, output, sample),
                                 settled)

    async def _observe(self, settled: SignedReceipt, answer: VerdictAnswer, *, verifier: str,
                       request: CheckRequest | None = None) -> None:
        """One check's verdict and statistics into the evidence (module docstring): this node's own, or a
        verifier's with standing here (a stranger's statistics could frame a worker). A worker the sequential
        test disputes gets no more work from this node (``TaskService._distrusted``)."""
        if verifier != self.peer_id and self.reputation.standing(verifier) < self.settings.standing_floor:
            if answer.ok:
                return
            scores: dict[str, float] = {}  # a confirmed failure counts; a stranger's figures do not
        else:
            scores = self.runtimes.check_scores(settled.receipt.runtime, answer.statistics or {})
        receipt = settled.receipt
        check = Check(settled.id.hex(), answer.ok, scores, now_ms(), "" if answer.ok else answer.reason[:200])
        if request is not None:
            self._checked[check.receipt_id] = (settled, request)
            while len(self._checked) > MAX_KEPT_REQUESTS:
                self._checked.popitem(last=False)
        found = self.evidence.observe(receipt.worker, receipt.item, check)
        if found is not None and found.statistic != FAILED_CHECK:
            await self._condemned(found)

    async def _condemned(self, found: Condemnation) -> None:
        """The sequential test disputed a worker here: an event, and a case of the checks it rests on (newest
        first, as many as fit) for whoever routes to the worker (``evidence_case``)."""
        self.stats["condemned"] += 1
        log.warning("worker_condemned", worker=found.worker[-8:], item=found.item, statistic=found.statistic,
                    value=round(found.value, 3), checks=len(found.checks))
        await self._event("verify.condemned", found.to_map())
        work = []
        for check in reversed(found.checks):
            kept = self._checked.get(check.receipt_id)
            if kept is not None:
                settled, request = kept
                work.append((settled, Evidence(dict(request.payload), dict(request.output),
                                               dict(request.sample) if request.sample is not None else None),
                             check.scores))
        if not work or not self.settings.case_evidence:
            return
        self.cases.hold(found.worker, build(found.statistic, work).encode())
        self.cases.announce_soon(found.worker)

    async def _check(self, runtime: str, item: str, request: CheckRequest, settled: SignedReceipt) -> None:
        worker, receipt_id = settled.receipt.worker, settled.id.hex()
        facts = {"receipt_id": receipt_id, "worker": worker}
        tried: set[str] = {worker}
        first = await self._next_verdict(runtime, item, request, tried)
        if first is None:
            self.stats["no_verifier"] += 1
            return
        verifier, verdict = first
        await self._event("verify.passed" if verdict.ok else "verify.failed",
                          {**facts, "verifier": verifier, "reason": verdict.reason})
        if verdict.ok:
            self.stats["passed"] += 1
            await self._observe(settled, verdict, verifier=verifier, request=request)
            return
        own = verifier == self.peer_id
        independent = [] if own else [verdict]
        tried.add(self.peer_id)  # the requester's own check never confirms its own accusation for others
        while len(independent) < 2:
            found = await self._next_verdict(runtime, item, request, tried)
            if found is None:
                break
            if found[1].ok:
                if own:  # a peer vouches for work this node found wrong: its word counts for less here
                    self.stats["vouched_for_bad_work"] += 1
                    await self._event("verify.contradicted", {**facts, "verifier": self.peer_id, "by": found[0]})
                    continue
                self.stats["contradicted"] += 1
                self._penalize(verifier, "false_dispute")
                self.reputation.observe_false_dispute(verifier, now_ms())
                await self._event("verify.contradicted", {**facts, "verifier": verifier, "by": found[0]})
                return
            independent.append(found[1])
        if not own and len(independent) < 2:
            self.stats["unconfirmed"] += 1
            await self._event("verify.unconfirmed", {**facts, "verifier": verifier})
            return
        self.stats["disputed"] += 1
        await self._observe(settled, verdict, verifier=verifier, request=request)
        disputes = [Dispute.decode(a.dispute or b"") for a in ([verdict] if own else []) + independent]
        await self.cases.confirmed(settled, disputes[0])
        log.info("receipt_disputed", receipt=receipt_id[:16], worker=worker[-8:], reason=verdict.reason)
        # Published with this node's own dispute as the accusation (it confirms nothing elsewhere, but tells the
        # worker, and lets nodes that serve the item check the work themselves) and the independent ones.
        signed = tuple(d.encode() for d in disputes)
        await self.cases.publish(_case(settled, signed, request, with_evidence=self.settings.case_evidence))

    async def _next_verdict(self, runtime: str, item: str, request: CheckRequest,
                            tried: set[str]) -> tuple[str, VerdictAnswer] | None:
        """Ask the next verifier in the protocol's order; one that cannot answer is skipped for the next."""
        receipt_id = SignedReceipt.decode(request.receipt).id
        for verifier in await self._verifiers(runtime, item, receipt_id, frozenset(tried)):
            tried.add(verifier)
            try:
                with trio.fail_after(self.settings.timeout_s):
                    if verifier == self.peer_id:
                        return verifier, await self.check_here(request, asker=self.peer_id)
                    return verifier, await self._ask(verifier, request)
            except UNANSWERED as exc:
                log.info("verifier_unavailable", verifier=verifier[-8:], error=str(exc)[:200] or type(exc).__name__)
                continue
        return None

    async def _ask(self, verifier: str, request: CheckRequest) -> VerdictAnswer:
        conversation = verify_protocol.asker_side()
        stream = await self.network.open_stream(verifier, verify_protocol.PROTOCOL_ID)
        try:
            conversation.sending(T_CHECK)
            await stream.write(encode_check(request))
            answer = decode_answer(await read_frame(stream, FrameReader(MAX_VERDICT_BYTES)))
            conversation.received(answer_type(answer), peer_id=verifier)
        finally:
            with trio.CancelScope(shield=True):
                await reset_quietly(stream)
        if isinstance(answer, VerifyBusy | Refused):
            raise NotAnswered(f"{type(answer).__name__}: {answer.reason}")
        if not answer.ok:
            dispute = Dispute.decode(answer.dispute or b"")
            signed = SignedReceipt.decode(request.receipt)
            named = (dispute.verifier, dispute.receipt_id, dispute.worker)
            if named != (verifier, signed.id, signed.receipt.worker):
                raise MalformedFrame("bad_dispute", "the dispute is not the verifier's, or not of this receipt")
        return answer

    # -- audits -------------------------------------------------------------------------------------------

    async def audit(self, task_id: str) -> dict[str, Any]:
        """Check one of this node's own recent results here, every position the check can read (``chunks=0``),
        whatever the sampling would have drawn; the verdict with the check's statistics. ``UserError`` when this
        node cannot (an unknown task, its own work, a runtime or model it does not run)."""
        found = self.recent.get(task_id)
        if found is None:
            raise UserError(f"no recent result of task {task_id!r} on this node",
                            hint=f"audit works on the last {RECENT_RESULTS} tasks this node asked for since it started")
        request, settled = found
        receipt = settled.receipt
        if receipt.worker == self.peer_id:
            raise UserError("this node ran that task itself: there is nothing to audit")
        if self.runtimes.result_check(receipt.runtime) is None and self.runtimes.verifier(receipt.runtime) is None:
            raise UserError(f"this node does not run {receipt.runtime}: it cannot check that result itself",
                            hint=f"start a node that serves {receipt.runtime}/{receipt.item} to audit it")
        started = time.perf_counter()
        async with self.limiter:
            reason, details = await self.runtime_check(receipt.runtime, request, receipt.evidence, chunks=0)
        seconds = time.perf_counter() - started
        # The audit is this node's own check: it counts in the evidence like any other (a failed one is a
        # finding for the user, who decides; it is not published as a dispute).
        await self._observe(settled, VerdictAnswer(not reason, reason or "ok", statistics=details),
                            verifier=self.peer_id, request=request)
        evidence = self.evidence.get(receipt.worker, receipt.item)
        answer = {"task_id": task_id, "receipt_id": settled.id.hex(), "worker": receipt.worker,
                  "runtime": receipt.runtime, "item": receipt.item, "ok": not reason, "reason": reason or "ok",
                  "seconds": round(seconds, 3), "statistics": dict(details),
                  "scores": self.runtimes.check_scores(receipt.runtime, details),
                  "evidence": evidence.to_map() if evidence is not None else None}
        self.stats["audit_passed" if not reason else "audit_failed"] += 1
        await self._event("verify.audit", {k: v for k, v in answer.items() if k != "statistics"})
        return answer

    def can_recheck(self, worker: str, runtime: str, item: str) -> bool:
        """Whether this node can check another worker's result of ``item`` itself (a case against its own work
        it never judges by re-checking)."""
        return (worker != self.peer_id and self.runtimes.checkable(runtime) and runtime in self.runtimes.loaded
                and self._serves(runtime, item))

    def _serves(self, runtime: str, item: str) -> bool:
        return any(o.runtime == runtime and o.item == item for o in self.runtimes.offers())

    # -- verifier side -------------------------------------------------------------------------------------

    async def check_here(self, request: CheckRequest, *, asker: str) -> VerdictAnswer:
        """Judge another worker's result for ``asker``. ``UserError`` when this node cannot judge it,
        ``Refusal`` when the asker may not ask it (not the requester) or sent evidence that is not the
        receipt's: that is the asker's fault, never the worker's."""
        signed = SignedReceipt.decode(request.receipt)
        verify_receipt(signed, require_countersignature=True)
        receipt = signed.receipt
        if receipt.worker == self.peer_id:
            raise UserError("a worker does not judge its own receipt")
        if asker != receipt.requester:
            raise Refusal("not_requester", "only the receipt's requester may ask for its check")
        if receipt.output_hash != content_hash(request.output):
            raise Refusal("bad_evidence", "your output is not the one the receipt commits to")
        if receipt.input_hash != content_hash(request.payload):
            raise Refusal("bad_evidence", "your payload is not the one the receipt commits to")
        async with self.limiter:
            reason, details = await self.runtime_check(receipt.runtime, request, receipt.evidence)
        statistics = statistics_for_answer(details)
        if not reason:
            return VerdictAnswer(True, "checked", statistics=statistics)
        dispute = sign_dispute(signed.id, receipt.worker, reason[:1000], now_ms(), self.identity)
        return VerdictAnswer(False, reason, dispute.encode(), statistics)

    async def runtime_check(self, runtime: str, request: CheckRequest, evidence: Mapping[str, Any], *,
                             chunks: int | None = None) -> tuple[str, Mapping[str, Any]]:
        """Why the result is wrong, or "", and the check's statistics: the runtime's cheap check where it has
        one, else its spot check (``runtimes.interface``) of ``chunks`` (``verify.inference_chunks`` unless
        given)."""
        if self.runtimes.result_check(runtime) is not None:
            try:
                await check_result(self.runtimes, runtime, request.payload, request.output, evidence)
            except ResultRejected as exc:
                return exc.one_line(), {}
            return "", {}
        verifier = self.runtimes.verifier(runtime)
        if verifier is None:
            raise UserError(f"this node cannot check {runtime} work")
        verdict = await verifier.verify(request.payload, request.output, evidence, sample=request.sample,
                                        chunks=self.settings.inference_chunks if chunks is None else chunks)
        return ("" if verdict.ok else str(verdict.reason)), verdict.details

    async def handle_stream(self, stream: INetStream) -> None:
        remote = str(stream.muxed_conn.peer_id)
        conversation = verify_protocol.verifier_side()
        if not self.asks.take(remote):
            self.stats["busy"] += 1
            await self._answer_and_close(stream, conversation, VerifyBusy("no place for another check now",
                                                                          BUSY_RETRY_S))
            return
        try:
            await self._judge_stream(stream, remote, conversation)
        finally:
            self.asks.give(remote)

    async def _judge_stream(self, stream: INetStream, remote: str, conversation: Conversation) -> None:
        try:
            with trio.fail_after(self.settings.timeout_s):
                request = decode_check(await read_frame(stream, FrameReader(MAX_REQUEST_BYTES), self._big_frames))
                conversation.received(T_CHECK, peer_id=remote)
                try:
                    answer: VerifierMessage = await self.check_here(request, asker=remote)
                except Refusal as exc:
                    self._penalize(remote, exc.reason)
                    self.stats[f"refused_{exc.reason}"] += 1
                    answer = Refused(exc.one_line())
            if isinstance(answer, VerdictAnswer):
                self.stats["judged_ok" if answer.ok else "judged_failed"] += 1
            await self._answer_and_close(stream, conversation, answer)
        except Overloaded:
            await self._answer_and_close(stream, conversation, VerifyBusy("too many large checks at once",
                                                                          BUSY_RETRY_S))
        except (MalformedFrame, ProtocolViolation, ReceiptRejected) as exc:
            self._penalize(remote, getattr(exc, "reason", "bad_check"))
            await reset_quietly(stream)
        except _NOT_JUDGED as exc:
            log.info("check_refused", peer=remote[-8:], error=str(exc)[:200] or type(exc).__name__)
            await reset_quietly(stream)

    async def _answer_and_close(self, stream: INetStream, conversation: Conversation,
                                answer: VerifierMessage) -> None:
        conversation.sending(answer_type(answer))
        with trio.move_on_after(5.0):
            try:
                await stream.write(encode_answer(answer))
                await stream.close()
            except STREAM_ERRORS:
                return


class Refusal(HyperionError):
    """The asker's ask is refused, by its fault (``reason`` is the counter's label)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _case(settled: SignedReceipt, disputes: tuple[bytes, ...], request: CheckRequest, *,
          with_evidence: bool) -> DisputeCase:
    """The case of a confirmed dispute, with its evidence when the whole case fits in a case frame (and
    ``verify.case_evidence`` allows: the evidence is the task's payload, a prompt included)."""
    evidence = Evidence(dict(request.payload), dict(request.output),
                        dict(request.sample) if request.sample is not None else None)
    case = DisputeCase(settled.encode(), disputes, evidence)
    if with_evidence and len(case.encode()) <= MAX_CASE_BYTES:
        return case
    return DisputeCase(settled.encode(), disputes, None)

