"""``/hyperion/cases/1``: dispute cases handed to the accused worker, and fetched by whoever weighs it.

Cases used to be gossiped to every node. Now a requester that confirmed a dispute (verify/service.py):
PUSHes the case to the worker (its ledger shows it contested, or disputed once confirmed there), keeps it,
and announces itself in the DHT as a provider of the worker's case key (``case_key``). A node about to route
work to a peer it has not weighed lately finds those providers and GETs their cases about it, and judges each
(verify/cases.py). A node's share of this traffic is set by its own candidates, not by the size of the
network.

::

    opener                                       answerer
    PUSH {case} ───────────────────────────────▶ (about the answerer: judged, recorded)
                ◀─────────────────────────────── OK
    GET {worker} ──────────────────────────────▶
                ◀─────────────────────────────── CASES {cases: [case, ...]}   at most MAX_CASES, newest first

Frames as on ``/hyperion/task/1`` (varint length, canonical CBOR map, ``v``/``t``), with this version.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from hyperion_node.ledger.dispute import MAX_CASE_BYTES
from hyperion_node.protocols.machine import Conversation, Protocol, Side
from hyperion_node.tasks.messages import MAX_TEXT, MalformedFrame, decode_map, encode_map

PROTOCOL_ID = "/hyperion/cases/1"
VERSION = 1
MAX_CASES = 16  # cases about one worker a node keeps and answers with
MAX_FRAME = MAX_CASES * (MAX_CASE_BYTES + 64) + 1024
T_PUSH, T_GET, T_OK, T_CASES = "push", "get", "ok", "cases"
OPENER, ANSWERER = Side.OPENER, Side.ANSWERER

CASES = Protocol(
    protocol_id=PROTOCOL_ID,
    start="await",
    moves={
        "await": {(OPENER, T_PUSH): "pushed", (OPENER, T_GET): "asked"},
        "pushed": {(ANSWERER, T_OK): "done"},
        "asked": {(ANSWERER, T_CASES): "done"},
        "done": {},
    },
    max_frame={OPENER: MAX_CASE_BYTES + 1024, ANSWERER: MAX_FRAME},
)


def case_key(worker: str) -> str:
    """The DHT provider key under which the holders of cases about ``worker`` announce themselves."""
    return (b"\x12\x20" + hashlib.sha256(f"hyperion/cases/{worker}".encode()).digest()).hex()


@dataclass(frozen=True)
class Push:
    case: bytes


@dataclass(frozen=True)
class Get:
    worker: str


@dataclass(frozen=True)
class Ok:
    pass


@dataclass(frozen=True)
class Cases:
    cases: tuple[bytes, ...]


Message = Push | Get | Ok | Cases


def message_type(msg: Message) -> str:
    return {Push: T_PUSH, Get: T_GET, Ok: T_OK, Cases: T_CASES}[type(msg)]


def encode(msg: Message) -> bytes:
    match msg:
        case Push(case=case):
            return encode_map(T_PUSH, {"case": case}, VERSION)
        case Get(worker=worker):
            return encode_map(T_GET, {"worker": worker}, VERSION)
        case Ok():
            return encode_map(T_OK, {}, VERSION)
        case Cases(cases=cases):
            return encode_map(T_CASES, {"cases": list(cases[:MAX_CASES])}, VERSION)
    raise TypeError(f"not a cases message: {msg!r}")


def decode(data: bytes, max_bytes: int) -> Message:
    msg_type, body = decode_map(data, max_bytes, VERSION)
    if msg_type == T_PUSH:
        case = body.get("case")
        if not isinstance(case, bytes) or len(case) > MAX_CASE_BYTES:
            raise MalformedFrame("bad_schema", "case must be bytes of a dispute case")
        return Push(case)
    if msg_type == T_GET:
        worker = body.get("worker")
        if not isinstance(worker, str) or not worker or len(worker) > MAX_TEXT:
            raise MalformedFrame("bad_schema", "worker must be a peer ID")
        return Get(worker)
    if msg_type == T_OK:
        return Ok()
    if msg_type == T_CASES:
        cases: Any = body.get("cases")
        if (not isinstance(cases, list) or len(cases) > MAX_CASES
                or not all(isinstance(c, bytes) and len(c) <= MAX_CASE_BYTES for c in cases)):
            raise MalformedFrame("bad_schema", f"cases must be at most {MAX_CASES} dispute cases")
        return Cases(tuple(cases))
    raise MalformedFrame("wrong_type", f"{msg_type[:32]!r} is not a message of {PROTOCOL_ID}")


def opener_side() -> Conversation:
    return Conversation(CASES, OPENER)


def answerer_side() -> Conversation:
    return Conversation(CASES, ANSWERER)
