"""Dispute cases between nodes: ``/hyperion/cases/1``, the cases a node holds and announces, and how it judges
the cases it receives.

A confirmed dispute becomes a case (``ledger.dispute.DisputeCase``), and a sequential test's dispute an evidence
case (``evidence_case``); the node that made it keeps it (``hold``), says so in the DHT under the worker's case key
(``announce``), and hands a dispute case to its worker (``publish``). A node about to route work to a peer fetches
the cases about it from their holders (``weigh_soon``), at most every ``WEIGH_EVERY_S``. Every case that arrives is
judged (``on_case``): a dispute case by ``cases.judge`` (this node's own re-check where it can make one, else two
verifiers with standing here), an evidence case only by this node's own re-checks of the work it carries, through
its own sequential test. A case against this node's own work that it cannot dismiss is *contested* in its ledger
and judged again every ``REJUDGE_S`` as standing grows.

The checks themselves are the spot checker's (``service.SpotChecker``, the ``Rechecks`` it gives this exchange);
the exchange shares its counters, its penalties and its events.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import structlog
import trio
from libp2p.abc import INetStream

from hyperion_node.clock import now_ms
from hyperion_node.errors import UserError
from hyperion_node.ledger.dispute import CheckedCase, Dispute, DisputeCase, check_case
from hyperion_node.ledger.exceptions import ReceiptRejected
from hyperion_node.ledger.receipt import SignedReceipt
from hyperion_node.ledger.reputation import ReputationView
from hyperion_node.ledger.service import LedgerService
from hyperion_node.protocols import cases as cases_protocol
from hyperion_node.protocols.machine import ProtocolViolation
from hyperion_node.runtime_registry import RuntimeRegistry
from hyperion_node.tasks.messages import FrameReader, MalformedFrame
from hyperion_node.tasks.streams import STREAM_ERRORS_OR_TIMEOUT, read_frame, reset_quietly
from hyperion_node.trio_types import TaskStatus
from hyperion_node.verify.cases import Judgement, after_recheck, judge
from hyperion_node.verify.evidence import Check, Condemnation, EvidenceBook
from hyperion_node.verify.evidence_case import EvidenceCase, check_evidence_case, is_evidence_case, judge_rechecks
from hyperion_node.verify.messages import CheckRequest, VerdictAnswer
from hyperion_node.verify.settings import VerifySettings

log = structlog.get_logger(__name__)

# Workers whose cases this node keeps (and whose cases it fetched lately), least recent forgotten first.
MAX_HELD_WORKERS = 1024
# Cases about a peer are fetched again after this long: a confirmed case changes slowly, and each fetch is a
# provider lookup and a stream.
WEIGH_EVERY_S = 600.0
# A contested case of this node's own work is judged again this often: the standing of its verifiers grows as
# this node learns of their dealings (a case often arrives before the receipts that vouch for its signers).
REJUDGE_S = 15.0


class NotAnswered(Exception):
    """A verifier said BUSY or REFUSED: ask the next one."""


# A peer that cannot give an answer (gone, slow, busy, broken frames, cannot judge): ask the next one.
UNANSWERED: tuple[type[BaseException], ...] = (*STREAM_ERRORS_OR_TIMEOUT, MalformedFrame, ProtocolViolation,
                                               UserError, ReceiptRejected, NotAnswered)


class CaseNetwork(Protocol):
    """What the spot checker and the case exchange need of the P2P layer (``P2PNetwork`` implements it)."""

    async def open_stream(self, peer_id: str, protocol: str) -> INetStream: ...
    async def provide_key(self, key: str) -> None: ...
    async def providers_of(self, key: str, count: int) -> list[str]: ...


class Rechecks(Protocol):
    """The checks a case may call for, made by this node (``SpotChecker`` implements it)."""

    limiter: trio.CapacityLimiter  # checks running at once on this node: each costs a prefill

    def can_recheck(self, worker: str, runtime: str, item: str) -> bool: ...
    async def check_here(self, request: CheckRequest, *, asker: str) -> VerdictAnswer: ...
    async def runtime_check(self, runtime: str, request: CheckRequest, evidence: Mapping[str, Any], *,
                            chunks: int | None = None) -> tuple[str, Mapping[str, Any]]: ...


class CaseExchange:
    def __init__(self, *, peer_id: str, settings: VerifySettings, network: CaseNetwork, ledger: LedgerService,
                 reputation: ReputationView, evidence: EvidenceBook, runtimes: RuntimeRegistry, checks: Rechecks,
                 penalize: Callable[[str, str], None], event: Callable[[str, dict[str, Any]], Awaitable[None]],
                 stats: Counter[str], on_contested: Callable[[], None] | None = None) -> None:
        self.peer_id = peer_id
        self.settings = settings
        self.network = network
        self.ledger = ledger
        self.reputation = reputation
        self.evidence = evidence
        self.runtimes = runtimes
        self._checks = checks
        self._penalize = penalize
        self._event = event
        self.stats = stats  # the spot checker's: one set of counters for /api/verify
        # Told when a case of this node's own work is contested: standing is worth refreshing then.
        self._on_contested = on_contested
        self._held: OrderedDict[str, list[bytes]] = OrderedDict()  # worker -> cases this node confirmed
        self._judged: OrderedDict[bytes, bool] = OrderedDict()  # evidence cases judged here, by hash
        self._weighed: OrderedDict[str, float] = OrderedDict()  # peer -> when its cases were last fetched
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._rejudge_contests)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def announce_soon(self, worker: str) -> None:
        """``announce`` in the background (a condemnation made while answering someone)."""
        if self._nursery is not None:
            self._nursery.start_soon(self.announce, worker)

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
                    await self.confirmed(checked.receipt, checked.disputes[0])

    async def confirmed(self, settled: SignedReceipt, dispute: Dispute) -> None:
        """A dispute this node believes: its ledger (where it holds the receipt), its reputation view."""
        if self.reputation.observe_confirmed_dispute(settled.receipt.worker, settled.id, now_ms(), dispute.at_ms):
            await self._event("dispute.confirmed", {"receipt_id": settled.id.hex(), "worker": settled.receipt.worker,
                                                    "verifier": dispute.verifier})
        try:
            await self.ledger.dispute(dispute)
        except (ReceiptRejected, UserError) as exc:  # not ours, or already disputed
            log.debug("dispute_not_recorded", why=str(exc)[:200])

    def hold(self, worker: str, data: bytes) -> None:
        """Keep a case against ``worker`` for whoever asks (newest first, bounded per worker and in workers)."""
        held = self._held.pop(worker, [])
        self._held[worker] = [data, *held][:cases_protocol.MAX_CASES]
        while len(self._held) > MAX_HELD_WORKERS:
            self._held.popitem(last=False)

    async def announce(self, worker: str) -> None:
        """Say in the DHT that this node holds cases against ``worker``."""
        with trio.move_on_after(30):
            await self.network.provide_key(cases_protocol.case_key(worker))

    async def publish(self, case: DisputeCase) -> None:
        """Hand a confirmed case to its worker, keep it for whoever asks, and say so in the DHT."""
        data = case.encode()
        worker = SignedReceipt.decode(case.receipt).receipt.worker
        self.hold(worker, data)
        with trio.move_on_after(self.settings.timeout_s):
            try:
                await self._ask_cases(worker, cases_protocol.Push(data))
            except UNANSWERED as exc:
                log.info("case_not_delivered", worker=worker[-8:], error=str(exc)[:200] or type(exc).__name__)
        await self.announce(worker)

    async def on_case(self, sender: str, data: bytes) -> None:
        """A dispute case pushed to this node or fetched from a holder: believed only as ``cases.judge`` says
        (module docstring); an evidence case only as this node's own checks of its work say."""
        if is_evidence_case(data):
            await self._on_evidence_case(sender, data)
            return
        try:
            checked = check_case(DisputeCase.decode(data))
        except ReceiptRejected as exc:
            self._malformed(sender, "case_rejected", exc)
            return
        receipt = checked.receipt.receipt
        mine = checked.worker == self.peer_id
        verdict = judge(checked, me=self.peer_id, standing=self.reputation.standing,
                        floor=self.settings.standing_floor,
                        can_recheck=self._checks.can_recheck(checked.worker, receipt.runtime, receipt.item))
        if verdict is Judgement.RECHECK:
            verdict = await self._recheck(checked)
        facts = {"receipt_id": checked.receipt.id.hex(), "worker": checked.worker, "verifiers": list(checked.verifiers),
                 "judgement": verdict.value}
        self.stats[f"case_{verdict.value}"] += 1
        if verdict is Judgement.CONFIRMED:
            await self.confirmed(checked.receipt, checked.disputes[0])
            return
        await self._event("dispute.unconfirmed", facts)
        if mine:  # an accusation of our own work that we cannot dismiss: shown, not counted as lost
            await self.ledger.contest(checked.receipt.id, data, checked.verifiers)
            if self._on_contested is not None:
                self._on_contested()

    def _malformed(self, sender: str, event: str, exc: ReceiptRejected) -> None:
        """A case that does not decode or check: counted, and charged to the peer that sent it."""
        self.stats["case_malformed"] += 1
        self._penalize(sender, "bad_case")
        log.info(event, sender=sender[-8:], why=str(exc)[:200])

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
            self._malformed(sender, "evidence_case_rejected", exc)
            return
        facts = {"worker": checked.worker, "item": checked.item, "requester": checked.requester,
                 "statistic": checked.case.statistic, "checks": len(checked.receipts)}
        if (not self._checks.can_recheck(checked.worker, checked.runtime, checked.item)
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
                    async with self._checks.limiter:
                        reason, details = await self._checks.runtime_check(checked.runtime, request,
                                                                    signed.receipt.evidence)
            except (UserError, ReceiptRejected, trio.TooSlowError) as exc:
                log.info("evidence_recheck_failed", why=str(exc)[:200] or type(exc).__name__)
                continue
            rechecks.append(Check(signed.id.hex(), not reason, self.runtimes.check_scores(checked.runtime, details),
                                  now_ms(), reason[:200]))
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
                except UNANSWERED as exc:
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
                answer = await self._checks.check_here(request, asker=checked.requester)
        except (UserError, ReceiptRejected, trio.TooSlowError) as exc:
            log.info("case_recheck_failed", why=str(exc)[:200] or type(exc).__name__)
            return Judgement.UNCONFIRMED
        if answer.ok:
            for signer in checked.verifiers:
                self._penalize(signer, "false_dispute")
                self.reputation.observe_false_dispute(signer, now_ms())
            await self._event("dispute.shown_wrong", {"receipt_id": checked.receipt.id.hex(),
                                                      "verifiers": list(checked.verifiers)})
        return after_recheck(failed=not answer.ok)


def _case_worker(data: bytes) -> str | None:
    """The worker a case accuses, read without checking a signature; None when the case does not decode."""
    try:
        if is_evidence_case(data):
            return SignedReceipt.decode(EvidenceCase.decode(data).items[0].receipt).receipt.worker
        return SignedReceipt.decode(DisputeCase.decode(data).receipt).receipt.worker
    except ReceiptRejected:
        return None

