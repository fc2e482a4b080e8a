"""The ledger's audit: one pass over the whole hash chain that names the first entry that is wrong.

Checked at every position: the position follows the previous one, the previous-entry hash links to it, the
entry hash matches the contents, and the contents hold: a receipt's signatures verify and it names this node,
a settlement's countersignature is the requester's over the earlier receipt, a dispute is signed and applies,
an epoch is signed by this node over exactly the receipts since the previous epoch (Merkle root) and pins the
chain head before it. Memory holds a status per receipt and one epoch's leaf hashes, not the chain.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

from hyperion_node.ledger.dispute import Dispute, verify_dispute
from hyperion_node.ledger.entries import ENTRY_COLUMNS, GENESIS_HASH, ChainReport, Entry, entry_hash, role_of
from hyperion_node.ledger.epochs import SignedEpoch, verify_epoch
from hyperion_node.ledger.exceptions import BadCountersignature, ChainBroken, Malformed, ReceiptRejected, Replayed
from hyperion_node.ledger.merkle import MerkleTree, leaf_hash
from hyperion_node.ledger.receipt import SignedReceipt, verify_receipt
from hyperion_node.ledger.signing import DOMAIN_COUNTERSIGN, PeerKeys

READ_CHUNK = 2000  # entries read per query: bounded memory on a long chain


class ChainAudit:
    """One pass over the chain, holding only what later entries are checked against."""

    def __init__(self, owner: str, keys: PeerKeys, conn: sqlite3.Connection) -> None:
        self.owner = owner
        self.keys = keys
        self.conn = conn
        self.status: dict[bytes, tuple[str, int]] = {}  # receipt id -> (status, position of its receipt entry)
        self.leaves: list[bytes] = []  # leaf hashes of the epoch still open
        self.epoch_number = 0
        self.epoch_position = 0

    def rows(self) -> Iterator[tuple[Any, ...]]:
        after = 0
        while True:
            rows = self.conn.execute(
                f"SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE position > ? ORDER BY position LIMIT ?",
                (after, READ_CHUNK)).fetchall()
            if not rows:
                return
            yield from rows
            after = rows[-1][0]

    def run(self) -> ChainReport:
        prev, expected = GENESIS_HASH, 1
        for row in self.rows():
            try:
                entry = Entry.from_row(row)
            except Malformed as exc:
                raise ChainBroken(expected, exc.message) from exc
            p = entry.position
            if p != expected:
                raise ChainBroken(expected, f"entry {expected} is missing (next stored entry is {p})")
            if entry.prev_hash != prev:
                raise ChainBroken(p, f"its previous-entry hash is not entry {p - 1}'s hash")
            data = entry.data
            if entry_hash(p, entry.kind, entry.receipt_id, data, entry.at_ms, prev) != entry.entry_hash:
                raise ChainBroken(p, "its hash does not match its contents")
            try:
                self.check(entry, data, prev)
            except ReceiptRejected as exc:
                raise ChainBroken(p, exc.one_line()) from exc
            prev, expected = entry.entry_hash, expected + 1
        indexed = {bytes(r[0]): r[1] for r in self.conn.execute("SELECT receipt_id, status FROM ledger_receipts")}
        consistent = indexed == {rid: status for rid, (status, _) in self.status.items()}
        return ChainReport(entries=expected - 1, receipts=len(self.status), epochs=self.epoch_number, head=prev,
                           index_consistent=consistent)

    def receipt_at(self, position: int) -> SignedReceipt:
        row = self.conn.execute("SELECT data FROM ledger_entries WHERE position = ?", (position,)).fetchone()
        return SignedReceipt.decode(row[0])  # checked when the pass went through that position

    def check(self, entry: Entry, data: bytes, prev: bytes) -> None:
        rid = entry.receipt_id
        if entry.kind == "receipt":
            signed = SignedReceipt.decode(data)
            verify_receipt(signed, self.keys)
            role_of(signed.receipt, self.owner)
            if rid != signed.id:
                raise Malformed("its receipt id column is not the receipt's id")
            if rid in self.status:
                raise Replayed(f"receipt {rid.hex()} appears a second time")
            self.status[rid] = ("settled" if signed.settled else "pending", entry.position)
            self.leaves.append(leaf_hash(data))
        elif entry.kind in ("settle", "dispute"):
            if rid is None or rid not in self.status:
                raise Malformed(f"a {entry.kind} entry for a receipt not earlier in the chain")
            status, at = self.status[rid]
            original = self.receipt_at(at)
            if entry.kind == "settle":
                if status != "pending":
                    raise Malformed(f"settles receipt {rid.hex()} which is {status}")
                if not self.keys.verify(original.receipt.requester, DOMAIN_COUNTERSIGN,
                                        original.body + original.signature, data):
                    raise BadCountersignature(f"the countersignature of receipt {rid.hex()} is not its requester's")
                self.status[rid] = ("settled", at)
            else:
                dispute = Dispute.decode(data)
                verify_dispute(dispute, self.keys)
                if status == "disputed" or dispute.receipt_id != rid or dispute.worker != original.receipt.worker:
                    raise Malformed(f"a dispute that does not apply to receipt {rid.hex()}")
                self.status[rid] = ("disputed", at)
        elif entry.kind == "epoch":
            self.check_epoch(entry, data, prev)
        else:
            raise Malformed(f"unknown entry kind {entry.kind!r}")

    def check_epoch(self, entry: Entry, data: bytes, prev: bytes) -> None:
        epoch = SignedEpoch.decode(data)
        verify_epoch(epoch, self.keys)
        h = epoch.header
        if h.signer != self.owner:
            raise Malformed(f"epoch {h.number} is signed by {h.signer}, not by this node")
        expected = (self.epoch_number + 1, self.epoch_position + 1, entry.position - 1, prev, len(self.leaves))
        if (h.number, h.first_position, h.last_position, h.chain_head, h.count) != expected:
            raise Malformed(f"epoch {h.number} does not cover the entries since the previous epoch")
        if MerkleTree(self.leaves).root != h.root:
            raise Malformed(f"epoch {h.number}'s root is not the Merkle root of its receipts")
        self.epoch_number, self.epoch_position, self.leaves = h.number, entry.position, []
