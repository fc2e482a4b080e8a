"""Gossip codecs of the receipts topic: round trips, the P2P envelope they travel in, garbage refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperion_node.ledger.dispute import Dispute, sign_dispute
from hyperion_node.ledger.epochs import EpochHeader, SignedEpoch, sign_epoch
from hyperion_node.ledger.exceptions import Malformed
from hyperion_node.ledger.messages import (
    GOSSIP_TYPE,
    MAX_MESSAGE_BYTES,
    decode_message,
    encode_message,
    from_gossip_body,
    to_gossip_body,
)
from hyperion_node.ledger.receipt import countersign
from hyperion_node.p2p.messages import open_envelope, seal
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
