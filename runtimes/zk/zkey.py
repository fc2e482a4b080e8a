"""snarkjs's Groth16 proving key (``.zkey``): parsing, checks, and decoding of its point sections.

Sections (snarkjs ``zkey_new.js`` / ``zkey_utils.js``, file version 1):

====  ===========================================================================================
  1   protocol id (u32): 1 Groth16, 2 PLONK, 10 FFLONK
  2   Groth16 header: n8q, q, n8r, r, nVars, nPublic, domainSize, then alpha1, beta1, beta2, gamma2,
      delta1, delta2
  3   IC: nPublic + 1 G1 points (the verifying key's public-input bases)
  4   coefficients of A and B: u32 count, then (u32 matrix, u32 constraint, u32 signal, Fr value * R^2)
  5   A: nVars G1 points           6  B1: nVars G1 points           7  B2: nVars G2 points
  8   C: nVars - nPublic - 1 G1    9  H: domainSize G1 points      10  contributions (not read)
====  ===========================================================================================

Points are affine, x then y, each coordinate n8q bytes little-endian in Montgomery form (x * 2^256 mod q);
G2 coordinates are Fq2 as (c0, c1). The point at infinity is written as all zero bytes.

Point sections stay as bytes until a worker process decodes and checks each one, once (``decode_g1``, the
prover's ``decode`` jobs), so parsing a key costs little in the process that owns the event loop.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from runtimes.zk.binfile import BinFile, read_bigint, read_binfile, read_u32
from runtimes.zk.curve import G2_B
from runtimes.zk.exceptions import MalformedInput, UnsupportedCurve
from runtimes.zk.field import B1, MONT2_INV_R, MONT_INV_Q, N8, Arithmetic, Q, R

PROTOCOLS = {1: "groth16", 2: "plonk", 10: "fflonk"}
# Other curves snarkjs supports, by base field modulus, so the error can say which one a key is for.
KNOWN_CURVES = {
    0x1A0111EA397FE69A4B1BA7B6434BACD764774B84F38512BF6730D2A0F6B0F6241EABFFFEB153FFFFB9FEFFFFFFFFAAAB: "bls12-381",
}
G1_BYTES = 2 * N8
G2_BYTES = 4 * N8
COEF_BYTES = 12 + N8

Point1 = tuple[int, int] | None
Point2 = tuple[tuple[int, int], tuple[int, int]] | None


@dataclass(frozen=True)
class ZKey:
    """A parsed Groth16 proving key; point sections are raw bytes (see the module docstring)."""

    label: str
    n_vars: int
    n_public: int
    domain_size: int
    power: int
    alpha1: Point1
    beta1: Point1
    beta2: Point2
    gamma2: Point2
    delta1: Point1
    delta2: Point2
    ic: tuple[Point1, ...]
    coefs: bytes  # section 4 without its count: n_coefs entries of COEF_BYTES
    a: bytes
    b1: bytes
    b2: bytes
    c: bytes
    h: bytes

    @property
    def n_coefs(self) -> int:
        return len(self.coefs) // COEF_BYTES

    @property
    def constraints(self) -> int:
        """The circuit's constraint count (the work unit).

        zkey_new.js appends one A row per public signal (and the constant one) after the circuit's
        constraints, as the last coefficients; the last one sits in row nConstraints + nPublic.
        """
        if not self.coefs:
            return 0
        last_row: int = struct.unpack_from("<I", self.coefs, len(self.coefs) - COEF_BYTES + 4)[0]
        return max(0, last_row - self.n_public)


def parse_zkey(data: bytes | memoryview, *, label: str = "zkey") -> ZKey:
    """Parse and check a .zkey; raise ``MalformedInput`` / ``UnsupportedCurve`` naming the problem."""
    f = read_binfile(data, magic="zkey", label=label, versions=(1,))
    protocol = read_u32(f.section(1, what="protocol"), 0, label=f"{label}: section 1")
    if protocol != 1:
        name = PROTOCOLS.get(protocol, f"unknown protocol id {protocol}")
        raise UnsupportedCurve(f"{label}: this is a {name} key; only Groth16 keys can be proved here")
    header = f.section(2, what="Groth16 header")
    where = f"{label}: section 2"
    n8q = read_u32(header, 0, label=where)
    q = read_bigint(header, 4, n8q, label=where)
    pos = 4 + n8q
    n8r = read_u32(header, pos, label=where)
    r = read_bigint(header, pos + 4, n8r, label=where)
    pos += 4 + n8r
    if q != Q or r != R or n8q != N8 or n8r != N8:
        curve = KNOWN_CURVES.get(q, f"a curve with a {q.bit_length()}-bit base field")
        raise UnsupportedCurve(f"{label}: the key is for {curve}; this runtime proves on BN254 (bn128) only")
    if pos + 12 > len(header):
        raise MalformedInput(f"{where}: truncated after the field moduli")
    n_vars, n_public, domain_size = struct.unpack_from("<III", header, pos)
    pos += 12
    expected_header = pos + 3 * G1_BYTES + 3 * G2_BYTES
    if len(header) != expected_header:
        raise MalformedInput(f"{where}: {len(header)} bytes, expected {expected_header}")
    if domain_size < 1 or domain_size & (domain_size - 1):
        raise MalformedInput(f"{where}: domain size {domain_size} is not a power of two")
    if not 0 <= n_public < n_vars:
        raise MalformedInput(f"{where}: {n_public} public signals of {n_vars} variables")
    g1 = [_header_g1(header, pos + off, where) for off in (0, G1_BYTES)]
    g2 = [_header_g2(header, pos + 2 * G1_BYTES + k * G2_BYTES, where) for k in range(2)]
    delta1 = _header_g1(header, pos + 2 * G1_BYTES + 2 * G2_BYTES, where)
    delta2 = _header_g2(header, pos + 3 * G1_BYTES + 2 * G2_BYTES, where)

    ic_bytes = _sized(f, 3, "IC", (n_public + 1) * G1_BYTES)
    ar = Arithmetic.select("python")
    xs, ys = decode_g1(ic_bytes, ar, label=f"{label}: section 3 (IC)")
    ic = tuple(None if x is None else (x, y) for x, y in zip(xs, ys, strict=True))

    coef_section = f.section(4, what="coefficients")
    n_coefs = read_u32(coef_section, 0, label=f"{label}: section 4")
    if len(coef_section) != 4 + n_coefs * COEF_BYTES:
        raise MalformedInput(
            f"{label}: section 4 (coefficients) is {len(coef_section)} bytes; "
            f"{n_coefs} coefficients need {4 + n_coefs * COEF_BYTES}"
        )
    return ZKey(
        label=label,
        n_vars=n_vars,
        n_public=n_public,
        domain_size=domain_size,
        power=domain_size.bit_length() - 1,
        alpha1=g1[0],
        beta1=g1[1],
        beta2=g2[0],
        gamma2=g2[1],
        delta1=delta1,
        delta2=delta2,
        ic=ic,
        coefs=bytes(coef_section[4:]),
        a=bytes(_sized(f, 5, "A", n_vars * G1_BYTES)),
        b1=bytes(_sized(f, 6, "B1", n_vars * G1_BYTES)),
        b2=bytes(_sized(f, 7, "B2", n_vars * G2_BYTES)),
        c=bytes(_sized(f, 8, "C", (n_vars - n_public - 1) * G1_BYTES)),
        h=bytes(_sized(f, 9, "H", domain_size * G1_BYTES)),
    )


def _sized(f: BinFile, kind: int, what: str, size: int) -> memoryview:
    section = f.section(kind, what=what)
    if len(section) != size:
        raise MalformedInput(f"{f.label}: section {kind} ({what}) is {len(section)} bytes, expected {size}")
    return section


def _header_g1(buf: memoryview, pos: int, where: str) -> Point1:
    xs, ys = decode_g1(buf[pos : pos + G1_BYTES], Arithmetic.select("python"), label=where)
    return None if xs[0] is None else (xs[0], ys[0])


def _header_g2(buf: memoryview, pos: int, where: str) -> Point2:
    xs, ys = decode_g2(buf[pos : pos + G2_BYTES], Arithmetic.select("python"), label=where)
    return None if xs[0] is None else (xs[0], ys[0])


def decode_g1(buf: bytes | memoryview, ar: Arithmetic, *, label: str) -> tuple[list[Any], list[Any]]:
    """Affine G1 points from Montgomery form; None for the point at infinity. Checks each is on the curve.

    The check is inlined and done in ``ar``'s number type: a prover decodes every point of a key (2^14 G1
    points: 0.18 s with gmpy2, 0.22 s with ints, against 0.29 s / 0.39 s through ``is_on_curve_g1``).
    """
    view = memoryview(buf)
    n = len(view) // G1_BYTES
    xs: list[Any] = [None] * n
    ys: list[Any] = [None] * n
    number, from_bytes = ar.number, int.from_bytes
    q, inv, b = number(Q), number(MONT_INV_Q), number(B1)
    for i in range(n):
        o = i * G1_BYTES
        xm = from_bytes(view[o : o + N8], "little")
        ym = from_bytes(view[o + N8 : o + G1_BYTES], "little")
        if not xm and not ym:
            continue
        if xm >= Q or ym >= Q:
            raise MalformedInput(f"{label}: point {i} has a coordinate >= q")
        x, y = number(xm) * inv % q, number(ym) * inv % q
        if (y * y - x * x * x - b) % q:
            raise MalformedInput(f"{label}: point {i} is not on BN254 G1")
        xs[i], ys[i] = x, y
    return xs, ys


def decode_g2(buf: bytes | memoryview, ar: Arithmetic, *, label: str) -> tuple[list[Any], list[Any]]:
    """Affine G2 points (Fq2 pairs) from Montgomery form; None at infinity. Checks each is on the twist.

    y^2 = x^3 + b over Fq2 = Fq[u]/(u^2 + 1), written out in the coordinates (as ``decode_g1``).
    """
    view = memoryview(buf)
    n = len(view) // G2_BYTES
    xs: list[Any] = [None] * n
    ys: list[Any] = [None] * n
    number, from_bytes = ar.number, int.from_bytes
    q, inv = number(Q), number(MONT_INV_Q)
    b0, b1 = (number(v) for v in G2_B)
    for i in range(n):
        o = i * G2_BYTES
        c = [from_bytes(view[o + k * N8 : o + (k + 1) * N8], "little") for k in range(4)]
        if not any(c):
            continue
        if max(c) >= Q:
            raise MalformedInput(f"{label}: point {i} has a coordinate >= q")
        x0, x1, y0, y1 = (number(v) * inv % q for v in c)
        # x^2 = (x0^2 - x1^2) + 2 x0 x1 u; x^3 = x^2 * x; y^2 = (y0^2 - y1^2) + 2 y0 y1 u
        s0, s1 = x0 * x0 - x1 * x1, 2 * x0 * x1
        if (y0 * y0 - y1 * y1 - (s0 * x0 - s1 * x1) - b0) % q or (2 * y0 * y1 - (s0 * x1 + s1 * x0) - b1) % q:
            raise MalformedInput(f"{label}: point {i} is not on the BN254 G2 twist")
        xs[i], ys[i] = (x0, x1), (y0, y1)
    return xs, ys


def decode_coefs(coefs: bytes, n_vars: int, domain_size: int, *, label: str) -> list[tuple[int, int, int, int]]:
    """(matrix, constraint, signal, value) for each A/B coefficient, values back from the R^2 scaling."""
    out = []
    for index, (m, c, s, raw) in enumerate(struct.iter_unpack("<III32s", coefs)):
        if m > 1 or c >= domain_size or s >= n_vars:
            raise MalformedInput(
                f"{label}: coefficient {index} refers to matrix {m}, constraint {c}, signal {s} "
                f"(the key has 2 matrices, {domain_size} rows, {n_vars} signals)"
            )
        out.append((m, c, s, int.from_bytes(raw, "little") * MONT2_INV_R % R))
    return out


def encode_g1(points: list[Point1]) -> bytes:
    """G1 points as a .zkey section stores them (Montgomery form; zeros at infinity)."""
    mont = 2 ** (8 * N8)
    out = bytearray()
    for p in points:
        if p is None:
            out += bytes(G1_BYTES)
        else:
            out += (p[0] * mont % Q).to_bytes(N8, "little") + (p[1] * mont % Q).to_bytes(N8, "little")
    return bytes(out)


def encode_g2(points: list[Point2]) -> bytes:
    mont = 2 ** (8 * N8)
    out = bytearray()
    for p in points:
        if p is None:
            out += bytes(G2_BYTES)
        else:
            for c in (*p[0], *p[1]):
                out += (c * mont % Q).to_bytes(N8, "little")
    return bytes(out)
