"""The hash-chained ledger: appends, status changes, epochs and proofs, and tampering found where it happened."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from hyperion_node.ledger.chain import GENESIS_HASH, Ledger
from hyperion_node.ledger.dispute import sign_dispute
from hyperion_node.ledger.epochs import EpochExport, EpochPolicy, InclusionProof, verify_export, verify_proof
from hyperion_node.ledger.exceptions import (
    BadCountersignature,
    BadSignature,
    ChainBroken,
    InvalidTransition,
    Malformed,
    NotInProof,
    ReceiptNotFound,
    Replayed,
)
from hyperion_node.ledger.receipt import SignedReceipt, countersign
from hyperion_node.store import Store
from hyperion_node.testing.receipts import ReceiptFactory, new_identity, open_ledger


def raw(ledger: Ledger) -> sqlite3.Connection:
    """A plain connection, as someone editing the database file would use, with the guard triggers gone."""
    conn = sqlite3.connect(ledger.store.path, isolation_level=None)
    conn.execute("DROP TRIGGER ledger_entries_no_update")
    conn.execute("DROP TRIGGER ledger_entries_no_delete")
    return conn


def test_entries_chain_from_genesis_and_survive_reopening(tmp_path: Path, factory: ReceiptFactory) -> None:
    ledger = open_ledger(tmp_path / "node.db", factory.worker, every_receipts=1000)
    entries = [ledger.append(factory.signed()) for _ in range(3)]
    assert [e.position for e in entries] == [1, 2, 3]
    assert entries[0].prev_hash == GENESIS_HASH
    assert [e.prev_hash for e in entries[1:]] == [e.entry_hash for e in entries[:-1]]
    ledger.store.close()
    again = Ledger(Store.open(tmp_path / "node.db"), str(factory.worker.peer_id))
    report = again.verify()
    assert (report.entries, report.receipts, report.head) == (3, 3, entries[-1].entry_hash)
    assert report.index_consistent


def test_status_moves_pending_settled_disputed(ledger: Ledger, factory: ReceiptFactory) -> None:
    signed = factory.signed()
    ledger.append(signed)
    assert ledger.receipt(signed.id).status == "pending"
    ledger.settle(countersign(signed, factory.requester))
    stored = ledger.receipt(signed.id)
    assert stored.status == "settled"
    assert stored.signed.countersignature is not None
    verifier = new_identity()
    ledger.dispute(sign_dispute(signed.id, signed.receipt.worker, "output hash does not match a re-run", 5, verifier))
    assert ledger.receipt(signed.id).status == "disputed"
    kinds = [row[0] for row in ledger.store.execute("SELECT kind FROM ledger_entries ORDER BY position")]
    assert kinds == ["receipt", "settle", "dispute"]  # every change is its own entry; nothing rewritten
    assert ledger.verify().index_consistent


def test_forbidden_transitions(ledger: Ledger, factory: ReceiptFactory) -> None:
    signed = factory.signed()
    with pytest.raises(ReceiptNotFound):
        ledger.settle(countersign(signed, factory.requester))
    ledger.append(signed)
    settled = countersign(signed, factory.requester)
    ledger.settle(settled)
    with pytest.raises(InvalidTransition, match="settled, not pending"):
        ledger.settle(settled)
    dispute = sign_dispute(signed.id, signed.receipt.worker, "wrong", 1, new_identity())
    ledger.dispute(dispute)
    with pytest.raises(InvalidTransition, match="already disputed"):
        ledger.dispute(dispute)
    assert ledger.verify().entries == 3


def test_a_settlement_with_a_broken_signature_changes_nothing(ledger: Ledger, factory: ReceiptFactory) -> None:
    signed = factory.signed()
    ledger.append(signed)
    settled = countersign(signed, factory.requester)
    with pytest.raises(BadSignature):
        ledger.settle(dataclasses.replace(settled, signature=bytes(64)))
    with pytest.raises(BadCountersignature):
        ledger.settle(dataclasses.replace(settled, countersignature=bytes(64)))
    assert ledger.receipt(signed.id).status == "pending"
    assert ledger.verify().entries == 1


def test_replayed_and_duplicate_receipts_are_rejected(ledger: Ledger, factory: ReceiptFactory) -> None:
    signed = factory.signed()
    ledger.append(signed)
    with pytest.raises(Replayed, match="already in the ledger"):
        ledger.append(signed)
    with pytest.raises(Replayed):  # countersigned, it is still the same receipt
        ledger.append(countersign(signed, factory.requester))
    fresh = factory.signed()
    outcomes = ledger.append_batch([fresh, fresh])
    assert outcomes[0].position == 2  # type: ignore[union-attr]
    assert isinstance(outcomes[1], Replayed)
    assert ledger.verify().receipts == 2


def test_a_batch_keeps_the_good_and_names_each_bad_one(ledger: Ledger, factory: ReceiptFactory) -> None:
    good = [factory.signed() for _ in range(3)]
    forged = dataclasses.replace(factory.signed(), signature=bytes(64))
    bad_counter = dataclasses.replace(factory.signed(), countersignature=bytes(64))
    outcomes = ledger.append_batch([good[0], forged, good[1], bad_counter, good[2]])
    assert isinstance(outcomes[1], BadSignature)
    assert isinstance(outcomes[3], BadCountersignature)
    assert [o.receipt_id for o in (outcomes[0], outcomes[2], outcomes[4])] == [g.id for g in good]  # type: ignore[union-attr]
    assert ledger.verify().receipts == 3


def test_a_receipt_not_naming_this_node_is_refused(ledger: Ledger, factory: ReceiptFactory) -> None:
    stranger = new_identity()
    with pytest.raises(Malformed, match="neither as worker nor as requester"):
        ledger.append(factory.signed(worker=stranger))


def test_bought_work_is_recorded_with_the_requester_role(tmp_path: Path, factory: ReceiptFactory) -> None:
    buyer = open_ledger(tmp_path / "buyer.db", factory.requester)
    buyer.append(countersign(factory.signed(), factory.requester))
    [summary] = buyer.summaries()
    assert (summary.role, summary.status) == ("requester", "settled")


def test_append_only_triggers_refuse_updates_and_deletes(ledger: Ledger, factory: ReceiptFactory) -> None:
    ledger.append(factory.signed())
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        ledger.store.execute("UPDATE ledger_entries SET at_ms = 0")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        ledger.store.execute("DELETE FROM ledger_entries")


def fill(ledger: Ledger, factory: ReceiptFactory, n: int) -> list[SignedReceipt]:
    receipts = [factory.signed() for _ in range(n)]
    ledger.append_batch(receipts)
    for signed in receipts[::3]:
        ledger.settle(countersign(signed, factory.requester))
    return receipts


@pytest.mark.parametrize("position", [1, 4, 6, 9, 14, 16])  # receipts, an epoch (6), a settle (16)
def test_tampering_with_one_entry_is_found_at_its_position(
    ledger: Ledger, factory: ReceiptFactory, position: int
) -> None:
    fill(ledger, factory, 12)  # with settles and epochs in between
    assert ledger.verify().entries > 14
    conn = raw(ledger)
    data = bytearray(conn.execute("SELECT data FROM ledger_entries WHERE position = ?", (position,)).fetchone()[0])
    data[len(data) // 2] ^= 0x01
    conn.execute("UPDATE ledger_entries SET data = ? WHERE position = ?", (bytes(data), position))
    with pytest.raises(ChainBroken) as caught:
        ledger.verify()
    assert caught.value.position == position
    assert f"position {position}" in caught.value.one_line()


def test_tampering_that_also_fixes_the_entry_hash_is_still_found(ledger: Ledger, factory: ReceiptFactory) -> None:
    """Rewriting an entry's hash to match the change breaks the signature there, or the link to the next."""
    from hyperion_node.ledger.chain import entry_hash

    receipts = fill(ledger, factory, 4)
    conn = raw(ledger)
    # Swap receipt 2 for a correctly signed receipt the worker never recorded: signature fine, hash fixed.
    position, at_ms, prev = conn.execute(
        "SELECT position, at_ms, prev_hash FROM ledger_entries WHERE receipt_id = ? AND kind = 'receipt'",
        (receipts[1].id,)).fetchone()
    substitute = factory.signed()
    conn.execute("UPDATE ledger_entries SET data = ?, receipt_id = ?, entry_hash = ? WHERE position = ?",
                 (substitute.encode(), substitute.id,
                  entry_hash(position, "receipt", substitute.id, substitute.encode(), at_ms, prev), position))
    with pytest.raises(ChainBroken) as caught:
        ledger.verify()
    assert caught.value.position == position + 1
    assert "previous-entry hash" in caught.value.reason


