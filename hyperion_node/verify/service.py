"""Spot checks: a share of settled receipts is re-checked by another peer that serves the same item.

Requester side (``after_task``): with probability ``verify.fraction`` a settled receipt of work a peer did
for us is checked. The check is decided after the worker has answered, from a random draw, so the worker
cannot tell checked work from ordinary work while doing it. The verifier is this node when it serves the
item (it trusts itself), else a peer the scheduler picks among those that serve it -- never the worker.

A peer verifier could lie too. So a failed verdict from a peer is confirmed by a second verifier before
anything happens: confirmed, the receipt is disputed (in our ledger, and both verifiers' signed disputes go
out on the receipts topic, where every node counts them against the worker and the worker's own ledger marks
its receipt disputed); contradicted, the first verifier is the one that failed, and no dispute is made;
with no second verifier to ask, the verdict stays an unconfirmed event. A worker with
``verify.distrust_after_disputes`` disputes is given no more work by this node's scheduler.

Verifier side (``handle_stream``): the receipt's signatures and hashes first, then the runtime's own check
(inference: one batched prefill against the worker's logit commitments; ZK: the proof; render: one frame,
picked by the requester while the frames arrived, rendered again and compared pixel by pixel). A failed
verdict is answered with a dispute signed by this node.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
import trio
from libp2p.abc import INetStream

from hyperion_node.errors import HyperionError, UserError
from hyperion_node.identity import Identity
from hyperion_node.ledger.dispute import Dispute, sign_dispute
from hyperion_node.ledger.exceptions import ReceiptRejected
from hyperion_node.ledger.receipt import SignedReceipt, content_hash, verify_receipt
from hyperion_node.runtime_registry import RuntimeRegistry
from hyperion_node.tasks.checks import ResultRejected, check_result
from hyperion_node.tasks.messages import FrameReader, MalformedFrame
from hyperion_node.tasks.streams import STREAM_ERRORS_OR_TIMEOUT, read_frame, reset_quietly
from hyperion_node.trio_types import TaskStatus
from hyperion_node.verify.messages import (
    MAX_VERDICT_BYTES,
    CheckRequest,
    VerdictAnswer,
    decode_check,
    decode_verdict,
    encode_check,
    encode_verdict,
)
from hyperion_node.verify.settings import VerifySettings

log = structlog.get_logger(__name__)

# A verifier that cannot give an answer (gone, slow, broken frames, cannot judge): ask the next one.
_UNANSWERED: tuple[type[BaseException], ...] = (*STREAM_ERRORS_OR_TIMEOUT, MalformedFrame, UserError, ReceiptRejected)
_REFUSED: tuple[type[BaseException], ...] = (HyperionError, *STREAM_ERRORS_OR_TIMEOUT)
CHECKABLE = ("inference", "zk-groth16", "render-blender")  # runtimes with a check cheaper than the work


Verifiers = Callable[[str, str, frozenset[str]], Awaitable[list[str]]]  # runtime, item, exclude -> best first


class SpotChecker:
    def __init__(self, *, identity: Identity, runtimes: RuntimeRegistry, settings: VerifySettings,
                 verifiers: Verifiers, open_stream: Callable[[str], Awaitable[INetStream]],
                 dispute: Callable[[Dispute], Awaitable[None]], penalize: Callable[[str, str], None],
                 event: Callable[[str, dict[str, Any]], Awaitable[None]], rng: random.Random | None = None) -> None:
        self.identity = identity
        self.peer_id = str(identity.peer_id)
        self.runtimes = runtimes
        self.settings = settings
        self._verifiers = verifiers
        self._open_stream = open_stream
        self._dispute = dispute
        self._penalize = penalize
        self._event = event
        self._rng = rng or random.Random()
        self._limiter = trio.CapacityLimiter(settings.concurrent)
        self._nursery: trio.Nursery | None = None
        self.stats: Counter[str] = Counter()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    # -- requester side ------------------------------------------------------------------------------------

    def after_task(self, runtime: str, item: str, payload: Mapping[str, Any], output: Mapping[str, Any],
                   settled: SignedReceipt, sample: Mapping[str, Any] | None = None) -> None:
        if (self._nursery is None or runtime not in CHECKABLE or settled.receipt.worker == self.peer_id
                or self._rng.random() >= self.settings.fraction):
            return
        self._nursery.start_soon(self._check, runtime, item, CheckRequest(settled.encode(), payload, output, sample),
                                 settled.receipt.worker, settled.id.hex())

    async def _check(self, runtime: str, item: str, request: CheckRequest, worker: str, receipt_id: str) -> None:
        async with self._limiter:
            tried: set[str] = {worker}
            first = await self._next_verdict(runtime, item, request, tried)
            if first is None:
                self.stats["no_verifier"] += 1
                return
            verifier, verdict = first
            await self._event("verify.passed" if verdict.ok else "verify.failed",
                              {"receipt_id": receipt_id, "worker": worker, "verifier": verifier,
                               "reason": verdict.reason})
            if verdict.ok:
                self.stats["passed"] += 1
                return
            disputes = [verdict]
            if verifier != self.peer_id:  # a peer's accusation needs a second opinion
                second = await self._next_verdict(runtime, item, request, tried)
                if second is None:
                    self.stats["unconfirmed"] += 1
                    await self._event("verify.unconfirmed", {"receipt_id": receipt_id, "worker": worker,
                                                             "verifier": verifier})
                    return
                if second[1].ok:
                    self.stats["contradicted"] += 1
                    self._penalize(verifier, "false_dispute")
                    await self._event("verify.contradicted", {"receipt_id": receipt_id, "worker": worker,
                                                              "verifier": verifier, "by": second[0]})
                    return
                disputes.append(second[1])
            self.stats["disputed"] += 1
            for answer in disputes:
                assert answer.dispute is not None
                await self._dispute(Dispute.decode(answer.dispute))
            log.info("receipt_disputed", receipt=receipt_id[:16], worker=worker[-8:], reason=verdict.reason)

    async def _next_verdict(self, runtime: str, item: str, request: CheckRequest,
                            tried: set[str]) -> tuple[str, VerdictAnswer] | None:
        """Ask the best verifier not yet tried; one that cannot answer is skipped for the next."""
        for verifier in await self._verifiers(runtime, item, frozenset(tried)):
            tried.add(verifier)
            try:
                with trio.fail_after(self.settings.timeout_s):
                    if verifier == self.peer_id:
                        return verifier, await self.check_here(request)
                    return verifier, await self._ask(verifier, request)
            except _UNANSWERED as exc:
                log.info("verifier_unavailable", verifier=verifier[-8:], error=str(exc)[:200] or type(exc).__name__)
                continue
        return None

    async def _ask(self, verifier: str, request: CheckRequest) -> VerdictAnswer:
        stream = await self._open_stream(verifier)
        try:
            await stream.write(encode_check(request))
            answer = decode_verdict(await read_frame(stream, FrameReader(MAX_VERDICT_BYTES)))
        finally:
            with trio.CancelScope(shield=True):
                await reset_quietly(stream)
        if not answer.ok:
            dispute = Dispute.decode(answer.dispute or b"")
            signed = SignedReceipt.decode(request.receipt)
            named = (dispute.verifier, dispute.receipt_id, dispute.worker)
            mine = named == (verifier, signed.id, signed.receipt.worker)
            if not mine:
                raise MalformedFrame("bad_dispute", "the dispute is not the verifier's, or not of this receipt")
        return answer

    # -- verifier side -------------------------------------------------------------------------------------

    async def check_here(self, request: CheckRequest) -> VerdictAnswer:
        """Judge another worker's result. ``UserError`` when this node cannot judge it."""
        signed = SignedReceipt.decode(request.receipt)
        verify_receipt(signed, require_countersignature=True)
        receipt = signed.receipt
        if receipt.worker == self.peer_id:
            raise UserError("a worker does not judge its own receipt")
        reason = ""
        if receipt.output_hash != content_hash(request.output):
            reason = "the output is not the one the receipt commits to"
        elif receipt.input_hash != content_hash(request.payload):
            reason = "the payload is not the one the receipt commits to"
        else:
            reason = await self._runtime_check(receipt.runtime, request, receipt.evidence)
        if not reason:
            return VerdictAnswer(True, "checked")
        dispute = sign_dispute(signed.id, receipt.worker, reason[:1000], int(time.time() * 1000), self.identity)
        return VerdictAnswer(False, reason, dispute.encode())

    async def _runtime_check(self, runtime: str, request: CheckRequest, evidence: Mapping[str, Any]) -> str:
        if runtime == "zk-groth16":
            try:
                await check_result(runtime, request.payload, request.output, evidence)
            except ResultRejected as exc:
                return exc.one_line()
            return ""
        loaded = self.runtimes.loaded.get(runtime)
        verify = getattr(loaded.runtime, "verify", None) if loaded is not None else None
        if verify is None:
            raise UserError(f"this node cannot check {runtime} work")
        if runtime == "inference":
            verdict = await verify(request.payload, request.output, evidence, chunks=self.settings.inference_chunks)
        elif runtime == "render-blender":
            verdict = await verify(request.payload, request.output, evidence, sample=request.sample)
        else:
            verdict = await verify(request.payload, request.output, evidence)
        return "" if verdict.ok else str(verdict.reason)

    async def handle_stream(self, stream: INetStream) -> None:
        remote = str(stream.muxed_conn.peer_id)
        try:
            with trio.fail_after(self.settings.timeout_s):
                request = decode_check(await read_frame(stream, FrameReader(64 * 1024 * 1024)))
                answer = await self.check_here(request)
                await stream.write(encode_verdict(answer))
            self.stats["judged_ok" if answer.ok else "judged_failed"] += 1
            await stream.close()
        except (MalformedFrame, ReceiptRejected) as exc:
            self._penalize(remote, getattr(exc, "reason", "bad_check"))
            await reset_quietly(stream)
        except _REFUSED as exc:
            log.info("check_refused", peer=remote[-8:], error=str(exc)[:200] or type(exc).__name__)
            await reset_quietly(stream)
