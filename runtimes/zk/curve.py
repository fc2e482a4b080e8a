"""BN254 G1 and G2 on plain integers: affine and Jacobian point arithmetic outside the MSM hot loop.

G1 coordinates are integers mod q; G2 coordinates are Fq2 elements ``(c0, c1)`` meaning c0 + c1*u with
u^2 = -1. An affine point is ``(x, y)`` and the point at infinity is ``None``; a Jacobian point is
``(X, Y, Z)`` for (X/Z^2, Y/Z^3), with Z = 0 at infinity. Formulas are the a = 0 ones from the Explicit
Formulas Database (hyperelliptic.org/EFD/g1p/auto-shortw-jacobian-0.html): dbl-2009-l, add-2007-bl,
madd-2007-bl.

These functions serve the few dozen operations around the MSMs (the random r and s terms, combining
windows, converting results); the MSM itself is in ``runtimes.zk.msm``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from runtimes.zk.field import B1, Arithmetic, Q, R

E = TypeVar("E")  # a field element: int for Fq, tuple[int, int] for Fq2


@dataclass(frozen=True)
class FieldOps(Generic[E]):
    """The handful of operations the point formulas need, for Fq or Fq2."""

    zero: E
    one: E
    add: Callable[[E, E], E]
    sub: Callable[[E, E], E]
    mul: Callable[[E, E], E]
    sqr: Callable[[E], E]
    inv: Callable[[E], E]
    small: Callable[[int, E], E]  # multiply by a small integer


def fq_ops(ar: Arithmetic) -> FieldOps[int]:
    q = ar.number(Q)
    inverse = ar.inverse
    return FieldOps(
        zero=ar.number(0),
        one=ar.number(1),
        add=lambda a, b: (a + b) % q,
        sub=lambda a, b: (a - b) % q,
        mul=lambda a, b: a * b % q,
        sqr=lambda a: a * a % q,
        inv=lambda a: inverse(a, q),
        small=lambda k, a: k * a % q,
    )


Fq2 = tuple[int, int]


def fq2_ops(ar: Arithmetic) -> FieldOps[Fq2]:
    q = ar.number(Q)
    inverse = ar.inverse

    def mul(a: Fq2, b: Fq2) -> Fq2:
        # Karatsuba: three products instead of four.
        t0, t1 = a[0] * b[0], a[1] * b[1]
        return (t0 - t1) % q, ((a[0] + a[1]) * (b[0] + b[1]) - t0 - t1) % q

    def sqr(a: Fq2) -> Fq2:
        return (a[0] + a[1]) * (a[0] - a[1]) % q, 2 * a[0] * a[1] % q

    def inv(a: Fq2) -> Fq2:
        n = inverse((a[0] * a[0] + a[1] * a[1]) % q, q)
        return a[0] * n % q, -a[1] * n % q

    zero, one = ar.number(0), ar.number(1)
    return FieldOps(
        zero=(zero, zero),
        one=(one, zero),
        add=lambda a, b: ((a[0] + b[0]) % q, (a[1] + b[1]) % q),
        sub=lambda a, b: ((a[0] - b[0]) % q, (a[1] - b[1]) % q),
        mul=mul,
        sqr=sqr,
        inv=inv,
        small=lambda k, a: (k * a[0] % q, k * a[1] % q),
    )


# b' = 3 / (9 + u) for the twist (EIP-197).
_NINE_U_INV = pow(82, -1, Q)  # 1 / (9 + u) = (9 - u) / 82
G2_B = (3 * 9 * _NINE_U_INV % Q, -3 * _NINE_U_INV % Q)


def is_zero(F: FieldOps[E], a: E) -> bool:
    return a == F.zero


Jacobian = tuple[Any, Any, Any]
Affine = tuple[Any, Any] | None


def to_jacobian(F: FieldOps[E], p: Affine) -> Jacobian:
    return (F.one, F.one, F.zero) if p is None else (p[0], p[1], F.one)


def to_affine(F: FieldOps[E], p: Jacobian) -> Affine:
    x, y, z = p
    if z == F.zero:
        return None
    zi = F.inv(z)
    zi2 = F.sqr(zi)
    return F.mul(x, zi2), F.mul(y, F.mul(zi2, zi))


def double(F: FieldOps[E], p: Jacobian) -> Jacobian:
    x, y, z = p
    if z == F.zero:
        return p
    a = F.sqr(x)
    b = F.sqr(y)
    c = F.sqr(b)
    d = F.small(2, F.sub(F.sub(F.sqr(F.add(x, b)), a), c))
    e = F.small(3, a)
    f = F.sqr(e)
    x3 = F.sub(f, F.small(2, d))
    y3 = F.sub(F.mul(e, F.sub(d, x3)), F.small(8, c))
    z3 = F.small(2, F.mul(y, z))
    return x3, y3, z3


def add(F: FieldOps[E], p: Jacobian, r: Jacobian) -> Jacobian:
    x1, y1, z1 = p
    x2, y2, z2 = r
    if z1 == F.zero:
        return r
    if z2 == F.zero:
        return p
    z1z1, z2z2 = F.sqr(z1), F.sqr(z2)
    u1, u2 = F.mul(x1, z2z2), F.mul(x2, z1z1)
    s1 = F.mul(F.mul(y1, z2), z2z2)
    s2 = F.mul(F.mul(y2, z1), z1z1)
    h = F.sub(u2, u1)
    rr = F.small(2, F.sub(s2, s1))
    if h == F.zero:
        return double(F, p) if rr == F.zero else (F.one, F.one, F.zero)
    i = F.sqr(F.small(2, h))
    j = F.mul(h, i)
    v = F.mul(u1, i)
    x3 = F.sub(F.sub(F.sqr(rr), j), F.small(2, v))
    y3 = F.sub(F.mul(rr, F.sub(v, x3)), F.small(2, F.mul(s1, j)))
    z3 = F.mul(F.sub(F.sub(F.sqr(F.add(z1, z2)), z1z1), z2z2), h)
    return x3, y3, z3


def add_affine(F: FieldOps[E], p: Jacobian, a: Affine) -> Jacobian:
    """p + a with a affine (mixed addition)."""
    if a is None:
        return p
    x1, y1, z1 = p
    x2, y2 = a
    if z1 == F.zero:
        return x2, y2, F.one
    z1z1 = F.sqr(z1)
    u2 = F.mul(x2, z1z1)
    s2 = F.mul(F.mul(y2, z1), z1z1)
    h = F.sub(u2, x1)
    rr = F.small(2, F.sub(s2, y1))
    if h == F.zero:
        return double(F, p) if rr == F.zero else (F.one, F.one, F.zero)
    hh = F.sqr(h)
    i = F.small(4, hh)
    j = F.mul(h, i)
    v = F.mul(x1, i)
    x3 = F.sub(F.sub(F.sqr(rr), j), F.small(2, v))
    y3 = F.sub(F.mul(rr, F.sub(v, x3)), F.small(2, F.mul(y1, j)))
    z3 = F.sub(F.sub(F.sqr(F.add(z1, h)), z1z1), hh)
    return x3, y3, z3


def neg(F: FieldOps[E], p: Jacobian) -> Jacobian:
    return p[0], F.sub(F.zero, p[1]), p[2]


def multiply(F: FieldOps[E], p: Jacobian, k: int) -> Jacobian:
    """k * p by double-and-add over the bits of k (used for a handful of scalars per proof)."""
    result: Jacobian = (F.one, F.one, F.zero)
    k %= R
    for bit in bin(k)[2:]:
        result = double(F, result)
        if bit == "1":
            result = add(F, result, p)
    return result


def shift_left(F: FieldOps[E], p: Jacobian, bits: int) -> Jacobian:
    for _ in range(bits):
        p = double(F, p)
    return p


def is_on_curve_g1(p: Affine) -> bool:
    if p is None:
        return True
    x, y = (int(c) for c in p)
    return 0 <= x < Q and 0 <= y < Q and (y * y - x * x * x - B1) % Q == 0


def is_on_curve_g2(p: Affine, F: FieldOps[Fq2]) -> bool:
    if p is None:
        return True
    x, y = p
    if not all(0 <= int(c) < Q for c in (*x, *y)):
        return False
    return F.sub(F.sqr(y), F.add(F.mul(F.sqr(x), x), G2_B)) == F.zero


def is_in_g2_subgroup(p: Affine, F: FieldOps[Fq2]) -> bool:
    """r * p == O. The twist's group has a cofactor, so points on the curve may lie outside G2."""
    return p is None or multiply_full(F, to_jacobian(F, p), R)[2] == F.zero


def multiply_full(F: FieldOps[E], p: Jacobian, k: int) -> Jacobian:
    """k * p without reducing k mod r (for subgroup checks, where k = r)."""
    result: Jacobian = (F.one, F.one, F.zero)
    for bit in bin(k)[2:]:
        result = double(F, result)
        if bit == "1":
            result = add(F, result, p)
    return result
