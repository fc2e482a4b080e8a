"""The outbox that gossips a worker's settled receipts together (hyperion_node/tasks/gossip_outbox.py): the
first receipt goes at once, those that settle during a round wait for the next one and go together, nothing
is lost or reordered, a failing publish stops nothing, and a stalled outbox keeps the newest receipts; a
node reading a batch judges each receipt in it on its own."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from pathlib import Path
from typing import Any

import trio
import trio.testing

from hyperion_node.demo.network import run_demo_node
from hyperion_node.ledger.messages import BATCH_KIND, records_from_gossip_body
from hyperion_node.ledger.receipt import SignedReceipt
from hyperion_node.p2p.memory import MemoryFabric
from hyperion_node.store import Store
from hyperion_node.tasks.gossip_outbox import SettledOutbox
from hyperion_node.testing.receipts import ReceiptFactory


class Published:
    def __init__(self) -> None:
        self.bodies: list[tuple[float, dict[str, Any]]] = []
        self.fail_next = False

    async def __call__(self, body: dict[str, Any]) -> None:
        await trio.sleep(0.01)  # a publish takes a moment, as gossipsub's does
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the pubsub service went away")
        self.bodies.append((trio.current_time(), body))

    def receipts(self) -> list[SignedReceipt]:
        out = []
        for _, body in self.bodies:
            for record in records_from_gossip_body(body):
                assert isinstance(record, SignedReceipt)
                out.append(record)
        return out


async def test_receipts_settling_during_a_round_go_together_in_the_next(
        factory: ReceiptFactory, autojump_clock: trio.testing.MockClock) -> None:
    published = Published()
    outbox = SettledOutbox(published, interval_s=1.0)
    receipts = [factory.settled() for _ in range(41)]
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        start = trio.current_time()
        outbox.add(receipts[0])  # after a quiet spell: published at once, alone
        await trio.sleep(0.1)
        assert [b["kind"] for _, b in published.bodies] == ["settled"]
        for receipt in receipts[1:]:  # a busy worker: 40 settle within the next second
            outbox.add(receipt)
            await trio.sleep(0.02)
        await trio.sleep(2.5)
        nursery.cancel_scope.cancel()
    assert published.receipts() == receipts
    times = [t - start for t, _ in published.bodies]
    assert len(times) <= 3, times  # the first, one batch per second after it
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(times)), times
    assert (outbox.published, outbox.messages, outbox.dropped, len(outbox)) == (41, len(times), 0, 0)


async def test_a_failed_publish_is_logged_and_the_next_round_still_goes(
        factory: ReceiptFactory, autojump_clock: trio.testing.MockClock) -> None:
    published = Published()
    outbox = SettledOutbox(published, interval_s=0.5)
    first, second = factory.settled(), factory.settled()
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        published.fail_next = True
        outbox.add(first)
        await trio.sleep(1.0)
        outbox.add(second)
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert published.receipts() == [second]  # the first stays in the ledger; its epoch root will cover it
    assert outbox.messages == 1


async def test_a_stalled_outbox_keeps_the_newest_receipts(factory: ReceiptFactory) -> None:
    kept = 3
    published = Published()
    outbox = SettledOutbox(published, interval_s=1.0, max_waiting=kept)
    receipts = [factory.settled() for _ in range(5)]
    for receipt in receipts:  # not running: nothing is published meanwhile
        outbox.add(receipt)
    assert (len(outbox), outbox.dropped) == (kept, 2)
    await outbox.flush()
    assert published.receipts() == receipts[-kept:]


async def test_a_batch_with_a_forged_receipt_counts_the_others_and_scores_its_sender_down(tmp_path: Path) -> None:
    """Two nodes (the demo's: real node code, simulated boards) on the in-memory fabric: B gossips a batch of
    two receipts of its own work, one with a forged signature. A's reputation view counts the good one and
    refuses the other, and A scores B down for it."""
    fabric = MemoryFabric()
    stores: list[Store] = []
    async with trio.open_nursery() as nursery:
        with trio.fail_after(60):
            a = await nursery.start(functools.partial(run_demo_node, tmp_path, 0, 1, None, stores, fabric=fabric))
            b = await nursery.start(functools.partial(run_demo_node, tmp_path, 1, 1, None, stores, fabric=fabric))
            while b.peer_id not in {e.peer_id for e in a.node.p2p.table.live_peers()}:  # noqa: ASYNC110
                await trio.sleep(0.05)
            factory = ReceiptFactory(worker=b.node.identity, now_ms=int(time.time() * 1000))
            good, forged = factory.settled(), factory.settled()
            forged = dataclasses.replace(forged, signature=bytes(len(forged.signature)))
            score = a.node.p2p.table.get(b.peer_id).score
            body = {"v": 1, "kind": BATCH_KIND, "records": [forged.encode(), good.encode()]}
            await b.node.p2p.publish_receipt_gossip(body)
            orchestrator = a.node.orchestrator
            assert orchestrator is not None
            while not orchestrator.stats["gossip:SignedReceipt"]:  # noqa: ASYNC110
                await trio.sleep(0.05)
            assert orchestrator.reputation.get(b.peer_id).completed == 1
            assert a.node.p2p.stats.to_json()["rejected"] == {"receipts:badsignature": 1}
            assert a.node.p2p.table.get(b.peer_id).score < score
        nursery.cancel_scope.cancel()
    for store in stores:
        store.close()
