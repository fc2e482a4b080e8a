"""Frames of ``/hyperion/verify/2``, as pure code: a requester asks a peer to check a settled receipt's work.

::

    requester (opener)                          verifier (answerer)
    CHECK {receipt, payload, output, sample?} ─▶  asker is the receipt's requester? its payload and output
                                                  are the ones the receipt commits to? then the runtime's check
                                   ◀───────── VERDICT {ok, reason, dispute?, statistics?}
                                            | BUSY {reason, retry_after_s}   (before reading: no place free)
                                            | REFUSED {reason}               (the asker's fault: not the
                                                                              requester, or evidence that is
                                                                              not the receipt's)

A failed verdict carries a :class:`~hyperion_node.ledger.dispute.Dispute` signed by the verifier; a passing one
travels on the Noise-authenticated stream. Version 2 (from 1): only the receipt's requester may ask (the stream's
authenticated remote is the signed ask), a mismatch between the asker's evidence and the receipt blames the
asker (REFUSED) instead of the worker, and a verifier with no place free says BUSY before it reads anything.
Framing and caps as on ``/hyperion/task/1``: the check carries the task's payload and output again.
``sample`` is one partial result the requester kept, for runtimes whose final output holds only hashes of what
was streamed (render: one frame's PNG, which the verifier renders again). ``statistics`` (optional, up to
``MAX_STATISTICS_BYTES``) are the figures the check measured (the runtime's ``Verdict.details``), which the
requester adds to its evidence over many results when the verifier has standing with it.
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

PROTOCOL_VERSION = 2
MAX_VERDICT_BYTES = 16 * 1024
MAX_STATISTICS_BYTES = 8 * 1024  # a verdict's statistics beyond this are left out (the verdict still counts)
T_CHECK, T_VERDICT, T_BUSY, T_REFUSED = "check", "verdict", "busy", "refused"


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
    statistics: Mapping[str, Any] | None = None  # what the check measured (module docstring)


@dataclass(frozen=True)
class VerifyBusy:
    reason: str
    retry_after_s: float


@dataclass(frozen=True)
class Refused:
    """The verifier will not judge this ask, and says whose fault that is: the asker's."""

    reason: str


VerifierMessage = VerdictAnswer | VerifyBusy | Refused


def encode_check(msg: CheckRequest) -> bytes:
    body = {"receipt": msg.receipt, "payload": dict(msg.payload), "output": dict(msg.output)}
    if msg.sample is not None:
        body["sample"] = dict(msg.sample)
    return encode_map(T_CHECK, body, PROTOCOL_VERSION)


def encode_answer(msg: VerifierMessage) -> bytes:
    match msg:
        case VerdictAnswer(ok=ok, reason=reason, dispute=dispute, statistics=statistics):
            body: dict[str, Any] = {"ok": ok, "reason": reason[:MAX_TEXT]}
            if dispute is not None:
                body["dispute"] = dispute
            if statistics:
                body["statistics"] = dict(statistics)
            return encode_map(T_VERDICT, body, PROTOCOL_VERSION)
        case VerifyBusy(reason=reason, retry_after_s=retry):
            return encode_map(T_BUSY, {"reason": reason[:MAX_TEXT], "retry_after_s": retry}, PROTOCOL_VERSION)
        case Refused(reason=reason):
            return encode_map(T_REFUSED, {"reason": reason[:MAX_TEXT] or "refused"}, PROTOCOL_VERSION)
    raise TypeError(f"not a verifier message: {msg!r}")


def statistics_for_answer(details: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """A check's details as a verdict carries them: None when they do not fit ``MAX_STATISTICS_BYTES``."""
    if not details:
        return None
    try:
        size = len(encode_map(T_VERDICT, dict(details), PROTOCOL_VERSION))
    except (TypeError, ValueError):
        return None
    return details if size <= MAX_STATISTICS_BYTES else None


def answer_type(msg: VerifierMessage) -> str:
    return {VerdictAnswer: T_VERDICT, VerifyBusy: T_BUSY, Refused: T_REFUSED}[type(msg)]


def decode_check(data: bytes) -> CheckRequest:
    msg_type, body = decode_map(data, MAX_REQUEST_BYTES, PROTOCOL_VERSION)
    if msg_type != T_CHECK:
        raise MalformedFrame("wrong_type", f"{msg_type[:32]!r} is not an asker's message")
    receipt = body.get("receipt")
    if not isinstance(receipt, bytes):
        raise MalformedFrame("bad_schema", "receipt must be bytes")
    sample = text_keyed_map(body, "sample") if "sample" in body else None
    return CheckRequest(receipt, text_keyed_map(body, "payload"), text_keyed_map(body, "output"), sample)


def decode_answer(data: bytes) -> VerifierMessage:
    msg_type, body = decode_map(data, MAX_VERDICT_BYTES, PROTOCOL_VERSION)
    reason = body.get("reason")
    if not isinstance(reason, str) or len(reason) > MAX_TEXT:
        raise MalformedFrame("bad_schema", "a reason is text")
    if msg_type == T_VERDICT:
        ok, dispute = body.get("ok"), body.get("dispute")
        if not isinstance(ok, bool):
            raise MalformedFrame("bad_schema", "a verdict has a boolean ok")
        if dispute is not None and not isinstance(dispute, bytes):
            raise MalformedFrame("bad_schema", "dispute must be bytes")
        if not ok and dispute is None:
            raise MalformedFrame("bad_schema", "a failed verdict carries the verifier's signed dispute")
        statistics = text_keyed_map(body, "statistics") if "statistics" in body else None
        return VerdictAnswer(ok, reason, dispute, statistics)
    if msg_type == T_BUSY:
        retry = body.get("retry_after_s")
        if isinstance(retry, bool) or not isinstance(retry, int | float) or not 0 <= retry <= 3600:
            raise MalformedFrame("bad_schema", "retry_after_s is 0 to 3600 seconds")
        return VerifyBusy(reason, float(retry))
    if msg_type == T_REFUSED:
        return Refused(reason)
    raise MalformedFrame("wrong_type", f"{msg_type[:32]!r} is not a verifier's message")
