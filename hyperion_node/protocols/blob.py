"""``/hyperion/blob/1``: content-addressed transfer of files too large for a frame (models, scenes, keys).

One request per stream, answered by one or more frames, then the answerer closes::

    fetcher (opener)                           provider (answerer)
    FIND {runtime, item} ────────────────────▶ FOUND {blob, name, size} | NONE {why}
    MANIFEST {blob}      ────────────────────▶ MANIFEST {data} | NONE {why}
    GET {blob, index, count} ────────────────▶ CHUNK {index, data} × count | NONE {why}
    LANE {blob}          ────────────────────▶ LANE {port, token, key} | NONE {why}

``blob`` is a content address (``hyperion_node/blobs/manifest.py``): the fetcher checks the manifest against
it and every chunk against the manifest before writing it, so frames carry no signature (Noise authenticates
the remote; the hashes authenticate the bytes). Frames are CBOR maps like ``/hyperion/task/1``'s. The provider
bounds what one peer may ask: ``MAX_RUN`` chunks a request, a few streams at once per peer, and its upload
rate (``[blobs]`` in the config).

LANE asks for a grant to fetch the blob's chunks over a direct TCP connection beside libp2p, many times
faster here than a py-libp2p stream (``hyperion_node/blobs/lane.py``); a fetcher that cannot reach the port
uses GET.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hyperion_node.blobs.manifest import MAX_CHUNK_SIZE, MAX_MANIFEST_BYTES, is_address
from hyperion_node.protocols.machine import Conversation, Protocol, Side
from hyperion_node.tasks.messages import MalformedFrame, _text, decode_map, encode_map

PROTOCOL_ID = "/hyperion/blob/1"
VERSION = 1
FETCHER, PROVIDER = Side.OPENER, Side.ANSWERER
MAX_RUN = 8  # chunks one GET may ask for
MAX_REQUEST_BYTES = 1024
MAX_ANSWER_BYTES = max(MAX_CHUNK_SIZE, MAX_MANIFEST_BYTES) + 1024

T_FIND, T_FOUND = "find", "found"
T_MANIFEST = "manifest"
T_GET, T_CHUNK = "get", "chunk"
T_LANE = "lane"
LANE_SECRET_BYTES = 32  # a lane grant's token and key
T_NONE = "none"

BLOB = Protocol(
    protocol_id=PROTOCOL_ID,
    start="await_request",
    moves={
        "await_request": {(FETCHER, T_FIND): "finding", (FETCHER, T_MANIFEST): "describing",
                          (FETCHER, T_GET): "sending", (FETCHER, T_LANE): "granting"},
        "finding": {(PROVIDER, T_FOUND): "answered", (PROVIDER, T_NONE): "answered"},
        "describing": {(PROVIDER, T_MANIFEST): "answered", (PROVIDER, T_NONE): "answered"},
        "granting": {(PROVIDER, T_LANE): "answered", (PROVIDER, T_NONE): "answered"},
        "sending": {(PROVIDER, T_CHUNK): "sending", (PROVIDER, T_NONE): "answered"},
        "answered": {},
    },
    max_frame={FETCHER: MAX_REQUEST_BYTES, PROVIDER: MAX_ANSWER_BYTES},
)


def fetcher_side() -> Conversation:
    return Conversation(BLOB, FETCHER)


def provider_side() -> Conversation:
    return Conversation(BLOB, PROVIDER)


@dataclass(frozen=True)
class Request:
    kind: str  # T_FIND, T_MANIFEST, T_GET or T_LANE
    runtime: str = ""
    item: str = ""
    blob: str = ""
    index: int = 0
    count: int = 0

    def encode(self) -> bytes:
        if self.kind == T_FIND:
            return encode_map(T_FIND, {"runtime": self.runtime, "item": self.item}, VERSION)
        if self.kind in (T_MANIFEST, T_LANE):
            return encode_map(self.kind, {"blob": self.blob}, VERSION)
        return encode_map(T_GET, {"blob": self.blob, "index": self.index, "count": self.count}, VERSION)

    @classmethod
    def decode(cls, data: bytes) -> Request:
        kind, body = decode_map(data, MAX_REQUEST_BYTES, VERSION)
        if kind == T_FIND:
            return cls(T_FIND, runtime=_text(body, "runtime"), item=_text(body, "item"))
        blob = body.get("blob")
        if not is_address(blob):
            raise MalformedFrame("bad_schema", "blob must be a SHA-256 address in lower-case hex")
        if kind in (T_MANIFEST, T_LANE):
            return cls(kind, blob=str(blob))
        if kind == T_GET:
            index, count = body.get("index"), body.get("count")
            if type(index) is not int or index < 0 or type(count) is not int or not 1 <= count <= MAX_RUN:
                raise MalformedFrame("bad_schema", f"index >= 0 and count from 1 to {MAX_RUN}")
            return cls(T_GET, blob=str(blob), index=index, count=count)
        raise MalformedFrame("wrong_type", f"{kind[:32]!r} is not a request of {PROTOCOL_ID}")


def encode_found(blob: str, name: str, size: int) -> bytes:
    return encode_map(T_FOUND, {"blob": blob, "name": name, "size": size}, VERSION)


def encode_manifest(data: bytes) -> bytes:
    return encode_map(T_MANIFEST, {"data": data}, VERSION)


def encode_chunk(index: int, data: bytes) -> bytes:
    return encode_map(T_CHUNK, {"index": index, "data": data}, VERSION)


def encode_lane(port: int, token: bytes, key: bytes) -> bytes:
    return encode_map(T_LANE, {"port": port, "token": token, "key": key}, VERSION)


def encode_none(why: str) -> bytes:
    return encode_map(T_NONE, {"why": why[:200]}, VERSION)


def decode_answer(data: bytes) -> tuple[str, dict[str, Any]]:
    """An answer's type and checked fields: FOUND {blob, name, size}, MANIFEST {data}, CHUNK {index, data},
    LANE {port, token, key}, NONE {why}."""
    kind, body = decode_map(data, MAX_ANSWER_BYTES, VERSION)
    if kind == T_FOUND:
        blob, size = body.get("blob"), body.get("size")
        if not is_address(blob) or type(size) is not int or size < 0:
            raise MalformedFrame("bad_schema", "found: blob address and size")
        return kind, {"blob": blob, "name": _text(body, "name"), "size": size}
    if kind == T_MANIFEST:
        if not isinstance(body.get("data"), bytes):
            raise MalformedFrame("bad_schema", "manifest: data is bytes")
        return kind, {"data": body["data"]}
    if kind == T_CHUNK:
        index, chunk = body.get("index"), body.get("data")
        if type(index) is not int or index < 0 or not isinstance(chunk, bytes):
            raise MalformedFrame("bad_schema", "chunk: index and bytes")
        return kind, {"index": index, "data": chunk}
    if kind == T_LANE:
        port, token, key = body.get("port"), body.get("token"), body.get("key")
        if type(port) is not int or not 1 <= port <= 65535 or not all(
                isinstance(v, bytes) and len(v) == LANE_SECRET_BYTES for v in (token, key)):
            raise MalformedFrame("bad_schema", "lane: a port and a 32-byte token and key")
        return kind, {"port": port, "token": token, "key": key}
    if kind == T_NONE:
        return kind, {"why": _text(body, "why", optional=True)}
    raise MalformedFrame("wrong_type", f"{kind[:32]!r} is not an answer of {PROTOCOL_ID}")
