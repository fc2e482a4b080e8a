"""Multi-scalar multiplication on BN254 G1 and G2: Pippenger's bucket method on plain integers.

sum(k_i * P_i) is computed window by window: each scalar is cut into c-bit signed digits in
[-2^(c-1), 2^(c-1)], and point i is added (or subtracted, by negating y) into bucket |d| of each window.
Per window, sum(b * bucket_b) comes from two running sums; windows are joined by c doublings each
(in Jacobian coordinates, ``runtimes.zk.curve``).

Bucket additions are affine with batched inversion (Montgomery's trick): a few hundred independent
additions share one modular inverse, which leaves about 6 multiplications per addition against 11 for a
Jacobian mixed addition. Measured on the reference machine (1,000 G1 points, c = 8, noisy shared box):
bucket accumulation alone with Jacobian mixed additions took 0.21 s (ints) / 0.10 s (gmpy2); this whole MSM,
accumulation and bucket reduction, 0.24 s / 0.06-0.10 s. The gain is modest with ints (interpreter
overhead per line is as large as the arithmetic) and clearer with gmpy2. A batch never
holds the same bucket twice, and x1 == x2 (doubling, or P + (-P)) is handled on the side, so every batched
inverse exists.

A point whose bucket is already in the batch goes to that bucket's pending list; the lists are summed at the
end as a tree (``_reduce_pending``): each round adds pending points in pairs, all pairs of all buckets sharing
one inversion, so m points for one bucket take about log2(m) rounds. Collisions are not rare: the top
window of a 254-bit scalar holds a bit or two (at c = 11, 2^14 points, 10,956 of 16,384 points fell into one
bucket), and a witness full of 0/1 signals sends most points to bucket 1 of window 0. The earlier scheme
re-queued every waiting point after each batch and so absorbed one point per bucket per batch, which is
quadratic in the points of the fullest bucket: 57.7 M re-queues and 107 s for one 2^14 G1 MSM (ints).

The work splits by windows: ``msm_g1(..., windows=(lo, hi))`` computes only windows lo..hi-1, and
``join_windows`` adds the parts. Splitting by windows, unlike splitting by points, costs no extra bucket
reductions, so the parallel total equals the serial one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from runtimes.zk.curve import Affine, FieldOps, Jacobian, add_affine, fq2_ops, fq_ops, shift_left
from runtimes.zk.field import Arithmetic, Q

MAX_WINDOW_BITS = 16


def choose_window(n: int, max_bits: int) -> int:
    """Window width c minimising the estimated additions: windows * (n + 1.2 * 2^c).

    n additions per window for the points, 2^c for the two running sums over 2^(c-1) buckets; the
    running sums are batched across windows only, so their inverse is shared by fewer additions (x1.2).
    """
    best_c, best_cost = 1, math.inf
    for c in range(2, MAX_WINDOW_BITS + 1):
        cost = window_count(max_bits, c) * (n + 1.2 * (1 << c))
        if cost < best_cost:
            best_c, best_cost = c, cost
    return best_c


def window_count(max_bits: int, c: int) -> int:
    """Windows needed for scalars of max_bits bits in signed c-bit digits (the top digit may carry)."""
    return max(1, (max_bits + c) // c)


def _batch_size(windows: int, c: int) -> int:
    # About sqrt(buckets) additions per window per batch keeps bucket collisions to a few percent, and a
    # batch of 64 or more makes the one inversion (~2 us) negligible per addition.
    return max(64, min(1024, windows * max(1, math.isqrt(1 << (c - 1)))))


def _start_at(lo: int, c: int) -> tuple[int, int, int]:
    """(bits to drop, their mask, the carry threshold) for digits from window lo on.

    Digits in (-2^(c-1), 2^(c-1)] of windows 0..lo-1 can sum to at most h = 2^(c-1) * (1 + 2^c + ... +
    2^(c(lo-1))), and they represent the low c*lo bits L of the scalar exactly, so window lo receives a
    carry iff L > h: a job for windows lo..hi-1 starts there instead of recoding the windows below.
    """
    skip = c * lo
    return skip, (1 << skip) - 1, (1 << (c - 1)) * ((1 << skip) - 1) // ((1 << c) - 1)


# --- G1 ----------------------------------------------------------------------------------------------


def msm_g1(
    xs: Sequence[Any],
    ys: Sequence[Any],
    scalars: Sequence[int],
    ar: Arithmetic,
    c: int,
    windows: tuple[int, int],
) -> Jacobian:
    """sum over windows lo..hi-1 of 2^(c*(w-lo)) * (window w's share of sum k_i * P_i), as Jacobian.

    xs/ys are affine coordinates (None for the point at infinity, which is skipped), scalars in [0, r).
    """
    q = ar.number(Q)
    inverse = ar.inverse
    lo, hi = windows
    half, full, mask = 1 << (c - 1), 1 << c, (1 << c) - 1
    nb = (hi - lo) * half
    BX: list[Any] = [None] * nb
    BY: list[Any] = [None] * nb
    busy = bytearray(nb)
    bk: list[int] = []
    bx: list[Any] = []
    by: list[Any] = []
    pending: dict[int, list[tuple[Any, Any]]] = {}
    batch = _batch_size(hi - lo, c)

    def flush() -> None:
        n = len(bk)
        if not n:
            return
        prefix: list[Any] = [None] * n
        acc = ar.number(1)
        for j in range(n):
            acc = acc * (bx[j] - BX[bk[j]]) % q
            prefix[j] = acc
        inv = inverse(acc, q)
        for j in range(n - 1, -1, -1):
            k = bk[j]
            x1, x2, y1 = BX[k], bx[j], BY[k]
            if j:
                t = inv * prefix[j - 1] % q
                inv = inv * (x2 - x1) % q
            else:
                t = inv
            lam = (by[j] - y1) * t % q
            x3 = (lam * lam - x1 - x2) % q
            BY[k] = (lam * (x1 - x3) - y1) % q
            BX[k] = x3
            busy[k] = 0
        bk.clear()
        bx.clear()
        by.clear()

    skip, low, carry_above = _start_at(lo, c)
    for i, s in enumerate(scalars):
        if skip:
            s = (s >> skip) + ((s & low) > carry_above)
        x = xs[i]
        if not s or x is None:
            continue
        y = ys[i]
        ny = q - y if y else y
        for base in range(0, nb, half):  # windows lo..hi-1; base = the window's first bucket
            d = s & mask
            s >>= c
            if d > half:
                d -= full
                s += 1
            if not d:
                continue
            if d > 0:
                k, py = base + d - 1, y
            else:
                k, py = base - d - 1, ny
            # This block runs n * windows times: keep it flat.
            bxk = BX[k]
            if bxk is None:
                BX[k], BY[k] = x, py
            elif busy[k]:
                if k in pending:
                    pending[k].append((x, py))
                else:
                    pending[k] = [(x, py)]
            elif bxk == x:
                BX[k], BY[k] = _g1_same_x(bxk, BY[k], py, q, inverse)
            else:
                busy[k] = 1
                bk.append(k)
                bx.append(x)
                by.append(py)
                if len(bk) >= batch:
                    flush()
    flush()

    def get(k: int) -> tuple[Any, Any]:
        return BX[k], BY[k]

    def put(k: int, x: Any, y: Any) -> None:
        BX[k], BY[k] = x, y

    _reduce_pending(pending, get, put, _add_pairs_g1, q, inverse)
    sums = _window_sums(BX, BY, hi - lo, half, _add_pairs_g1, q, inverse)
    return join_windows(fq_ops(ar), sums, c)


def _g1_same_x(x: Any, y1: Any, y2: Any, q: Any, inverse: Any) -> tuple[Any, Any]:
    """(x, y1) + (x, y2): a doubling if y1 == y2, else the point at infinity."""
    if y1 != y2 or not y1:
        return None, None
    lam = 3 * x * x * inverse(2 * y1 % q, q) % q
    x3 = (lam * lam - 2 * x) % q
    return x3, (lam * (x - x3) - y1) % q


def _add_pairs_g1(xs1: list[Any], ys1: list[Any], xs2: list[Any], ys2: list[Any], q: Any, inverse: Any) -> None:
    """xs1[j], ys1[j] += xs2[j], ys2[j] in place; None is the point at infinity. One shared inverse."""
    todo = []
    for j in range(len(xs1)):
        x2 = xs2[j]
        if x2 is None:
            continue
        x1 = xs1[j]
        if x1 is None:
            xs1[j], ys1[j] = x2, ys2[j]
        elif x1 == x2:
            xs1[j], ys1[j] = _g1_same_x(x1, ys1[j], ys2[j], q, inverse)
        else:
            todo.append(j)
    if not todo:
        return
    prefix = []
    acc = 1
    for j in todo:
        acc = acc * (xs2[j] - xs1[j]) % q
        prefix.append(acc)
    inv = inverse(acc, q)
    for m in range(len(todo) - 1, -1, -1):
        j = todo[m]
        x1, y1, x2 = xs1[j], ys1[j], xs2[j]
        if m:
            t = inv * prefix[m - 1] % q
            inv = inv * (x2 - x1) % q
        else:
            t = inv
        lam = (ys2[j] - y1) * t % q
        x3 = (lam * lam - x1 - x2) % q
        ys1[j] = (lam * (x1 - x3) - y1) % q
        xs1[j] = x3


# --- G2 ----------------------------------------------------------------------------------------------
# Fq2 = Fq[u]/(u^2 + 1). Coordinates are kept as separate c0/c1 lists so the hot loop does no tuple work;
# an Fq2 inverse is conj(a) / norm(a), and the norms of a batch share one Fq inversion.


def msm_g2(
    xs: Sequence[Any],
    ys: Sequence[Any],
    scalars: Sequence[int],
    ar: Arithmetic,
    c: int,
    windows: tuple[int, int],
) -> Jacobian:
    """As ``msm_g1`` for G2; xs/ys hold Fq2 pairs ``(c0, c1)`` (None at infinity)."""
    q = ar.number(Q)
    inverse = ar.inverse
    lo, hi = windows
    half, full, mask = 1 << (c - 1), 1 << c, (1 << c) - 1
    nb = (hi - lo) * half
    X0: list[Any] = [None] * nb
    X1: list[Any] = [None] * nb
    Y0: list[Any] = [None] * nb
    Y1: list[Any] = [None] * nb
    busy = bytearray(nb)
    bk: list[int] = []
    b0s: list[Any] = []
    b1s: list[Any] = []
    c0s: list[Any] = []
    c1s: list[Any] = []
    pending: dict[int, list[tuple[Any, Any]]] = {}
    batch = _batch_size(hi - lo, c)

    def flush() -> None:
        n = len(bk)
        if not n:
            return
        prefix: list[Any] = [None] * n
        norms: list[Any] = [None] * n
        acc = ar.number(1)
        for j in range(n):
            k = bk[j]
            d0, d1 = b0s[j] - X0[k], b1s[j] - X1[k]
            nrm = (d0 * d0 + d1 * d1) % q
            norms[j] = nrm
            acc = acc * nrm % q
            prefix[j] = acc
        inv = inverse(acc, q)
        for j in range(n - 1, -1, -1):
            k = bk[j]
            if j:
                t = inv * prefix[j - 1] % q
                inv = inv * norms[j] % q
            else:
                t = inv
            a0, a1, e0, e1 = X0[k], X1[k], Y0[k], Y1[k]
            b0, b1 = b0s[j], b1s[j]
            d0, d1 = b0 - a0, b1 - a1
            i0, i1 = d0 * t % q, -d1 * t % q  # 1 / (x2 - x1)
            f0, f1 = c0s[j] - e0, c1s[j] - e1  # y2 - y1
            t0, t1 = f0 * i0, f1 * i1
            l0, l1 = (t0 - t1) % q, ((f0 + f1) * (i0 + i1) - t0 - t1) % q
            x30 = ((l0 + l1) * (l0 - l1) - a0 - b0) % q
            x31 = (2 * l0 * l1 - a1 - b1) % q
            g0, g1 = a0 - x30, a1 - x31
            t0, t1 = l0 * g0, l1 * g1
            Y0[k] = (t0 - t1 - e0) % q
            Y1[k] = ((l0 + l1) * (g0 + g1) - t0 - t1 - e1) % q
            X0[k], X1[k] = x30, x31
            busy[k] = 0
        for pending in (bk, b0s, b1s, c0s, c1s):
            pending.clear()

    skip, low, carry_above = _start_at(lo, c)
    for i, s in enumerate(scalars):
        if skip:
            s = (s >> skip) + ((s & low) > carry_above)
        x = xs[i]
        if not s or x is None:
            continue
        x0, x1 = x
        y0, y1 = ys[i]
        n0, n1 = (q - y0) % q, (q - y1) % q
        for base in range(0, nb, half):
            d = s & mask
            s >>= c
            if d > half:
                d -= full
                s += 1
            if not d:
                continue
            if d > 0:
                k, p0, p1 = base + d - 1, y0, y1
            else:
                k, p0, p1 = base - d - 1, n0, n1
            # As in msm_g1: this block runs n * windows times.
            a0 = X0[k]
            if a0 is None:
                X0[k], X1[k], Y0[k], Y1[k] = x0, x1, p0, p1
            elif busy[k] or (a0 == x0 and X1[k] == x1):
                if k in pending:
                    pending[k].append((x, (p0, p1)))
                else:
                    pending[k] = [(x, (p0, p1))]
            else:
                busy[k] = 1
                bk.append(k)
                b0s.append(x0)
                b1s.append(x1)
                c0s.append(p0)
                c1s.append(p1)
                if len(bk) >= batch:
                    flush()
    flush()

    def get(k: int) -> tuple[Any, Any]:
        a0 = X0[k]
        return (None, None) if a0 is None else ((a0, X1[k]), (Y0[k], Y1[k]))

    def put(k: int, x: Any, y: Any) -> None:
        X0[k], X1[k], Y0[k], Y1[k] = (None, None, None, None) if x is None else (*x, *y)

    _reduce_pending(pending, get, put, _add_pairs_g2, q, inverse)
    BX = [None if a is None else (a, b) for a, b in zip(X0, X1, strict=True)]
    BY = [None if a is None else (a, b) for a, b in zip(Y0, Y1, strict=True)]
    sums = _window_sums(BX, BY, hi - lo, half, _add_pairs_g2, q, inverse)
    return join_windows(fq2_ops(ar), sums, c)


def _g2_same_x(x: Any, y1: Any, y2: Any, q: Any, inverse: Any) -> tuple[Any, Any]:
    if y1 != y2 or y1 == (0, 0):
        return None, None
    x0, x1 = x
    a0, a1 = 3 * (x0 + x1) * (x0 - x1) % q, 6 * x0 * x1 % q  # 3x^2
    b0, b1 = 2 * y1[0] % q, 2 * y1[1] % q  # 2y
    n = inverse((b0 * b0 + b1 * b1) % q, q)
    i0, i1 = b0 * n % q, -b1 * n % q
    l0, l1 = (a0 * i0 - a1 * i1) % q, (a0 * i1 + a1 * i0) % q
    x30, x31 = ((l0 + l1) * (l0 - l1) - 2 * x0) % q, (2 * l0 * l1 - 2 * x1) % q
    g0, g1 = x0 - x30, x1 - x31
    return (x30, x31), ((l0 * g0 - l1 * g1 - y1[0]) % q, (l0 * g1 + l1 * g0 - y1[1]) % q)


def _add_pairs_g2(xs1: list[Any], ys1: list[Any], xs2: list[Any], ys2: list[Any], q: Any, inverse: Any) -> None:
    """As ``_add_pairs_g1`` with Fq2 pairs."""
    todo = []
    for j in range(len(xs1)):
        x2 = xs2[j]
        if x2 is None:
            continue
        x1 = xs1[j]
        if x1 is None:
            xs1[j], ys1[j] = x2, ys2[j]
        elif x1 == x2:
            xs1[j], ys1[j] = _g2_same_x(x1, ys1[j], ys2[j], q, inverse)
        else:
            todo.append(j)
    if not todo:
        return
    prefix, norms = [], []
    acc = 1
    for j in todo:
        d0, d1 = xs2[j][0] - xs1[j][0], xs2[j][1] - xs1[j][1]
        nrm = (d0 * d0 + d1 * d1) % q
        norms.append(nrm)
        acc = acc * nrm % q
        prefix.append(acc)
    inv = inverse(acc, q)
    for m in range(len(todo) - 1, -1, -1):
        j = todo[m]
        if m:
            t = inv * prefix[m - 1] % q
            inv = inv * norms[m] % q
        else:
            t = inv
        (a0, a1), (e0, e1) = xs1[j], ys1[j]
        (b0, b1), (c0, c1) = xs2[j], ys2[j]
        d0, d1 = b0 - a0, b1 - a1
        i0, i1 = d0 * t % q, -d1 * t % q
        f0, f1 = c0 - e0, c1 - e1
        l0, l1 = (f0 * i0 - f1 * i1) % q, (f0 * i1 + f1 * i0) % q
        x30, x31 = ((l0 + l1) * (l0 - l1) - a0 - b0) % q, (2 * l0 * l1 - a1 - b1) % q
        g0, g1 = a0 - x30, a1 - x31
        xs1[j] = (x30, x31)
        ys1[j] = ((l0 * g0 - l1 * g1 - e0) % q, (l0 * g1 + l1 * g0 - e1) % q)


# --- shared ------------------------------------------------------------------------------------------


def _reduce_pending(
    pending: dict[int, list[tuple[Any, Any]]],
    get: Callable[[int], tuple[Any, Any]],
    put: Callable[[int, Any, Any], None],
    add_pairs: Any,
    q: Any,
    inverse: Any,
) -> None:
    """Add each bucket's pending points into it, as a tree; see the module docstring.

    Per round and bucket: an odd point out is added into the bucket, the rest are summed in pairs, and
    the sums are the next round's pending points. All additions of a round share one inversion.
    """
    while pending:
        xs1: list[Any] = []
        ys1: list[Any] = []
        xs2: list[Any] = []
        ys2: list[Any] = []
        into: list[int] = []  # k >= 0: the sum is bucket k; ~k: the sum is pending for bucket k
        for k, points in pending.items():
            first = 0
            bucket_x, bucket_y = get(k)
            if bucket_x is None:
                bucket_x, bucket_y = points[0]
                put(k, bucket_x, bucket_y)
                first = 1
            if (len(points) - first) % 2:
                px, py = points[first]
                xs1.append(bucket_x)
                ys1.append(bucket_y)
                xs2.append(px)
                ys2.append(py)
                into.append(k)
                first += 1
            for j in range(first, len(points), 2):
                (ax, ay), (px, py) = points[j], points[j + 1]
                xs1.append(ax)
                ys1.append(ay)
                xs2.append(px)
                ys2.append(py)
                into.append(~k)
        add_pairs(xs1, ys1, xs2, ys2, q, inverse)
        pending = {}
        for j, k in enumerate(into):
            if k >= 0:
                put(k, xs1[j], ys1[j])
            elif xs1[j] is not None:
                pending.setdefault(~k, []).append((xs1[j], ys1[j]))


def _window_sums(
    BX: list[Any], BY: list[Any], windows: int, half: int, add_pairs: Any, q: Any, inverse: Any
) -> list[Affine]:
    """Per window, sum(b * bucket_b) by running sums from the top bucket down, all windows in one batch."""
    sx: list[Any] = [None] * windows
    sy: list[Any] = [None] * windows
    tx: list[Any] = [None] * windows
    ty: list[Any] = [None] * windows
    for b in range(half - 1, -1, -1):
        idx = range(b, windows * half, half)
        add_pairs(sx, sy, [BX[k] for k in idx], [BY[k] for k in idx], q, inverse)
        add_pairs(tx, ty, sx, sy, q, inverse)
    return [None if x is None else (x, y) for x, y in zip(tx, ty, strict=True)]


def join_windows(F: FieldOps[Any], sums: Sequence[Affine], c: int) -> Jacobian:
    """sum(2^(c*w) * sums[w]) by Horner's rule in Jacobian coordinates."""
    acc: Jacobian = (F.one, F.one, F.zero)
    for w in range(len(sums) - 1, -1, -1):
        acc = add_affine(F, shift_left(F, acc, c), sums[w])
    return acc
