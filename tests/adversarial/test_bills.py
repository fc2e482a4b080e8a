"""Requesters countersign any bill -- no more: the units against what was received, the price against the
worker's signed offer, or the bill is refused, the worker scored down and the task failed over.

Before: a worker billing 1,000x the units at 1 credit per token (advertised 0.000002) was countersigned, and
the requester's spent went from 0.000034 to 8,000.000034 credits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from libp2p.abc import INetStream

from hyperion_node.ledger.money import credits_to_atto
from hyperion_node.ledger.receipt import Receipt, content_hash, sign_receipt
from hyperion_node.p2p.messages import CapabilityRecord, OfferAd, record_key
from hyperion_node.tasks.messages import (
    MAX_REQUEST_BYTES,
    Accepted,
    FinalResult,
    FrameReader,
    TaskRequest,
    decode_requester,
    encode_worker,
)
from hyperion_node.tasks.streams import read_frame
from hyperion_node.testing.hostile import TASK, Hostile, hostile_host
from hyperion_node.testing.process import NodeProcess
from tests.adversarial.conftest import FAST, MODEL, Net, ask, call, peer, until

pytestmark = pytest.mark.process

ADVERTISED = 1e-9  # credits per token in the attacker's signed offer: the cheapest, so B tries it first


@pytest.fixture(scope="module")
def buyer(net: Net) -> Iterator[NodeProcess]:
    """B: a requester that buys on price alone (no learning, no exploration), so that it asks the attacker."""
    node = NodeProcess(net.root / "b", sets=[*FAST, f'p2p.bootstrap=["{net.w.p2p_addr()}"]',
                                             'runtimes.disabled=["inference", "zk-groth16", "render-blender"]',
                                             "scheduler.weights.price=1.0", "scheduler.adaptive.weight=0.0",
                                             "scheduler.adaptive.exploration_rate=0.0"]).start()
    try:
        yield node
    finally:
        node.stop()


def bill(request: TaskRequest, attacker: Hostile, kind: str) -> tuple[dict[str, Any], bytes]:
    """A final output of 5 prompt tokens and none generated, and the worker-signed receipt billing it wrong."""
    output = {"text": "", "finish_reason": "stop", "tokens_in": 5, "tokens_out": 0, "model": MODEL, "token_ids": []}
    units, price = (5, credits_to_atto(1.0)) if kind == "price" else (5_000, credits_to_atto(ADVERTISED))
    now = int(time.time() * 1000)
    receipt = Receipt(task_id=request.task_id, runtime="inference", runtime_version="1", item=MODEL,
                      item_hash="ab" * 32, input_hash=content_hash(request.payload), output_hash=content_hash(output),
                      evidence={"model": MODEL}, unit="token", work={"token": units}, units=units,
                      price_per_unit=price, total=units * price, started_at_ms=now - 10, finished_at_ms=now,
                      hardware={}, worker=attacker.peer_id, requester=request.requester)
    return output, sign_receipt(receipt, attacker.identity).encode()


@pytest.mark.parametrize("kind", ["price", "units"])
async def test_a_wrong_bill_is_refused_and_the_task_fails_over(net: Net, buyer: NodeProcess, kind: str) -> None:
    countersigned: list[bytes] = []
    asked: list[str] = []
    async with hostile_host(dht=True) as attacker:
        async def serve(stream: INetStream) -> None:
            request = decode_requester(await read_frame(stream, FrameReader(MAX_REQUEST_BYTES)))
            assert isinstance(request, TaskRequest)
            asked.append(request.task_id)
            await stream.write(encode_worker(Accepted(0)))
            output, receipt = bill(request, attacker, kind)
            await stream.write(encode_worker(FinalResult(output, receipt)))
            answer = await attacker.answer(stream)
            if answer is not None:
                countersigned.append(answer)

        attacker.host.set_stream_handler(TASK, serve)
        await attacker.connect(await call(buyer.p2p_addr))
        offer = OfferAd(runtime="inference", item=MODEL, unit="token", price_per_unit=ADVERTISED, capacity=4,
                        throughput=500.0)
        record = CapabilityRecord(peer_id=attacker.peer_id, seq=int(time.time() * 1000),
                                  expires_at=time.time() + 600, name="cheap",
                                  addrs=(attacker.addr().rsplit("/p2p/", 1)[0],),
                                  hardware={"cpu": "x", "cores": 64, "ram_bytes": 256 << 30, "gpus": []},
                                  offers=(offer,))
        await attacker.put_value(record_key(attacker.peer_id), record.seal(attacker.identity))
        await until(lambda: peer(buyer, attacker.peer_id).get("offers"), "B holds the attacker's offer")
        spent_before = (await call(lambda: buyer.get("/api/rewards")))["spent"]
        status, worker = await call(ask, buyer)
        attempts = (await call(lambda: buyer.get("/api/tasks?limit=1")))[0]["attempts"]
        assert asked, f"B tried the cheapest offer first: {attempts}"
        assert status == 200
        assert worker != attacker.peer_id  # failed over to an honest worker, who did the work
        assert worker in (await call(lambda: net.w.peer_id), await call(lambda: net.x.peer_id))
        assert not countersigned, "the wrong bill was never countersigned"
    rewards = await call(lambda: buyer.get("/api/rewards"))
    assert rewards["spent"] - spent_before < 0.01  # the honest worker's few tokens, not thousands of credits
    task = (await call(lambda: buyer.get("/api/tasks?limit=1")))[0]
    # (An attempt before it may have gone to the attacker of the other case, gone since: unreachable.)
    tried = next(a for a in task["attempts"] if a["peer_id"] == attacker.peer_id)
    assert tried["outcome"] == "failed"
    assert "bill" in tried["detail"]
    assert (await call(peer, buyer, attacker.peer_id))["offences"].get("bad_bill", 0) >= 1
