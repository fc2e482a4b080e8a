"""Witness files (``.wtns``) as circom's witness generators and snarkjs write them.

Version 2 (snarkjs ``wtns_utils.js``): section 1 holds n8 (u32), the field prime (n8 bytes) and the
witness length (u32); section 2 holds that many field elements, n8 bytes each, little-endian, in normal
(not Montgomery) form. Element 0 is the constant 1, then the public outputs, the public inputs, and the
private signals.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from runtimes.zk.binfile import read_bigint, read_binfile, read_u32
from runtimes.zk.exceptions import MalformedInput, UnsupportedCurve
from runtimes.zk.field import N8, R

# Scalar-field primes of the other curves snarkjs knows, for the error message.
_KNOWN_SCALAR_FIELDS = {
    0x73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001: "bls12-381",
}


def parse_wtns(data: bytes | memoryview, *, label: str = "wtns") -> list[int]:
    """The witness values; raise ``MalformedInput`` naming the problem."""
    f = read_binfile(data, magic="wtns", label=label, versions=(2,))
    header = f.section(1, what="header")
    where = f"{label}: section 1"
    n8 = read_u32(header, 0, label=where)
    prime = read_bigint(header, 4, n8, label=where)
    count = read_u32(header, 4 + n8, label=where)
    if len(header) != 8 + n8:
        raise MalformedInput(f"{where}: {len(header)} bytes, expected {8 + n8}")
    if prime != R or n8 != N8:
        curve = _KNOWN_SCALAR_FIELDS.get(prime, f"a {prime.bit_length()}-bit prime field")
        raise UnsupportedCurve(f"{label}: the witness is over {curve}; this runtime proves on BN254 (bn128) only")
    values = f.section(2, what="witness values")
    if len(values) != count * n8:
        raise MalformedInput(
            f"{label}: section 2 holds {len(values)} bytes; the header announces {count} values of {n8} bytes"
        )
    out = [int.from_bytes(values[i : i + n8], "little") for i in range(0, len(values), n8)]
    for index, value in enumerate(out):
        if value >= R:
            raise MalformedInput(f"{label}: value {index} is not reduced modulo the field prime")
    if out and out[0] != 1:
        raise MalformedInput(f"{label}: value 0 must be the constant 1, found {out[0]}")
    return out


def encode_wtns(values: Sequence[int]) -> bytes:
    """A version-2 .wtns file holding these values (as circom's generate_witness writes it)."""
    header = struct.pack("<I", N8) + R.to_bytes(N8, "little") + struct.pack("<I", len(values))
    body = b"".join(int(v).to_bytes(N8, "little") for v in values)
    out = [b"wtns", struct.pack("<II", 2, 2)]
    for kind, section in ((1, header), (2, body)):
        out.append(struct.pack("<IQ", kind, len(section)))
        out.append(section)
    return b"".join(out)
