"""Frames of ``/hyperion/verify/1``, as pure code: a requester asks a peer to check a settled receipt's work.

::

    requester                                  verifier
    CHECK {receipt, payload, output, sample?} ─▶  receipt signatures and hashes, then the runtime's own check
                                   ◀───────── VERDICT {ok, reason, dispute?}

A failed verdict carries a :class:`~hyperion_node.ledger.dispute.Dispute` signed by the verifier (the
verdict itself, in the form every peer can check); a passing one travels on the Noise-authenticated stream
and is recorded as an event. Framing and caps as on ``/hyperion/task/1``: the check carries the task's
payload and output again. ``sample`` is one partial result the requester kept, for runtimes whose final
output holds only hashes of what was streamed (render: one frame's PNG, which the verifier renders again).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hyperion_node.tasks.messages import (
    MAX_REQUEST_BYTES,
    MAX_TEXT,
    MalformedFrame,
    decode_map,
    encode_map,
    text_keyed_map,
)

PROTOCOL_VERSION = 1
MAX_VERDICT_BYTES = 16 * 1024


@dataclass(frozen=True)
class CheckRequest:
    receipt: bytes  # the countersigned SignedReceipt
    payload: Mapping[str, Any]
    output: Mapping[str, Any]
    sample: Mapping[str, Any] | None = None  # one partial result, chosen by the requester (module docstring)


@dataclass(frozen=True)
class VerdictAnswer:
    ok: bool
    reason: str
    dispute: bytes | None = None  # Dispute.encode() when not ok


def encode_check(msg: CheckRequest) -> bytes:
    body = {"receipt": msg.receipt, "payload": dict(msg.payload), "output": dict(msg.output)}
    if msg.sample is not None:
        body["sample"] = dict(msg.sample)
    return encode_map("check", body, PROTOCOL_VERSION)


def encode_verdict(msg: VerdictAnswer) -> bytes:
    body: dict[str, Any] = {"ok": msg.ok, "reason": msg.reason[:MAX_TEXT]}
    if msg.dispute is not None:
        body["dispute"] = msg.dispute
    return encode_map("verdict", body, PROTOCOL_VERSION)


def _load(data: bytes, max_bytes: int, msg_type: str) -> dict[str, Any]:
    found, value = decode_map(data, max_bytes, PROTOCOL_VERSION)
    if found != msg_type:
        raise MalformedFrame("wrong_type", f"expected {msg_type}")
    return value


def decode_check(data: bytes) -> CheckRequest:
    body = _load(data, MAX_REQUEST_BYTES, "check")
    receipt = body.get("receipt")
    if not isinstance(receipt, bytes):
        raise MalformedFrame("bad_schema", "receipt must be bytes")
    sample = text_keyed_map(body, "sample") if "sample" in body else None
    return CheckRequest(receipt, text_keyed_map(body, "payload"), text_keyed_map(body, "output"), sample)


def decode_verdict(data: bytes) -> VerdictAnswer:
    body = _load(data, MAX_VERDICT_BYTES, "verdict")
    ok, reason, dispute = body.get("ok"), body.get("reason"), body.get("dispute")
    if not isinstance(ok, bool) or not isinstance(reason, str) or len(reason) > MAX_TEXT:
        raise MalformedFrame("bad_schema", "a verdict has a boolean ok and a reason")
    if dispute is not None and not isinstance(dispute, bytes):
        raise MalformedFrame("bad_schema", "dispute must be bytes")
    if not ok and dispute is None:
        raise MalformedFrame("bad_schema", "a failed verdict carries the verifier's signed dispute")
    return VerdictAnswer(ok, reason, dispute)
