"""Disputes: a verifier's signed statement that a receipt's work does not check out.

Wire form: ``[1, body, signature]`` with ``body = {"receipt_id", "worker", "verifier", "reason", "at_ms"}`` in
canonical CBOR and ``signature = Ed25519_verifier("hyperion/dispute/v1\\0" || body)``. It names the worker so
that a peer can count it against the worker's reputation without holding the receipt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hyperion_node.ledger import codec
from hyperion_node.ledger.exceptions import BadSignature, Malformed
from hyperion_node.ledger.signing import DOMAIN_DISPUTE, PeerKeys, Signer, sign

DISPUTE_VERSION = 1
MAX_DISPUTE_BYTES = 4096
MAX_REASON = 1024


@dataclass(frozen=True)
class Dispute:
    receipt_id: bytes
    worker: str
    verifier: str
    reason: str
    at_ms: int
    body: bytes
    signature: bytes

    def encode(self) -> bytes:
        return codec.encode([DISPUTE_VERSION, self.body, self.signature])

    @staticmethod
    def _body(receipt_id: bytes, worker: str, verifier: str, reason: str, at_ms: int) -> bytes:
        return codec.encode({"receipt_id": receipt_id, "worker": worker, "verifier": verifier,
                             "reason": reason, "at_ms": at_ms})

    @classmethod
    def decode(cls, data: bytes) -> Dispute:
        value = codec.decode(data, what="dispute", max_bytes=MAX_DISPUTE_BYTES)
        if not isinstance(value, list) or len(value) != 3 or not codec.is_version(value[0], DISPUTE_VERSION):
            raise Malformed("dispute: expected [1, body, signature]")
        _, body, signature = value
        if not isinstance(body, bytes) or not isinstance(signature, bytes) or len(signature) != 64:
            raise Malformed("dispute: body must be bytes and the signature 64 bytes")
        record: Any = codec.decode(body, what="dispute body", max_bytes=MAX_DISPUTE_BYTES)
        if not isinstance(record, dict) or set(record) != {"receipt_id", "worker", "verifier", "reason", "at_ms"}:
            raise Malformed("dispute body: wrong fields")
        receipt_id = codec.field(record, "receipt_id", bytes, what="dispute")
        reason = codec.field(record, "reason", str, what="dispute")
        at_ms = codec.field(record, "at_ms", int, what="dispute")
        if len(receipt_id) != 32 or not reason or len(reason) > MAX_REASON or at_ms < 0:
            raise Malformed("dispute body: bad receipt id, reason or time")
        return cls(receipt_id, codec.field(record, "worker", str, what="dispute"),
                   codec.field(record, "verifier", str, what="dispute"), reason, at_ms, body, signature)


def sign_dispute(receipt_id: bytes, worker: str, reason: str, at_ms: int, verifier: Signer) -> Dispute:
    if len(receipt_id) != 32 or not reason or len(reason) > MAX_REASON:
        raise Malformed("dispute: a 32-byte receipt id and a reason of 1 to 1024 characters are needed")
    verifier_id = str(verifier.peer_id)
    body = Dispute._body(receipt_id, worker, verifier_id, reason, at_ms)
    return Dispute(receipt_id, worker, verifier_id, reason, at_ms, body, sign(verifier, DOMAIN_DISPUTE, body))


def verify_dispute(dispute: Dispute, keys: PeerKeys | None = None) -> None:
    keys = keys or PeerKeys(capacity=1)
    if not keys.verify(dispute.verifier, DOMAIN_DISPUTE, dispute.body, dispute.signature):
        raise BadSignature(f"dispute of receipt {dispute.receipt_id.hex()}: the signature is not verifier "
                           f"{dispute.verifier}'s", peer_id=dispute.verifier)
