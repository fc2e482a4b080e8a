"""A blob's manifest and its content address, as pure code.

A blob (a model file, a scene, a proving key) is cut into chunks of ``chunk_size`` bytes (the last one
shorter). Its manifest lists the size, the chunk size, the SHA-256 of every chunk and of the whole file; the
blob's address is the SHA-256 of the manifest's canonical CBOR encoding (BitTorrent's info-hash, in
miniature). So a manifest fetched from any peer is checked against the address it was asked for, every chunk
against its hash in the manifest before it is written, and the assembled file against the whole-file hash
before it is used: a lying provider can waste a chunk's transfer, never place a byte.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cbor2

from hyperion_node.errors import RemoteError

CHUNK_SIZE = 1024 * 1024  # what this node cuts its own blobs into
MIN_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 8 * 1024 * 1024
MAX_CHUNKS = 65536  # 64 GiB in 1 MiB chunks; larger files are cut into larger chunks (chunk_size_for)
MAX_BLOB_BYTES = MAX_CHUNKS * MAX_CHUNK_SIZE
MAX_MANIFEST_BYTES = 128 + 35 * MAX_CHUNKS  # ~2.2 MiB: the chunk hashes of the largest blob
VERSION = 1
ADDRESS_HEX = 64  # a blob's address: SHA-256, hex


class BadManifest(RemoteError):
    """A manifest that does not decode, breaks a bound, or does not hash to the address asked for."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Manifest:
    size: int
    chunk_size: int
    chunks: tuple[bytes, ...]  # SHA-256 of each chunk, in order
    sha256: bytes  # of the whole file

    @property
    def count(self) -> int:
        return len(self.chunks)

    def chunk_length(self, index: int) -> int:
        """Bytes in chunk ``index`` (the last one is shorter)."""
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def encode(self) -> bytes:
        return bytes(cbor2.dumps({"v": VERSION, "size": self.size, "chunk_size": self.chunk_size,
                                  "chunks": list(self.chunks), "sha256": self.sha256}, canonical=True))

    @property
    def address(self) -> str:
        """The blob's content address: the SHA-256 of this manifest's encoding, hex."""
        return hashlib.sha256(self.encode()).hexdigest()

    def chunk_ok(self, index: int, data: bytes) -> bool:
        return (0 <= index < self.count and len(data) == self.chunk_length(index)
                and hashlib.sha256(data).digest() == self.chunks[index])

    @classmethod
    def decode(cls, data: bytes, address: str | None = None) -> Manifest:
        """A manifest from a peer; with ``address``, only if it hashes to it."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise BadManifest("oversized", f"{len(data)} bytes")
        if address is not None and hashlib.sha256(data).hexdigest() != address:
            raise BadManifest("wrong_address", "the manifest does not hash to the address asked for")
        try:
            body = cbor2.loads(data, max_depth=4)
        except Exception as exc:  # cbor2 raises several error types on odd input
            raise BadManifest("undecodable", type(exc).__name__) from exc
        if not isinstance(body, dict) or body.get("v") != VERSION:
            raise BadManifest("bad_schema", "a manifest is a map of version 1")
        size, chunk_size, chunks, whole = (body.get(k) for k in ("size", "chunk_size", "chunks", "sha256"))
        if type(size) is not int or not 0 <= size <= MAX_BLOB_BYTES:
            raise BadManifest("bad_schema", "size")
        if type(chunk_size) is not int or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise BadManifest("bad_schema", "chunk_size")
        if not isinstance(chunks, list) or len(chunks) != -(-size // chunk_size) or len(chunks) > MAX_CHUNKS:
            raise BadManifest("bad_schema", "one hash per chunk")
        if not all(isinstance(h, bytes) and len(h) == 32 for h in chunks):
            raise BadManifest("bad_schema", "a chunk hash is 32 bytes")
        if not isinstance(whole, bytes) or len(whole) != 32:
            raise BadManifest("bad_schema", "sha256")
        manifest = cls(size, chunk_size, tuple(chunks), whole)
        if manifest.encode() != data:
            raise BadManifest("not_canonical", "the manifest is not in canonical CBOR")
        return manifest


def manifest_of_chunks(chunks: Iterable[bytes], chunk_size: int = CHUNK_SIZE) -> Manifest:
    """The manifest of the bytes ``chunks`` yields (each ``chunk_size`` long but the last)."""
    whole = hashlib.sha256()
    hashes: list[bytes] = []
    size = 0
    for chunk in chunks:
        whole.update(chunk)
        hashes.append(hashlib.sha256(chunk).digest())
        size += len(chunk)
    return Manifest(size, chunk_size, tuple(hashes), whole.digest())


def chunk_size_for(size: int) -> int:
    """1 MiB, or the power of two that keeps a file of ``size`` bytes within MAX_CHUNKS chunks."""
    chunk = CHUNK_SIZE
    while chunk * MAX_CHUNKS < size and chunk < MAX_CHUNK_SIZE:
        chunk *= 2
    return chunk


def manifest_of_file(path: Path) -> Manifest:
    """Read ``path`` once and hash it: ~1 s a GiB here (SHA-256 runs in C, outside the GIL)."""
    chunk_size = chunk_size_for(path.stat().st_size)

    def chunks() -> Iterable[bytes]:
        with path.open("rb") as f:
            while chunk := f.read(chunk_size):
                yield chunk

    return manifest_of_chunks(chunks(), chunk_size)


def is_address(value: object) -> bool:
    return isinstance(value, str) and len(value) == ADDRESS_HEX and all(c in "0123456789abcdef" for c in value)