def test_a_deleted_entry_is_found_at_its_position(ledger: Ledger, factory: ReceiptFactory) -> None:
    fill(ledger, factory, 4)
    raw(ledger).execute("DELETE FROM ledger_entries WHERE position = 3")
    with pytest.raises(ChainBroken, match="entry 3 is missing") as caught:
        ledger.verify()
    assert caught.value.position == 3


def test_an_edited_status_index_is_noticed_and_rebuilt(ledger: Ledger, factory: ReceiptFactory) -> None:
    receipts = fill(ledger, factory, 7)
    ledger.store.execute("UPDATE ledger_receipts SET status = 'settled' WHERE receipt_id = ?", (receipts[1].id,))
    assert not ledger.verify().index_consistent
    before = ledger.store.execute("SELECT count(*) FROM ledger_epochs")
    ledger.rebuild_index()
    assert ledger.verify().index_consistent
    assert ledger.receipt(receipts[1].id).status == "pending"
    assert ledger.store.execute("SELECT count(*) FROM ledger_epochs") == before


def test_epochs_close_every_n_receipts_and_prove_every_receipt(ledger: Ledger, factory: ReceiptFactory) -> None:
    receipts = fill(ledger, factory, 12)  # epochs of 5: two closed, two receipts still open
    epochs = ledger.epochs()
    assert [(e.number, e.count) for e in epochs] == [(1, 5), (2, 5)]
    assert ledger.open_epoch()[0] == 2
    assert epochs[1].first_position == epochs[0].last_position + 2  # the epoch entry sits between them
    for signed in receipts[:10]:
        proof = ledger.prove(signed.id)
        assert verify_proof(proof).id == signed.id
        reread = InclusionProof(proof.epoch, proof.receipt, proof.index, proof.path)
        assert reread.encode() == proof.encode()
    with pytest.raises(ReceiptNotFound, match="no closed epoch yet"):
        ledger.prove(receipts[11].id)
    closed = ledger.close_epoch()
    assert closed is not None
    assert closed.header.count == 2
    assert ledger.close_epoch() is None  # nothing open: empty epochs are never signed
    verify_proof(ledger.prove(receipts[11].id))
    assert ledger.verify().epochs == 3


