"""The optimal ate pairing on BN254, computed as a product of Miller loops and one final exponentiation.

Same pairing, same field representation as py-ecc's ``optimized_bn128`` (Fq12 = Fq[w]/(w^12 - 18 w^6 + 82),
Fq2 embedded by u = w^6 - 9, G2 twisted in by (x w^2, y w^3)); the tests check that
``final_exponentiate(miller_loop(...))`` equals ``py_ecc.optimized_bn128.pairing`` on random points.
The difference is speed: py-ecc runs the whole loop in Fq12, the twisted point included, and its final
exponentiation is one 2,800-bit power; on the reference machine one py-ecc pairing took 0.53 s, so the
four of a Groth16 check took 1.2 s even sharing one final exponentiation. Here the point arithmetic stays in
Fq2, each line is a sparse Fq12 element (5 of 12 coefficients), the four loops share one accumulator, and
the final exponentiation is split into its easy part (Frobenius maps that are coefficient-wise in this
basis: f^(p^6) negates odd coefficients, f^(p^2) scales coefficient i by FROB2^i) and a 762-bit hard part.

Vertical lines and constant factors in Fq are left out: the final exponentiation maps them to 1.
"""

from __future__ import annotations

from collections.abc import Sequence

from py_ecc.fields import optimized_bn128_FQ12 as PyFQ12
from py_ecc.optimized_bn128.optimized_pairing import pseudo_binary_encoding

from runtimes.zk.field import Q, R

Fq2 = tuple[int, int]
G2Affine = tuple[Fq2, Fq2]
G1Affine = tuple[int, int]
Fq12 = list[int]

# The loop count 6u + 2 (u = 4965661367192848881) in signed binary, most significant digit first, as
# py-ecc's optimized_pairing.pseudo_binary_encoding (which it checks sums to the count) lists it reversed.
ATE_LOOP_DIGITS = tuple(reversed(pseudo_binary_encoding))
# w^(p^2) = FROB2 * w in this basis (checked against py-ecc in the tests).
FROB2 = 21888242871839275220042445260109153167277707414472061641714758635765020556617
# The hard part of the final exponent, (p^4 - p^2 + 1) / r.
HARD_EXPONENT = (Q**4 - Q**2 + 1) // R
# Frobenius on the twist: pi(x, y) = (conj(x) * XI^((p-1)/3), conj(y) * XI^((p-1)/2)) with XI = 9 + u.
_XI = (9, 1)


def _f2mul(a: Fq2, b: Fq2) -> Fq2:
    t0, t1 = a[0] * b[0], a[1] * b[1]
    return (t0 - t1) % Q, ((a[0] + a[1]) * (b[0] + b[1]) - t0 - t1) % Q


def _f2sqr(a: Fq2) -> Fq2:
    return (a[0] + a[1]) * (a[0] - a[1]) % Q, 2 * a[0] * a[1] % Q


def _f2inv(a: Fq2) -> Fq2:
    n = pow((a[0] * a[0] + a[1] * a[1]) % Q, -1, Q)
    return a[0] * n % Q, -a[1] * n % Q


def _f2pow(a: Fq2, e: int) -> Fq2:
    result: Fq2 = (1, 0)
    for bit in bin(e)[2:]:
        result = _f2sqr(result)
        if bit == "1":
            result = _f2mul(result, a)
    return result


