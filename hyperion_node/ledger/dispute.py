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
from hyperion_node.ledger.receipt import SignedReceipt, content_hash, verify_receipt
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


# -- a dispute with its proof ----------------------------------------------------------------------------------

CASE_VERSION = 1
# A case travels in one frame of /hyperion/cases/1 (protocols/cases.py): an inference result's prompt and
# tokens fit; a ZK key or a scene does not, and such a case travels without its evidence (``evidence`` None),
# so that only its verifiers' standing can confirm it.
MAX_CASE_BYTES = 60 * 1024
MAX_CASE_DISPUTES = 8


@dataclass(frozen=True)
class Evidence:
    """What the verifiers re-ran: the task's payload and the worker's output (bound to the receipt by its
    input and output hashes), and the one partial result a render check re-renders."""

    payload: Any
    output: Any
    sample: Any = None

    def to_map(self) -> dict[str, Any]:
        body: dict[str, Any] = {"payload": self.payload, "output": self.output}
        if self.sample is not None:
            body["sample"] = self.sample
        return body


@dataclass(frozen=True)
class DisputeCase:
    """A dispute that carries its proof: the settled receipt (both signatures), the verifiers' signed disputes
    of it, and, where it fits, the evidence they re-ran. ``hyperion_node.verify.judge`` decides whether a node
    believes it; this class only checks that it is what it says (``check_case``)."""

    receipt: bytes  # SignedReceipt.encode() of the settled receipt
    disputes: tuple[bytes, ...]  # Dispute.encode() of each verifier's
    evidence: Evidence | None

    def encode(self) -> bytes:
        body: dict[str, Any] = {"v": CASE_VERSION, "receipt": self.receipt, "disputes": list(self.disputes)}
        if self.evidence is not None:
            body["evidence"] = self.evidence.to_map()
        return codec.encode(body)

    @classmethod
    def decode(cls, data: bytes) -> DisputeCase:
        value = codec.decode(data, what="dispute case", max_bytes=MAX_CASE_BYTES)
        if not isinstance(value, dict) or not codec.is_version(value.get("v"), CASE_VERSION):
            raise Malformed("dispute case: expected a map of version 1")
        if not set(value) <= {"v", "receipt", "disputes", "evidence"}:
            raise Malformed("dispute case: unknown fields")
        receipt, disputes = value.get("receipt"), value.get("disputes")
        if not isinstance(receipt, bytes) or not isinstance(disputes, list) or not 1 <= len(disputes) <= \
                MAX_CASE_DISPUTES or not all(isinstance(d, bytes) for d in disputes):
            raise Malformed(f"dispute case: a receipt and 1 to {MAX_CASE_DISPUTES} disputes")
        evidence = value.get("evidence")
        parsed: Evidence | None = None
        if evidence is not None:
            if not isinstance(evidence, dict) or not {"payload", "output"} <= set(evidence) <= \
                    {"payload", "output", "sample"}:
                raise Malformed("dispute case: evidence is {payload, output, sample?}")
            if not all(isinstance(evidence[k], dict) for k in evidence):
                raise Malformed("dispute case: evidence parts are maps")
            parsed = Evidence(evidence["payload"], evidence["output"], evidence.get("sample"))
        return cls(receipt, tuple(disputes), parsed)


@dataclass(frozen=True)
class CheckedCase:
    """A case whose form, signatures and bindings hold: what it proves, before anyone's judgement."""

    case: DisputeCase
    receipt: Any  # the SignedReceipt (typed loosely: receipt.py imports this module's neighbours)
    disputes: tuple[Dispute, ...]
    bound: bool  # the evidence is there and its hashes are the receipt's: anyone serving the item can re-run it

    @property
    def worker(self) -> str:
        return str(self.receipt.receipt.worker)

    @property
    def requester(self) -> str:
        return str(self.receipt.receipt.requester)

    @property
    def verifiers(self) -> tuple[str, ...]:
        return tuple(d.verifier for d in self.disputes)

    @property
    def independent(self) -> tuple[str, ...]:
        """The verifiers that are not the accusing requester: only they can confirm the case."""
        return tuple(v for v in self.verifiers if v != self.requester)


def check_case(case: DisputeCase, keys: PeerKeys | None = None) -> CheckedCase:
    """Check everything a case claims that needs no judgement; ``Malformed`` / ``BadSignature`` otherwise.

    * the receipt is settled and both its signatures verify;
    * each dispute verifies, names this receipt and its worker, and is signed by a distinct verifier that is
      not the worker (the requester's own dispute may be among them: it is the accusation, and never counts
      as a confirmation of itself, ``verify.cases``);
    * the evidence, when present, hashes to the receipt's input and output hashes (else it is not the work
      the worker signed, and the case is refused: a wrong output proves nothing against the worker).
    """
    keys = keys or PeerKeys(capacity=MAX_CASE_DISPUTES + 2)
    signed = SignedReceipt.decode(case.receipt)
    verify_receipt(signed, keys, require_countersignature=True)
    receipt = signed.receipt
    disputes: list[Dispute] = []
    for raw in case.disputes:
        dispute = Dispute.decode(raw)
        verify_dispute(dispute, keys)
        if dispute.receipt_id != signed.id or dispute.worker != receipt.worker:
            raise Malformed("dispute case: a dispute of another receipt or worker", peer_id=dispute.verifier)
        if dispute.verifier == receipt.worker:
            raise Malformed("dispute case: a worker does not dispute its own receipt", peer_id=dispute.verifier)
        if dispute.verifier in {d.verifier for d in disputes}:
            raise Malformed("dispute case: one verifier twice", peer_id=dispute.verifier)
        disputes.append(dispute)
    bound = False
    if case.evidence is not None:
        if (content_hash(case.evidence.payload) != receipt.input_hash
                or content_hash(case.evidence.output) != receipt.output_hash):
            raise Malformed("dispute case: the evidence is not the work the receipt commits to")
        bound = True
    return CheckedCase(case, signed, tuple(disputes), bound)
