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
cannot dismiss as *contested* (still earned) until it is confirmed there; a node never distrusts itself.

Verifier side (``handle_stream``): a place for the check first (one per peer, ``verify.concurrent`` running
and as many waiting in all), else BUSY before reading; then the asker must be the receipt's requester (the
Noise-authenticated stream is its signed ask) and its payload and output the ones the receipt commits to,
else REFUSED and the *asker* is scored down; then the runtime's own check (``Runtime.verify``: inference: one
batched prefill against the worker's logit commitments; ZK: the proof; render: one frame rendered again). A
failed verdict is answered with a dispute signed by this node.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import structlog
import trio
from libp2p.abc import INetStream

from hyperion_node.errors import HyperionError, UserError
from hyperion_node.identity import Identity
from hyperion_node.ledger.dispute import (
    MAX_CASE_BYTES,
    CheckedCase,
    Dispute,
    DisputeCase,
    Evidence,
    check_case,
    sign_dispute,
)
from hyperion_node.ledger.exceptions import ReceiptRejected
from hyperion_node.ledger.receipt import SignedReceipt, content_hash, verify_receipt
from hyperion_node.ledger.reputation import ReputationView
from hyperion_node.ledger.service import LedgerService
from hyperion_node.p2p.limits import PeerSlots
from hyperion_node.protocols import cases as cases_protocol
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
from hyperion_node.verify.cases import Judgement, after_recheck, judge
from hyperion_node.verify.evidence import FAILED_CHECK, Check, Condemnation, EvidenceBook
from hyperion_node.verify.evidence_case import (
    EvidenceCase,
    build,
    check_evidence_case,
    is_evidence_case,
    judge_rechecks,
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


class NotAnswered(Exception):
    """A verifier said BUSY or REFUSED: ask the next one."""


# A verifier that cannot give an answer (gone, slow, busy, broken frames, cannot judge): ask the next one.
_UNANSWERED: tuple[type[BaseException], ...] = (*STREAM_ERRORS_OR_TIMEOUT, MalformedFrame, ProtocolViolation,
                                                UserError, ReceiptRejected, NotAnswered)
_NOT_JUDGED: tuple[type[BaseException], ...] = (HyperionError, *STREAM_ERRORS_OR_TIMEOUT)
BUSY_RETRY_S = 5.0
# A contested case of this node's own work is judged again this often: the standing of its verifiers grows as
# this node learns of their dealings (a case often arrives before the receipts that vouch for its signers).
REJUDGE_S = 15.0


# runtime, item, receipt id, exclude -> who may check it, in the protocol's order
Verifiers = Callable[[str, str, bytes, frozenset[str]], Awaitable[list[str]]]
# Workers whose cases this node keeps (and whose cases it fetched lately), least recent forgotten first.
MAX_HELD_WORKERS = 1024
# Cases about a peer are fetched again after this long: a confirmed case changes slowly, and each fetch is a
# provider lookup and a stream.
WEIGH_EVERY_S = 600.0


class CaseNetwork(Protocol):
    """What the spot checker needs of the P2P layer (``P2PNetwork`` implements it)."""

    async def open_stream(self, peer_id: str, protocol: str) -> INetStream: ...
    async def provide_key(self, key: str) -> None: ...
    async def providers_of(self, key: str, count: int) -> list[str]: ...


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
        self._judged: OrderedDict[bytes, bool] = OrderedDict()  # evidence cases judged here, by hash
        # Checks run at once on this node (its own, a peer's ask, a case's re-check): each costs a prefill.
        self._limiter = trio.CapacityLimiter(settings.concurrent)
        # Places for peers' checks, taken when a stream opens: one per peer, running and waiting together.
        self.asks = PeerSlots(per_peer=1, total=2 * settings.concurrent)
        self._big_frames = BigFrames(2)
        self._nursery: trio.Nursery | None = None
        self.stats: Counter[str] = Counter()
        self._held: OrderedDict[str, list[bytes]] = OrderedDict()  # worker -> cases this node confirmed
        # Told when a case of this node's own work is contested: standing is worth refreshing then.
        self._on_contested = on_contested
        self._weighed: OrderedDict[str, float] = OrderedDict()  # peer -> when its cases were last fetched
        # This node's latest results as a requester, by task id, for `audit` (each with what a check needs).
        self.recent: OrderedDict[str, tuple[CheckRequest, SignedReceipt]] = OrderedDict()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._rejudge_contests)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    async def _rejudge_contests(self) -> None:
        """Judge this node's contested cases again until each is confirmed (then a dispute in the ledger,
        which ends the contest) or stays contested for as long as the ledger keeps it. While one stays
        contested, standing is refreshed (``on_contested``): its verifiers may gain it from counterparts'
        newer summaries."""
        while True:
            await trio.sleep(REJUDGE_S)
            contests = await self.ledger.contests()
            if contests and self._on_contested is not None:
                self._on_contested()
            for data in contests:
                checked = check_case(DisputeCase.decode(data))  # it passed these checks when it came in
                verdict = judge(checked, me=self.peer_id, standing=self.reputation.standing,
                                floor=self.settings.standing_floor, can_recheck=False)
                if verdict is Judgement.CONFIRMED:
                    self.stats["case_confirmed_later"] += 1
                    await self._confirmed(checked.receipt, checked.disputes[0])

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
            self.evidence.observe(worker, item, Check(settled.id.hex(), True, {}, _now_ms()))
        key = (worker, item)
        seen = self._delivered.pop(key, 0)
        self._delivered[key] = seen + 1
        while len(self._delivered) > MAX_HELD_WORKERS * 4:
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
        check = Check(settled.id.hex(), answer.ok, scores, _now_ms(), "" if answer.ok else answer.reason[:200])
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
        self._hold(found.worker, build(found.statistic, work).encode())
        if self._nursery is not None:
            self._nursery.start_soon(self._announce, found.worker)

    def _hold(self, worker: str, data: bytes) -> None:
        """Keep a case against ``worker`` for whoever asks (newest first, bounded per worker and in workers)."""
        held = self._held.pop(worker, [])
        self._held[worker] = [data, *held][:cases_protocol.MAX_CASES]
        while len(self._held) > MAX_HELD_WORKERS:
            self._held.popitem(last=False)

    async def _announce(self, worker: str) -> None:
        """Say in the DHT that this node holds cases against ``worker``."""
        with trio.move_on_after(30):
            await self.network.provide_key(cases_protocol.case_key(worker))

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
                self.reputation.observe_false_dispute(verifier, _now_ms())
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
        await self._confirmed(settled, disputes[0])
        log.info("receipt_disputed", receipt=receipt_id[:16], worker=worker[-8:], reason=verdict.reason)
        # Published with this node's own dispute as the accusation (it confirms nothing elsewhere, but tells the
        # worker, and lets nodes that serve the item check the work themselves) and the independent ones.
        signed = tuple(d.encode() for d in disputes)
        await self._publish(_case(settled, signed, request, with_evidence=self.settings.case_evidence))

    async def _publish(self, case: DisputeCase) -> None:
        """Hand a confirmed case to its worker, keep it for whoever asks, and say so in the DHT."""
        data = case.encode()
        worker = SignedReceipt.decode(case.receipt).receipt.worker
        self._hold(worker, data)
        with trio.move_on_after(self.settings.timeout_s):
            try:
                await self._ask_cases(worker, cases_protocol.Push(data))
            except _UNANSWERED as exc:
                log.info("case_not_delivered", worker=worker[-8:], error=str(exc)[:200] or type(exc).__name__)
        await self._announce(worker)

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
            except _UNANSWERED as exc:
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

    async def _confirmed(self, settled: SignedReceipt, dispute: Dispute) -> None:
        """A dispute this node believes: its ledger (where it holds the receipt), its reputation view."""
        if self.reputation.observe_confirmed_dispute(settled.receipt.worker, settled.id, _now_ms(), dispute.at_ms):
            await self._event("dispute.confirmed", {"receipt_id": settled.id.hex(), "worker": settled.receipt.worker,
                                                    "verifier": dispute.verifier})
        try:
            await self.ledger.dispute(dispute)
        except (ReceiptRejected, UserError) as exc:  # not ours, or already disputed
            log.debug("dispute_not_recorded", why=str(exc)[:200])

    # -- cases from the network ----------------------------------------------------------------------------

    async def on_case(self, sender: str, data: bytes) -> None:
        """A dispute case pushed to this node or fetched from a holder: believed only as ``cases.judge`` says
        (module docstring); an evidence case only as this node's own checks of its work say."""
        if is_evidence_case(data):
            await self._on_evidence_case(sender, data)
            return
        try:
            checked = check_case(DisputeCase.decode(data))
        except ReceiptRejected as exc:
            self.stats["case_malformed"] += 1
            self._penalize(sender, "bad_case")
            log.info("case_rejected", sender=sender[-8:], why=str(exc)[:200])
            return
        receipt = checked.receipt.receipt
        mine = checked.worker == self.peer_id
        verdict = judge(checked, me=self.peer_id, standing=self.reputation.standing,
                        floor=self.settings.standing_floor,
                        can_recheck=self._can_recheck(checked.worker, receipt.runtime, receipt.item))
        if verdict is Judgement.RECHECK:
            verdict = await self._recheck(checked)
        facts = {"receipt_id": checked.receipt.id.hex(), "worker": checked.worker, "verifiers": list(checked.verifiers),
                 "judgement": verdict.value}
        self.stats[f"case_{verdict.value}"] += 1
        if verdict is Judgement.CONFIRMED:
            await self._confirmed(checked.receipt, checked.disputes[0])
            return
        await self._event("dispute.unconfirmed", facts)
        if mine:  # an accusation of our own work that we cannot dismiss: shown, not counted as lost
            await self.ledger.contest(checked.receipt.id, data, checked.verifiers)
            if self._on_contested is not None:
                self._on_contested()

    async def _on_evidence_case(self, sender: str, data: bytes) -> None:
        """The sequential test's dispute from another node (``evidence_case``): this node checks every result
        it carries itself and believes it only when its own sequential test disputes the worker too. It does so
        only where it can check the work (it serves the item, it is not the worker) and the case's requester has
        standing here (each re-check costs a prefill); otherwise the case has no effect."""
        digest = hashlib.sha256(data).digest()
        if digest in self._judged:
            return
        self._judged[digest] = True
        while len(self._judged) > MAX_HELD_WORKERS:
            self._judged.popitem(last=False)
        try:
            checked = check_evidence_case(EvidenceCase.decode(data))
        except ReceiptRejected as exc:
            self.stats["case_malformed"] += 1
            self._penalize(sender, "bad_case")
            log.info("evidence_case_rejected", sender=sender[-8:], why=str(exc)[:200])
            return
        facts = {"worker": checked.worker, "item": checked.item, "requester": checked.requester,
                 "statistic": checked.case.statistic, "checks": len(checked.receipts)}
        if (not self._can_recheck(checked.worker, checked.runtime, checked.item)
                or self.evidence.condemned(checked.worker)
                or self.reputation.standing(checked.requester) < self.settings.standing_floor):
            self.stats["evidence_case_unconfirmed"] += 1
            await self._event("dispute.unconfirmed", {**facts, "judgement": "not rechecked"})
            return
        rechecks: list[Check] = []
        for signed, item in zip(checked.receipts, checked.case.items, strict=True):
            request = CheckRequest(item.receipt, item.evidence.payload, item.evidence.output, item.evidence.sample)
            try:
                with trio.fail_after(self.settings.timeout_s):
                    async with self._limiter:
                        reason, details = await self._runtime_check(checked.runtime, request,
                                                                    signed.receipt.evidence)
            except (UserError, ReceiptRejected, trio.TooSlowError) as exc:
                log.info("evidence_recheck_failed", why=str(exc)[:200] or type(exc).__name__)
                continue
            rechecks.append(Check(signed.id.hex(), not reason, self.runtimes.check_scores(checked.runtime, details),
                                  _now_ms(), reason[:200]))
        statistic = judge_rechecks(rechecks)
        if statistic is None:
            self.stats["evidence_case_unconfirmed"] += 1
            await self._event("dispute.unconfirmed", {**facts, "judgement": "rechecked", "rechecked": len(rechecks)})
            return
        self.stats["evidence_case_confirmed"] += 1
        self.evidence.condemn(Condemnation(checked.worker, checked.item, f"case:{statistic}", 0.0, tuple(rechecks)))
        await self._event("dispute.confirmed", {**facts, "judgement": "rechecked", "by": statistic})

    def weigh_soon(self, peers: list[str]) -> None:
        """Fetch and judge the cases about peers this node is about to route work to, unless it did lately."""
        now = trio.current_time()
        for peer in peers:
            last = self._weighed.get(peer)
            if self._nursery is None or peer == self.peer_id or (last is not None and now - last < WEIGH_EVERY_S):
                continue
            self._weighed.pop(peer, None)
            self._weighed[peer] = now
            while len(self._weighed) > MAX_HELD_WORKERS:
                self._weighed.popitem(last=False)
            self._nursery.start_soon(self._weigh, peer)

    async def _weigh(self, peer: str) -> None:
        with trio.move_on_after(self.settings.timeout_s):
            holders = await self.network.providers_of(cases_protocol.case_key(peer), 5)
            for holder in holders:
                if holder in (self.peer_id, peer):
                    continue
                try:
                    answer = await self._ask_cases(holder, cases_protocol.Get(peer))
                except _UNANSWERED as exc:
                    log.debug("cases_not_fetched", holder=holder[-8:], error=type(exc).__name__)
                    continue
                assert isinstance(answer, cases_protocol.Cases)
                for data in answer.cases:
                    await self.on_case(holder, data)

    async def _ask_cases(self, peer: str, msg: cases_protocol.Message) -> cases_protocol.Message:
        conversation = cases_protocol.opener_side()
        stream = await self.network.open_stream(peer, cases_protocol.PROTOCOL_ID)
        try:
            conversation.sending(cases_protocol.message_type(msg))
            await stream.write(cases_protocol.encode(msg))
            with trio.fail_after(10):
                answer = cases_protocol.decode(await read_frame(stream, FrameReader(cases_protocol.MAX_FRAME)),
                                               cases_protocol.MAX_FRAME)
            conversation.received(cases_protocol.message_type(answer), peer_id=peer)
            return answer
        finally:
            with trio.CancelScope(shield=True):
                await reset_quietly(stream)

    async def handle_cases_stream(self, stream: INetStream) -> None:
        """``/hyperion/cases/1``: a case pushed to this node about its own work, or a GET of the cases it holds."""
        remote = str(stream.muxed_conn.peer_id)
        conversation = cases_protocol.answerer_side()
        cap = cases_protocol.CASES.max_frame[cases_protocol.OPENER]
        try:
            with trio.fail_after(10):
                msg = cases_protocol.decode(await read_frame(stream, FrameReader(cap)), cap)
            conversation.received(cases_protocol.message_type(msg), peer_id=remote)
            if isinstance(msg, cases_protocol.Push):
                worker = _case_worker(msg.case)  # None: malformed, refused by on_case below
                if worker is not None and worker != self.peer_id:
                    # A PUSH tells a worker of a case about its own work; a case about anyone else is fetched by
                    # whoever routes to that worker (GET). Judging it could cost a re-check: refused unread.
                    self._penalize(remote, "not_yours")
                    self.stats["case_not_ours"] += 1
                    await reset_quietly(stream)
                    return
                answer: cases_protocol.Message = cases_protocol.Ok()
                conversation.sending(cases_protocol.T_OK)
                await stream.write(cases_protocol.encode(answer))
                await self.on_case(remote, msg.case)
            else:
                assert isinstance(msg, cases_protocol.Get)
                conversation.sending(cases_protocol.T_CASES)
                await stream.write(cases_protocol.encode(cases_protocol.Cases(tuple(self._held.get(msg.worker, ())))))
            await stream.close()
        except (MalformedFrame, ProtocolViolation) as exc:
            self._penalize(remote, exc.reason)
            await reset_quietly(stream)
        except STREAM_ERRORS_OR_TIMEOUT:
            await reset_quietly(stream)

    async def _recheck(self, checked: CheckedCase) -> Judgement:
        """This node checks the case's work itself (within the verify budget); a pass shows its signers wrong."""
        evidence = checked.case.evidence
        assert evidence is not None  # judge() asks for a re-check only of a case with its evidence
        request = CheckRequest(checked.case.receipt, evidence.payload, evidence.output, evidence.sample)
        try:
            with trio.fail_after(self.settings.timeout_s):
                answer = await self.check_here(request, asker=checked.requester)
        except (UserError, ReceiptRejected, trio.TooSlowError) as exc:
            log.info("case_recheck_failed", why=str(exc)[:200] or type(exc).__name__)
            return Judgement.UNCONFIRMED
        if answer.ok:
            for signer in checked.verifiers:
                self._penalize(signer, "false_dispute")
                self.reputation.observe_false_dispute(signer, _now_ms())
            await self._event("dispute.shown_wrong", {"receipt_id": checked.receipt.id.hex(),
                                                      "verifiers": list(checked.verifiers)})
        return after_recheck(failed=not answer.ok)

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
        async with self._limiter:
            reason, details = await self._runtime_check(receipt.runtime, request, receipt.evidence, chunks=0)
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

    def _can_recheck(self, worker: str, runtime: str, item: str) -> bool:
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
        async with self._limiter:
            reason, details = await self._runtime_check(receipt.runtime, request, receipt.evidence)
        statistics = statistics_for_answer(details)
        if not reason:
            return VerdictAnswer(True, "checked", statistics=statistics)
        dispute = sign_dispute(signed.id, receipt.worker, reason[:1000], _now_ms(), self.identity)
        return VerdictAnswer(False, reason, dispute.encode(), statistics)

    async def _runtime_check(self, runtime: str, request: CheckRequest, evidence: Mapping[str, Any], *,
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


def _case_worker(data: bytes) -> str | None:
    """The worker a case accuses, read without checking a signature; None when the case does not decode."""
    try:
        if is_evidence_case(data):
            return SignedReceipt.decode(EvidenceCase.decode(data).items[0].receipt).receipt.worker
        return SignedReceipt.decode(DisputeCase.decode(data).receipt).receipt.worker
    except ReceiptRejected:
        return None


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


def _now_ms() -> int:
    return int(time.time() * 1000)
