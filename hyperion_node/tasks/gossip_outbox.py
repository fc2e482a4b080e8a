"""Settled receipts on their way to the receipts topic, published together.

Every peer that hears a message on the receipts topic validates it and hands it to its reputation view, and
each peer accepts ``p2p.gossip_rate_per_peer`` messages per second from one origin before it drops the rest
and scores the origin down. One message per settled receipt made both grow with the worker's throughput: a
worker settling more than that rate (an H100 serving short completions; 13 receipts/s in a 50-node demo) had
its receipts dropped everywhere, and was scored down until its peers banned it. The outbox publishes what
has settled at most once per ``interval_s`` (``ledger.gossip_interval_s``), in as few messages as the
topic's caps allow (``pack_settled``): the first receipt after a quiet spell goes out at once, the ones that
settle while it is being published wait for the next round.

Gossip is how peers learn of the work, not where it is kept: each receipt is in both parties' ledgers on
disk before it is handed here. What is still waiting when the node stops is not gossiped; the epoch root
that covers it is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

from hyperion_node.ledger.messages import pack_settled
from hyperion_node.ledger.receipt import SignedReceipt
from hyperion_node.trio_types import TaskStatus

log = structlog.get_logger(__name__)

# Receipts kept waiting at most, should publishing stall: the oldest are left ungossiped beyond it (counted).
MAX_WAITING = 4096


class SettledOutbox:
    def __init__(self, publish: Callable[[dict[str, Any]], Awaitable[None]], interval_s: float,
                 max_waiting: int = MAX_WAITING) -> None:
        self._publish = publish
        self.interval_s = interval_s
        self.max_waiting = max_waiting
        self._waiting: list[SignedReceipt] = []
        self._wake = trio.Event()
        self.published = 0  # receipts
        self.messages = 0
        self.dropped = 0

    def add(self, settled: SignedReceipt) -> None:
        self._waiting.append(settled)
        if len(self._waiting) > self.max_waiting:
            del self._waiting[0]
            self.dropped += 1
        self._wake.set()

    def __len__(self) -> int:
        return len(self._waiting)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await self.flush()
            await trio.sleep(self.interval_s)

    async def flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        for body in pack_settled(waiting):
            try:
                await self._publish(body)
            except Exception:  # the P2P layer's failure must not stop the node; these receipts stay in the ledger
                log.exception("receipt_gossip_failed", receipts=len(body["records"]) if "records" in body else 1)
                continue
            self.messages += 1
        self.published += len(waiting)
        if len(waiting) > 1:
            log.debug("receipts_gossiped", receipts=len(waiting))
