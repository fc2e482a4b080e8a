"""Checks shared by the nodes of one process (the demo on the memory fabric, ``hyperion_node/inprocess.py``):
a repeated check gets the first one's answer, and a bad signature or bad bytes are refused every time."""

from __future__ import annotations

import dataclasses

import pytest

from hyperion_node.inprocess import active, shared_checks
from hyperion_node.ledger.exceptions import BadSignature, Malformed
from hyperion_node.ledger.receipt import SignedReceipt, verify_receipt
from hyperion_node.testing.receipts import ReceiptFactory


def test_repeats_are_answered_once_and_failures_are_never_kept(factory: ReceiptFactory) -> None:
    settled = factory.settled()
    data = settled.encode()
    forged = dataclasses.replace(settled, signature=bytes(64)).encode()
    assert active() is None
    with shared_checks() as memo:
        first = SignedReceipt.decode(data)
        verify_receipt(first, require_countersignature=True)
        hits = memo.hits
        again = SignedReceipt.decode(data)
        verify_receipt(again, require_countersignature=True)
        assert again is first
        assert memo.hits == hits + 3  # the decode, the worker's and the requester's signatures
        for _ in range(2):  # the same body with a bad signature: checked, and refused, each time
            with pytest.raises(BadSignature):
                verify_receipt(SignedReceipt.decode(forged))
        with pytest.raises(Malformed):
            SignedReceipt.decode(data[:-1])
    assert active() is None  # and a daemon's checks are its own again
