"""Frames of ``/hyperion/task/1``, as pure code: bytes in, typed messages out, or ``MalformedFrame``.

One task is one libp2p stream, opened by the requester straight to the worker (no third node relays it)::

    requester                          worker
    TASK  ──────────────────────────▶  admission (answers at once)
          ◀──────── ACCEPTED | BUSY | REJECTED
          ◀──────── PARTIAL ... (tokens, frames, progress)
          ◀──────── FINAL (output + the worker-signed receipt) | ERROR
    COUNTERSIGN ────────────────────▶  (the requester checked the result; the receipt is settled)

Closing or resetting the stream before FINAL is how the requester cancels: the worker stops the work.

Every frame is an unsigned-varint length prefix and a canonical CBOR map ``{"v": 1, "t": <type>, ...}``.
Frames need no signature of their own: Noise authenticates the stream's remote peer, and what must outlive
the stream (the receipt) carries its own signatures. The caps are per direction: a task carries its whole
payload (a ZK key, a scene), the worker's frames carry one partial result each.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cbor2

from hyperion_node.errors import RemoteError
from hyperion_node.p2p.messages import all_finite, decode_varint, encode_frame

PROTOCOL_VERSION = 1
# A request carries its payload inline: a snarkjs .zkey of 2^16 constraints is ~20 MiB, a scene up to the
# render runtime's max_scene_bytes (64 MiB), plus the task's other fields. Larger inputs belong to a
# content-addressed blob protocol, not to one frame.
MAX_REQUEST_BYTES = 64 * 1024 * 1024 + 64 * 1024
# The requester's last frame is a countersignature (64 bytes and its map): a frame declared longer is refused
# before it is buffered, not read up to MAX_REQUEST_BYTES.
MAX_COUNTERSIGN_BYTES = 256
# One partial (a PNG frame: ~1-3 MiB at 1080p, up to tens of MiB for a noisy 4K RGBA frame) or the final
# output with its receipt.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
MAX_TEXT = 1024
MAX_CBOR_DEPTH = 32

T_TASK = "task"
T_ACCEPTED = "accepted"
T_BUSY = "busy"
T_REJECTED = "rejected"
T_PARTIAL = "partial"
T_FINAL = "final"
T_ERROR = "error"
T_COUNTERSIGN = "countersign"


class MalformedFrame(RemoteError):
    """A frame that is not a valid message of this protocol: the remote's fault."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason  # a short, stable label for counters


