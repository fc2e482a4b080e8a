"""Receipts: what a worker did for a requester, signed by the worker, countersigned by the requester.

Wire and storage form (canonical CBOR, see :mod:`hyperion_node.ledger.codec`)::

    signed receipt = [envelope version = 1, body, worker signature, requester countersignature or null]
    body           = {"version": 1, "task_id": ..., "runtime": ..., ...}   -- every field of :class:`Receipt`
    receipt id     = SHA-256(body)
    signature      = Ed25519_worker("hyperion/receipt/worker/v1\\0" || body)
    countersig     = Ed25519_requester("hyperion/receipt/requester/v1\\0" || body || signature)

The countersignature covers the worker's signature too, so the requester attests to this exact signed
receipt. A receipt without a countersignature is *pending*; with one, *settled*; a receipt that a verifier has
rejected with a signed :class:`~hyperion_node.ledger.dispute.Dispute` is *disputed* (recorded in the ledger,
not in the receipt, which never changes once signed).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hyperion_node.errors import InternalError
from hyperion_node.ledger import codec
from hyperion_node.ledger.exceptions import BadCountersignature, BadSignature, Malformed, WrongSigner
from hyperion_node.ledger.signing import DOMAIN_COUNTERSIGN, DOMAIN_RECEIPT, PeerKeys, Signer, sign
from runtimes.interface import JSON, Final, Task

RECEIPT_VERSION = 1
ENVELOPE_VERSION = 1
# Evidence can hold a per-frame pixel hash for a whole render (240 frames x 32 bytes is 7.7 KB); 32 KiB is
# room for that and for the body of any receipt an honest runtime writes, and bounds what a peer can make
# us decode and store.
MAX_RECEIPT_BYTES = 32 * 1024
MAX_TEXT = 512  # task ids, runtime names, versions, item ids: short identifiers
HASH_BYTES = 32
# Work units, times and prices of one task fit comfortably in SQLite's signed 64-bit integers; totals are
# their product and may not, so totals are stored as text (see chain.py).
MAX_INT = 2**63 - 1


def content_hash(value: Mapping[str, JSON] | list[JSON]) -> bytes:
    """SHA-256 of a JSON-like value's canonical CBOR: the input and output hashes of a receipt."""
    return codec.sha256(codec.encode(codec.plain(value)))


