"""The ledger as a daemon component: receipts from many tasks group-committed, epochs closed on time.

Each task that finishes work calls ``await service.append(receipt)``; a single writer task takes every
receipt waiting at that moment and appends them in one transaction (one fsync for all of them), then wakes
each caller with its own outcome. So the caller is answered only once its receipt is durable, and a burst of
finished tasks costs one disk flush, not one each: a WAL commit with ``synchronous=FULL`` is about 1 ms on
this machine's disk (scripts/bench_receipts.py), a receipt's signature checks about 0.1 ms.

Epochs close in the writer's transaction when they reach ``epoch_receipts``; a timer closes them when their
oldest receipt has waited ``epoch_minutes``, checking every tenth of that (at most every minute). Each closed
epoch is handed to ``on_epoch`` (its root is stored in the DHT, where counterparts read it) once, in order; at
start the latest closed epoch is handed over again, so that peers that missed it learn the node's head.

Stopping loses no receipt that was handed over: callers wait for their receipt shielded from cancellation
(a task being cancelled still records the work it did), so when the service is cancelled the writer first
closes the queue to new receipts, then writes every receipt already in it, shielded, and only then ends.
A receipt handed over after that fails at once with ``LedgerClosed`` instead of waiting for a writer that
is gone (a stream handler that outlives the ledger by a moment at shutdown hung there before).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

from hyperion_node.clock import now_ms
from hyperion_node.identity import Identity
from hyperion_node.ledger.chain import Entry, Ledger
from hyperion_node.ledger.dispute import Dispute
from hyperion_node.ledger.epochs import EpochPolicy, SignedEpoch
from hyperion_node.ledger.exceptions import LedgerClosed, ReceiptRejected
from hyperion_node.ledger.receipt import SignedReceipt
from hyperion_node.store import Store
from hyperion_node.trio_types import TaskStatus

MAX_BATCH = 512  # receipts per transaction; bounds how long one commit holds the database
MAX_TIMER_INTERVAL_S = 60.0


@dataclass
class _Waiting:
    signed: SignedReceipt
    done: trio.Event = field(default_factory=trio.Event)
    outcome: Entry | BaseException | None = None


OnEpoch = Callable[[SignedEpoch], Awaitable[None]]


async def _ignore_epoch(epoch: SignedEpoch) -> None:
    return None


class LedgerService:
    def __init__(self, store: Store, identity: Identity, *, epoch_receipts: int, epoch_minutes: float,
                 on_epoch: OnEpoch = _ignore_epoch, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._on_epoch = on_epoch
        self._handed_over = 0  # the last epoch number given to on_epoch
        self._epoch_seconds = epoch_minutes * 60.0
        self.ledger = Ledger(store, str(identity.peer_id), signer=identity,
                             policy=EpochPolicy(every_receipts=epoch_receipts, every_seconds=self._epoch_seconds),
                             clock=clock)
        self._send, self._receive = trio.open_memory_channel[_Waiting](MAX_BATCH * 4)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        latest = await self._store.run(self.ledger.epoch_count)
        self._handed_over = max(0, latest - 1)
        await self._hand_over_epochs()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write)
            nursery.start_soon(self._close_epochs_on_time)
            task_status.started()

    async def append(self, signed: SignedReceipt) -> Entry:
        """Verify and append a receipt; returns once it is durable. Raises ReceiptRejected with the reason,
        LedgerClosed when the service has stopped."""
        waiting = _Waiting(signed)
        try:
            await self._send.send(waiting)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise LedgerClosed("the ledger has stopped (the node is shutting down); the receipt was not recorded",
                               hint="the task's work is not billed; it can be run again") from None
        await waiting.done.wait()
        if isinstance(waiting.outcome, BaseException):
            raise waiting.outcome
        assert waiting.outcome is not None
        return waiting.outcome

    async def settle(self, countersigned: SignedReceipt) -> Entry:
        return await self._store.run(self.ledger.settle, countersigned)

    async def dispute(self, dispute: Dispute) -> Entry:
        return await self._store.run(self.ledger.dispute, dispute)

    async def contests(self) -> list[bytes]:
        return list(await self._store.run(self.ledger.contests))

    async def contest(self, receipt_id: bytes, case: bytes, verifiers: Sequence[str]) -> bool:
        return bool(await self._store.run(self.ledger.contest, receipt_id, case, list(verifiers),
                                          now_ms()))

    async def _write(self) -> None:
        try:
            async for first in self._receive:
                closed = self.ledger.epochs_closed
                await self._commit(first)
                if self.ledger.epochs_closed != closed:  # most batches close none: no read of the epochs
                    await self._hand_over_epochs()
        finally:
            # Stopping (module docstring): no new receipts, and the queued ones written before the end.
            self._send.close()
            with trio.CancelScope(shield=True):
                try:
                    while (queued := self._queued()) is not None:
                        await self._commit(queued)
                finally:
                    self._receive.close()

    def _queued(self) -> _Waiting | None:
        """The next receipt already in the queue, or None when it is empty or closed."""
        try:
            return self._receive.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return None

    async def _commit(self, first: _Waiting) -> None:
        """One transaction for ``first`` and every receipt queued behind it; each caller woken with its outcome."""
        batch = [first]
        while len(batch) < MAX_BATCH and (waiting := self._queued()) is not None:
            batch.append(waiting)
        try:
            outcomes: list[Entry | ReceiptRejected] = await self._store.run(
                self.ledger.append_batch, [w.signed for w in batch])
        except BaseException as exc:
            # The store failed (disk full, I/O error): every caller learns it, and the error still
            # propagates to the daemon, which stops rather than run on without a ledger. Receipts still
            # queued are failed too, so no caller waits forever.
            self._send.close()
            while (waiting := self._queued()) is not None:
                batch.append(waiting)
            for waiting in batch:
                waiting.outcome = exc
                waiting.done.set()
            raise
        for waiting, outcome in zip(batch, outcomes, strict=True):
            waiting.outcome = outcome
            waiting.done.set()

    async def _hand_over_epochs(self) -> None:
        closed = await self._store.run(functools.partial(self.ledger.signed_epochs, after=self._handed_over))
        for epoch in closed:
            await self._on_epoch(epoch)
            self._handed_over = epoch.header.number

    async def _close_epochs_on_time(self) -> None:
        interval = min(MAX_TIMER_INTERVAL_S, self._epoch_seconds / 10)
        close = functools.partial(self.ledger.close_epoch, only_if_due=True)
        while True:
            await trio.sleep(interval)
            if await self._store.run(close) is not None:
                await self._hand_over_epochs()
