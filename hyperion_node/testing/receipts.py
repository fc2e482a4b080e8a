"""Receipts, identities and ledgers for tests, benchmarks and the crash-test writer: one place to build them."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from hyperion_node.identity import Identity
from hyperion_node.ledger.chain import Ledger
from hyperion_node.ledger.epochs import EpochPolicy
from hyperion_node.ledger.receipt import Receipt, SignedReceipt, content_hash, countersign, sign_receipt
from hyperion_node.store import Store

PRICE_PER_TOKEN = 2 * 10**12  # 0.000002 credits in atto-credits, the default inference price
HARDWARE = {"cpu": "test cpu", "cores": 2, "gpus": []}


def new_identity() -> Identity:
    """A fresh in-memory Ed25519 identity (the node's own lives in its data dir)."""
    key_pair = create_new_key_pair()
    return Identity(key_pair=key_pair, peer_id=ID.from_pubkey(key_pair.public_key))


@dataclass
class ReceiptFactory:
    """Inference receipts between a worker and a requester, each with a new task id."""

    worker: Identity = field(default_factory=new_identity)
    requester: Identity = field(default_factory=new_identity)
    now_ms: int = 1_700_000_000_000
    _counter: Iterator[int] = field(default_factory=itertools.count)

    def receipt(self, *, tokens_in: int = 12, tokens_out: int = 200, runtime: str = "inference",
                price_per_unit: int = PRICE_PER_TOKEN, finished_at_ms: int | None = None,
                worker: Identity | None = None, requester: Identity | None = None) -> Receipt:
        n = next(self._counter)
        finished = self.now_ms + n if finished_at_ms is None else finished_at_ms
        units = tokens_in + tokens_out
        return Receipt(
            task_id=f"task-{n}-{secrets.token_hex(4)}",
            runtime=runtime,
            runtime_version="1+llama-cpp-python-0.3.16",
            item="gemma-3-270m-it-q4_k_m",
            item_hash="ab" * 32,
            input_hash=content_hash({"prompt": f"hello {n}"}),
            output_hash=content_hash({"text": f"world {n}"}),
            evidence={"model": "gemma-3-270m-it-q4_k_m", "seed": n, "temperature": 0.7, "top_p": 0.95},
            unit="token",
            work={"tokens_in": tokens_in, "tokens_out": tokens_out},
            units=units,
            price_per_unit=price_per_unit,
            total=units * price_per_unit,
            started_at_ms=finished - 1500,
            finished_at_ms=finished,
            hardware=HARDWARE,
            worker=str((worker or self.worker).peer_id),
            requester=str((requester or self.requester).peer_id),
        )

    def signed(self, **kwargs: object) -> SignedReceipt:
        receipt = self.receipt(**kwargs)  # type: ignore[arg-type]
        signer = kwargs.get("worker") or self.worker
        assert isinstance(signer, Identity)
        return sign_receipt(receipt, signer)

    def settled(self, **kwargs: object) -> SignedReceipt:
        signed = self.signed(**kwargs)
        requester = kwargs.get("requester") or self.requester
        assert isinstance(requester, Identity)
        return countersign(signed, requester)


def open_ledger(path: Path, owner: Identity, *, every_receipts: int = 1000, every_seconds: float = 3600.0) -> Ledger:
    """A ledger on a store at ``path`` (created if absent), owned and signed by ``owner``."""
    return Ledger(Store.open(path), str(owner.peer_id), signer=owner,
                  policy=EpochPolicy(every_receipts=every_receipts, every_seconds=every_seconds))
