"""Disputes believed without proof -- no more: a dispute changes a node's view only when that node can check it.

Before: two disputes signed by a throwaway key made R and X distrust W, marked W's real receipt disputed in
W's own ledger and made W refuse its own requests; honest verifiers, asked by anyone with a wrong output,
signed disputes against the worker.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from hyperion_node.ledger.dispute import DisputeCase, Evidence, sign_dispute
from hyperion_node.ledger.receipt import SignedReceipt
from hyperion_node.ledger.receipt import countersign as countersign_receipt
from hyperion_node.protocols import cases as cases_protocol
from hyperion_node.tasks.messages import FinalResult, TaskRequest
from hyperion_node.tasks.model import new_task_id
from hyperion_node.testing.hostile import CASES, VERIFY, Hostile, hostile_host, new_identity
from hyperion_node.verify.messages import CheckRequest, Refused, decode_answer, encode_check
from tests.adversarial.conftest import MODEL, Net, ask, call, now_ms, until

pytestmark = pytest.mark.process


def inference(requester: str, prompt: str) -> TaskRequest:
    payload = {"model": MODEL, "prompt": prompt, "max_tokens": 6, "temperature": 0}
    return TaskRequest(task_id=new_task_id("inference", MODEL, payload, requester, now_ms()), runtime="inference",
                       item=MODEL, payload=payload, requester=requester, deadline_s=60.0)


async def real_task(attacker: Hostile, worker: str) -> tuple[SignedReceipt, dict[str, Any], dict[str, Any]]:
    """A real task the attacker asks of ``worker`` and pays: (the settled receipt, payload, output)."""
    request = inference(attacker.peer_id, f"Count to three {secrets.token_hex(2)}.")
    _, answers = await attacker.task(worker, request, countersign=True)
    final = answers[-1]
    assert isinstance(final, FinalResult), answers
    settled = countersign_receipt(SignedReceipt.decode(final.receipt), attacker.identity)
    return settled, dict(request.payload), dict(final.output)


async def push_case(attacker: Hostile, peer: str, case: bytes) -> None:
    """PUSH on ``/hyperion/cases/1``: how a requester hands a confirmed case to a worker."""
    stream = await attacker.stream(peer, CASES)
    await stream.write(cases_protocol.encode(cases_protocol.Push(case)))
    await attacker.answer(stream)


async def meshed(net: Net) -> tuple[str, str, str]:
    ids = [await call(lambda n=n: n.peer_id) for n in (net.w, net.x, net.r)]
    return ids[0], ids[1], ids[2]


async def test_forged_and_framed_disputes_change_nothing(net: Net) -> None:
    w_id, x_id, r_id = await meshed(net)
    before = {n: await call(lambda node=node: node.get("/api/tasks/stats")["verify"]) for n, node in
              (("w", net.w), ("x", net.x), ("r", net.r))}
    async with hostile_host() as attacker:
        for node in (net.w, net.x, net.r):
            await attacker.connect(await call(node.p2p_addr))
        settled, payload, output = await real_task(attacker, w_id)
        # A bare dispute of W's real receipt and one of a receipt that never was, signed by a throwaway key,
        # pushed as if they were cases: to W (the accused) and to the others.
        throwaway = new_identity()
        for receipt_id in (settled.id, secrets.token_bytes(32)):
            dispute = sign_dispute(receipt_id, w_id, "the output is wrong", now_ms(), throwaway)
            for target in (w_id, x_id, r_id):
                await push_case(attacker, target, dispute.encode())
        # A case with the real receipt, its real evidence and two throwaway verifiers' disputes.
        fakes = [sign_dispute(settled.id, w_id, "wrong", now_ms(), new_identity()).encode() for _ in range(2)]
        case = DisputeCase(settled.encode(), tuple(fakes), Evidence(payload, output)).encode()
        for target in (w_id, x_id, r_id):
            await push_case(attacker, target, case)

        def judged(node: Any) -> bool:
            kinds = [e["kind"] for e in node.get("/api/events?limit=1000")]
            return "dispute.unconfirmed" in kinds

        # W, the accused, judges it: unconfirmed. X and R refuse a PUSH about someone else's work unread (a
        # PUSH is how a worker hears of its own cases; judging a stranger's could cost a re-check).
        await until(lambda: judged(net.w), "the case was judged (unconfirmed)")
        for name, node in (("x", net.x), ("r", net.r)):
            stats = await call(lambda node=node: node.get("/api/tasks/stats"))
            assert stats["verify"].get("case_malformed", 0) >= before[name].get("case_malformed", 0) + 2
            assert stats["verify"].get("case_not_ours", 0) >= before[name].get("case_not_ours", 0) + 1
            assert stats["reputation"].get(w_id, {}).get("disputed", 0) == 0
        rewards = await call(lambda: net.w.get("/api/rewards"))
        assert rewards["tasks"]["disputed"] == 0
        assert rewards["tasks"]["contested"] >= 1, "W's own ledger shows the accusation, as contested income"
    # Nobody distrusts W: R still sends it work, and W still serves its own owner.
    for node in (net.r, net.w):
        status, _ = await call(ask, node)
        assert status == 200


async def test_a_verifier_answers_only_the_requester_and_blames_a_wrong_output_on_the_asker(net: Net) -> None:
    w_id, x_id, _ = await meshed(net)
    async with hostile_host() as attacker:
        for node in (net.w, net.x, net.r):
            await attacker.connect(await call(node.p2p_addr))
        settled, payload, output = await real_task(attacker, w_id)

        async def check(verifier: str, request: CheckRequest) -> Any:
            stream = await attacker.stream(verifier, VERIFY)
            await stream.write(encode_check(request))
            frame = await attacker.answer(stream)
            assert frame is not None, "the verifier answered"
            return decode_answer(frame)

        # Its own receipt, with an output that is not the one the receipt commits to: the asker's fault.
        wrong = {**output, "text": output["text"] + " and more"}
        answer = await check(x_id, CheckRequest(settled.encode(), payload, wrong))
        assert isinstance(answer, Refused), answer
        assert "output is not the one the receipt commits to" in answer.reason
        # Someone else's receipt (another requester asked W for it): only its requester may ask.
        async with hostile_host() as other:
            await other.connect(await call(net.w.p2p_addr))
            theirs_settled, _, _ = await real_task(other, w_id)
        others = [theirs_settled]
        theirs = others[0]
        verifier = x_id if theirs.receipt.worker == w_id else w_id
        answer = await check(verifier, CheckRequest(theirs.encode(), {}, {}))
        assert isinstance(answer, Refused), answer
        assert "requester" in answer.reason
    offences = (await call(lambda: next(p for p in net.x.get("/api/peers") if p["peer_id"] == attacker.peer_id)))
    assert offences["offences"].get("bad_evidence", 0) >= 1
    status, _ = await call(ask, net.r)
    assert status == 200
