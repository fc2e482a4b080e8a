"""The runtime's built-in benchmark circuit: a synthetic proving key with the shape of a real one.

The circuit is the chain s[i] = s[i-1]^2 + i (the one in tests/zk/circuits), whose witness values are
full-size field elements: the worst case for the MSMs, and so an honest lower bound on throughput. Its key
is built here without snarkjs or node (a node need not have them): sections of the sizes a real
2^k-constraint key has, filled with distinct curve points (successive multiples of a random point) and the
circuit's real A/B coefficients. The prover does exactly the work it does for a real key of that size; the
resulting proof is not a valid one (no trusted setup made these points) and is not checked.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable
from typing import Any

from runtimes.zk.curve import FieldOps, add, fq2_ops, fq_ops, multiply, to_affine, to_jacobian
from runtimes.zk.field import G1_GENERATOR, G2_GENERATOR, MONT2_INV_R, Arithmetic, R
from runtimes.zk.zkey import ZKey, encode_g1, encode_g2

_R2 = pow(MONT2_INV_R, -1, R)  # coefficients are stored times R^2 (see runtimes.zk.zkey)


def chain_witness(n: int, x: int, secret: int) -> list[int]:
    """[1, out, x, secret, s[0..n]] as circom orders the signals of the test circuit Chain(n)."""
    s = [x * secret % R]
    for i in range(1, n + 1):
        s.append((s[-1] * s[-1] + i) % R)
    return [1, s[-1], x, secret, *s]


def synthetic_key(power: int) -> tuple[ZKey, list[int]]:
    """A 2^power-domain key for Chain(2^power - 3) (1 public signal) and a witness that satisfies it."""
    domain = 1 << power
    n = domain - 3  # rows: n + 1 constraints, then one per public signal and one for the constant
    witness = chain_witness(n, secrets.randbelow(R - 1) + 1, secrets.randbelow(R - 1) + 1)
    n_vars, n_public = len(witness), 1
    coefs = bytearray()
    # Signals: 0 one, 1 out, 2 x, 3 secret, 4 + i s[i]. Constraint 0: x * secret = s[0];
    # constraint i: s[i-1] * s[i-1] = s[i] - i (C is not stored: snarkjs derives it as A * B).
    rows = [((0, 2), (1, 3))] + [((0, 4 + i - 1), (1, 4 + i - 1)) for i in range(1, n + 1)]
    entries = [(m, c, s) for c, row in enumerate(rows) for m, s in row]
    entries += [(0, n + 1 + k, k) for k in range(n_public + 1)]  # zkey_new.js: one row per public signal
    for m, c, s in entries:
        coefs += struct.pack("<III", m, c, s) + _R2.to_bytes(32, "little")
    g1 = _points(fq_ops, G1_GENERATOR, 4 * n_vars + domain)
    g2 = _points(fq2_ops, G2_GENERATOR, n_vars)
    ic = tuple(g1[: n_public + 1])
    return (
        ZKey(
            label="built-in benchmark key",
            n_vars=n_vars,
            n_public=n_public,
            domain_size=domain,
            power=power,
            alpha1=g1[0],
            beta1=g1[1],
            beta2=g2[0],
            gamma2=g2[1],
            delta1=g1[2],
            delta2=g2[2],
            ic=ic,
            coefs=bytes(coefs),
            a=encode_g1(g1[:n_vars]),
            b1=encode_g1(g1[n_vars : 2 * n_vars]),
            b2=encode_g2(g2),
            c=encode_g1(g1[2 * n_vars : 3 * n_vars - n_public - 1]),
            h=encode_g1(g1[3 * n_vars : 3 * n_vars + domain]),
        ),
        witness,
    )


def _points(ops: Callable[[Arithmetic], FieldOps[Any]], generator: Any, count: int) -> list[Any]:
    """count distinct points 2P, 3P, ... for a random P: one addition each."""
    F = ops(Arithmetic.select("python"))
    step = multiply(F, to_jacobian(F, generator), secrets.randbelow(R - 1) + 1)
    acc = step
    out = []
    for _ in range(count):
        acc = add(F, acc, step)
        out.append(to_affine(F, acc))
    return out
