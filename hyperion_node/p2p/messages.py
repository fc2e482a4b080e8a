"""Wire messages of the P2P layer, as pure code: bytes in, typed records out, or ``MalformedMessage``.

Every message travels in a signed envelope, encoded as canonical CBOR (RFC 8949 §4.2.1, so one record has
exactly one encoding and a signature covers exactly what was sent)::

    {"v": 1, "t": <message type>, "p": <peer ID bytes>, "b": <body: canonical CBOR bytes>, "s": <signature>}

The signature is the peer's Ed25519 identity key over ``b"hyperion/" + type + b"\\x00" + body``: the type
prefix keeps a signature made for one message type from being replayed as another. Ed25519 peer IDs embed
their public key, so an envelope is verified from its own bytes with no key lookup.

Size caps are checked before decoding: anything above them is the sender's fault.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2
from libp2p.crypto.keys import KeyType
from libp2p.peer.id import ID

from hyperion_node.errors import RemoteError
from hyperion_node.identity import Identity

ENVELOPE_VERSION = 1
# Caps per message type, in bytes of the whole envelope. A capability record with a few dozen offers is
# ~2 KiB; a heartbeat ~300 B. The caps leave room for growth and stay far below a stream frame's caps;
# a node keeps up to p2p/peer_table.py's MAX_PEERS records, so the record's cap bounds that memory too.
MAX_CAPABILITY_BYTES = 8 * 1024
MAX_HEARTBEAT_BYTES = 4 * 1024
MAX_DIALBACK_BYTES = 4 * 1024
MAX_ADDRS = 16
MAX_OFFERS = 64
MAX_TEXT = 256

TYPE_CAPABILITY = "capability"
TYPE_HEARTBEAT = "heartbeat"
TYPE_DIALBACK_REQUEST = "dialback-request"
TYPE_DIALBACK_RESULT = "dialback-result"


class MalformedMessage(RemoteError):
    """Bytes from a peer that are not a valid message of ours: oversized, undecodable, unsigned, forged."""

    def __init__(self, reason: str, detail: str = "", *, peer_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason, peer_id=peer_id)
        self.reason = reason  # a short, stable label used as a metrics/counter key


def all_finite(value: Any) -> bool:
    """Whether a decoded CBOR value holds no NaN or infinite float anywhere (walked without recursion).

    CBOR carries IEEE floats, so a peer can send ``inf`` where a number of bytes or a price belongs; one such
    value in a capability record made every requester that read it fail (``int(inf)``). Refused at decode,
    for every message, so that no reader has to remember.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item.values())
            stack.extend(k for k in item if not isinstance(k, str))
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return True


def canonical(value: Any) -> bytes:
    return bytes(cbor2.dumps(value, canonical=True))


def _signing_input(msg_type: str, body: bytes) -> bytes:
    return b"hyperion/" + msg_type.encode() + b"\x00" + body


@functools.lru_cache(maxsize=4096)
def peer_id_from_bytes(raw: bytes) -> ID:
    """The peer ID in its binary form, remembered for the peers a node hears from: every envelope names its
    sealer this way, and an ``ID``'s text form (base58, pure Python) is computed
    once per instance -- ~20% of a 50-node demo's CPU before, one conversion per message per receiver."""
    return ID(raw)


def public_key_of(peer_id: ID) -> Any:
    """The Ed25519 public key embedded in a peer ID; ``MalformedMessage`` for other key types."""
    try:
        key = peer_id.extract_public_key()
    except Exception as exc:  # multihash/protobuf parsing raises several unrelated types on bad input
        raise MalformedMessage("bad_peer_id", str(exc)) from exc
    if key is None or key.get_type() != KeyType.Ed25519:
        raise MalformedMessage("bad_peer_id", "peer ID does not embed an Ed25519 key")
    return key


@dataclass(frozen=True)
class Envelope:
    msg_type: str
    peer_id: ID
    body: bytes
    signature: bytes

    def encode(self) -> bytes:
        return canonical(
            {"v": ENVELOPE_VERSION, "t": self.msg_type, "p": self.peer_id.to_bytes(), "b": self.body,
             "s": self.signature}
        )