_FROB_X = _f2pow(_XI, (Q - 1) // 3)
_FROB_Y = _f2pow(_XI, (Q - 1) // 2)


def _frobenius_g2(p: G2Affine) -> G2Affine:
    (x0, x1), (y0, y1) = p
    return _f2mul((x0, -x1 % Q), _FROB_X), _f2mul((y0, -y1 % Q), _FROB_Y)


# --- Fq12 on coefficient lists -------------------------------------------------------------------------


def _reduce(c: list[int]) -> Fq12:
    """A degree <= 22 product modulo w^12 - 18 w^6 + 82, coefficients mod q."""
    for k in range(len(c) - 1, 11, -1):
        top = c[k]
        if top:
            c[k - 6] += 18 * top
            c[k - 12] -= 82 * top
    return [x % Q for x in c[:12]]


def fq12_mul(a: Sequence[int], b: Sequence[int]) -> Fq12:
    c = [0] * 23
    for i, ai in enumerate(a):
        if ai:
            for j, bj in enumerate(b):
                c[i + j] += ai * bj
    return _reduce(c)


def fq12_sqr(a: Sequence[int]) -> Fq12:
    c = [0] * 23
    for i, ai in enumerate(a):
        if ai:
            c[2 * i] += ai * ai
            twice = 2 * ai
            for j in range(i + 1, 12):
                c[i + j] += twice * a[j]
    return _reduce(c)


def _mul_line(f: Sequence[int], line: Sequence[tuple[int, int]]) -> Fq12:
    c = [0] * 23
    for j, lj in line:
        for i, fi in enumerate(f):
            c[i + j] += fi * lj
    return _reduce(c)


def _line(lam: Fq2, t: G2Affine, p: G1Affine) -> list[tuple[int, int]]:
    """The line of slope lam through twisted t, at p: yP - lam xP w + (lam xT - yT) w^3 (sparse)."""
    (l0, l1), (xt, yt) = lam, t
    n0, n1 = _f2mul(lam, xt)
    n0, n1 = n0 - yt[0], n1 - yt[1]
    xp, yp = p
    # u = w^6 - 9: (a + b u) w^k = (a - 9b) w^k + b w^(k+6)
    return [(0, yp), (1, -(l0 - 9 * l1) * xp), (7, -l1 * xp), (3, n0 - 9 * n1), (9, n1)]


def _step(t: G2Affine, q: G2Affine | None) -> tuple[Fq2, G2Affine]:
    """Slope and result of t + t (q None) or t + q, affine on the twist."""
    (x1, y1) = t
    if q is None or q[0] == x1:
        if q is not None and q[1] != y1:
            raise ValueError("vertical line: t = -q inside a Miller loop")  # impossible for r-torsion points
        num = _f2sqr(x1)
        lam = _f2mul((3 * num[0], 3 * num[1]), _f2inv((2 * y1[0], 2 * y1[1])))
        x2 = x1
    else:
        x2, y2 = q
        lam = _f2mul(((y2[0] - y1[0]), (y2[1] - y1[1])), _f2inv(((x2[0] - x1[0]) % Q, (x2[1] - x1[1]) % Q)))
    ls = _f2sqr(lam)
    x3 = ((ls[0] - x1[0] - x2[0]) % Q, (ls[1] - x1[1] - x2[1]) % Q)
    d = _f2mul(lam, ((x1[0] - x3[0]), (x1[1] - x3[1])))
    return lam, (x3, ((d[0] - y1[0]) % Q, (d[1] - y1[1]) % Q))


def _neg(q: G2Affine) -> G2Affine:
    return q[0], (-q[1][0] % Q, -q[1][1] % Q)


def miller_loop(pairs: Sequence[tuple[G1Affine, G2Affine]]) -> Fq12:
    """prod f_{6u+2,Q}(P) times the two Frobenius lines, over all (P, Q) pairs, sharing the squarings.

    Points are affine and not at infinity (such a pair contributes 1: leave it out).
    """
    f: Fq12 = [1] + [0] * 11
    ts = [q for _, q in pairs]
    for index, digit in enumerate(ATE_LOOP_DIGITS[1:]):
        if index:
            f = fq12_sqr(f)
        for k, (p, q) in enumerate(pairs):
            start = ts[k]
            lam, ts[k] = _step(start, None)
            f = _mul_line(f, _line(lam, start, p))
            if digit:
                start = ts[k]
                lam, ts[k] = _step(start, q if digit == 1 else _neg(q))
                f = _mul_line(f, _line(lam, start, p))
    for k, (p, q) in enumerate(pairs):
        q1 = _frobenius_g2(q)
        start = ts[k]
        lam, ts[k] = _step(start, q1)
        f = _mul_line(f, _line(lam, start, p))
        start = ts[k]
        lam, ts[k] = _step(start, _neg(_frobenius_g2(q1)))
        f = _mul_line(f, _line(lam, start, p))
    return f


def final_exponentiation(f: Sequence[int]) -> Fq12:
    """f^((p^12 - 1) / r) = ((f^(p^6 - 1))^(p^2 + 1))^((p^4 - p^2 + 1) / r)."""
    conj = [c if i % 2 == 0 else -c % Q for i, c in enumerate(f)]  # f^(p^6)
    inverse = [int(c) for c in PyFQ12([int(c) for c in f]).inv().coeffs]
    easy = fq12_mul(conj, inverse)  # f^(p^6 - 1)
    scale, frob = 1, []
    for c in easy:
        frob.append(c * scale % Q)
        scale = scale * FROB2 % Q
    easy = fq12_mul(frob, easy)  # ^(p^2 + 1)
    return _pow(easy, HARD_EXPONENT)


def _pow(base: Fq12, exponent: int, window: int = 5) -> Fq12:
    """base^exponent by fixed windows of odd powers (762 squarings and ~150 products for the hard part)."""
    sq = fq12_sqr(base)
    odd = [base]
    for _ in range((1 << (window - 1)) - 1):
        odd.append(fq12_mul(odd[-1], sq))
    bits = bin(exponent)[2:]
    result: Fq12 | None = None
    i = 0
    while i < len(bits):
        if bits[i] == "0":
            result = fq12_sqr(result) if result is not None else None
            i += 1
            continue
        j = min(i + window, len(bits))
        while bits[j - 1] == "0":
            j -= 1
        value = int(bits[i:j], 2)
        if result is not None:
            for _ in range(j - i):
                result = fq12_sqr(result)
            result = fq12_mul(result, odd[value >> 1])
        else:
            result = odd[value >> 1]
        i = j
    return result if result is not None else [1] + [0] * 11


def is_one(f: Sequence[int]) -> bool:
    return f[0] == 1 and not any(f[1:])


def pairing(p: G1Affine, q: G2Affine) -> Fq12:
    """e(P, Q) as py-ecc's ``pairing(Q, P)`` computes it (coefficient list of its FQ12)."""
    return final_exponentiation(miller_loop([(p, q)]))
