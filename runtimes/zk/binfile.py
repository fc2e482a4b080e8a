"""The iden3 binary container that snarkjs's ``.zkey``, ``.wtns``, ``.ptau`` and ``.r1cs`` files share.

Layout (iden3/binfileutils, ``readBinFile``): 4 bytes of magic ("zkey", "wtns", ...), a u32 version, a u32
section count, then each section as a u32 type, a u64 byte size and the bytes. All integers are
little-endian. A section type may repeat; the files this runtime reads expect each exactly once.

Every check here fails fast with ``MalformedInput`` naming the file and what is wrong, so a truncated
download or a file of the wrong kind is reported before any work starts.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from runtimes.zk.exceptions import MalformedInput


@dataclass(frozen=True)
class BinFile:
    """A parsed container: which sections it holds and where, over the file's bytes (not copied)."""

    label: str  # how messages name the file: a path or a payload field
    magic: str
    version: int
    data: memoryview
    sections: dict[int, tuple[int, int]]  # section type -> (offset, size)

    def section(self, kind: int, *, what: str) -> memoryview:
        """The bytes of a section that must be present; ``what`` names it in the error."""
        found = self.sections.get(kind)
        if found is None:
            raise MalformedInput(f"{self.label}: section {kind} ({what}) is missing")
        offset, size = found
        return self.data[offset : offset + size]


def read_binfile(data: bytes | memoryview, *, magic: str, label: str, versions: tuple[int, ...]) -> BinFile:
    view = memoryview(data)
    if len(view) < 12:
        raise MalformedInput(f"{label}: {len(view)} bytes is too short for a .{magic} file (truncated?)")
    found_magic = bytes(view[:4])
    if found_magic != magic.encode():
        raise MalformedInput(
            f"{label}: not a .{magic} file (starts with {found_magic!r}, expected {magic.encode()!r})"
        )
    version, count = struct.unpack_from("<II", view, 4)
    if version not in versions:
        raise MalformedInput(f"{label}: .{magic} version {version} is not supported (expected {versions})")
    sections: dict[int, tuple[int, int]] = {}
    pos = 12
    for index in range(count):
        if pos + 12 > len(view):
            raise MalformedInput(
                f"{label}: truncated: header of section {index + 1} of {count} ends past the file's "
                f"{len(view)} bytes"
            )
        kind, size = struct.unpack_from("<IQ", view, pos)
        pos += 12
        if pos + size > len(view):
            raise MalformedInput(
                f"{label}: truncated: section {kind} needs {size} bytes at offset {pos}, "
                f"the file has {len(view) - pos} left"
            )
        if kind in sections:
            raise MalformedInput(f"{label}: section {kind} appears twice")
        sections[kind] = (pos, size)
        pos += size
    if pos != len(view):
        raise MalformedInput(f"{label}: {len(view) - pos} unexpected bytes after the last section")
    return BinFile(label=label, magic=magic, version=version, data=view, sections=sections)


def read_u32(buf: memoryview, offset: int, *, label: str) -> int:
    if offset + 4 > len(buf):
        raise MalformedInput(f"{label}: truncated at offset {offset}")
    value: int = struct.unpack_from("<I", buf, offset)[0]
    return value


def read_bigint(buf: memoryview, offset: int, size: int, *, label: str) -> int:
    if offset + size > len(buf):
        raise MalformedInput(f"{label}: truncated at offset {offset}")
    return int.from_bytes(buf[offset : offset + size], "little")
