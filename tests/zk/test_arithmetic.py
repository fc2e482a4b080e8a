"""The arithmetic under the prover and verifier, held against py-ecc and against definitions."""

from __future__ import annotations

import random

import pytest
from py_ecc.fields import optimized_bn128_FQ as FQ
from py_ecc.fields import optimized_bn128_FQ2 as FQ2
from py_ecc.fields import optimized_bn128_FQ12 as FQ12
from py_ecc.optimized_bn128.optimized_curve import G1, G2, add, multiply, normalize
from py_ecc.optimized_bn128.optimized_pairing import field_modulus
from py_ecc.optimized_bn128.optimized_pairing import pairing as py_ecc_pairing

from runtimes.zk import pairing
from runtimes.zk.curve import fq2_ops, fq_ops, shift_left, to_affine
from runtimes.zk.fft import intt, ntt, odd_coset
from runtimes.zk.field import Arithmetic, R, fr_coset_shift, fr_root_of_unity
from runtimes.zk.msm import msm_g1, msm_g2, window_count

BACKENDS = Arithmetic.available()
rng = random.Random(7)


def g1_points(n: int) -> list[tuple[int, int]]:
    return [(int(x.n), int(y.n)) for x, y in (normalize(multiply(G1, rng.randrange(1, R))) for _ in range(n))]


