"""Ed25519 signatures under libp2p peer IDs, with a domain string per kind of record.

Verifying needs nothing but the signer's peer ID: an Ed25519 peer ID is an identity multihash of the
protobuf-serialized public key (libp2p peer-ids spec, "Inlined keys"), so the key is read out of the ID
itself. Every signature covers a domain string first, so that a signature made for one kind of record (a
receipt, a countersignature, an epoch root, a dispute, later a capability record) can never be presented as
another -- the same reason libp2p's signed envelopes carry a domain.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

from libp2p.crypto.keys import KeyType, PublicKey
from libp2p.peer.id import ID

from hyperion_node.ledger.exceptions import Malformed

SIGNATURE_BYTES = 64  # Ed25519 (RFC 8032 §5.1.6)

DOMAIN_RECEIPT = b"hyperion/receipt/worker/v1\x00"
DOMAIN_COUNTERSIGN = b"hyperion/receipt/requester/v1\x00"
DOMAIN_EPOCH = b"hyperion/epoch/v1\x00"
DOMAIN_DISPUTE = b"hyperion/dispute/v1\x00"
DOMAIN_DEALINGS = b"hyperion/dealings/v1\x00"


class Signer(Protocol):
    """What signs: the node's :class:`~hyperion_node.identity.Identity` satisfies it."""

    @property
    def peer_id(self) -> ID: ...

    def sign(self, data: bytes) -> bytes: ...


def public_key_of(peer_id: str) -> PublicKey:
    """The Ed25519 public key inlined in a base58 peer ID; :class:`Malformed` for anything else."""
    try:
        parsed = ID.from_base58(peer_id)
    except ValueError as exc:
        raise Malformed(f"peer ID {peer_id!r} is not base58") from exc
    key = parsed.extract_public_key()  # None for hashed (RSA-style) IDs and for garbage
    if key is None or key.get_type() != KeyType.Ed25519:
        raise Malformed(f"peer ID {peer_id!r} does not inline an Ed25519 public key")
    if ID.from_pubkey(key).to_bytes() != parsed.to_bytes():
        raise Malformed(f"peer ID {peer_id!r} is not the canonical ID of its key")
    return key


class PeerKeys:
    """Public keys by peer ID, remembered for the few peers a node deals with most.

    Reading a key out of a peer ID costs about as much as a quarter of a signature check (base58 is pure
    Python); a node verifies receipts from the same handful of peers again and again. Bounded, least
    recently used out first, so that the peers of a large network cannot grow it.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._keys: OrderedDict[str, PublicKey] = OrderedDict()

    def get(self, peer_id: str) -> PublicKey:
        key = self._keys.get(peer_id)
        if key is not None:
            self._keys.move_to_end(peer_id)
            return key
        key = public_key_of(peer_id)
        self._keys[peer_id] = key
        if len(self._keys) > self._capacity:
            self._keys.popitem(last=False)
        return key

    def verify(self, peer_id: str, domain: bytes, data: bytes, signature: bytes) -> bool:
        if len(signature) != SIGNATURE_BYTES:
            return False
        return bool(self.get(peer_id).verify(domain + data, signature))


def sign(signer: Signer, domain: bytes, data: bytes) -> bytes:
    return bytes(signer.sign(domain + data))