def seal(identity: Identity, msg_type: str, body: Mapping[str, Any]) -> bytes:
    """Encode and sign a message body as this node."""
    body_bytes = canonical(dict(body))
    signature = identity.sign(_signing_input(msg_type, body_bytes))
    return Envelope(msg_type, identity.peer_id, body_bytes, signature).encode()


def open_envelope(data: bytes, *, expected_type: str, max_bytes: int,
                  signed_by: str | None = None) -> tuple[Envelope, dict[str, Any]]:
    """Check size, decode, verify the signature; return the envelope and its decoded body.

    ``signed_by``: the caller knows that these exact bytes came from this peer: they arrived on a stream whose
    remote Noise authenticated, and each frame of it is authenticated by the session's keys (presence.py).
    The envelope must then name that peer, and its own signature, by the same peer over the same bytes, is
    not checked a second time.
    """
    if len(data) > max_bytes:
        raise MalformedMessage("oversized", f"{len(data)} bytes > {max_bytes}")
    try:
        outer = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises CBORDecodeError, but also ValueError/TypeError/etc. on odd input
        raise MalformedMessage("undecodable", type(exc).__name__) from exc
    if not isinstance(outer, dict) or set(outer) != {"v", "t", "p", "b", "s"}:
        raise MalformedMessage("bad_schema", "envelope must have exactly v, t, p, b, s")
    if outer["v"] != ENVELOPE_VERSION:
        raise MalformedMessage("bad_version", repr(outer["v"])[:32])
    if outer["t"] != expected_type:
        raise MalformedMessage("wrong_type", repr(outer["t"])[:32])
    if not all(isinstance(outer[k], bytes) for k in ("p", "b", "s")):
        raise MalformedMessage("bad_schema", "p, b and s must be bytes")
    try:
        peer_id = peer_id_from_bytes(outer["p"])
    except Exception as exc:
        raise MalformedMessage("bad_peer_id", type(exc).__name__) from exc
    if signed_by is not None:
        if str(peer_id) != signed_by:
            raise MalformedMessage("sender_mismatch", f"{peer_id} sealed a message sent by {signed_by}",
                                   peer_id=signed_by)
    elif not public_key_of(peer_id).verify(_signing_input(expected_type, outer["b"]), outer["s"]):
        raise MalformedMessage("bad_signature", f"from {peer_id}", peer_id=str(peer_id))
    try:
        body = cbor2.loads(outer["b"])
    except Exception as exc:
        raise MalformedMessage("undecodable", "body", peer_id=str(peer_id)) from exc
    if not isinstance(body, dict):
        raise MalformedMessage("bad_schema", "body must be a map", peer_id=str(peer_id))
    if not all_finite(body):
        raise MalformedMessage("non_finite", "a number is NaN or infinite", peer_id=str(peer_id))
    return Envelope(expected_type, peer_id, outer["b"], outer["s"]), body


# -- field checks --------------------------------------------------------------------------------------------


def _text(body: Mapping[str, Any], key: str, *, limit: int = MAX_TEXT, optional: bool = False) -> str:
    value = body.get(key, "" if optional else None)
    if not isinstance(value, str) or len(value) > limit:
        raise MalformedMessage("bad_schema", f"{key} must be text of at most {limit} characters")
    return value


def _number(body: Mapping[str, Any], key: str, *, minimum: float = 0.0, optional: bool = False) -> float:
    value = body.get(key)
    if value is None and optional:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < minimum:
        raise MalformedMessage("bad_schema", f"{key} must be a finite number >= {minimum}")
    return float(value)


def _integer(body: Mapping[str, Any], key: str, *, minimum: int = 0) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or value >= 2**63:
        raise MalformedMessage("bad_schema", f"{key} must be an integer >= {minimum}")
    return value


