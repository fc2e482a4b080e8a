"""Settlement epochs: every N receipts or T minutes the node signs one Merkle root over the epoch's receipts.

One signature then stands for the whole epoch, and any single receipt is proven part of it by an inclusion
proof of log2(N) hashes. Pure data and checks; the ledger (chain.py) decides when to close and stores them.

Forms, all canonical CBOR:

    signed epoch    = [1, header, signature]
    header          = {"version", "number", "signer", "first_position", "last_position", "count", "root",
                       "chain_head", "closed_at_ms"}
    signature       = Ed25519_signer("hyperion/epoch/v1\\0" || header)
    epoch export    = {"type": "hyperion/epoch-export", "version": 1, "epoch": signed epoch, "receipts": [...]}
    inclusion proof = {"type": "hyperion/inclusion-proof", "version": 1, "epoch": signed epoch,
                       "receipt": signed receipt, "index": i, "path": [hash, ...]}

The leaves are the receipts exactly as the ledger first appended them (signed receipt bytes), in chain order.
``chain_head`` is the hash of the ledger entry just before the epoch's own entry, so the signature also pins
every status change recorded up to then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hyperion_node.ledger import codec
from hyperion_node.ledger.exceptions import BadSignature, Malformed, NotInProof
from hyperion_node.ledger.merkle import MerkleTree, verify_inclusion
from hyperion_node.ledger.receipt import SignedReceipt, verify_receipt
from hyperion_node.ledger.signing import DOMAIN_EPOCH, PeerKeys, Signer, sign

EPOCH_VERSION = 1
MAX_EPOCH_BYTES = 2048
# An exported epoch holds all its receipts: 100,000 receipts of the 32 KiB maximum would be 3.2 GB, but
# receipts are about 1 KB, so 1 GiB is room for far larger epochs than the defaults close.
MAX_FILE_BYTES = 1 << 30
EXPORT_TYPE = "hyperion/epoch-export"
PROOF_TYPE = "hyperion/inclusion-proof"
_HEADER_FIELDS = ("version", "number", "signer", "first_position", "last_position", "count", "root",
                  "chain_head", "closed_at_ms")


@dataclass(frozen=True)
class EpochPolicy:
    """When to close an epoch: at ``every_receipts`` receipts, or when its oldest receipt has waited
    ``every_seconds``. An epoch with no receipts is never closed."""

    every_receipts: int
    every_seconds: float

    def due(self, open_receipts: int, oldest_open_ms: int | None, now_ms: int) -> bool:
        if open_receipts <= 0:
            return False
        if open_receipts >= self.every_receipts:
            return True
        return oldest_open_ms is not None and now_ms - oldest_open_ms >= self.every_seconds * 1000


@dataclass(frozen=True)
class EpochHeader:
    number: int  # 1, 2, 3... per ledger
    signer: str  # the ledger owner's peer ID
    first_position: int  # chain positions the epoch covers, both ends included
    last_position: int
    count: int  # receipts (leaves) in the epoch
    root: bytes  # Merkle root over the receipts
    chain_head: bytes  # entry hash at last_position
    closed_at_ms: int
    version: int = EPOCH_VERSION

    def encode(self) -> bytes:
        return codec.encode({name: getattr(self, name) for name in _HEADER_FIELDS})

    @classmethod
    def decode(cls, body: bytes) -> EpochHeader:
        record = codec.decode(body, what="epoch header", max_bytes=MAX_EPOCH_BYTES)
        if not isinstance(record, dict) or set(record) != set(_HEADER_FIELDS):
            raise Malformed("epoch header: wrong fields")
        ints = {name: codec.field(record, name, int, what="epoch header")
                for name in ("version", "number", "first_position", "last_position", "count", "closed_at_ms")}
        if ints["version"] != EPOCH_VERSION:
            raise Malformed(f"epoch header: unsupported version {ints['version']}")
        if min(ints.values()) < 0 or ints["last_position"] < ints["first_position"] or ints["count"] < 1:
            raise Malformed("epoch header: impossible positions or count")
        root = codec.field(record, "root", bytes, what="epoch header")
        head = codec.field(record, "chain_head", bytes, what="epoch header")
        if len(root) != 32 or len(head) != 32:
            raise Malformed("epoch header: root and chain_head must be 32 bytes")
        return cls(number=ints["number"], signer=codec.field(record, "signer", str, what="epoch header"),
                   first_position=ints["first_position"], last_position=ints["last_position"],
                   count=ints["count"], root=root, chain_head=head, closed_at_ms=ints["closed_at_ms"])

    def summary(self) -> dict[str, Any]:
        return {"number": self.number, "signer": self.signer, "first_position": self.first_position,
                "last_position": self.last_position, "receipts": self.count, "root": self.root.hex(),
                "chain_head": self.chain_head.hex(), "closed_at_ms": self.closed_at_ms}


@dataclass(frozen=True)
class SignedEpoch:
    header: EpochHeader
    body: bytes
    signature: bytes

    def encode(self) -> bytes:
        return codec.encode([EPOCH_VERSION, self.body, self.signature])

    @classmethod
    def decode(cls, data: bytes) -> SignedEpoch:
        value = codec.decode(data, what="signed epoch", max_bytes=MAX_EPOCH_BYTES + 128)
        if not isinstance(value, list) or len(value) != 3 or not codec.is_version(value[0], EPOCH_VERSION):
            raise Malformed("signed epoch: expected [1, header, signature]")
        _, body, signature = value
        if not isinstance(body, bytes) or not isinstance(signature, bytes) or len(signature) != 64:
            raise Malformed("signed epoch: header must be bytes and the signature 64 bytes")
        return cls(EpochHeader.decode(body), body, signature)


def sign_epoch(header: EpochHeader, signer: Signer) -> SignedEpoch:
    body = header.encode()
    return SignedEpoch(header, body, sign(signer, DOMAIN_EPOCH, body))


def verify_epoch(epoch: SignedEpoch, keys: PeerKeys | None = None) -> None:
    keys = keys or PeerKeys(capacity=1)
    if not keys.verify(epoch.header.signer, DOMAIN_EPOCH, epoch.body, epoch.signature):
        raise BadSignature(f"epoch {epoch.header.number}: the signature is not {epoch.header.signer}'s",
                           peer_id=epoch.header.signer)


@dataclass(frozen=True)
class EpochExport:
    """A closed epoch with all its receipts: enough to check every receipt and the root offline."""

    epoch: SignedEpoch
    receipts: tuple[bytes, ...]

    def encode(self) -> bytes:
        return codec.encode({"type": EXPORT_TYPE, "version": 1, "epoch": self.epoch.encode(),
                             "receipts": list(self.receipts)})


@dataclass(frozen=True)
class InclusionProof:
    """One receipt, the signed epoch it belongs to, and the audit path from the receipt to the root."""

    epoch: SignedEpoch
    receipt: bytes
    index: int
    path: tuple[bytes, ...]

    def encode(self) -> bytes:
        return codec.encode({"type": PROOF_TYPE, "version": 1, "epoch": self.epoch.encode(),
                             "receipt": self.receipt, "index": self.index, "path": list(self.path)})

    def summary(self) -> dict[str, Any]:
        return {"epoch": self.epoch.header.summary(), "receipt_id": SignedReceipt.decode(self.receipt).id.hex(),
                "index": self.index, "path": [h.hex() for h in self.path]}


@dataclass(frozen=True)
class Verified:
    """What a file held, once every signature, hash and proof in it checked out."""

    kind: str  # "receipt", "epoch" or "inclusion-proof"
    summary: dict[str, Any] = field(default_factory=dict)


def verify_export(export: EpochExport, keys: PeerKeys | None = None) -> None:
    keys = keys or PeerKeys()
    header = export.epoch.header
    verify_epoch(export.epoch, keys)
    if len(export.receipts) != header.count:
        raise Malformed(f"epoch {header.number}: holds {len(export.receipts)} receipts, its header says {header.count}")
    for data in export.receipts:
        verify_receipt(SignedReceipt.decode(data), keys)
    if MerkleTree.of(export.receipts).root != header.root:
        raise NotInProof(f"epoch {header.number}: the receipts do not hash to the signed root")


def verify_proof(proof: InclusionProof, keys: PeerKeys | None = None) -> SignedReceipt:
    keys = keys or PeerKeys(capacity=2)
    verify_epoch(proof.epoch, keys)
    signed = SignedReceipt.decode(proof.receipt)
    verify_receipt(signed, keys)
    header = proof.epoch.header
    if not verify_inclusion(proof.receipt, proof.index, header.count, proof.path, header.root):
        raise NotInProof(f"receipt {signed.id.hex()} is not leaf {proof.index} of epoch {header.number}'s root")
    return signed


def _bytes_list(value: Any, what: str) -> tuple[bytes, ...]:
    if not isinstance(value, list) or not all(isinstance(item, bytes) for item in value):
        raise Malformed(f"{what}: expected a list of byte strings")
    return tuple(value)


def parse_file(data: bytes) -> SignedReceipt | EpochExport | InclusionProof:
    """A receipt, an exported epoch or an inclusion proof, told apart by their form."""
    value = codec.decode(data, what="file", max_bytes=MAX_FILE_BYTES)
    if isinstance(value, list):
        return SignedReceipt.decode(data)
    if not isinstance(value, dict) or not codec.is_version(value.get("version"), 1):
        raise Malformed("file: neither a receipt, an epoch export nor an inclusion proof")
    kind = value.get("type")
    if kind == EXPORT_TYPE and set(value) == {"type", "version", "epoch", "receipts"}:
        epoch = SignedEpoch.decode(codec.field(value, "epoch", bytes, what=kind))
        return EpochExport(epoch, _bytes_list(value["receipts"], kind))
    if kind == PROOF_TYPE and set(value) == {"type", "version", "epoch", "receipt", "index", "path"}:
        epoch = SignedEpoch.decode(codec.field(value, "epoch", bytes, what=kind))
        path = _bytes_list(value["path"], kind)
        return InclusionProof(epoch, codec.field(value, "receipt", bytes, what=kind),
                              codec.field(value, "index", int, what=kind), path)
    raise Malformed(f"file: unknown type {kind!r}")


def verify_file(data: bytes, keys: PeerKeys | None = None) -> Verified:
    """Check everything a file holds, offline: what ``hyperion-node receipts verify FILE`` runs."""
    keys = keys or PeerKeys()
    record = parse_file(data)
    if isinstance(record, SignedReceipt):
        verify_receipt(record, keys)
        summary = record.receipt.summary()
        summary["status"] = "settled" if record.settled else "pending"
        return Verified("receipt", summary)
    if isinstance(record, EpochExport):
        verify_export(record, keys)
        return Verified("epoch", record.epoch.header.summary())
    signed = verify_proof(record, keys)
    return Verified("inclusion-proof", {**record.summary(), "receipt": signed.receipt.summary()})
