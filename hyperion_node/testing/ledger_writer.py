"""The crash test's victim: a process that appends receipts to a ledger in a loop and prints the id of each
one only after its transaction committed, so that whoever kills it knows what must have survived.

    python -m hyperion_node.testing.ledger_writer DB

It is a small fork server, because importing libp2p costs a second and a crash test wants many kills: it
prints ``owner <peer ID>``, then for each ``fork`` line on stdin forks a writer child and prints
``child <pid>``; once the child is gone it prints ``exit <pid> <signal or -code>``. A child appends batches
of 1 to 16 receipts (group commit), settles some of them, closes an epoch every 7 receipts, and prints
``ack <receipt id>`` / ``settled <receipt id>`` after each commit, in one ``write`` per batch (shorter than
PIPE_BUF, so never torn). The ledger is owned and signed by one identity made by the server, shared by all
its children.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import NoReturn

from hyperion_node.identity import Identity
from hyperion_node.ledger.receipt import SignedReceipt, countersign
from hyperion_node.testing.receipts import ReceiptFactory, open_ledger

EPOCH_RECEIPTS = 7
MAX_BATCH = 16  # 16 lines of "ack <64 hex>\n" is 1,104 bytes, under Linux's PIPE_BUF of 4,096


def _say(text: str) -> None:
    os.write(1, text.encode())


def write_forever(db: Path, worker: Identity, requester: Identity) -> NoReturn:
    rng = random.Random(os.getpid())
    factory = ReceiptFactory(worker=worker, requester=requester)
    ledger = open_ledger(db, worker, every_receipts=EPOCH_RECEIPTS)
    pending: list[SignedReceipt] = []
    while True:
        batch = [factory.signed() for _ in range(rng.randint(1, MAX_BATCH))]
        ledger.append_batch(batch)
        _say("".join(f"ack {signed.id.hex()}\n" for signed in batch))
        pending.extend(batch)
        if rng.random() < 0.3:
            settled = countersign(pending.pop(rng.randrange(len(pending))), requester)
            ledger.settle(settled)
            _say(f"settled {settled.id.hex()}\n")


def serve(db: Path) -> None:
    factory = ReceiptFactory()
    _say(f"owner {factory.worker.peer_id}\n")
    for line in sys.stdin:
        if line.strip() != "fork":
            continue
        pid = os.fork()
        if pid == 0:
            try:
                write_forever(db, factory.worker, factory.requester)
            except BaseException as exc:
                os.write(2, f"writer failed: {type(exc).__name__}: {exc}\n".encode())
            finally:
                os._exit(1)  # never return into the server's loop
        _say(f"child {pid}\n")
        _, status = os.waitpid(pid, 0)
        code = os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status)
        _say(f"exit {pid} {code}\n")


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
