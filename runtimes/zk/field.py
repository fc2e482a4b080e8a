"""BN254 (alt_bn128, snarkjs's "bn128") field constants and the integer type the hot loops run on.

Everything here is plain integers. The prover's inner loops are written once against Python's ``int``
operators; ``Arithmetic`` says which concrete number type they get. With gmpy2 installed the numbers are
``gmpy2.mpz``, whose 256-bit ``a * b % p`` took 240 ns against 530 ns for ``int`` on the 2-core reference
machine (timeit, Python 3.11), so the same code runs about twice as fast. Nothing else changes.

Constants are those of EIP-196/197 (the curve Ethereum's precompiles use) and of snarkjs/ffjavascript,
which call the curve "bn128".
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

# Base field modulus q and group order r (EIP-196).
Q = 0x30644E72E131A029B85045B68181585D97816A916871CA8D3C208C16D87CFD47
R = 0x30644E72E131A029B85045B68181585D2833E84879B9709143E1F593F0000001
# Bytes per field element in snarkjs files: (floor((bits - 1) / 64) + 1) * 8 = 32 for both fields.
N8 = 32
# ffjavascript keeps elements in Montgomery form with R = 2^(8 * n8); .zkey points are written that way.
MONT_INV_Q = pow(2 ** (8 * N8), -1, Q)
# .zkey coefficients are written as v * R^2 mod r (zkey_new.js, writeCoef) so that one Montgomery
# multiplication by a witness value in normal form yields v * w in Montgomery form.
MONT2_INV_R = pow(2 ** (16 * N8), -1, R)
# G1: y^2 = x^3 + 3; G2 (the D-type twist over Fq2 = Fq[u]/(u^2 + 1)): y^2 = x^3 + 3 / (9 + u).
B1 = 3
G1_GENERATOR = (1, 2)
G2_GENERATOR = (
    (
        10857046999023057135944570762232829481370756359578518086990519993285655852781,
        11559732032986387107991004021392285783925812861821192530917403151452391805634,
    ),
    (
        8495653923123431417604973247489272438418190587263600148770280649306958101930,
        4082367875863433681332203403145435568316851327593401208105741076214120093531,
    ),
)
# Fr's two-adicity and the non-residue ffjavascript derives its roots of unity from (the first
# non-square counted from 2): w[s] = nqr^t with r - 1 = t * 2^s, w[i] = w[i+1]^2 (wasm_field1.js).
FR_TWO_ADICITY = 28
FR_NQR = 5

Backend = Literal["auto", "python", "gmpy2", "native"]
BACKENDS: tuple[Backend, ...] = ("auto", "python", "gmpy2", "native")


_GMPY2_MISSING = "the gmpy2 backend was asked for but gmpy2 is not installed (pip install gmpy2)"


def _load_gmpy2() -> Any:
    try:
        return importlib.import_module("gmpy2")
    except ImportError:
        return None


def backend_name(backend: Backend = "auto") -> str:
    """What proves for ``backend``: "native" (the C MSM kernel, ``runtimes.zk.native``, with gmpy2 or ints
    around it), "gmpy2" or "python". ``auto`` takes the first that works here. gmpy2 is found without
    importing it: the daemon only hands proofs to worker processes, which import it (~1 MiB the idle daemon
    need not keep); nor is the kernel built here (workers build it). ``native`` fails without a C compiler,
    ``gmpy2`` if gmpy2 is missing."""
    if backend in ("auto", "native"):
        from runtimes.zk import native

        if native.buildable():
            return "native"
        if backend == "native":
            raise ImportError(f"the native backend was asked for but cannot be had here: {native.unavailable_reason}")
    if backend != "python" and importlib.util.find_spec("gmpy2") is not None:
        return "gmpy2"
    if backend == "gmpy2":
        raise ImportError(_GMPY2_MISSING)
    return "python"


@dataclass(frozen=True)
class Arithmetic:
    """The number type and modular inverse the hot loops use; see the module docstring."""

    name: str  # "python" or "gmpy2"
    number: Callable[[int], int]  # int -> the working type (int itself, or gmpy2.mpz)
    inverse: Callable[[int, int], int]  # (a, m) -> a^-1 mod m, a != 0

    @staticmethod
    def select(backend: Backend = "auto") -> Arithmetic:
        """``auto`` (and ``native``, whose MSMs are in C and the rest in Python): gmpy2 when importable,
        else Python ints. ``gmpy2`` fails if it is missing."""
        gmpy2 = _load_gmpy2() if backend in ("auto", "gmpy2", "native") else None
        if gmpy2 is not None:
            return Arithmetic("gmpy2", gmpy2.mpz, gmpy2.invert)
        if backend == "gmpy2":
            raise ImportError(_GMPY2_MISSING)
        return Arithmetic("python", int, _int_inverse)

    @staticmethod
    def available() -> tuple[str, ...]:
        return ("python", "gmpy2") if _load_gmpy2() is not None else ("python",)


def _int_inverse(a: int, m: int) -> int:
    return pow(a, -1, m)


def fr_root_of_unity(power: int) -> int:
    """The 2^power-th root of unity snarkjs's Fr.fft uses (``Fr.w[power]``)."""
    if not 0 <= power <= FR_TWO_ADICITY:
        raise ValueError(f"Fr has no 2^{power}-th root of unity (two-adicity {FR_TWO_ADICITY})")
    t = (R - 1) >> FR_TWO_ADICITY
    return pow(FR_NQR, t << (FR_TWO_ADICITY - power), R)


def fr_coset_shift(power: int) -> int:
    """The shift of the "odd" coset snarkjs evaluates H on: w[power + 1], or nqr^2 at full two-adicity."""
    if power == FR_TWO_ADICITY:
        return FR_NQR * FR_NQR % R
    return fr_root_of_unity(power + 1)
