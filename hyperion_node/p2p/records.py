"""The signed records a node keeps in the DHT, and the validator every one passes before it is stored or read.

Under our namespace (``/hyperion/...``; the DHT refuses every other):

* ``/hyperion/<digest>``: its CapabilityRecord (what it offers, at what price; p2p/messages.py), highest
  sequence number wins, an expired or replayed one refused;
* ``/hyperion/epoch/<digest>``: its latest signed epoch root (ledger/epochs.py), highest number wins;
* ``/hyperion/dealings/<digest>``: its signed dealings summary (ledger/dealings.py), newest wins.

``<digest>`` names the peer: 26 characters of the SHA-256 of its ID (``messages.peer_digest``), so that every
key stays within the 50 bytes py-libp2p's FIND_NODE takes.

Each must be signed by the peer its key names. What fails is counted and charged to the peer that sent it to
this node (a PUT_VALUE's remote, authenticated by Noise: ``SENDER``), never to the peer the record names: a
record with a broken signature or under the wrong key may name anyone, so charging the named peer would let
a stranger frame it. A record that arrives in the answer to our own lookup has no sender we can name (it
passed through the DHT), and what anyone could resend (an expired or replayed record) is no proof of bad
faith: those are counted and charged to nobody.

A capability record that one peer stores here for another is kept for the DHT (serving it is a DHT server's
duty) but does not enter the peer table: only a record this node looked up itself, or one its own peer
stored, does. A stranger storing records of fresh keys would otherwise have listed them as live providers
here, each a `joined` event written to the store (seen: 3,822 listed after one 12 s flood; issue #21).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from contextvars import ContextVar
from typing import Protocol

from libp2p.records.validator import Validator

from hyperion_node.ledger.dealings import Dealings, verify_dealings
from hyperion_node.ledger.epochs import SignedEpoch, verify_epoch
from hyperion_node.ledger.exceptions import ReceiptRejected
from hyperion_node.p2p.messages import CapabilityRecord, MalformedMessage, peer_digest, record_key


class Observer(Protocol):
    """What the validator tells the P2P layer: a rejection (counted, its signer scored down when known) and
    a record it accepted."""

    def rejected(self, where: str, reason: str, peer_id: str | None) -> None: ...
    def learned_capability(self, record: CapabilityRecord) -> None: ...


# The peer whose PUT_VALUE this task is handling (set by the stack around the DHT's stream handler).
SENDER: ContextVar[str | None] = ContextVar("dht_sender", default=None)

EPOCH_KEY_PREFIX = "/hyperion/epoch/"
DEALINGS_KEY_PREFIX = "/hyperion/dealings/"


def epoch_key(peer_id: str) -> str:
    """The DHT value key of a peer's latest signed epoch root: what others read its settled history by, in
    place of every settled receipt gossiped to every node."""
    return EPOCH_KEY_PREFIX + peer_digest(peer_id)


def dealings_key(peer_id: str) -> str:
    """The DHT value key of a peer's signed dealings summary (ledger/dealings.py)."""
    return DEALINGS_KEY_PREFIX + peer_digest(peer_id)


class RecordValidator(Validator):
    """DHT validator for our namespace (module docstring). A capability record whose sequence number is not
    above the highest this node has accepted for that peer is a replay (or an equivocation, if its bytes
    differ) and is refused before it reaches the value store."""

    def __init__(self, observer: Observer, max_peers: int = 4096) -> None:
        self._observer = observer
        # The highest record per peer, least recently accepted first; bounded like the peer table. A record
        # forgotten here is still no replay risk: the peer table keeps the highest seq it holds.
        self._highest: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        self._max_peers = max_peers

    def _reject(self, reason: str, *, charge: bool = True) -> None:
        self._observer.rejected("dht", reason, SENDER.get() if charge else None)

    def validate(self, key: str, value: bytes) -> None:
        if key.startswith(EPOCH_KEY_PREFIX):
            self._validate_epoch(key, value)
            return
        if key.startswith(DEALINGS_KEY_PREFIX):
            self._validate_dealings(key, value)
            return
        self.capability(key, value)

    def capability(self, key: str, value: bytes) -> CapabilityRecord:
        """A capability record checked as ``validate`` checks one (and filed in the peer table when first-hand):
        the record, or MalformedMessage."""
        try:
            record = CapabilityRecord.decode(value)
        except MalformedMessage as exc:
            self._reject(exc.reason)
            raise
        if key != record_key(record.peer_id):
            self._reject("key_mismatch")
            raise MalformedMessage("key_mismatch", f"{key} holds a record of {record.peer_id}")
        if record.expires_at < time.time():
            self._reject("expired", charge=False)  # an old record is not proof of bad faith
            raise MalformedMessage("expired", f"record of {record.peer_id} expired")
        seen = self._highest.get(record.peer_id)
        if seen is not None and (record.seq < seen[0] or (record.seq == seen[0] and value != seen[1])):
            self._reject("replayed", charge=False)  # anyone can re-send an old signed record: the sender is unknown
            raise MalformedMessage("replayed", f"seq {record.seq} <= {seen[0]} for {record.peer_id}")
        self._highest.pop(record.peer_id, None)
        self._highest[record.peer_id] = (record.seq, value)
        if len(self._highest) > self._max_peers:
            self._highest.popitem(last=False)
        sender = SENDER.get()
        if sender is None or sender == record.peer_id:  # first-hand: our own lookup's answer, or the peer itself
            self._observer.learned_capability(record)
        return record

    def _validate_epoch(self, key: str, value: bytes) -> None:
        """A peer's latest signed epoch root (``epoch_key``): its signature, and signed by the key's peer."""
        try:
            epoch = SignedEpoch.decode(value)
            verify_epoch(epoch)
        except ReceiptRejected as exc:
            self._reject("bad_epoch")
            raise MalformedMessage("bad_epoch", exc.one_line()) from exc
        if key != epoch_key(epoch.header.signer):
            self._reject("key_mismatch")
            raise MalformedMessage("key_mismatch", f"{key} holds an epoch of {epoch.header.signer}")

    def _validate_dealings(self, key: str, value: bytes) -> None:
        """A peer's signed dealings summary: its signature, and signed by the key's peer."""
        try:
            dealings = Dealings.decode(value)
            verify_dealings(dealings)
        except ReceiptRejected as exc:
            self._reject("bad_dealings")
            raise MalformedMessage("bad_dealings", exc.one_line()) from exc
        if key != dealings_key(dealings.peer):
            self._reject("key_mismatch")
            raise MalformedMessage("key_mismatch", f"{key} holds the dealings of {dealings.peer}")

    def select(self, key: str, values: list[bytes]) -> int:
        best, best_seq = 0, -1
        for i, value in enumerate(values):
            try:
                if key.startswith(EPOCH_KEY_PREFIX):
                    seq = SignedEpoch.decode(value).header.number
                elif key.startswith(DEALINGS_KEY_PREFIX):
                    seq = Dealings.decode(value).at_ms
                else:
                    seq = CapabilityRecord.decode(value).seq
            except (MalformedMessage, ReceiptRejected):
                continue
            if seq > best_seq:
                best, best_seq = i, seq
        return best
