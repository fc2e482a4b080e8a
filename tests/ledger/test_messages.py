"""Gossip codecs of the receipts topic: round trips, the P2P envelope they travel in, garbage refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperion_node.ledger import messages
from hyperion_node.ledger.dispute import Dispute, sign_dispute
from hyperion_node.ledger.epochs import EpochHeader, SignedEpoch, sign_epoch
from hyperion_node.ledger.exceptions import Malformed
from hyperion_node.ledger.messages import (
    BATCH_KIND,
    GOSSIP_TYPE,
    MAX_BATCH_RECEIPTS,
    MAX_BATCH_RECORD_BYTES,
    MAX_MESSAGE_BYTES,
    decode_message,
    encode_message,
    from_gossip_body,
    pack_settled,
    records_from_gossip_body,
    to_gossip_body,
)
from hyperion_node.ledger.receipt import countersign
from hyperion_node.p2p.messages import open_envelope, seal
from hyperion_node.p2p.network import MAX_RECEIPT_GOSSIP_BYTES
from hyperion_node.testing.receipts import ReceiptFactory, new_identity


def epoch(factory: ReceiptFactory, number: int = 1) -> SignedEpoch:
    header = EpochHeader(number=number, signer=str(factory.worker.peer_id), first_position=1, last_position=9,
                         count=8, root=bytes(range(32)), chain_head=bytes(32), closed_at_ms=5)
    return sign_epoch(header, factory.worker)


@given(tokens_out=st.integers(0, 10**6), number=st.integers(1, 10**9), reason=st.text(min_size=1, max_size=200))
def test_round_trip_of_every_message_kind(factory: ReceiptFactory, tokens_out: int, number: int, reason: str) -> None:
    settled = countersign(factory.signed(tokens_out=tokens_out), factory.requester)
    dispute = sign_dispute(settled.id, settled.receipt.worker, reason, 7, factory.requester)
    for record in (settled, epoch(factory, number), dispute):
        data = encode_message(record)
        assert decode_message(data) == record
        assert from_gossip_body(to_gossip_body(record)) == record


def test_messages_travel_in_the_p2p_layers_signed_envelope(factory: ReceiptFactory) -> None:
    settled = countersign(factory.signed(), factory.requester)
    relay = new_identity()  # anyone may forward a settled receipt; the receipt carries its own signatures
    wire = seal(relay, GOSSIP_TYPE, to_gossip_body(settled))
    envelope, body = open_envelope(wire, expected_type=GOSSIP_TYPE, max_bytes=64 * 1024)
    assert envelope.peer_id == relay.peer_id
    assert from_gossip_body(body) == settled


def test_pending_receipts_are_not_gossiped(factory: ReceiptFactory) -> None:
    pending = factory.signed()
    with pytest.raises(Malformed, match="only settled"):
        encode_message(pending)
    body = {"v": 1, "kind": "settled", "record": pending.encode()}
    with pytest.raises(Malformed, match="without a countersignature"):
        from_gossip_body(body)


@given(st.binary(max_size=3000))
def test_garbage_is_malformed_never_a_crash(data: bytes) -> None:
    with pytest.raises(Malformed):
        decode_message(data)


@given(kind=st.sampled_from(["settled", "epoch", "dispute"]), record=st.binary(max_size=300))
def test_garbage_records_of_each_kind_are_malformed(kind: str, record: bytes) -> None:
    with pytest.raises(Malformed):
        from_gossip_body({"v": 1, "kind": kind, "record": record})


@pytest.mark.parametrize("body", [
    {"v": 2, "kind": "settled", "record": b""},
    {"v": True, "kind": "settled", "record": b""},
    {"v": 1, "kind": "gossip", "record": b""},
    {"v": 1, "kind": "settled", "record": "text"},
    {"v": 1, "kind": "settled"},
    {"v": 1, "kind": "settled", "record": b"", "extra": 1},
])
def test_bad_bodies_are_malformed(body: dict[str, object]) -> None:
    with pytest.raises(Malformed):
        from_gossip_body(body)


def test_oversized_messages_are_refused_before_decoding() -> None:
    with pytest.raises(Malformed, match="over the cap"):
        decode_message(b"\x00" * (MAX_MESSAGE_BYTES + 1))


def test_a_dispute_round_trips_and_its_fields_are_checked(factory: ReceiptFactory) -> None:
    dispute = sign_dispute(b"\x01" * 32, "w", "re-run differs", 3, factory.requester)
    assert Dispute.decode(dispute.encode()) == dispute
    with pytest.raises(Malformed):
        sign_dispute(b"\x01" * 31, "w", "short id", 3, factory.requester)


def test_settled_receipts_are_packed_in_batches_within_the_caps_and_read_back_in_order(
        factory: ReceiptFactory) -> None:
    receipts = [factory.settled(tokens_out=n) for n in range(MAX_BATCH_RECEIPTS + 3)]
    bodies = pack_settled(receipts)
    assert [b["kind"] for b in bodies] == [BATCH_KIND, BATCH_KIND]
    assert [len(b["records"]) for b in bodies] == [MAX_BATCH_RECEIPTS, 3]
    assert [r for b in bodies for r in records_from_gossip_body(b)] == receipts
    # A lone receipt travels as a plain "settled" body, which nodes without batches read too.
    (lone,) = pack_settled(receipts[:1])
    assert lone == to_gossip_body(receipts[0])
    assert records_from_gossip_body(lone) == [receipts[0]]
    assert records_from_gossip_body(to_gossip_body(epoch(factory))) == [epoch(factory)]
    assert pack_settled([]) == []
    # The envelope around a full batch stays under the receipts topic's cap.
    wire = seal(factory.worker, GOSSIP_TYPE, bodies[0])
    _, body = open_envelope(wire, expected_type=GOSSIP_TYPE, max_bytes=64 * 1024)
    assert records_from_gossip_body(body) == receipts[:MAX_BATCH_RECEIPTS]


def test_a_batch_is_cut_by_bytes_too(factory: ReceiptFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    receipts = [factory.settled() for _ in range(7)]
    size = len(receipts[0].encode())
    monkeypatch.setattr(messages, "MAX_BATCH_RECORD_BYTES", 3 * size)
    bodies = pack_settled(receipts)
    assert [len(b["records"]) if "records" in b else 1 for b in bodies] == [3, 3, 1]
    assert [r for b in bodies for r in records_from_gossip_body(b)] == receipts


def test_a_batch_at_both_caps_fits_in_the_receipts_topics_envelope() -> None:
    sender = new_identity()
    records = [b"\xff" * (MAX_BATCH_RECORD_BYTES // MAX_BATCH_RECEIPTS)] * MAX_BATCH_RECEIPTS
    wire = seal(sender, GOSSIP_TYPE, {"v": 1, "kind": BATCH_KIND, "records": records})
    assert len(wire) <= MAX_RECEIPT_GOSSIP_BYTES


def test_pending_receipts_are_not_packed(factory: ReceiptFactory) -> None:
    with pytest.raises(Malformed, match="only settled"):
        pack_settled([factory.settled(), factory.signed()])


@pytest.mark.parametrize("change", [
    {"v": 2}, {"records": []}, {"records": "text"}, {"records": [b"\x00", b"\x01"]}, {"extra": 1},
    {"records": [b"x"] * (MAX_BATCH_RECEIPTS + 1)}, {"records": [b"x" * MAX_BATCH_RECORD_BYTES, b"x"]},
])
def test_bad_batches_are_malformed_as_a_whole(factory: ReceiptFactory, change: dict[str, object]) -> None:
    good = pack_settled([factory.settled(), factory.settled()])[0]
    with pytest.raises(Malformed):
        records_from_gossip_body({**good, **change})


def test_a_batch_with_one_pending_receipt_is_malformed(factory: ReceiptFactory) -> None:
    body = {"v": 1, "kind": BATCH_KIND, "records": [factory.settled().encode(), factory.signed().encode()]}
    with pytest.raises(Malformed, match="without a countersignature"):
        records_from_gossip_body(body)