def _addrs(body: Mapping[str, Any]) -> tuple[str, ...]:
    addrs = body.get("addrs")
    if not isinstance(addrs, list) or len(addrs) > MAX_ADDRS:
        raise MalformedMessage("bad_schema", f"addrs must be a list of at most {MAX_ADDRS}")
    for addr in addrs:
        if not isinstance(addr, str) or not addr.startswith("/") or len(addr) > MAX_TEXT:
            raise MalformedMessage("bad_schema", "addrs must be multiaddr strings")
    return tuple(addrs)


def _optional(value: float) -> float | None:
    return None if math.isnan(value) else value


# -- capability record ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OfferAd:
    """One advertised offer: what a peer can run, at what price and measured speed."""

    runtime: str
    item: str
    unit: str
    price_per_unit: float
    capacity: int
    throughput: float | None
    # The memory tier of what it serves (an inference model's quantization: premium, high, good, emergency),
    # so that a requester asking for a minimum tier passes over a lower one without trying it.
    tier: str | None = None

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"runtime": self.runtime, "item": self.item, "unit": self.unit,
                                "price": self.price_per_unit, "capacity": self.capacity}
        if self.throughput is not None:
            body["throughput"] = self.throughput
        if self.tier is not None:
            body["tier"] = self.tier
        return body

    @classmethod
    def from_body(cls, body: Any) -> OfferAd:
        if not isinstance(body, dict):
            raise MalformedMessage("bad_schema", "offer must be a map")
        return cls(
            runtime=_text(body, "runtime"), item=_text(body, "item"), unit=_text(body, "unit"),
            price_per_unit=_number(body, "price"), capacity=_integer(body, "capacity"),
            throughput=_optional(_number(body, "throughput", optional=True)),
            tier=_text(body, "tier", limit=32) if "tier" in body else None,
        )

    def capability_key(self) -> str:
        return capability_key(self.runtime, self.item)


def capability_key(runtime: str, item: str) -> str:
    """The DHT provider key for one capability (e.g. a model): a sha2-256 multihash, hex-encoded."""
    digest = hashlib.sha256(f"hyperion/capability/{runtime}/{item}".encode()).digest()
    return (b"\x12\x20" + digest).hex()


@dataclass(frozen=True)
class CapabilityRecord:
    """What a peer is and offers, signed by it, stored in the DHT under ``/hyperion/<peer ID>``."""

    peer_id: str
    seq: int  # strictly increasing per peer: a record with a lower or equal seq is a replay
    expires_at: float  # unix seconds; an expired record is worthless
    name: str
    addrs: tuple[str, ...]
    hardware: Mapping[str, Any]  # {"cpu", "cores", "ram_bytes", "gpus": [{"name", "vram_bytes"}]}
    offers: tuple[OfferAd, ...]
    load: float = 0.0  # running tasks / capacity at publication time
    node_version: str = ""
    raw: bytes = field(default=b"", compare=False, repr=False)  # the envelope as received or sealed

    def to_body(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "expires_at": self.expires_at, "name": self.name, "addrs": list(self.addrs),
            "hardware": dict(self.hardware), "offers": [o.to_body() for o in self.offers], "load": self.load,
            "node_version": self.node_version,
        }

    def seal(self, identity: Identity) -> bytes:
        if str(identity.peer_id) != self.peer_id:
            raise ValueError("a capability record is sealed by the peer it describes")
        return seal(identity, TYPE_CAPABILITY, self.to_body())

    @classmethod
    def decode(cls, data: bytes) -> CapabilityRecord:
        envelope, body = open_envelope(data, expected_type=TYPE_CAPABILITY, max_bytes=MAX_CAPABILITY_BYTES)
        offers = body.get("offers")
        if not isinstance(offers, list) or len(offers) > MAX_OFFERS:
            raise MalformedMessage("bad_schema", f"offers must be a list of at most {MAX_OFFERS}")
        hardware = _hardware(body.get("hardware"))
        return cls(
            peer_id=str(envelope.peer_id), seq=_integer(body, "seq"), expires_at=_number(body, "expires_at"),
            name=_text(body, "name", optional=True), addrs=_addrs(body), hardware=hardware,
            offers=tuple(OfferAd.from_body(o) for o in offers), load=_number(body, "load"),
            node_version=_text(body, "node_version", optional=True), raw=data,
        )


