"""The ledger component inside trio: group commit of concurrent appends, per-caller outcomes, epochs on time."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import trio
import trio.testing

from hyperion_node.ledger.chain import Entry
from hyperion_node.ledger.epochs import SignedEpoch
from hyperion_node.ledger.exceptions import BadSignature, LedgerClosed, Replayed
from hyperion_node.ledger.receipt import SignedReceipt, countersign
from hyperion_node.ledger.service import LedgerService
from hyperion_node.store import Store
from hyperion_node.testing.receipts import ReceiptFactory


async def test_concurrent_appends_are_group_committed(tmp_path: Path, factory: ReceiptFactory) -> None:
    store = Store.open(tmp_path / "node.db")
    service = LedgerService(store, factory.worker, epoch_receipts=1000, epoch_minutes=60)
    batches: list[int] = []
    append_batch = service.ledger.append_batch

    def counting(receipts: list[SignedReceipt]) -> list[object]:
        batches.append(len(receipts))
        return append_batch(receipts)  # type: ignore[return-value]

    service.ledger.append_batch = counting  # type: ignore[method-assign, assignment]
    receipts = [factory.signed() for _ in range(60)]
    entries: dict[bytes, Entry] = {}

    async def finish_task(signed: SignedReceipt) -> None:
        entries[signed.id] = await service.append(signed)

    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        async with trio.open_nursery() as tasks:
            for signed in receipts:
                tasks.start_soon(finish_task, signed)
        nursery.cancel_scope.cancel()
    assert sum(batches) == 60
    assert len(batches) < 60  # several receipts shared a commit
    assert {e.receipt_id for e in entries.values()} == {s.id for s in receipts}
    assert service.ledger.verify().receipts == 60
    store.close()


async def test_each_caller_gets_its_own_outcome(tmp_path: Path, factory: ReceiptFactory) -> None:
    store = Store.open(tmp_path / "node.db")
    service = LedgerService(store, factory.worker, epoch_receipts=1000, epoch_minutes=60)
    good = factory.signed()
    forged = dataclasses.replace(factory.signed(), signature=bytes(64))
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        entry = await service.append(good)
        with pytest.raises(BadSignature):
            await service.append(forged)
        with pytest.raises(Replayed):
            await service.append(good)
        settle = await service.settle(countersign(good, factory.requester))
        assert settle.position == entry.position + 1
        nursery.cancel_scope.cancel()
    assert service.ledger.receipt(good.id).status == "settled"
    store.close()


async def test_an_epoch_closes_when_its_oldest_receipt_has_waited(tmp_path: Path, factory: ReceiptFactory) -> None:
    store = Store.open(tmp_path / "node.db")
    handed: list[SignedEpoch] = []
    closed = trio.Event()

    async def publish(epoch: SignedEpoch) -> None:
        handed.append(epoch)
        closed.set()

    # 0.005 minutes = 300 ms, checked every 30 ms: the real clock, kept short.
    service = LedgerService(store, factory.worker, epoch_receipts=1000, epoch_minutes=0.005, on_epoch=publish)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await service.append(factory.signed())
        assert service.ledger.epochs() == []
        with trio.fail_after(10):
            await closed.wait()
        nursery.cancel_scope.cancel()
    [epoch] = service.ledger.epochs()
    assert epoch.count == 1
    assert [e.header for e in handed] == [epoch]
    store.close()


async def test_closed_epochs_are_handed_over_once_in_order(tmp_path: Path, factory: ReceiptFactory) -> None:
    store = Store.open(tmp_path / "node.db")
    handed: list[int] = []

    async def publish(epoch: SignedEpoch) -> None:
        handed.append(epoch.header.number)

    service = LedgerService(store, factory.worker, epoch_receipts=3, epoch_minutes=60, on_epoch=publish)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        for _ in range(10):
            await service.append(factory.signed())
        nursery.cancel_scope.cancel()
    assert handed == [1, 2, 3]
    # A restarted service hands over the latest epoch again (peers that missed it learn the head), no others.
    restarted = LedgerService(store, factory.worker, epoch_receipts=3, epoch_minutes=60, on_epoch=publish)
    async with trio.open_nursery() as nursery:
        await nursery.start(restarted.run)
        nursery.cancel_scope.cancel()
    assert handed == [1, 2, 3, 3]
    store.close()


async def test_stopping_writes_every_receipt_already_handed_over_and_refuses_later_ones(
    tmp_path: Path, factory: ReceiptFactory
) -> None:
    # Callers wait shielded, as the task protocol does; the service is cancelled while their receipts are
    # queued. Before, the writer's end stranded them and each caller waited forever.
    store = Store.open(tmp_path / "node.db")
    service = LedgerService(store, factory.worker, epoch_receipts=1000, epoch_minutes=60)
    receipts = [factory.signed() for _ in range(40)]
    entries: dict[bytes, Entry] = {}

    async def finish_task(signed: SignedReceipt) -> None:
        with trio.CancelScope(shield=True):
            entries[signed.id] = await service.append(signed)

    with trio.fail_after(30):
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as ledger:
                await ledger.start(service.run)
                for signed in receipts:
                    outer.start_soon(finish_task, signed)
                await trio.testing.wait_all_tasks_blocked()  # every receipt is in the queue or being written
                ledger.cancel_scope.cancel()
    assert set(entries) == {s.id for s in receipts}
    assert service.ledger.verify().receipts == 40
    with trio.fail_after(5), pytest.raises(LedgerClosed, match="not recorded"):
        await service.append(factory.signed())
    store.close()