@dataclass(frozen=True)
class TaskRequest:
    task_id: str
    runtime: str
    item: str
    payload: Mapping[str, Any]
    requester: str  # must equal the stream's authenticated remote peer
    deadline_s: float  # seconds left when sent: clocks differ between machines, durations do not
    max_price_per_unit: float | None = None  # credits per unit; None: any
    min_memory_bytes: int = 0
    # Payload fields sent by content address, not inline (field -> (address, size)): the worker fetches them
    # over /hyperion/blob/1 from the requester and puts the bytes in the payload before anything reads it.
    blobs: Mapping[str, tuple[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Accepted:
    queue_position: int = 0  # 0: running now


@dataclass(frozen=True)
class Busy:
    reason: str
    retry_after_s: float


@dataclass(frozen=True)
class Rejected:
    """The task cannot run here as asked (unknown model, prompt past the context): the requester's fault."""

    reason: str


@dataclass(frozen=True)
class PartialResult:
    data: Mapping[str, Any]


@dataclass(frozen=True)
class FinalResult:
    output: Mapping[str, Any]
    receipt: bytes  # SignedReceipt.encode(), signed by the worker


@dataclass(frozen=True)
class TaskError:
    """The worker accepted the task and then could not finish it."""

    code: str  # "failed", "deadline", "cancelled", "bad_request"
    message: str


@dataclass(frozen=True)
class Countersign:
    countersignature: bytes


WorkerMessage = Accepted | Busy | Rejected | PartialResult | FinalResult | TaskError
RequesterMessage = TaskRequest | Countersign


@dataclass
class FrameReader:
    """Incremental frame splitter (sans-IO): feed bytes, take whole frames, never buffer past the cap."""

    max_bytes: int
    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_frame(self) -> bytes | None:
        try:
            header = decode_varint(self._buffer)
        except RemoteError as exc:
            raise MalformedFrame("bad_frame", str(exc)) from exc
        if header is None:
            return None
        length, used = header
        if length > self.max_bytes:
            raise MalformedFrame("oversized", f"frame of {length} bytes > {self.max_bytes}")
        if len(self._buffer) < used + length:
            return None
        frame = bytes(self._buffer[used : used + length])
        del self._buffer[: used + length]
        return frame

    def declared(self) -> int | None:
        """The length the next frame's prefix announces, once the prefix is in (a broken one raises)."""
        try:
            header = decode_varint(self._buffer)
        except RemoteError as exc:
            raise MalformedFrame("bad_frame", str(exc)) from exc
        return None if header is None else header[0]

    def wanted(self) -> int:
        """How many bytes to ask the transport for next (bounded so the buffer never outgrows the cap)."""
        return max(1, min(64 * 1024, self.max_bytes + 8 - len(self._buffer)))


def encode_map(msg_type: str, body: Mapping[str, Any], version: int = PROTOCOL_VERSION) -> bytes:
    """One frame of a CBOR-map protocol (``/hyperion/task/1``, ``/hyperion/verify/2``): ``v``, ``t``, the body."""
    return encode_frame(bytes(cbor2.dumps({"v": version, "t": msg_type, **body}, canonical=True)))


def decode_map(data: bytes, max_bytes: int, version: int = PROTOCOL_VERSION) -> tuple[str, dict[str, Any]]:
    """A frame's type and map, after the checks every CBOR-map protocol shares: size cap, CBOR with bounded
    depth, a map, the protocol's version, a string type."""
    if len(data) > max_bytes:
        raise MalformedFrame("oversized", f"{len(data)} bytes > {max_bytes}")
    try:
        value = cbor2.loads(data, max_depth=MAX_CBOR_DEPTH)
    except Exception as exc:  # cbor2 raises CBORDecodeError, and ValueError/TypeError/etc. on odd input
        raise MalformedFrame("undecodable", type(exc).__name__) from exc
    if not isinstance(value, dict):
        raise MalformedFrame("bad_schema", "a frame is a map")
    if value.get("v") != version:
        raise MalformedFrame("bad_version", repr(value.get("v"))[:32])
    msg_type = value.get("t")
    if not isinstance(msg_type, str):
        raise MalformedFrame("bad_schema", "t must be a string")
    if not all_finite(value):
        raise MalformedFrame("non_finite", "a number is NaN or infinite")
    return msg_type, value


MAX_BLOB_FIELDS = 8


def _blob_fields(value: Any, payload: Mapping[str, Any]) -> dict[str, tuple[str, int]]:
    """A task's payload fields by address: at most MAX_BLOB_FIELDS, each a new field name with a SHA-256
    address in lower-case hex and a size."""
    if not isinstance(value, dict) or len(value) > MAX_BLOB_FIELDS:
        raise MalformedFrame("bad_schema", f"blobs must be a map of at most {MAX_BLOB_FIELDS} fields")
    fields: dict[str, tuple[str, int]] = {}
    for name, ref in value.items():
        if not isinstance(name, str) or not 0 < len(name) <= 64 or name in payload or not isinstance(ref, dict):
            raise MalformedFrame("bad_schema", "a blob field is a new payload field's name and a map")
        address, size = ref.get("blob"), ref.get("size")
        if (not isinstance(address, str) or len(address) != 64 or any(c not in "0123456789abcdef" for c in address)
                or type(size) is not int or not 0 <= size < 2**63):
            raise MalformedFrame("bad_schema", "a blob field names a SHA-256 address and a size")
        fields[name] = (address, size)
    return fields


def _text(body: Mapping[str, Any], key: str, *, optional: bool = False) -> str:
    value = body.get(key, "" if optional else None)
    if not isinstance(value, str) or len(value) > MAX_TEXT or (not optional and not value):
        raise MalformedFrame("bad_schema", f"{key} must be text of 1 to {MAX_TEXT} characters")
    return value


def _number(body: Mapping[str, Any], key: str) -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise MalformedFrame("bad_schema", f"{key} must be a finite number >= 0")
    return float(value)


def text_keyed_map(body: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise MalformedFrame("bad_schema", f"{key} must be a map with text keys")
    return value


# -- requester -> worker -------------------------------------------------------------------------------------


def encode_request(req: TaskRequest) -> bytes:
    body: dict[str, Any] = {
        "id": req.task_id, "runtime": req.runtime, "item": req.item, "payload": dict(req.payload),
        "requester": req.requester, "deadline_s": req.deadline_s, "min_memory": req.min_memory_bytes,
    }
    if req.max_price_per_unit is not None:
        body["max_price"] = req.max_price_per_unit
    if req.blobs:
        body["blobs"] = {name: {"blob": address, "size": size} for name, (address, size) in req.blobs.items()}
    return encode_map(T_TASK, body)


def encode_countersign(msg: Countersign) -> bytes:
    return encode_map(T_COUNTERSIGN, {"sig": msg.countersignature})


def decode_requester(data: bytes) -> RequesterMessage:
    msg_type, body = decode_map(data, MAX_REQUEST_BYTES)
    if msg_type == T_TASK:
        min_memory = body.get("min_memory", 0)
        if isinstance(min_memory, bool) or not isinstance(min_memory, int) or not 0 <= min_memory < 2**63:
            raise MalformedFrame("bad_schema", "min_memory must be an integer >= 0")
        max_price = body.get("max_price")
        payload = text_keyed_map(body, "payload")
        return TaskRequest(
            task_id=_text(body, "id"), runtime=_text(body, "runtime"), item=_text(body, "item"),
            payload=payload, requester=_text(body, "requester"),
            deadline_s=_number(body, "deadline_s"),
            max_price_per_unit=None if max_price is None else _number(body, "max_price"),
            min_memory_bytes=min_memory, blobs=_blob_fields(body.get("blobs", {}), payload),
        )
    if msg_type == T_COUNTERSIGN:
        sig = body.get("sig")
        if not isinstance(sig, bytes) or len(sig) != 64:
            raise MalformedFrame("bad_schema", "sig must be a 64-byte Ed25519 signature")
        return Countersign(sig)
    raise MalformedFrame("wrong_type", f"{msg_type[:32]!r} is not a requester message")


# -- worker -> requester -------------------------------------------------------------------------------------


def encode_worker(msg: WorkerMessage) -> bytes:
    match msg:
        case Accepted(queue_position=position):
            return encode_map(T_ACCEPTED, {"queue": position})
        case Busy(reason=reason, retry_after_s=retry):
            return encode_map(T_BUSY, {"reason": reason[:MAX_TEXT], "retry_after_s": retry})
        case Rejected(reason=reason):
            return encode_map(T_REJECTED, {"reason": reason[:MAX_TEXT] or "rejected"})
        case PartialResult(data=data):
            return encode_map(T_PARTIAL, {"data": dict(data)})
        case FinalResult(output=output, receipt=receipt):
            return encode_map(T_FINAL, {"output": dict(output), "receipt": receipt})
        case TaskError(code=code, message=message):
            return encode_map(T_ERROR, {"code": code, "message": message[:MAX_TEXT]})
    raise TypeError(f"not a worker message: {msg!r}")


def wire_type(msg: WorkerMessage | RequesterMessage) -> str:
    """The ``t`` a message travels under (what the protocol's transition table speaks of)."""
    return _WIRE_TYPES[type(msg)]


_WIRE_TYPES: dict[type, str] = {
    TaskRequest: T_TASK, Accepted: T_ACCEPTED, Busy: T_BUSY, Rejected: T_REJECTED, PartialResult: T_PARTIAL,
    FinalResult: T_FINAL, TaskError: T_ERROR, Countersign: T_COUNTERSIGN,
}


def decode_worker(data: bytes) -> WorkerMessage:
    msg_type, body = decode_map(data, MAX_RESPONSE_BYTES)
    if msg_type == T_ACCEPTED:
        queue = body.get("queue", 0)
        if isinstance(queue, bool) or not isinstance(queue, int) or not 0 <= queue < 2**31:
            raise MalformedFrame("bad_schema", "queue must be an integer >= 0")
        return Accepted(queue)
    if msg_type == T_BUSY:
        return Busy(_text(body, "reason", optional=True), _number(body, "retry_after_s"))
    if msg_type == T_REJECTED:
        return Rejected(_text(body, "reason"))
    if msg_type == T_PARTIAL:
        return PartialResult(text_keyed_map(body, "data"))
    if msg_type == T_FINAL:
        receipt = body.get("receipt")
        if not isinstance(receipt, bytes):
            raise MalformedFrame("bad_schema", "receipt must be bytes")
        return FinalResult(text_keyed_map(body, "output"), receipt)
    if msg_type == T_ERROR:
        return TaskError(_text(body, "code"), _text(body, "message", optional=True))
    raise MalformedFrame("wrong_type", f"{msg_type[:32]!r} is not a worker message")