def _hardware(value: Any) -> dict[str, Any]:
    """A record's hardware summary: ``cpu`` text, ``cores`` and ``ram_bytes`` whole numbers, ``gpus`` a list of
    at most 16 ``{"name", "vram_bytes"}``. Readers do arithmetic on these (the scheduler's memory filter), so
    their types are checked here, once."""
    if not isinstance(value, dict):
        raise MalformedMessage("bad_schema", "hardware must be a map")
    _text(value, "cpu", optional=True)
    for key in ("cores", "ram_bytes"):
        if key in value:
            _integer(value, key)
    gpus = value.get("gpus", [])
    if not isinstance(gpus, list) or len(gpus) > 16:
        raise MalformedMessage("bad_schema", "hardware.gpus must be a list of at most 16")
    for gpu in gpus:
        if not isinstance(gpu, dict):
            raise MalformedMessage("bad_schema", "a GPU must be a map")
        _text(gpu, "name", optional=True)
        if "vram_bytes" in gpu:
            _integer(gpu, "vram_bytes")
    return value


# A DHT value key is looked up by FIND_NODE queries that carry the key itself, and py-libp2p 0.8.1 answers a
# FIND_NODE whose key is over 50 bytes (and no multihash) by resetting the stream. "/hyperion/" and a 52-character
# peer ID is 62 bytes: every hop of every lookup of a record not already held was reset (seen: 3,956 refusals
# logged across the daemons of one 20-node run). So a key names the peer by a digest of its ID: 26 characters,
# 128 bits.
MAX_DHT_KEY_BYTES = 50


def peer_digest(peer_id: str) -> str:
    """A peer ID in a DHT key: the first 16 bytes of its SHA-256, base32, lower case, unpadded."""
    return base64.b32encode(hashlib.sha256(peer_id.encode()).digest()[:16]).decode().rstrip("=").lower()


def record_key(peer_id: str) -> str:
    """The DHT value key of a peer's capability record."""
    return f"/hyperion/{peer_digest(peer_id)}"


# -- heartbeat -----------------------------------------------------------------------------------------------

HEALTH_OK = "ok"
HEALTH_DRAINING = "draining"  # finishing its work, taking no new tasks
HEALTH_LEAVING = "leaving"  # shutting down now: peers mark it left at once instead of waiting for a timeout
HEALTH_STATES = (HEALTH_OK, HEALTH_DRAINING, HEALTH_LEAVING)