def g2_points(n: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    out = []
    for _ in range(n):
        x, y = normalize(multiply(G2, rng.randrange(1, R)))
        out.append(((int(x.coeffs[0]), int(x.coeffs[1])), (int(y.coeffs[0]), int(y.coeffs[1]))))
    return out


def naive_g1(points: list[tuple[int, int] | None], scalars: list[int]) -> tuple[int, int] | None:
    acc = None
    for p, k in zip(points, scalars, strict=True):
        if p is not None and k:
            term = multiply((FQ(p[0]), FQ(p[1]), FQ(1)), k)
            acc = term if acc is None else add(acc, term)
    if acc is None or acc[2] == FQ(0):
        return None
    x, y = normalize(acc)
    return int(x.n), int(y.n)


def naive_g2(points: list[tuple[tuple[int, int], tuple[int, int]]],
             scalars: list[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The sum of k * P with py-ecc's point arithmetic, affine, as coefficient tuples (never infinity here)."""
    acc = None
    for (x, y), k in zip(points, scalars, strict=True):
        term = multiply((FQ2(list(x)), FQ2(list(y)), FQ2.one()), k)
        acc = term if acc is None else add(acc, term)
    assert acc is not None
    ex, ey = normalize(acc)
    return tuple(ex.coeffs), tuple(ey.coeffs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("c", [2, 5, 8])
def test_msm_g1_matches_naive_sum_including_edge_cases(backend: str, c: int) -> None:
    ar = Arithmetic.select(backend)  # type: ignore[arg-type]
    base = g1_points(12)
    points: list[tuple[int, int] | None] = [*base, base[0], base[1], (base[2][0], -base[2][1] % field_modulus), None]
    scalars = [rng.randrange(R) for _ in points]
    scalars[3] = 0
    scalars[13] = scalars[1]  # the same point twice with the same digits: bucket doublings
    scalars[14] = scalars[2]  # P and -P with the same digits: buckets that cancel to infinity
    scalars[4] = 5
    count = window_count(254, c)
    mid = count // 2
    # The low windows' digits sum to at most `top`; one more carries into window `mid`, where a part starts.
    top = (1 << (c - 1)) * ((1 << (c * mid)) - 1) // ((1 << c) - 1)
    scalars[5], scalars[6] = top, (rng.randrange(R) >> (c * mid) << (c * mid)) + top + 1
    xs = [None if p is None else ar.number(p[0]) for p in points]
    ys = [None if p is None else ar.number(p[1]) for p in points]
    whole = to_affine(fq_ops(ar), msm_g1(xs, ys, scalars, ar, c, (0, count)))
    F = fq_ops(ar)
    low, high = msm_g1(xs, ys, scalars, ar, c, (0, mid)), msm_g1(xs, ys, scalars, ar, c, (mid, count))
    from runtimes.zk.curve import add as jadd

    split = to_affine(F, jadd(F, low, shift_left(F, high, c * mid)))
    expected = naive_g1(points, scalars)
    assert whole is not None
    assert (int(whole[0]), int(whole[1])) == expected
    assert split == whole


@pytest.mark.parametrize("backend", BACKENDS)
def test_msm_g2_matches_naive_sum(backend: str) -> None:
    ar = Arithmetic.select(backend)  # type: ignore[arg-type]
    points = g2_points(6)
    points.append(points[0])
    scalars = [rng.randrange(R) for _ in points]
    scalars[-1] = scalars[0]
    xs = [(ar.number(p[0][0]), ar.number(p[0][1])) for p in points]
    ys = [(ar.number(p[1][0]), ar.number(p[1][1])) for p in points]
    result = to_affine(fq2_ops(ar), msm_g2(xs, ys, scalars, ar, 4, (0, window_count(254, 4))))
    ex, ey = naive_g2(points, scalars)
    assert result is not None
    assert tuple(map(int, result[0])) == ex
    assert tuple(map(int, result[1])) == ey


def test_pairing_equals_py_ecc_and_is_bilinear() -> None:
    a, b = rng.randrange(1, R), rng.randrange(1, R)
    p, q = g1_points(1)[0], g2_points(1)[0]
    pa = normalize(multiply(G1, a))
    qb = normalize(multiply(G2, b))
    ours = pairing.pairing((int(pa[0].n), int(pa[1].n)), ((*map(int, qb[0].coeffs),), (*map(int, qb[1].coeffs),)))
    assert ours == [int(c) for c in py_ecc_pairing(multiply(G2, b), multiply(G1, a)).coeffs]
    neg_p = (p[0], -p[1] % field_modulus)
    assert pairing.is_one(pairing.final_exponentiation(pairing.miller_loop([(p, q), (neg_p, q)])))
    assert not pairing.is_one(pairing.final_exponentiation(pairing.miller_loop([(p, q)])))


def test_frobenius_constant_matches_py_ecc() -> None:
    w = FQ12([0, 1] + [0] * 10)
    assert [int(c) for c in (w ** (field_modulus**2)).coeffs] == [0, pairing.FROB2] + [0] * 10


def test_roots_of_unity_have_the_right_order() -> None:
    for power in (1, 7, 12, 28):
        w = fr_root_of_unity(power)
        assert pow(w, 1 << power, R) == 1
        assert pow(w, 1 << (power - 1), R) == R - 1
    shift = fr_coset_shift(10)
    assert pow(shift, 1 << 10, R) == R - 1  # an odd coset: x^n = -1 on it, so Z(x) = -2


def test_ntt_round_trip_and_definition() -> None:
    values = [rng.randrange(R) for _ in range(16)]
    w = fr_root_of_unity(4)
    evaluations = ntt(values, w)
    assert evaluations[3] == sum(c * pow(w, 3 * i, R) for i, c in enumerate(values)) % R
    assert intt(evaluations, w) == values
    shift = fr_coset_shift(4)
    coset = odd_coset(evaluations, 4)
    assert coset[5] == sum(c * pow(shift * pow(w, 5, R), i, R) for i, c in enumerate(values)) % R


@pytest.mark.parametrize("backend", BACKENDS)
def test_msm_with_most_points_in_one_bucket_matches_naive_sum(backend: str) -> None:
    # A witness of 0/1 signals puts most points in one bucket of window 0, as the top window of full-size
    # scalars does; repeats and negations make the pending points double and cancel while they are summed.
    ar = Arithmetic.select(backend)  # type: ignore[arg-type]
    base = g1_points(9)
    points: list[tuple[int, int] | None] = [*base, *base, *((x, -y % field_modulus) for x, y in base[:4]), *base[:3]]
    scalars = [1] * len(points)
    scalars[5], scalars[6], scalars[20] = rng.randrange(R), 2, (1 << 253) + 1
    xs = [None if p is None else ar.number(p[0]) for p in points]
    ys = [None if p is None else ar.number(p[1]) for p in points]
    result = to_affine(fq_ops(ar), msm_g1(xs, ys, scalars, ar, 6, (0, window_count(254, 6))))
    expected = naive_g1(points, scalars)
    assert result is not None
    assert (int(result[0]), int(result[1])) == expected

    g2 = g2_points(5)
    g2_all = [*g2, *g2, g2[0], g2[0], g2[1]]
    g2_scalars = [1] * len(g2_all)
    g2_scalars[3] = rng.randrange(R)
    x2 = [(ar.number(p[0][0]), ar.number(p[0][1])) for p in g2_all]
    y2 = [(ar.number(p[1][0]), ar.number(p[1][1])) for p in g2_all]
    result2 = to_affine(fq2_ops(ar), msm_g2(x2, y2, g2_scalars, ar, 6, (0, window_count(254, 6))))
    assert result2 is not None
    assert (tuple(map(int, result2[0])), tuple(map(int, result2[1]))) == naive_g2(g2_all, g2_scalars)
