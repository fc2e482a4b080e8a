"""The ledger's entry format: what each row of the hash chain holds and how its hash is computed.

    entry_hash = SHA-256(canonical CBOR [1, position, kind, receipt_id or b"", SHA-256(data), at_ms, prev_hash])

``prev_hash`` of position 1 is 32 zero bytes. Pure: shared by the ledger (chain.py) and its audit (audit.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hyperion_node.ledger import codec
from hyperion_node.ledger.exceptions import Malformed
from hyperion_node.ledger.receipt import Receipt, SignedReceipt

ENTRY_VERSION = 1
GENESIS_HASH = bytes(32)
KINDS = ("receipt", "settle", "dispute", "epoch")
STATUSES = ("pending", "settled", "disputed")
ENTRY_COLUMNS = "position, kind, receipt_id, data, at_ms, prev_hash, entry_hash"


def entry_hash(position: int, kind: str, receipt_id: bytes | None, data: bytes, at_ms: int, prev_hash: bytes) -> bytes:
    return codec.sha256(codec.encode(
        [ENTRY_VERSION, position, kind, receipt_id or b"", codec.sha256(data), at_ms, prev_hash]
    ))


@dataclass(frozen=True)
class Entry:
    position: int
    kind: str
    receipt_id: bytes | None
    data: bytes
    at_ms: int
    prev_hash: bytes
    entry_hash: bytes

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Entry:
        """From a ``SELECT {ENTRY_COLUMNS}`` row; Malformed if a column holds the wrong type (a hand edit)."""
        blobs = (row[3], row[5], row[6]) if row[2] is None else (row[2], row[3], row[5], row[6])
        if not all(isinstance(v, bytes) for v in blobs) or not all(type(v) is int for v in (row[0], row[4])):
            raise Malformed("a column of this entry holds the wrong type")
        return cls(position=row[0], kind=row[1], receipt_id=None if row[2] is None else bytes(row[2]),
                   data=bytes(row[3]), at_ms=row[4], prev_hash=bytes(row[5]), entry_hash=bytes(row[6]))


@dataclass(frozen=True)
class LedgerReceipt:
    """A stored receipt with its current status (the countersignature attached once settled)."""

    signed: SignedReceipt
    status: str
    position: int
    epoch: int | None


@dataclass(frozen=True)
class ChainReport:
    entries: int
    receipts: int
    epochs: int
    head: bytes
    index_consistent: bool  # whether ledger_receipts agrees with the chain


def role_of(receipt: Receipt, owner: str) -> str:
    """This node's part in a receipt: "worker" (did the work), "requester" (bought it), "self" (both)."""
    if receipt.worker == owner and receipt.requester == owner:
        return "self"
    if receipt.worker == owner:
        return "worker"
    if receipt.requester == owner:
        return "requester"
    raise Malformed(f"receipt {receipt.id.hex()} names this node ({owner}) neither as worker nor as requester")