def test_inclusion_proofs_fail_for_an_altered_receipt(ledger: Ledger, factory: ReceiptFactory) -> None:
    fill(ledger, factory, 5)
    export = ledger.export_epoch(1)
    verify_export(export)
    for index, data in enumerate(export.receipts):
        proof = ledger.prove(SignedReceipt.decode(data).id)
        assert proof.index == index
        other = export.receipts[(index + 1) % len(export.receipts)]
        with pytest.raises(NotInProof):
            verify_proof(dataclasses.replace(proof, receipt=other))  # validly signed, but not this leaf
        with pytest.raises(NotInProof):
            verify_proof(dataclasses.replace(proof, index=(index + 1) % 5))
    swapped = EpochExport(export.epoch, (export.receipts[1], export.receipts[0], *export.receipts[2:]))
    with pytest.raises(NotInProof):
        verify_export(swapped)


def test_epochs_close_on_time(tmp_path: Path, factory: ReceiptFactory) -> None:
    now = [1_000.0]
    ledger = Ledger(Store.open(tmp_path / "node.db"), str(factory.worker.peer_id), signer=factory.worker,
                    policy=EpochPolicy(every_receipts=100, every_seconds=600),
                    clock=lambda: now[0])
    ledger.append(factory.signed())
    now[0] += 599
    assert ledger.close_epoch(only_if_due=True) is None
    now[0] += 1
    epoch = ledger.close_epoch(only_if_due=True)
    assert epoch is not None
    assert epoch.header.count == 1
    assert epoch.header.closed_at_ms == 1_600_000


def test_resolve_takes_unique_prefixes(ledger: Ledger, factory: ReceiptFactory) -> None:
    signed = factory.signed()
    ledger.append(signed)
    assert ledger.resolve(signed.id.hex()[:10]) == signed.id
    assert ledger.resolve(signed.id.hex().upper()) == signed.id
    with pytest.raises(ReceiptNotFound, match="8 hex digits"):
        ledger.resolve("abc")
    with pytest.raises(ReceiptNotFound, match="no receipt"):
        ledger.resolve("0" * 64 if signed.id.hex()[0] != "0" else "f" * 64)


def test_two_writers_on_one_database_still_close_epochs_at_exactly_n(tmp_path: Path, factory: ReceiptFactory) -> None:
    """Each ledger object remembers the open epoch's count; one that finds the head moved must recount."""
    first = open_ledger(tmp_path / "node.db", factory.worker, every_receipts=5)
    second = open_ledger(tmp_path / "node.db", factory.worker, every_receipts=5)
    for writer in [first] * 3 + [second] * 3 + [first] * 2 + [second] * 7:
        writer.append(factory.signed())
    assert [e.count for e in first.epochs()] == [5, 5, 5]
    assert first.open_epoch()[0] == 0
    assert first.verify().epochs == 3


def test_a_column_rewritten_with_the_wrong_type_is_found_not_a_crash(ledger: Ledger, factory: ReceiptFactory) -> None:
    fill(ledger, factory, 3)
    raw(ledger).execute("UPDATE ledger_entries SET data = 'text now' WHERE position = 2")
    with pytest.raises(ChainBroken, match="wrong type") as caught:
        ledger.verify()
    assert caught.value.position == 2
