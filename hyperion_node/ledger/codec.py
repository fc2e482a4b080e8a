"""Canonical CBOR for every signed or hashed record of the ledger.

Encoding is RFC 8949 §4.2.3's length-first canonical form as cbor2 writes it with ``canonical=True``: map
keys sorted, shortest integer and float forms, definite lengths. Decoding is strict: a record is accepted only
when re-encoding what was decoded gives back exactly the bytes that arrived. So there is one encoding per
value, and a single changed byte either fails to decode, fails that check, or changes the value (and then a
signature or a hash no longer matches). Values are limited to what JSON can hold plus byte strings, with
finite floats only: ``NaN != NaN`` would break the round trip.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import cbor2

from hyperion_node.ledger.exceptions import Malformed

# Receipts nest evidence a few levels deep; 32 levels is far beyond any honest record and keeps a hostile
# one from costing recursion (cbor2's own default is 400).
MAX_DEPTH = 32

JsonValue = Any  # int, float, str, bytes, bool, None, lists and str-keyed maps of those


def encode(value: Any) -> bytes:
    """The canonical encoding of ``value``."""
    return bytes(cbor2.dumps(value, canonical=True))


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def decode(data: bytes, *, what: str, max_bytes: int) -> Any:
    """Decode canonical CBOR made only of plain values; anything else is :class:`Malformed`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise Malformed(f"{what}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise Malformed(f"{what}: {len(data)} bytes is over the cap of {max_bytes}")
    try:
        value = cbor2.loads(data, max_depth=MAX_DEPTH, allow_indefinite=False, allow_duplicate_keys=False)
    except Exception as exc:  # cbor2 raises CBORDecodeError but also ValueError/TypeError/OverflowError from tags
        raise Malformed(f"{what}: not valid CBOR ({type(exc).__name__}: {exc})") from exc
    check_plain(value, what=what)
    if encode(value) != data:
        raise Malformed(f"{what}: not in canonical CBOR form")
    return value


_SCALARS = frozenset({type(None), bool, int, str, bytes})


def check_plain(value: Any, *, what: str, depth: int = 0) -> None:
    """Reject anything but JSON-like values and bytes (cbor2 turns some tags into datetimes, sets...).

    Exact types, not isinstance: this runs on every decoded record, and subclasses (enums, ordered dicts)
    have no place in them anyway.
    """
    kind = type(value)
    if kind in _SCALARS:
        return
    if depth > MAX_DEPTH:
        raise Malformed(f"{what}: nested deeper than {MAX_DEPTH}")
    if kind is float:
        if not math.isfinite(value):
            raise Malformed(f"{what}: holds a non-finite number")
    elif kind is list:
        for item in value:
            if type(item) not in _SCALARS:
                check_plain(item, what=what, depth=depth + 1)
    elif kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise Malformed(f"{what}: map key {key!r} is not text")
            if type(item) not in _SCALARS:
                check_plain(item, what=what, depth=depth + 1)
    else:
        raise Malformed(f"{what}: holds an unsupported {kind.__name__}")


def is_plain(value: Any) -> bool:
    try:
        check_plain(value, what="")
    except Malformed:
        return False
    return True


def plain(value: Any) -> Any:
    """A deep copy of a JSON-like value as plain dicts and lists (tuples and read-only mappings allowed)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def is_version(value: Any, version: int) -> bool:
    """``value == version`` as an integer: CBOR's ``true`` decodes to ``True``, which Python takes for 1."""
    return type(value) is int and value == version


def field(record: Mapping[str, Any], key: str, kind: type | tuple[type, ...], *, what: str) -> Any:
    """``record[key]`` if present and of ``kind`` (bool is never taken for int)."""
    if key not in record:
        raise Malformed(f"{what}: missing field {key!r}")
    value = record[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise Malformed(f"{what}: field {key!r} has the wrong type (bool)")
    if not isinstance(value, kinds):
        raise Malformed(f"{what}: field {key!r} has the wrong type ({type(value).__name__})")
    return value
