"""The ledger: an append-only hash chain of receipts and their status changes, in the node's SQLite store.

Every entry commits to the one before it (the format is in entries.py; audit.py checks a whole chain).
Kinds of entry:

    receipt  data = the signed receipt as received (pending, or settled if it came countersigned)
    settle   data = the requester's countersignature (64 bytes) of an earlier pending receipt
    dispute  data = a verifier's signed Dispute of an earlier receipt
    epoch    data = the signed epoch header closing every receipt since the previous epoch

Rows are never updated or deleted (SQLite triggers refuse it); a status change is a new entry. The table
``ledger_receipts`` (status per receipt) and ``ledger_epochs`` are an index derived from the chain in the
same transaction, and :meth:`Ledger.rebuild_index` recomputes them from it. Each append is one
``BEGIN IMMEDIATE`` transaction on a WAL database with ``synchronous=FULL``: once it returns, the entry
survives a crash or a power cut, and a crash before that leaves no trace of it.

What the chain alone cannot show: entries cut off the end after the last signed epoch (the chain that is
left is valid). Epoch roots stored in the DHT, where counterparts read them, are what makes that visible.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hyperion_node.errors import InternalError
from hyperion_node.ledger.audit import ChainAudit
from hyperion_node.ledger.dispute import Dispute, verify_dispute
from hyperion_node.ledger.entries import (
    ENTRY_COLUMNS,
    GENESIS_HASH,
    ChainReport,
    Entry,
    LedgerReceipt,
    entry_hash,
    role_of,
)
from hyperion_node.ledger.epochs import EpochExport, EpochHeader, EpochPolicy, InclusionProof, SignedEpoch, sign_epoch
from hyperion_node.ledger.exceptions import (
    BadCountersignature,
    InvalidTransition,
    Malformed,
    ReceiptNotFound,
    ReceiptRejected,
    Replayed,
)
from hyperion_node.ledger.merkle import MerkleTree
from hyperion_node.ledger.receipt import SignedReceipt, verify_receipt
from hyperion_node.ledger.rewards import ReceiptSummary
from hyperion_node.ledger.signing import PeerKeys, Signer
from hyperion_node.store import Store

# Re-exported: callers get the ledger's records from here.
__all__ = ["GENESIS_HASH", "ChainReport", "Entry", "Ledger", "LedgerReceipt", "ReceiptSummary", "entry_hash"]

_OpenState = tuple[int, int, int | None]  # head position, receipts in the open epoch, the oldest one's at_ms


class Ledger:
    """The node's ledger on its store. ``owner`` is the node's peer ID; ``signer`` (the node's identity) is
    needed only to close epochs, and ``policy`` to close them as receipts arrive."""

    def __init__(
        self,
        store: Store,
        owner: str,
        *,
        signer: Signer | None = None,
        policy: EpochPolicy | None = None,
        keys: PeerKeys | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if signer is not None and str(signer.peer_id) != owner:
            raise InternalError(f"ledger owner {owner} is not the signer {signer.peer_id}")
        self.store = store
        self.owner = owner
        self._signer = signer
        self._policy = policy
        self._keys = keys or PeerKeys()
        self._clock = clock
        # (head position, receipts in the open epoch, oldest of them) as of this object's last commit. Counting
        # the open epoch costs a scan of up to epoch_receipts rows; a transaction that finds the head where
        # this says reuses it, any other recounts (another writer appended, or this is the first one).
        self._open_state: _OpenState | None = None
        # Epochs this object closed in committed transactions: a writer learns from it whether a batch it
        # appended closed one, without reading the epochs table after every batch.
        self.epochs_closed = 0

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- writing ---------------------------------------------------------------------------------------

    def append(self, signed: SignedReceipt) -> Entry:
        """Verify and append one receipt; durable when this returns."""
        outcome = self.append_batch([signed])[0]
        if isinstance(outcome, ReceiptRejected):
            raise outcome
        return outcome

    def append_batch(self, receipts: Sequence[SignedReceipt]) -> list[Entry | ReceiptRejected]:
        """Verify each receipt, then append the good ones in one transaction (group commit).

        One outcome per receipt, in order: its entry, or why it was rejected. Every entry returned is
        durable; none is if this raises.
        """
        outcomes: list[Entry | ReceiptRejected | None] = []
        roles: list[str] = []
        for signed in receipts:  # signatures are checked before taking the database lock
            try:
                verify_receipt(signed, self._keys)
                roles.append(role_of(signed.receipt, self.owner))
                outcomes.append(None)
            except ReceiptRejected as exc:
                roles.append("")
                outcomes.append(exc)

        closed = 0

        def work(conn: sqlite3.Connection) -> tuple[list[Entry | ReceiptRejected], _OpenState]:
            nonlocal closed
            head = self._head(conn)
            open_count, oldest = self._open_epoch_at(conn, head)
            seen: set[bytes] = set()
            for i, signed in enumerate(receipts):
                if outcomes[i] is not None:
                    continue
                rid = signed.id
                known = conn.execute("SELECT 1 FROM ledger_receipts WHERE receipt_id = ?", (rid,)).fetchone()
                if rid in seen or known:
                    outcomes[i] = Replayed(f"receipt {rid.hex()} is already in the ledger",
                                           peer_id=signed.receipt.worker)
                    continue
                seen.add(rid)
                head = self._write(conn, head, "receipt", rid, signed.encode())
                self._index_receipt(conn, head, signed, roles[i])
                outcomes[i] = head
                open_count += 1
                oldest = oldest if oldest is not None else head.at_ms
                if self._policy is not None and self._policy.due(open_count, oldest, head.at_ms):
                    head = self._close(conn, head)
                    open_count, oldest = 0, None
                    closed += 1
            return [o for o in outcomes if o is not None], (head.position if head else 0, open_count, oldest)

        done, self._open_state = self.store.transaction(work)
        self.epochs_closed += closed
        return done

    def settle(self, countersigned: SignedReceipt) -> Entry:
        """Record the requester's countersignature of a pending receipt: it is settled from now on."""
        verify_receipt(countersigned, self._keys, require_countersignature=True)
        rid = countersigned.id

        def work(conn: sqlite3.Connection) -> tuple[Entry, _OpenState]:
            head = self._head(conn)
            open_epoch = self._open_epoch_at(conn, head)
            stored = self._stored(conn, rid)
            if stored.status != "pending":
                raise InvalidTransition(f"receipt {rid.hex()} is {stored.status}, not pending: it cannot be settled")
            if stored.signed.signature != countersigned.signature:
                raise BadCountersignature(f"receipt {rid.hex()}: the countersignature is over another signature",
                                          peer_id=countersigned.receipt.requester)
            assert countersigned.countersignature is not None  # verified above
            entry = self._write(conn, head, "settle", rid, countersigned.countersignature)
            conn.execute("UPDATE ledger_receipts SET status = 'settled', status_position = ? WHERE receipt_id = ?",
                         (entry.position, rid))
            return entry, (entry.position, *open_epoch)

        entry, self._open_state = self.store.transaction(work)
        return entry

    def dispute(self, dispute: Dispute) -> Entry:
        """Record a verifier's signed rejection of a receipt: it is disputed from now on."""
        verify_dispute(dispute, self._keys)
        rid = dispute.receipt_id

        def work(conn: sqlite3.Connection) -> tuple[Entry, _OpenState]:
            head = self._head(conn)
            open_epoch = self._open_epoch_at(conn, head)
            stored = self._stored(conn, rid)
            if stored.status == "disputed":
                raise InvalidTransition(f"receipt {rid.hex()} is already disputed")
            if stored.signed.receipt.worker != dispute.worker:
                raise Malformed(f"dispute of receipt {rid.hex()} names another worker", peer_id=dispute.verifier)
            entry = self._write(conn, head, "dispute", rid, dispute.encode())
            conn.execute("UPDATE ledger_receipts SET status = 'disputed', status_position = ? WHERE receipt_id = ?",
                         (entry.position, rid))
            conn.execute("DELETE FROM ledger_contests WHERE receipt_id = ?", (rid,))
            return entry, (entry.position, *open_epoch)

        entry, self._open_state = self.store.transaction(work)
        return entry

    def contest(self, receipt_id: bytes, case: bytes, verifiers: Sequence[str], at_ms: int) -> bool:
        """Record an unconfirmed dispute of one of this node's receipts: shown as contested, still counted as
        earned. False when the receipt is not here or already disputed (nothing to contest)."""

        def work(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT status FROM ledger_receipts WHERE receipt_id = ?", (receipt_id,)).fetchone()
            if row is None or row[0] == "disputed":
                return False
            conn.execute("INSERT OR REPLACE INTO ledger_contests (receipt_id, case_data, verifiers, at_ms)"
                         " VALUES (?, ?, ?, ?)", (receipt_id, case, ",".join(verifiers), at_ms))
            return True

        return bool(self.store.transaction(work))

    def counterparts(self, limit: int = 64) -> list[tuple[str, int]]:
        """The peers this node settled work with (served or paid), with how many settled receipts each, the
        most first: what it signs as its dealings (ledger/dealings.py)."""
        rows = self.store.execute(
            "SELECT CASE WHEN worker = ? THEN requester ELSE worker END AS other, count(*) FROM ledger_receipts"
            " WHERE status = 'settled' AND worker != requester GROUP BY other ORDER BY 2 DESC, 1 LIMIT ?",
            (self.owner, limit))
        return [(str(r[0]), int(r[1])) for r in rows]

    def contests(self) -> list[bytes]:
        """The dispute cases of this node's receipts that are still contested (oldest first)."""
        return [bytes(r[0]) for r in self.store.execute("SELECT case_data FROM ledger_contests ORDER BY at_ms")]

    def close_epoch(self, *, only_if_due: bool = False) -> SignedEpoch | None:
        """Sign the Merkle root of every receipt since the last epoch. None when there is none (or, with
        ``only_if_due``, when the policy says it is not time yet)."""

        def work(conn: sqlite3.Connection) -> SignedEpoch | None:
            head = self._head(conn)
            open_count, oldest = self._open_epoch_at(conn, head)
            if head is None or open_count == 0:
                return None
            if only_if_due and (self._policy is None or not self._policy.due(open_count, oldest, self._now_ms())):
                return None
            entry = self._close(conn, head)
            self._open_state = None  # set again by the next transaction; this one may still roll back
            return SignedEpoch.decode(entry.data)

        epoch = self.store.transaction(work)
        if epoch is not None:
            self.epochs_closed += 1
        return epoch

    # -- inside a transaction ----------------------------------------------------------------------------

    @staticmethod
    def _head(conn: sqlite3.Connection) -> Entry | None:
        row = conn.execute(f"SELECT {ENTRY_COLUMNS} FROM ledger_entries ORDER BY position DESC LIMIT 1").fetchone()
        return Entry.from_row(row) if row else None

    @staticmethod
    def _last_epoch(conn: sqlite3.Connection) -> tuple[int, int]:
        row = conn.execute("SELECT number, position FROM ledger_epochs ORDER BY number DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else (0, 0)

    def _open_epoch_at(self, conn: sqlite3.Connection, head: Entry | None) -> tuple[int, int | None]:
        state = self._open_state
        if state is not None and state[0] == (head.position if head else 0):
            return state[1], state[2]
        return self._open_epoch(conn)

    def _open_epoch(self, conn: sqlite3.Connection) -> tuple[int, int | None]:
        _, after = self._last_epoch(conn)
        row = conn.execute("SELECT count(*), min(at_ms) FROM ledger_entries WHERE kind = 'receipt' AND position > ?",
                           (after,)).fetchone()
        return int(row[0]), row[1]

    def _write(self, conn: sqlite3.Connection, head: Entry | None, kind: str, receipt_id: bytes | None,
               data: bytes) -> Entry:
        position = head.position + 1 if head else 1
        prev = head.entry_hash if head else GENESIS_HASH
        at_ms = self._now_ms()
        entry = Entry(position, kind, receipt_id, data, at_ms, prev,
                      entry_hash(position, kind, receipt_id, data, at_ms, prev))
        conn.execute(f"INSERT INTO ledger_entries ({ENTRY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (entry.position, kind, receipt_id, data, at_ms, prev, entry.entry_hash))
        return entry

    @staticmethod
    def _index_receipt(conn: sqlite3.Connection, entry: Entry, signed: SignedReceipt, role: str) -> None:
        r = signed.receipt
        conn.execute(
            "INSERT INTO ledger_receipts (receipt_id, position, status, status_position, role, worker, requester,"
            " runtime, unit, units, total, finished_at_ms, recorded_at_ms, epoch)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
            (signed.id, entry.position, "settled" if signed.settled else "pending", entry.position, role, r.worker,
             r.requester, r.runtime, r.unit, r.units, str(r.total), r.finished_at_ms, entry.at_ms),
        )

    def _close(self, conn: sqlite3.Connection, head: Entry) -> Entry:
        if self._signer is None:
            raise InternalError("closing an epoch needs the node's identity; this ledger was opened without it")
        number, after = self._last_epoch(conn)
        leaves = [row[0] for row in conn.execute(
            "SELECT data FROM ledger_entries WHERE kind = 'receipt' AND position > ? ORDER BY position", (after,))]
        header = EpochHeader(number=number + 1, signer=self.owner, first_position=after + 1,
                             last_position=head.position, count=len(leaves), root=MerkleTree.of(leaves).root,
                             chain_head=head.entry_hash, closed_at_ms=self._now_ms())
        entry = self._write(conn, head, "epoch", None, sign_epoch(header, self._signer).encode())
        self._index_epoch(conn, entry, header)
        return entry

    @staticmethod
    def _index_epoch(conn: sqlite3.Connection, entry: Entry, header: EpochHeader) -> None:
        conn.execute(
            "INSERT INTO ledger_epochs (number, position, first_position, last_position, count, root, closed_at_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (header.number, entry.position, header.first_position, header.last_position, header.count, header.root,
             header.closed_at_ms),
        )
        conn.execute("UPDATE ledger_receipts SET epoch = ? WHERE position BETWEEN ? AND ?",
                     (header.number, header.first_position, header.last_position))

    def _stored(self, conn: sqlite3.Connection, rid: bytes) -> LedgerReceipt:
        row = conn.execute(
            "SELECT e.data, r.status, r.position, r.epoch, c.data FROM ledger_receipts r"
            " JOIN ledger_entries e ON e.position = r.position"
            " LEFT JOIN ledger_entries c ON c.receipt_id = r.receipt_id AND c.kind = 'settle'"
            " WHERE r.receipt_id = ?", (rid,)).fetchone()
        if row is None:
            raise ReceiptNotFound(f"no receipt {rid.hex()} in the ledger")
        signed = SignedReceipt.decode(row[0])
        if row[4] is not None:
            signed = SignedReceipt(signed.receipt, signed.body, signed.signature, row[4])
        return LedgerReceipt(signed, row[1], row[2], row[3])

    # -- reading ---------------------------------------------------------------------------------------

    def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return self.store.transaction(fn)

    def head(self) -> Entry | None:
        rows = self.store.execute(f"SELECT {ENTRY_COLUMNS} FROM ledger_entries ORDER BY position DESC LIMIT 1")
        return Entry.from_row(rows[0]) if rows else None

    def receipt(self, receipt_id: bytes) -> LedgerReceipt:
        result: LedgerReceipt = self._read(lambda conn: self._stored(conn, receipt_id))
        return result

    def resolve(self, id_or_prefix: str) -> bytes:
        """A receipt id from its hex form or a unique prefix of at least 8 hex digits."""
        text = id_or_prefix.strip().lower()
        if len(text) < 8 or len(text) > 64 or any(c not in "0123456789abcdef" for c in text):
            raise ReceiptNotFound(f"{id_or_prefix!r} is not a receipt id", hint="give at least 8 hex digits of it")
        low = bytes.fromhex(text + "0" * (64 - len(text)))
        high = bytes.fromhex(text + "f" * (64 - len(text)))
        rows = self.store.execute(
            "SELECT receipt_id FROM ledger_receipts WHERE receipt_id BETWEEN ? AND ? LIMIT 2", (low, high))
        if not rows:
            raise ReceiptNotFound(f"no receipt {text} in the ledger at {self.store.path}")
        if len(rows) > 1:
            raise ReceiptNotFound(f"receipt id prefix {text} is ambiguous", hint="give more of its hex digits")
        return bytes(rows[0][0])

    def summaries(self) -> list[ReceiptSummary]:
        rows = self.store.execute(
            "SELECT r.receipt_id, r.role, r.status, r.runtime, r.unit, r.units, r.total, r.worker, r.requester,"
            " r.finished_at_ms, r.recorded_at_ms, r.epoch, c.receipt_id IS NOT NULL FROM ledger_receipts r"
            " LEFT JOIN ledger_contests c ON c.receipt_id = r.receipt_id ORDER BY r.position")
        return [ReceiptSummary(bytes(r[0]), r[1], r[2], r[3], r[4], r[5], int(r[6]), r[7], r[8], r[9], r[10], r[11],
                               contested=bool(r[12])) for r in rows]

    def open_epoch(self) -> tuple[int, int | None]:
        """Receipts not yet in a closed epoch, and when the oldest of them was appended (Unix ms)."""
        result: tuple[int, int | None] = self._read(self._open_epoch)
        return result

    def epochs(self) -> list[EpochHeader]:
        return [epoch.header for epoch in self.signed_epochs()]

    def epoch_count(self) -> int:
        return int(self.store.execute("SELECT coalesce(max(number), 0) FROM ledger_epochs")[0][0])

    def signed_epochs(self, *, after: int = 0) -> list[SignedEpoch]:
        """Closed epochs numbered above ``after``, oldest first: what is left to publish."""
        rows = self.store.execute(
            "SELECT e.data FROM ledger_epochs x JOIN ledger_entries e ON e.position = x.position"
            " WHERE x.number > ? ORDER BY x.number", (after,))
        return [SignedEpoch.decode(row[0]) for row in rows]

    def _epoch_leaves(self, conn: sqlite3.Connection, number: int) -> tuple[SignedEpoch, list[tuple[int, bytes]]]:
        """The signed epoch and its receipts as (chain position, bytes as appended), in chain order."""
        row = conn.execute(
            "SELECT e.data FROM ledger_epochs x JOIN ledger_entries e ON e.position = x.position WHERE x.number = ?",
            (number,)).fetchone()
        if row is None:
            raise ReceiptNotFound(f"no closed epoch {number} in the ledger at {self.store.path}")
        epoch = SignedEpoch.decode(row[0])
        leaves = [(r[0], bytes(r[1])) for r in conn.execute(
            "SELECT position, data FROM ledger_entries WHERE kind = 'receipt' AND position BETWEEN ? AND ?"
            " ORDER BY position", (epoch.header.first_position, epoch.header.last_position))]
        return epoch, leaves

    def export_epoch(self, number: int) -> EpochExport:
        epoch, leaves = self._read(lambda conn: self._epoch_leaves(conn, number))
        return EpochExport(epoch, tuple(data for _, data in leaves))

    def prove(self, receipt_id: bytes) -> InclusionProof:
        """The inclusion proof of a receipt in the epoch that closed it. The leaf is the receipt as first
        appended (countersigned only if it arrived countersigned)."""
        stored = self.receipt(receipt_id)
        number = stored.epoch
        if number is None:
            raise ReceiptNotFound(
                f"receipt {receipt_id.hex()} is in no closed epoch yet",
                hint="epochs close every ledger.epoch_receipts receipts or ledger.epoch_minutes minutes",
            )
        epoch, leaves = self._read(lambda conn: self._epoch_leaves(conn, number))
        positions = [position for position, _ in leaves]
        index = positions.index(stored.position)
        tree = MerkleTree.of([data for _, data in leaves])
        return InclusionProof(epoch, leaves[index][1], index, tuple(tree.proof(index)))

    # -- verification ------------------------------------------------------------------------------------

    def verify(self) -> ChainReport:
        """Check the whole chain from position 1; raise :class:`ChainBroken` at the first wrong entry.

        Reads one consistent snapshot through a read-only connection of its own, so that a running daemon
        keeps appending meanwhile.
        """
        conn = sqlite3.connect(Path(self.store.path).absolute().as_uri() + "?mode=ro", uri=True)
        try:
            conn.execute("BEGIN")  # a read transaction: one WAL snapshot for the whole check
            report = ChainAudit(self.owner, self._keys, conn).run()
            conn.execute("COMMIT")
        finally:
            conn.close()
        return report

    def rebuild_index(self) -> None:
        """Recompute ledger_receipts and ledger_epochs from the chain alone."""

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM ledger_receipts")
            conn.execute("DELETE FROM ledger_epochs")
            for row in conn.execute(f"SELECT {ENTRY_COLUMNS} FROM ledger_entries ORDER BY position").fetchall():
                entry = Entry.from_row(row)
                if entry.kind == "receipt":
                    signed = SignedReceipt.decode(entry.data)
                    self._index_receipt(conn, entry, signed, role_of(signed.receipt, self.owner))
                elif entry.kind in ("settle", "dispute"):
                    status = "settled" if entry.kind == "settle" else "disputed"
                    conn.execute("UPDATE ledger_receipts SET status = ?, status_position = ? WHERE receipt_id = ?",
                                 (status, entry.position, entry.receipt_id))
                elif entry.kind == "epoch":
                    self._index_epoch(conn, entry, SignedEpoch.decode(entry.data).header)

        self.store.transaction(work)
