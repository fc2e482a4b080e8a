"""Receipts: canonical encoding, signatures, countersignatures, and every way a forged one is refused."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperion_node.errors import InternalError
from hyperion_node.ledger.exceptions import BadCountersignature, BadSignature, Malformed, ReceiptRejected, WrongSigner
from hyperion_node.ledger.receipt import (
    Receipt,
    SignedReceipt,
    content_hash,
    countersign,
    receipt_from_final,
    sign_receipt,
    verify_receipt,
    with_countersignature,
)
from hyperion_node.ledger.signing import DOMAIN_COUNTERSIGN, sign
from hyperion_node.testing.receipts import ReceiptFactory, new_identity
from runtimes.interface import Final, Task

json_leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20) | st.binary(max_size=20) \
    | st.floats(allow_nan=False, allow_infinity=False)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
text = st.text(min_size=1, max_size=40)
uint = st.integers(0, 2**40)


@st.composite
def receipts(draw: st.DrawFn, factory: ReceiptFactory) -> Receipt:
    units, price, started = draw(uint), draw(uint), draw(uint)
    return Receipt(
        task_id=draw(text), runtime=draw(text), runtime_version=draw(text), item=draw(text), item_hash=draw(text),
        input_hash=draw(st.binary(min_size=32, max_size=32)), output_hash=draw(st.binary(min_size=32, max_size=32)),
        evidence=draw(st.dictionaries(st.text(max_size=10), json_value, max_size=5)), unit=draw(text),
        work=draw(st.dictionaries(st.text(max_size=10), uint, max_size=3)), units=units, price_per_unit=price,
        total=units * price, started_at_ms=started, finished_at_ms=started + draw(uint),
        hardware=draw(st.dictionaries(st.text(max_size=10), json_value, max_size=3)),
        worker=str(factory.worker.peer_id), requester=str(factory.requester.peer_id),
    )


def fails_to_verify(data: bytes) -> bool:
    try:
        verify_receipt(SignedReceipt.decode(data))
    except ReceiptRejected:
        return True
    return False


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_encode_decode_round_trip(factory: ReceiptFactory, data: st.DataObject) -> None:
    receipt = data.draw(receipts(factory))
    signed = sign_receipt(receipt, factory.worker)
    if data.draw(st.booleans()):
        signed = countersign(signed, factory.requester)
    encoded = signed.encode()
    decoded = SignedReceipt.decode(encoded)
    assert decoded == signed
    assert decoded.encode() == encoded
    assert Receipt.decode(receipt.encode()) == receipt
    verify_receipt(decoded)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_changing_any_single_byte_makes_verification_fail(factory: ReceiptFactory, data: st.DataObject) -> None:
    signed = sign_receipt(data.draw(receipts(factory)), factory.worker)
    if data.draw(st.booleans()):
        signed = countersign(signed, factory.requester)
    encoded = bytearray(signed.encode())
    position = data.draw(st.integers(0, len(encoded) - 1))
    encoded[position] = data.draw(st.integers(0, 255).filter(lambda b: b != encoded[position]))
    assert fails_to_verify(bytes(encoded))


def test_every_byte_of_a_settled_receipt_is_covered(factory: ReceiptFactory) -> None:
    """Exhaustively: every position, three different changes each."""
    encoded = countersign(factory.signed(), factory.requester).encode()
    for position in range(len(encoded)):
        for flip in (0x01, 0x80, 0xFF):
            tampered = bytearray(encoded)
            tampered[position] ^= flip
            assert fails_to_verify(bytes(tampered)), (position, flip)


@given(st.binary(max_size=2000))
def test_garbage_is_malformed_never_a_crash(data: bytes) -> None:
    with pytest.raises(Malformed):
        SignedReceipt.decode(data)


def test_forged_signature_is_rejected_as_bad_signature(factory: ReceiptFactory) -> None:
    receipt = factory.receipt()
    forger = new_identity()
    forged = dataclasses.replace(sign_receipt(receipt, factory.worker),
                                 signature=sign_receipt(dataclasses.replace(receipt, worker=str(forger.peer_id)),
                                                        forger).signature)
    with pytest.raises(BadSignature, match="not worker"):
        verify_receipt(forged)
    # Signing as somebody else is refused before any bytes leave the node.
    with pytest.raises(WrongSigner):
        sign_receipt(receipt, forger)


def test_signature_of_another_receipt_is_rejected(factory: ReceiptFactory) -> None:
    one, other = factory.signed(), factory.signed()
    with pytest.raises(BadSignature):
        verify_receipt(dataclasses.replace(one, signature=other.signature))


def test_countersignature_by_someone_else_than_the_requester_is_rejected(factory: ReceiptFactory) -> None:
    signed = factory.signed()
    impostor = new_identity()
    forged = dataclasses.replace(signed, countersignature=sign(impostor, DOMAIN_COUNTERSIGN,
                                                               signed.body + signed.signature))
    with pytest.raises(BadCountersignature, match="not requester"):
        verify_receipt(forged)
    with pytest.raises(BadCountersignature):
        with_countersignature(signed, forged.countersignature or b"")
    with pytest.raises(WrongSigner):
        countersign(signed, impostor)


def test_a_worker_signature_cannot_pass_for_a_countersignature(factory: ReceiptFactory) -> None:
    """Domain separation: same key, same bytes, different purpose."""
    me = new_identity()
    receipt = factory.receipt(worker=me, requester=me)
    signed = sign_receipt(receipt, me)
    with pytest.raises(BadCountersignature):
        verify_receipt(dataclasses.replace(signed, countersignature=signed.signature))


def test_countersign_checks_the_worker_signature_first(factory: ReceiptFactory) -> None:
    signed = factory.signed()
    broken = dataclasses.replace(signed, signature=bytes(64))
    with pytest.raises(BadSignature):
        countersign(broken, factory.requester)


def test_settled_is_countersigned_and_required_when_asked(factory: ReceiptFactory) -> None:
    signed = factory.signed()
    assert not signed.settled
    with pytest.raises(BadCountersignature, match="not countersigned"):
        verify_receipt(signed, require_countersignature=True)
    settled = countersign(signed, factory.requester)
    assert settled.settled
    assert settled.id == signed.id  # the id names the work, not its status
    verify_receipt(settled, require_countersignature=True)
    assert with_countersignature(signed, settled.countersignature or b"") == settled


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"total": 1}, "total"),
        ({"units": -1, "total": 0}, "units"),
        ({"input_hash": b"short"}, "input_hash"),
        ({"finished_at_ms": 0}, "finished before"),
        ({"task_id": ""}, "task_id"),
        ({"version": 2}, "version"),
        ({"work": {"tokens": 1.5}}, "work"),
        ({"evidence": {"x": float("nan")}}, "non-finite"),
    ],
)
def test_invariants_are_checked(factory: ReceiptFactory, change: dict[str, object], message: str) -> None:
    with pytest.raises(Malformed, match=message):
        dataclasses.replace(factory.receipt(), **change)  # type: ignore[arg-type]


def test_a_peer_id_without_an_inlined_key_is_malformed(factory: ReceiptFactory) -> None:
    signed = factory.signed()
    # A SHA-256 ("Qm...") peer ID, as RSA keys get: there is no key in it to verify with.
    receipt = dataclasses.replace(signed.receipt, worker="QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")
    with pytest.raises(Malformed, match="Ed25519"):
        verify_receipt(SignedReceipt(receipt, receipt.encode(), signed.signature))


def test_receipt_from_a_runtime_final(factory: ReceiptFactory) -> None:
    task = Task(task_id="t-1", runtime="inference", payload={"model": "m", "prompt": "hi", "max_tokens": 8})
    final = Final(output={"text": "hello", "tokens_in": 3, "tokens_out": 5},
                  evidence={"model": "m", "model_sha256": "cd" * 32, "seed": 7}, work_units=8.0)
    receipt = receipt_from_final(
        task, final, runtime_version="1", item="m", item_hash="cd" * 32, unit="token", price_per_unit=5,
        started_at_ms=10, finished_at_ms=20, hardware={"cpu": "x"}, worker=str(factory.worker.peer_id),
        requester=str(factory.requester.peer_id), work={"tokens_in": 3, "tokens_out": 5},
    )
    assert receipt.input_hash == content_hash(task.payload)
    assert receipt.output_hash == content_hash(final.output)
    assert receipt.evidence["seed"] == 7
    assert (receipt.units, receipt.total) == (8, 40)
    verify_receipt(sign_receipt(receipt, factory.worker))
    with pytest.raises(InternalError, match="whole units"):
        receipt_from_final(task, dataclasses.replace(final, work_units=8.5), runtime_version="1", item="m",
                           item_hash="x", unit="token", price_per_unit=5, started_at_ms=10, finished_at_ms=20,
                           hardware={}, worker="w", requester="r")


def test_content_hash_ignores_key_order_but_not_values() -> None:
    assert content_hash({"a": 1, "b": [1, 2]}) == content_hash({"b": [1, 2], "a": 1})
    assert content_hash({"a": 1}) != content_hash({"a": 2})
