"""Gossip messages of the receipts topic: settled receipts, epoch roots and disputes. Pure codecs; the P2P
layer publishes and receives them, :class:`~hyperion_node.ledger.reputation.ReputationView` verifies them.

The P2P layer carries every gossip message in its signed envelope (``hyperion_node.p2p.messages.seal``),
whose body is a map; ours is::

    {"v": 1, "kind": "settled" | "epoch" | "dispute", "record": <the record's own signed encoding>}

published with ``seal(identity, GOSSIP_TYPE, to_gossip_body(record))`` and read back with
``from_gossip_body(body)``. The envelope's signer is whoever publishes (any peer may forward a settled
receipt); the record carries its own signatures, checked by the reputation view. :func:`encode_message` /
:func:`decode_message` are the same body as canonical CBOR bytes, for transports without an envelope.

Anything over :data:`MAX_MESSAGE_BYTES`, not canonical, of an unknown kind or version is :class:`Malformed`
-- the sender's fault: drop it, count it, score it down.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hyperion_node.ledger import codec
from hyperion_node.ledger.dispute import Dispute
from hyperion_node.ledger.epochs import SignedEpoch
from hyperion_node.ledger.exceptions import Malformed
from hyperion_node.ledger.receipt import MAX_RECEIPT_BYTES, SignedReceipt

TOPIC = "/hyperion/receipts/1"
GOSSIP_TYPE = "receipt"  # the envelope type the P2P layer's receipts-topic validator expects
MESSAGE_VERSION = 1
# A receipt at its own cap plus this map; the P2P envelope around it must stay under the receipts topic's
# 64 KiB cap (hyperion_node/p2p/network.py MAX_RECEIPT_GOSSIP_BYTES), far below gossipsub's 1 MiB default.
MAX_MESSAGE_BYTES = MAX_RECEIPT_BYTES + 1024

GossipRecord = SignedReceipt | SignedEpoch | Dispute


def to_gossip_body(record: GossipRecord) -> dict[str, Any]:
    if isinstance(record, SignedReceipt):
        if not record.settled:
            raise Malformed("only settled (countersigned) receipts are gossiped")
        kind = "settled"
    elif isinstance(record, SignedEpoch):
        kind = "epoch"
    else:
        kind = "dispute"
    return {"v": MESSAGE_VERSION, "kind": kind, "record": record.encode()}


def from_gossip_body(body: Mapping[str, Any]) -> GossipRecord:
    if set(body) != {"v", "kind", "record"} or not codec.is_version(body["v"], MESSAGE_VERSION):
        raise Malformed("gossip message: expected {v: 1, kind, record}")
    kind, record = body["kind"], body["record"]
    if not isinstance(record, bytes) or len(record) > MAX_MESSAGE_BYTES:
        raise Malformed(f"gossip message: the record must be at most {MAX_MESSAGE_BYTES} bytes")
    if kind == "settled":
        signed = SignedReceipt.decode(record)
        if not signed.settled:
            raise Malformed("gossip message: a settled receipt without a countersignature")
        return signed
    if kind == "epoch":
        return SignedEpoch.decode(record)
    if kind == "dispute":
        return Dispute.decode(record)
    raise Malformed(f"gossip message: unknown kind {kind!r}")


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
