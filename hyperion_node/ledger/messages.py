"""Gossip messages of the receipts topic: settled receipts, epoch roots and disputes. Pure codecs; the P2P
layer publishes and receives them, :class:`~hyperion_node.ledger.reputation.ReputationView` verifies them.

The P2P layer carries every gossip message in its signed envelope (``hyperion_node.p2p.messages.seal``),
whose body is a map; ours is::

    {"v": 1, "kind": "settled" | "epoch" | "case", "record": <the record's own signed encoding>}
    {"v": 1, "kind": "settled-batch", "records": [<a settled receipt's signed encoding>, ...]}  # 2 to 64

published with ``seal(identity, GOSSIP_TYPE, to_gossip_body(record))`` (``pack_settled(receipts)`` for the
bodies of many settled receipts) and read back with ``records_from_gossip_body(body)``. A worker gossips its
settled receipts together (``hyperion_node.tasks.gossip_outbox``): one message per receipt would cost every
peer a delivery each and run a busy worker into its peers' per-peer rate limit. The envelope's signer is
whoever publishes (any peer may forward a settled receipt); the record carries its own signatures, checked by
the reputation view. :func:`encode_message` / :func:`decode_message` are the same body (one record) as
canonical CBOR bytes, for transports without an envelope.

Anything over :data:`MAX_MESSAGE_BYTES`, not canonical, of an unknown kind or version is :class:`Malformed`
-- the sender's fault: drop it, count it, score it down.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hyperion_node.ledger import codec
from hyperion_node.ledger.dispute import MAX_CASE_BYTES, Dispute, DisputeCase
from hyperion_node.ledger.epochs import SignedEpoch
from hyperion_node.ledger.exceptions import Malformed
from hyperion_node.ledger.receipt import MAX_RECEIPT_BYTES, SignedReceipt

TOPIC = "/hyperion/receipts/1"
GOSSIP_TYPE = "receipt"  # the envelope type the P2P layer's receipts-topic validator expects
MESSAGE_VERSION = 1
# A receipt at its own cap plus this map; the P2P envelope around it must stay under the receipts topic's
# 64 KiB cap (hyperion_node/p2p/network.py MAX_RECEIPT_GOSSIP_BYTES), far below gossipsub's 1 MiB default.
MAX_MESSAGE_BYTES = max(MAX_RECEIPT_BYTES, MAX_CASE_BYTES) + 1024

# A batch of settled receipts: at most this many, of at most this many record bytes together, which leaves
# room under the receipts topic's 64 KiB envelope cap for the envelope and the batch's own encoding. A
# receipt is ~0.8 KiB (64 fill ~51 KiB); one at its own 32 KiB cap travels alone or with a few others.
MAX_BATCH_RECEIPTS = 64
MAX_BATCH_RECORD_BYTES = 56 * 1024
BATCH_KIND = "settled-batch"

GossipRecord = SignedReceipt | SignedEpoch | DisputeCase | Dispute


def to_gossip_body(record: GossipRecord) -> dict[str, Any]:
    if isinstance(record, SignedReceipt):
        if not record.settled:
            raise Malformed("only settled (countersigned) receipts are gossiped")
        kind = "settled"
    elif isinstance(record, SignedEpoch):
        kind = "epoch"
    elif isinstance(record, DisputeCase):
        kind = "case"
    else:
        kind = "dispute"
    return {"v": MESSAGE_VERSION, "kind": kind, "record": record.encode()}


def pack_settled(receipts: Sequence[SignedReceipt]) -> list[dict[str, Any]]:
    """The gossip bodies of many settled receipts, in order: batches within the caps, a lone receipt (or one
    too large to share a batch) as a plain ``settled`` body, which every version of the topic reads."""
    bodies: list[dict[str, Any]] = []
    batch: list[bytes] = []
    size = 0

    def close() -> None:
        if len(batch) == 1:
            bodies.append({"v": MESSAGE_VERSION, "kind": "settled", "record": batch[0]})
        elif batch:
            bodies.append({"v": MESSAGE_VERSION, "kind": BATCH_KIND, "records": list(batch)})
        batch.clear()

    for signed in receipts:
        if not signed.settled:
            raise Malformed("only settled (countersigned) receipts are gossiped")
        record = signed.encode()
        if batch and (len(batch) == MAX_BATCH_RECEIPTS or size + len(record) > MAX_BATCH_RECORD_BYTES):
            close()
            size = 0
        batch.append(record)
        size += len(record)
    close()
    return bodies


def records_from_gossip_body(body: Mapping[str, Any]) -> list[GossipRecord]:
    """Every record of a gossip body: one, or the receipts of a batch. Any malformed part makes the whole
    message malformed (its publisher's fault); whether each record verifies is the reputation view's check."""
    if body.get("kind") != BATCH_KIND:
        return [from_gossip_body(body)]
    if set(body) != {"v", "kind", "records"} or not codec.is_version(body["v"], MESSAGE_VERSION):
        raise Malformed("gossip batch: expected {v: 1, kind, records}")
    records = body["records"]
    if (not isinstance(records, list) or not 2 <= len(records) <= MAX_BATCH_RECEIPTS
            or not all(isinstance(r, bytes) for r in records)
            or sum(len(r) for r in records) > MAX_BATCH_RECORD_BYTES):
        raise Malformed(f"gossip batch: 2 to {MAX_BATCH_RECEIPTS} settled receipts of at most "
                        f"{MAX_BATCH_RECORD_BYTES} bytes together")
    return [_settled_receipt(r) for r in records]


def from_gossip_body(body: Mapping[str, Any]) -> GossipRecord:
    if set(body) != {"v", "kind", "record"} or not codec.is_version(body["v"], MESSAGE_VERSION):
        raise Malformed("gossip message: expected {v: 1, kind, record}")
    kind, record = body["kind"], body["record"]
    if not isinstance(record, bytes) or len(record) > MAX_MESSAGE_BYTES:
        raise Malformed(f"gossip message: the record must be at most {MAX_MESSAGE_BYTES} bytes")
    if kind == "settled":
        return _settled_receipt(record)
    if kind == "epoch":
        return SignedEpoch.decode(record)
    if kind == "case":  # the form only: whether anyone believes it is verify/cases.py's to say
        return DisputeCase.decode(record)
    if kind == "dispute":  # a bare dispute, as nodes before dispute cases sent them: read, never believed
        return Dispute.decode(record)
    raise Malformed(f"gossip message: unknown kind {kind!r}")


def _settled_receipt(record: bytes) -> SignedReceipt:
    signed = SignedReceipt.decode(record)
    if not signed.settled:
        raise Malformed("gossip message: a settled receipt without a countersignature")
    return signed


def encode_message(record: GossipRecord) -> bytes:
    data = codec.encode(to_gossip_body(record))
    if len(data) > MAX_MESSAGE_BYTES:
        raise Malformed(f"a gossip message of {len(data)} bytes is over the cap of {MAX_MESSAGE_BYTES}")
    return data


def decode_message(data: bytes) -> GossipRecord:
    body = codec.decode(data, what="gossip message", max_bytes=MAX_MESSAGE_BYTES)
    if not isinstance(body, dict):
        raise Malformed("gossip message: not a map")
    return from_gossip_body(body)
