"""A node's dealings, summarised and signed: with whom it settled work, and how often.

Standing (``ledger/trust.py``) is transitive trust rooted in a node's own dealings. Its first step needs no one
else: the peers this node served or paid. The next steps need what those peers say of theirs, and settled
receipts used to be gossiped to every node for that, at a cost that grew with the size of the network. Now
each node signs a summary of its own settled receipts -- its counterparts and how many receipts it holds with
each, the most active first -- and stores it in the DHT (``/hyperion/dealings/<peer ID>``); a node reads the
summaries of the peers it dealt with itself, and of no one else, so its cost is set by its own dealings.

A summary is a claim: a peer may vouch for anyone in it, as EigenTrust's local trust values are claims. What
flows through it is only the trust the reading node gave the claimant, split over what it claims and no more
receipts in all than the reader settled with the claimant itself (``reputation.VOUCH_PER_RECEIPT``): a liar
spends its own standing. Wire form: ``[1, body, signature]``, body ``{"peer", "at_ms", "counts": [[peer,
count], ...]}`` in canonical CBOR, signed under ``DOMAIN_DEALINGS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hyperion_node.ledger import codec
from hyperion_node.ledger.exceptions import BadSignature, Malformed
from hyperion_node.ledger.signing import DOMAIN_DEALINGS, PeerKeys, Signer, sign

VERSION = 1
MAX_COUNTERPARTS = 64  # the trust graph keeps as many edges per peer (TrustGraph.max_edges)
MAX_BYTES = 8 * 1024


@dataclass(frozen=True)
class Dealings:
    peer: str
    at_ms: int
    counts: tuple[tuple[str, int], ...]
    body: bytes
    signature: bytes

    def encode(self) -> bytes:
        return codec.encode([VERSION, self.body, self.signature])

    @classmethod
    def decode(cls, data: bytes) -> Dealings:
        value = codec.decode(data, what="dealings", max_bytes=MAX_BYTES)
        if not isinstance(value, list) or len(value) != 3 or not codec.is_version(value[0], VERSION):
            raise Malformed("dealings: expected [1, body, signature]")
        _, body, signature = value
        if not isinstance(body, bytes) or not isinstance(signature, bytes) or len(signature) != 64:
            raise Malformed("dealings: body must be bytes and the signature 64 bytes")
        record = codec.decode(body, what="dealings body", max_bytes=MAX_BYTES)
        if not isinstance(record, dict) or set(record) != {"peer", "at_ms", "counts"}:
            raise Malformed("dealings body: expected peer, at_ms, counts")
        peer = codec.field(record, "peer", str, what="dealings")
        at_ms = codec.field(record, "at_ms", int, what="dealings")
        counts = record["counts"]
        if not isinstance(counts, list) or len(counts) > MAX_COUNTERPARTS:
            raise Malformed(f"dealings: at most {MAX_COUNTERPARTS} counterparts")
        parsed = []
        for item in counts:
            if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str) or len(item[0]) > 128
                    or isinstance(item[1], bool) or not isinstance(item[1], int) or not 0 < item[1] < 2**40):
                raise Malformed("dealings: each counterpart is [peer ID, receipts > 0]")
            parsed.append((item[0], item[1]))
        return cls(peer, at_ms, tuple(parsed), body, signature)


def sign_dealings(counts: Sequence[tuple[str, int]], at_ms: int, signer: Signer) -> Dealings:
    peer = str(signer.peer_id)
    top = tuple(sorted(((p, n) for p, n in counts if p != peer and n > 0), key=lambda c: (-c[1], c[0])))
    top = top[:MAX_COUNTERPARTS]
    body = codec.encode({"peer": peer, "at_ms": at_ms, "counts": [list(c) for c in top]})
    return Dealings(peer, at_ms, top, body, sign(signer, DOMAIN_DEALINGS, body))


def verify_dealings(dealings: Dealings, keys: PeerKeys | None = None) -> None:
    keys = keys or PeerKeys(capacity=1)
    if not keys.verify(dealings.peer, DOMAIN_DEALINGS, dealings.body, dealings.signature):
        raise BadSignature(f"dealings of {dealings.peer}: the signature is not theirs", peer_id=dealings.peer)
