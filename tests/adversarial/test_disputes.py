"""Disputes believed without proof -- no more: a dispute changes a node's view only when that node can check it.

Before: two disputes signed by a throwaway key made R and X distrust W, marked W's real receipt disputed in
W's own ledger and made W refuse its own requests; honest verifiers, asked by anyone with a wrong output,
signed disputes against the worker.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import trio

from hyperion_node.ledger.dispute import DisputeCase, Evidence, sign_dispute
from hyperion_node.ledger.messages import records_from_gossip_body, to_gossip_body
from hyperion_node.ledger.receipt import SignedReceipt
from hyperion_node.ledger.receipt import countersign as countersign_receipt
from hyperion_node.p2p.messages import open_envelope, seal
from hyperion_node.tasks.messages import FinalResult, TaskRequest
from hyperion_node.tasks.model import new_task_id
from hyperion_node.testing.hostile import RECEIPTS, VERIFY, Hostile, hostile_host, new_identity
from hyperion_node.verify.messages import CheckRequest, Refused, decode_answer, encode_check
from tests.adversarial.conftest import MODEL, Net, ask, call, now_ms, polled, until

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


def gossip(attacker: Hostile, record: Any) -> bytes:
    return seal(attacker.identity, "receipt", {**to_gossip_body(record), "at_ms": now_ms()})


async def meshed(net: Net) -> tuple[str, str, str]:
    ids = [await call(lambda n=n: n.peer_id) for n in (net.w, net.x, net.r)]
    return ids[0], ids[1], ids[2]


async def test_forged_and_framed_disputes_change_nothing(net: Net) -> None:
    w_id, _, _ = await meshed(net)
    async with hostile_host(gossip=True) as attacker:
        for node in (net.w, net.x, net.r):
            await attacker.connect(await call(node.p2p_addr))
        settled, payload, output = await real_task(attacker, w_id)
        # A bare dispute of W's real receipt and one of a receipt that never was, signed by a throwaway key.
        throwaway = new_identity()
        for receipt_id in (settled.id, secrets.token_bytes(32)):
            dispute = sign_dispute(receipt_id, w_id, "the output is wrong", now_ms(), throwaway)
            await attacker.publish(RECEIPTS, gossip(attacker, dispute))
        # A case with the real receipt, its real evidence and two throwaway verifiers' disputes.
        fakes = [sign_dispute(settled.id, w_id, "wrong", now_ms(), new_identity()).encode() for _ in range(2)]
        await attacker.publish(RECEIPTS, gossip(attacker, DisputeCase(settled.encode(), tuple(fakes),
                                                                     Evidence(payload, output))))

        def judged(node: Any) -> bool:
            kinds = [e["kind"] for e in node.get("/api/events?limit=1000")]
            return "dispute.unconfirmed" in kinds

        for node in (net.x, net.r, net.w):
            await until(lambda node=node: judged(node), "the case was judged (unconfirmed)")
        for node in (net.x, net.r):
            stats = await call(lambda node=node: node.get("/api/tasks/stats"))
            assert stats["requested"].get("gossip:dispute_without_proof", 0) >= 2
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
    async with hostile_host(gossip=True) as attacker, trio.open_nursery() as nursery:
        for node in (net.w, net.x, net.r):
            await attacker.connect(await call(node.p2p_addr))
        await nursery.start(attacker.collect, RECEIPTS)
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
        # Someone else's receipt (R asked W or X for it), caught from gossip: only its requester may ask.
        await call(ask, net.r, "Say a number.")
        others: list[SignedReceipt] = []

        def caught() -> bool:
            for msg in attacker.collected.get(RECEIPTS, []):
                _, body = open_envelope(msg.data, expected_type="receipt", max_bytes=1 << 20)
                body = {k: v for k, v in body.items() if k != "at_ms"}
                others.extend(r for r in records_from_gossip_body(body)
                              if isinstance(r, SignedReceipt) and r.receipt.requester != attacker.peer_id)
            return bool(others)

        await polled(caught, "a settled receipt of someone else's went by on gossip", seconds=30)
        theirs = others[0]
        verifier = x_id if theirs.receipt.worker == w_id else w_id
        answer = await check(verifier, CheckRequest(theirs.encode(), {}, {}))
        assert isinstance(answer, Refused), answer
        assert "requester" in answer.reason
        nursery.cancel_scope.cancel()
    offences = (await call(lambda: next(p for p in net.x.get("/api/peers") if p["peer_id"] == attacker.peer_id)))
    assert offences["offences"].get("bad_evidence", 0) >= 1
    status, _ = await call(ask, net.r)
    assert status == 200