@dataclass(frozen=True)
class Receipt:
    """The unsigned body of a receipt. Constructing one checks its invariants (``total`` included)."""

    task_id: str
    runtime: str
    runtime_version: str
    item: str  # model / circuit / scene identifier
    item_hash: str  # content hash of that model / circuit / scene (hex SHA-256 as the runtime reports it)
    input_hash: bytes  # content_hash(task payload)
    output_hash: bytes  # content_hash(final output)
    evidence: Mapping[str, JSON]  # whatever the runtime provides: commitments, proof hash, frame hashes
    unit: str  # "token", "constraint", "pixel-sample"
    work: Mapping[str, int]  # breakdown: {"tokens_in": 12, "tokens_out": 200}
    units: int  # billed work units
    price_per_unit: int  # atto-credits per unit (money.py)
    total: int  # units * price_per_unit, atto-credits
    started_at_ms: int  # Unix milliseconds, worker's clock
    finished_at_ms: int
    hardware: Mapping[str, JSON]  # summary of the machine that did the work
    worker: str  # base58 peer ID; its key signs
    requester: str  # base58 peer ID; its key countersigns
    version: int = RECEIPT_VERSION

    def __post_init__(self) -> None:
        what = "receipt"
        if not codec.is_version(self.version, RECEIPT_VERSION):
            raise Malformed(f"{what}: unsupported version {self.version!r} (this node reads {RECEIPT_VERSION})")
        for name in ("task_id", "runtime", "runtime_version", "item", "item_hash", "unit", "worker", "requester"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
                raise Malformed(f"{what}: {name} must be 1 to {MAX_TEXT} characters of text")
        for name in ("input_hash", "output_hash"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != HASH_BYTES:
                raise Malformed(f"{what}: {name} must be a {HASH_BYTES}-byte SHA-256 digest")
        for name in ("units", "price_per_unit", "started_at_ms", "finished_at_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
                raise Malformed(f"{what}: {name} must be an integer from 0 to 2^63-1")
        if type(self.total) is not int or self.total != self.units * self.price_per_unit:
            raise Malformed(f"{what}: total {self.total!r} is not units x price_per_unit")
        if self.finished_at_ms < self.started_at_ms:
            raise Malformed(f"{what}: finished before it started")
        # Held as plain dicts from here on (a frozen dataclass may still set its own fields in __post_init__),
        # so that encoding needs no further copies.
        # Decoded receipts already are; ones built here may hold tuples or read-only mappings.
        for name in ("evidence", "work", "hardware"):
            value = getattr(self, name)
            if type(value) is not dict or not codec.is_plain(value):
                value = codec.plain(value)
                codec.check_plain(value, what=f"{what} {name}")
                object.__setattr__(self, name, value)
        if not all(type(k) is str and type(v) is int and v >= 0 for k, v in self.work.items()):
            raise Malformed(f"{what}: work must map names to whole numbers >= 0")

    def to_map(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELD_NAMES}

    @functools.cached_property
    def body(self) -> bytes:
        """The canonical body: what the worker signs and what the receipt id hashes. Computed once."""
        return codec.encode(self.to_map())

    def encode(self) -> bytes:
        return self.body

    @functools.cached_property
    def id(self) -> bytes:
        return codec.sha256(self.body)

    @classmethod
    def decode(cls, body: bytes) -> Receipt:
        record = codec.decode(body, what="receipt body", max_bytes=MAX_RECEIPT_BYTES)
        if not isinstance(record, dict):
            raise Malformed("receipt body: not a map")
        names = set(_FIELD_NAMES)
        unknown = set(record) - names
        if unknown:
            raise Malformed(f"receipt body: unknown fields {sorted(unknown)}")
        missing = names - set(record)
        if missing:
            raise Malformed(f"receipt body: missing fields {sorted(missing)}")
        for name in ("evidence", "work", "hardware"):
            if not isinstance(record[name], dict):
                raise Malformed(f"receipt body: {name} must be a map")
        receipt = cls(**record)
        receipt.__dict__["body"] = body  # codec.decode checked that re-encoding gives exactly these bytes
        return receipt

    def summary(self) -> dict[str, Any]:
        """The receipt as JSON-friendly fields (hashes in hex), for `receipts verify` and the API."""
        data: dict[str, Any] = codec.plain(self.to_map())
        data["input_hash"] = self.input_hash.hex()
        data["output_hash"] = self.output_hash.hex()
        data["id"] = self.id.hex()
        return data


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Receipt))


@dataclass(frozen=True)
class SignedReceipt:
    """A receipt body as signed bytes, the worker's signature and, once settled, the countersignature.

    ``body`` is kept as the exact bytes that were signed; ``receipt`` is its decoded view.
    """

    receipt: Receipt
    body: bytes
    signature: bytes
    countersignature: bytes | None = None

    @property
    def id(self) -> bytes:
        return self.receipt.id

    @property
    def settled(self) -> bool:
        return self.countersignature is not None

    def encode(self) -> bytes:
        return codec.encode([ENVELOPE_VERSION, self.body, self.signature, self.countersignature])

    @classmethod
    def decode(cls, data: bytes) -> SignedReceipt:
        """Parse and check the form (not the signatures: see :func:`verify_receipt`)."""
        value = codec.decode(data, what="signed receipt", max_bytes=MAX_RECEIPT_BYTES + 256)
        if not isinstance(value, list) or len(value) != 4:
            raise Malformed("signed receipt: expected [version, body, signature, countersignature]")
        version, body, signature, countersignature = value
        if not codec.is_version(version, ENVELOPE_VERSION):
            raise Malformed(f"signed receipt: unsupported envelope version {version!r}")
        if not isinstance(body, bytes) or not isinstance(signature, bytes) or len(signature) != 64:
            raise Malformed("signed receipt: body must be bytes and the signature 64 bytes")
        if countersignature is not None and (not isinstance(countersignature, bytes) or len(countersignature) != 64):
            raise Malformed("signed receipt: the countersignature must be 64 bytes or null")
        return cls(Receipt.decode(body), body, signature, countersignature)


def sign_receipt(receipt: Receipt, worker: Signer) -> SignedReceipt:
    """The worker's signature over the body. The signer must be the worker the receipt names."""
    if str(worker.peer_id) != receipt.worker:
        raise WrongSigner(f"receipt names worker {receipt.worker}, not the signer {worker.peer_id}")
    body = receipt.encode()
    return SignedReceipt(receipt, body, sign(worker, DOMAIN_RECEIPT, body))


def verify_receipt(
    signed: SignedReceipt, keys: PeerKeys | None = None, *, require_countersignature: bool = False
) -> None:
    """Raise :class:`BadSignature` / :class:`BadCountersignature` unless every signature present verifies."""
    keys = keys or PeerKeys(capacity=2)
    receipt = signed.receipt
    if not keys.verify(receipt.worker, DOMAIN_RECEIPT, signed.body, signed.signature):
        raise BadSignature(f"receipt {receipt.id.hex()}: the signature is not worker {receipt.worker}'s",
                           peer_id=receipt.worker)
    if signed.countersignature is None:
        if require_countersignature:
            raise BadCountersignature(f"receipt {receipt.id.hex()}: not countersigned by the requester",
                                      peer_id=receipt.requester)
        return
    if not keys.verify(receipt.requester, DOMAIN_COUNTERSIGN, signed.body + signed.signature,
                       signed.countersignature):
        raise BadCountersignature(
            f"receipt {receipt.id.hex()}: the countersignature is not requester {receipt.requester}'s",
            peer_id=receipt.requester,
        )


def countersign(signed: SignedReceipt, requester: Signer, keys: PeerKeys | None = None) -> SignedReceipt:
    """The requester accepts the result: check the worker's signature, then countersign."""
    if str(requester.peer_id) != signed.receipt.requester:
        raise WrongSigner(f"receipt names requester {signed.receipt.requester}, not the signer {requester.peer_id}")
    verify_receipt(dataclasses.replace(signed, countersignature=None), keys)
    countersignature = sign(requester, DOMAIN_COUNTERSIGN, signed.body + signed.signature)
    return dataclasses.replace(signed, countersignature=countersignature)


def with_countersignature(
    signed: SignedReceipt, countersignature: bytes, keys: PeerKeys | None = None
) -> SignedReceipt:
    """The worker's side: attach the countersignature the requester sent back, after checking it."""
    settled = dataclasses.replace(signed, countersignature=countersignature)
    verify_receipt(settled, keys, require_countersignature=True)
    return settled


def receipt_from_final(
    task: Task,
    final: Final,
    *,
    runtime_version: str,
    item: str,
    item_hash: str,
    unit: str,
    price_per_unit: int,
    started_at_ms: int,
    finished_at_ms: int,
    hardware: Mapping[str, JSON],
    worker: str,
    requester: str,
    work: Mapping[str, int] | None = None,
) -> Receipt:
    """The receipt for a task a runtime finished: hashes of the payload and output, the runtime's evidence,
    its work units billed at ``price_per_unit`` (atto-credits)."""
    units = round(final.work_units)
    if units != final.work_units:
        raise InternalError(f"runtime {task.runtime} reported {final.work_units} work units; receipts bill whole units")
    return Receipt(
        task_id=task.task_id,
        runtime=task.runtime,
        runtime_version=runtime_version,
        item=item,
        item_hash=item_hash,
        input_hash=content_hash(task.payload),
        output_hash=content_hash(final.output),
        evidence=codec.plain(final.evidence),
        unit=unit,
        work=dict(work) if work is not None else {unit: units},
        units=units,
        price_per_unit=price_per_unit,
        total=units * price_per_unit,
        started_at_ms=started_at_ms,
        finished_at_ms=finished_at_ms,
        hardware=codec.plain(hardware),
        worker=worker,
        requester=requester,
    )