@dataclass(frozen=True)
class Heartbeat:
    """Presence and telemetry, pushed every few seconds to the provider's subscribers (presence.py)."""

    peer_id: str
    seq: int
    time: float  # sender's wall clock, unix seconds (peers compare it with theirs: clock skew)
    name: str
    addrs: tuple[str, ...]
    health: str
    queue_depth: int
    active_tasks: int
    ram_available_bytes: int
    gpus: tuple[Mapping[str, float | None], ...] = ()  # per GPU: util, vram_free, temp_c, power_w
    # Seconds until the sender's next regular heartbeat: one pushed early (its load changed) is no sign of
    # anything, and a subscriber measures lateness against this promise (scheduler/health.py). 0: not said.
    every_s: float = 0.0
    raw: bytes = field(default=b"", compare=False, repr=False)

    def to_body(self) -> dict[str, Any]:
        body = {
            "seq": self.seq, "time": self.time, "name": self.name, "addrs": list(self.addrs),
            "health": self.health, "queue": self.queue_depth, "active": self.active_tasks,
            "ram_free": self.ram_available_bytes, "gpus": [dict(g) for g in self.gpus],
        }
        if self.every_s:
            body["every"] = self.every_s
        return body

    def seal(self, identity: Identity) -> bytes:
        return seal(identity, TYPE_HEARTBEAT, self.to_body())

    @classmethod
    def decode(cls, data: bytes, *, signed_by: str | None = None) -> Heartbeat:
        """``signed_by``: as for ``open_envelope``."""
        envelope, body = open_envelope(data, expected_type=TYPE_HEARTBEAT, max_bytes=MAX_HEARTBEAT_BYTES,
                                       signed_by=signed_by)
        health = _text(body, "health")
        if health not in HEALTH_STATES:
            raise MalformedMessage("bad_schema", f"health must be one of {', '.join(HEALTH_STATES)}")
        gpus = body.get("gpus")
        if not isinstance(gpus, list) or len(gpus) > 16 or not all(isinstance(g, dict) for g in gpus):
            raise MalformedMessage("bad_schema", "gpus must be a list of at most 16 maps")
        for gpu in gpus:
            for key, value in gpu.items():
                if not isinstance(key, str) or not (value is None or isinstance(value, int | float)):
                    raise MalformedMessage("bad_schema", "gpu readings must be numbers or null")
        return cls(
            peer_id=str(envelope.peer_id), seq=_integer(body, "seq"), time=_number(body, "time"),
            name=_text(body, "name", optional=True), addrs=_addrs(body), health=health,
            queue_depth=_integer(body, "queue"), active_tasks=_integer(body, "active"),
            ram_available_bytes=_integer(body, "ram_free"), gpus=tuple(gpus),
            every_s=_number(body, "every") if "every" in body else 0.0, raw=data,
        )


# -- dial-back (used by `doctor` to learn whether our listen addresses are reachable) -------------------------


@dataclass(frozen=True)
class DialbackRequest:
    addrs: tuple[str, ...]

    def seal(self, identity: Identity) -> bytes:
        return seal(identity, TYPE_DIALBACK_REQUEST, {"addrs": list(self.addrs)})

    @classmethod
    def decode(cls, data: bytes) -> tuple[str, DialbackRequest]:
        envelope, body = open_envelope(data, expected_type=TYPE_DIALBACK_REQUEST, max_bytes=MAX_DIALBACK_BYTES)
        return str(envelope.peer_id), cls(addrs=_addrs(body))


@dataclass(frozen=True)
class DialbackResult:
    results: tuple[tuple[str, bool, str], ...]  # (addr, reachable, error)

    def seal(self, identity: Identity) -> bytes:
        return seal(identity, TYPE_DIALBACK_RESULT,
                    {"results": [{"addr": a, "ok": ok, "error": e} for a, ok, e in self.results]})

    @classmethod
    def decode(cls, data: bytes) -> tuple[str, DialbackResult]:
        envelope, body = open_envelope(data, expected_type=TYPE_DIALBACK_RESULT, max_bytes=MAX_DIALBACK_BYTES)
        results = body.get("results")
        if not isinstance(results, list) or len(results) > MAX_ADDRS:
            raise MalformedMessage("bad_schema", "results must be a list")
        parsed: list[tuple[str, bool, str]] = []
        for item in results:
            if not isinstance(item, dict) or not isinstance(item.get("ok"), bool):
                raise MalformedMessage("bad_schema", "result must be a map with a boolean ok")
            parsed.append((_text(item, "addr"), item["ok"], _text(item, "error", optional=True)))
        return str(envelope.peer_id), cls(results=tuple(parsed))


def encode_frame(payload: bytes) -> bytes:
    """Unsigned varint length prefix + payload, for our stream protocols."""
    n = len(payload)
    prefix = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        prefix.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(prefix) + payload


def decode_varint(data: Sequence[int]) -> tuple[int, int] | None:
    """(value, bytes used) from the start of ``data``; None if incomplete. At most 4 bytes (2^28)."""
    value = 0
    for i, byte in enumerate(data[:4]):
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, i + 1
    if len(data) >= 4:
        raise MalformedMessage("bad_frame", "length prefix longer than 4 bytes")
    return None
